"""Texts -> token ids with the model's fast tokenizer: truncated, chunked into windows, or kept per token.

Pure: the `tokenizers` library and numpy, no model, no Prefect, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from bertflow.errors import InputError
from bertflow.text.chunking import window_bounds


@dataclass(frozen=True)
class Tokenized:
    """Token ids per row, as fed to the model (after truncation, with special tokens)."""

    ids: list[list[int]]
    n_tokens: np.ndarray  # (N,) int32
    truncated: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class Chunks:
    """Token windows of long texts (`--long-text chunk`): one row per window, each wrapped in special tokens."""

    tok: Tokenized  # the windows as fed to the model
    doc: np.ndarray  # (C,) int64: the text each window comes from
    chunk_index: np.ndarray  # (C,) int32: position of the window within its text
    char_start: np.ndarray  # (C,) int64: offsets into the original text
    char_end: np.ndarray  # (C,) int64


@dataclass(frozen=True)
class TokenText:
    """Tokenized texts with what token-level output (`--pooling none`) writes beside each vector."""

    tok: Tokenized
    tokens: list[list[str]]  # token strings, special tokens included
    offsets: list[list[tuple[int, int]]]  # char spans in the original text ((0, 0) for special tokens)
    special: list[list[bool]]


def _tokenized(encodings: Sequence[Encoding]) -> Tokenized:
    ids = [e.ids for e in encodings]
    n_tokens = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(ids))
    return Tokenized(ids, n_tokens, truncated)


class TextTokenizer:
    """A private copy of a model's fast tokenizer, truncating at `max_length`, never padding."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        # A copy: truncation settings must not leak into the tokenizer the model was loaded with.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def tokenize(self, texts: Sequence[str], prompt: str = "") -> Tokenized:
        """Tokenize in parallel (Rust threads, GIL released); flag rows cut at max_length.

        A prompt goes before each text, as text (sentence-transformers' `prompt + text`)."""
        return _tokenized(self._tokenizer.encode_batch_fast([prompt + t for t in texts] if prompt else list(texts)))

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt takes at the start of a row, leading special tokens included (as sentence-transformers
        counts them for `include_prompt=False`)."""
        enc = self._tokenizer.encode(prompt)
        return len(enc.ids) - (1 if enc.special_tokens_mask and enc.special_tokens_mask[-1] else 0)

    def tokenize_tokens(self, texts: Sequence[str]) -> TokenText:
        """Like `tokenize`, keeping each token's string, char span and whether it is special."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return TokenText(
            _tokenized(encodings),
            [e.tokens for e in encodings],
            [e.offsets for e in encodings],
            [[bool(m) for m in e.special_tokens_mask] for e in encodings],
        )

    def tokenize_chunks(self, texts: Sequence[str], chunk_tokens: int, stride: int, prompt: str = "") -> Chunks:
        """Cut each text on token boundaries into windows of `chunk_tokens` (special tokens included)
        sharing `stride` tokens; nothing is truncated, however long the text. A prompt's tokens start
        every window, after the leading special tokens; char spans stay those of the text."""
        whole = Tokenizer.from_str(self._tokenizer.to_str())  # no truncation: every token of the text
        whole.no_truncation()
        probe = self._tokenizer.encode("a")  # the model's wrapping, e.g. [CLS] ... [SEP]
        real = [i for i, special in enumerate(probe.special_tokens_mask) if not special]
        prefix, suffix = probe.ids[: real[0]], probe.ids[real[-1] + 1 :]
        prompt_ids = whole.encode(prompt, add_special_tokens=False).ids if prompt else []
        prefix = prefix + prompt_ids
        content = chunk_tokens - len(prefix) - len(suffix)
        if content <= stride:
            besides = "special and prompt tokens" if prompt_ids else "special tokens"
            raise InputError(
                f"--chunk-tokens {chunk_tokens} leaves {content} text tokens per window besides the model's "
                f"{len(prefix) + len(suffix)} {besides}, not more than --stride {stride}; raise --chunk-tokens"
            )
        ids: list[list[int]] = []
        doc, index, start, end = [], [], [], []
        for d, enc in enumerate(whole.encode_batch(list(texts), add_special_tokens=False)):
            offsets = enc.offsets
            for k, (s, e) in enumerate(window_bounds(len(enc.ids), content, stride)):
                ids.append(prefix + enc.ids[s:e] + suffix)
                doc.append(d)
                index.append(k)
                start.append(offsets[s][0] if e > s else 0)
                end.append(offsets[e - 1][1] if e > s else 0)
        n_tokens = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
        return Chunks(
            Tokenized(ids, n_tokens, np.zeros(len(ids), dtype=bool)),
            np.array(doc, dtype=np.int64),
            np.array(index, dtype=np.int32),
            np.array(start, dtype=np.int64),
            np.array(end, dtype=np.int64),
        )
