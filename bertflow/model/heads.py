"""The trained pooling head of `mean_lstm`: a (Bi)LSTM over the masked token states.

Pure torch: no Prefect, no I/O. Shapes: B sequences, T tokens, H hidden size (after the
layer choice), S the head's output size (hidden, or 2 * hidden when bidirectional).
"""

from __future__ import annotations

import json
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

HEAD_FORMAT = 1


class HeadConfig(BaseModel):
    """`pooler.json`: the head's shape and the encoder setup whose token states it was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = HEAD_FORMAT
    kind: Literal["lstm"] = "lstm"
    input_size: int
    hidden: int
    bidirectional: bool
    # The encoder fingerprint: a head only makes sense on the exact states it learned from.
    model: str
    model_sha256: str
    layers: tuple[int, ...]
    layer_mode: str
    max_length: int
    # What it was trained on, for the record (the classifier itself is not kept).
    labels: tuple[str, ...]
    seed: int

    @property
    def output_size(self) -> int:
        return self.hidden * (2 if self.bidirectional else 1)


class LstmHead(nn.Module):
    """Final LSTM state(s) of each sequence's real tokens; an all-masked row gives zeros.

    The mask must be right-padded (real tokens first), as `batching.pad_batch` makes it.
    """

    def __init__(self, input_size: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True, bidirectional=bidirectional)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)  # (B,)
        # Packing makes the LSTM stop at each row's last real token: padding never enters.
        packed = pack_padded_sequence(h, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (last, _) = self.lstm(packed)  # (dirs, B, hidden): forward at the end, backward at the start
        out = torch.cat(list(last), dim=-1)  # (B, S)
        return out * (lengths > 0).unsqueeze(-1).to(out.dtype)


def build_head(config: HeadConfig) -> LstmHead:
    return LstmHead(config.input_size, config.hidden, config.bidirectional)


def head_to_bytes(head: LstmHead, config: HeadConfig) -> tuple[bytes, bytes]:
    """(safetensors weights, JSON config) of a head."""
    weights = save_tensors({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    return weights, (json.dumps(config.model_dump(mode="json"), indent=2) + "\n").encode()


def head_from_bytes(weights: bytes, config: HeadConfig) -> LstmHead:
    """Rebuild a head for inference; refuse weights that do not fit the config's shape."""
    head = build_head(config)
    try:
        head.load_state_dict(load_tensors(weights))
    except RuntimeError as e:
        raise ValueError(f"weights do not match pooler.json ({str(e).splitlines()[0]})") from None
    return head.eval()
