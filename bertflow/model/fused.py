"""A fused CPU forward for BERT-family encoders: transformers' BertLayer math in fewer passes.

transformers runs each layer as ~15 separate ops: three Q/K/V matmuls, bias adds that first copy
the bias into every output row, GELU, residual adds, each a full pass over memory. Here a layer is
four oneDNN matmuls on weights packed once (Q, K and V as one; bias, GELU and the residual add
fused into the matmul) plus scaled-dot-product attention and two LayerNorms.

fp32 equals transformers within float rounding (~1e-7). bf16 runs the matmuls and attention in
bf16 (avx512_bf16 / AMX) and keeps the residual stream and LayerNorm in fp32.
Pure torch: no Prefect, no I/O.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol, cast

import torch
import torch.nn.functional as F

# Encoders whose layers are transformers' BertLayer under another name (post-LayerNorm, absolute
# positions handled by the embeddings module). Anything else runs transformers' own forward.
FUSED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
_ACTIVATIONS = {"gelu": ("gelu", "none"), "relu": ("relu", "")}  # config.hidden_act -> oneDNN post-op
_PACK_ROWS = 2048  # a typical batch's rows, a hint for oneDNN's weight layout; any batch works
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[torch.dtype, bool], FusedEncoder | None]] = (
    weakref.WeakKeyDictionary()
)  # model -> {(dtype, uses_token_types): FusedEncoder | None}


# What this module reads from a BERT-family model. transformers builds these submodules at run time,
# and torch's stubs type every `nn.Module` attribute as `Tensor | Module`: the protocols say what
# `fusable` checked (a BertLayer, whatever the model type calls it).
class _BertConfig(Protocol):
    num_attention_heads: int
    hidden_size: int
    layer_norm_eps: float
    hidden_act: str
    vocab_size: int


class _SelfAttention(Protocol):
    query: torch.nn.Linear
    key: torch.nn.Linear
    value: torch.nn.Linear


class _DenseNorm(Protocol):  # BertSelfOutput, BertOutput: dense, then LayerNorm of it plus the residual
    dense: torch.nn.Linear
    LayerNorm: torch.nn.LayerNorm


class _Attention(Protocol):
    self: _SelfAttention
    output: _DenseNorm


class _Intermediate(Protocol):
    dense: torch.nn.Linear


class _BertLayer(Protocol):
    attention: _Attention
    intermediate: _Intermediate
    output: _DenseNorm


class _BertEncoderStack(Protocol):
    layer: Iterable[_BertLayer]


class _BertModel(Protocol):
    config: _BertConfig
    embeddings: torch.nn.Module
    encoder: _BertEncoderStack


class FusedEncoder(torch.nn.Module):
    """Embeddings (transformers' module) + fused encoder layers; weights copied and packed once."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        bert = cast(_BertModel, model)
        config = bert.config
        self.embeddings = bert.embeddings
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.hidden = config.hidden_size
        self.eps = config.layer_norm_eps
        self.act, self.act_algo = _ACTIVATIONS[config.hidden_act]
        self.layers = [self._pack(layer) for layer in bert.encoder.layer]

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(w.detach().to(self.dtype).contiguous(), _PACK_ROWS)

    def _pack(self, layer: _BertLayer) -> dict[str, torch.Tensor]:
        att, out = layer.attention.self, layer.attention.output
        qkv_w = torch.cat([att.query.weight, att.key.weight, att.value.weight])  # (3H, H)
        qkv_b = torch.cat([att.query.bias, att.key.bias, att.value.bias])  # (3H,)
        return {
            "qkv_w": self._weight(qkv_w),
            "qkv_b": qkv_b.detach().to(self.dtype),
            "out_w": self._weight(out.dense.weight),
            "out_b": out.dense.bias.detach().to(self.dtype),
            "ln1_w": out.LayerNorm.weight.detach().float(),
            "ln1_b": out.LayerNorm.bias.detach().float(),
            "up_w": self._weight(layer.intermediate.dense.weight),
            "up_b": layer.intermediate.dense.bias.detach().to(self.dtype),
            "down_w": self._weight(layer.output.dense.weight),
            "down_b": layer.output.dense.bias.detach().to(self.dtype),
            "ln2_w": layer.output.LayerNorm.weight.detach().float(),
            "ln2_b": layer.output.LayerNorm.bias.detach().float(),
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        all_layers: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Hidden states (B, T, H) fp32: embeddings and every layer if `all_layers`, else the last."""
        b, t = input_ids.shape
        h, heads = self.hidden, self.heads
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        x = self.embeddings(**kwargs).float().reshape(b * t, h)  # (B*T, H)
        mask = None
        if not bool(attention_mask.all()):
            # Every query may also see position 0, so a row with no tokens gives zeros, not NaN;
            # real rows always have token 0 and are unchanged.
            mask = attention_mask.to(torch.bool, copy=True)
            mask[:, 0] = True
            mask = mask[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        states = [x] if all_layers else []
        for p in self.layers:
            x = self._layer(x, mask, p, b, t, h, heads)
            if all_layers:
                states.append(x)
        return tuple(s.view(b, t, h) for s in (states if all_layers else [x]))

    def _layer(
        self, x: torch.Tensor, mask: torch.Tensor | None, p: dict[str, torch.Tensor], b: int, t: int, h: int, heads: int
    ) -> torch.Tensor:
        linear = torch.ops.mkldnn._linear_pointwise
        xd = x if self.dtype == torch.float32 else x.to(self.dtype)  # (B*T, H)
        qkv = linear(xd, p["qkv_w"], p["qkv_b"], "none", [], "").view(b, t, 3, heads, h // heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, heads, T, H/heads) each
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, H/heads)
        ctx = ctx.transpose(1, 2).reshape(b * t, h)  # (B*T, H)
        if self.dtype == torch.float32:
            a = linear.binary(ctx, x, p["out_w"], p["out_b"], "add")  # dense(ctx) + x
            a = F.layer_norm(a, (h,), p["ln1_w"], p["ln1_b"], self.eps)
            up = linear(a, p["up_w"], p["up_b"], self.act, [], self.act_algo)  # (B*T, I)
            y = linear.binary(up, a, p["down_w"], p["down_b"], "add")
            return F.layer_norm(y, (h,), p["ln2_w"], p["ln2_b"], self.eps)
        # The residual stream stays fp32: fp32 + bf16 adds in one pass, promoting as it goes.
        a = x + linear(ctx, p["out_w"], p["out_b"], "none", [], "")
        a = F.layer_norm(a, (h,), p["ln1_w"], p["ln1_b"], self.eps)
        up = linear(a.to(self.dtype), p["up_w"], p["up_b"], self.act, [], self.act_algo)
        y = a + linear(up, p["down_w"], p["down_b"], "none", [], "")
        return F.layer_norm(y, (h,), p["ln2_w"], p["ln2_b"], self.eps)


def fusable(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether `model` is a plain BERT-family encoder that oneDNN on this CPU can run in `dtype`."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FUSED_MODEL_TYPES:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return False
    if getattr(config, "hidden_act", None) not in _ACTIVATIONS:
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return next(model.parameters()).device.type == "cpu"


def _matches(fused: FusedEncoder, model: torch.nn.Module, dtype: torch.dtype, uses_token_types: bool) -> bool:
    """Run both forwards on a small padded batch: the fused one must agree with transformers'."""
    gen = torch.Generator().manual_seed(0)
    vocab = cast(_BertModel, model).config.vocab_size
    ids = torch.randint(5, min(vocab, 1000), (3, 12), generator=gen)  # (3, 12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids) if uses_token_types else None
    kwargs = {"token_type_ids": types} if uses_token_types else {}
    with torch.inference_mode():
        ours = fused(ids, mask.clone(), types)[0]
        ref = model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state.float()
    real = mask.bool()
    scale = ref[real].abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return bool((ours[real] - ref[real]).abs().max().item() <= tol * max(scale, 1.0))


def fused_encoder(model: torch.nn.Module, dtype: torch.dtype, uses_token_types: bool) -> FusedEncoder | None:
    """The fused forward of `model` in `dtype`, built and checked once per model; None if unsupported."""
    per_model = _CACHE.setdefault(model, {})
    key = (dtype, uses_token_types)
    if key not in per_model:
        fused = None
        if fusable(model, dtype):
            try:
                candidate = FusedEncoder(model, dtype)
                fused = candidate if _matches(candidate, model, dtype, uses_token_types) else None
            except (RuntimeError, AttributeError, KeyError):
                fused = None  # an op or attribute this build or model lacks: use transformers' forward
        per_model[key] = fused
    return per_model[key]
