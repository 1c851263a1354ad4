"""Fixtures shared by the embed_dataset tests: the tiny BERT's own tokenizer and a transformers reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.flows.test_embed_flow import LONG, MAX_LEN


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert))


@pytest.fixture(scope="module")
def tiny_reference(tiny_bert, hf_tokenizer):
    """Mean of last_hidden_state over every token of one unpadded text, straight from transformers."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert)).eval()

    def embed(text: str) -> np.ndarray:
        batch = hf_tokenizer(text, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).last_hidden_state[0].mean(0).numpy()  # (H,)

    return embed


@pytest.fixture(scope="module")
def texts(sample_texts) -> list[str | None]:
    """Real docstrings (some with newlines), a long one, "", a null, non-ASCII, and texts of exactly
    MAX_LEN and MAX_LEN + 1 tokens ("word" x 14 is 16 tokens with [CLS] and [SEP])."""
    return [
        "Abstract Base Classes.",
        "",
        None,
        LONG,
        "Zürich – naïve café ☕ 東京",
        sample_texts[1],
        sample_texts[2],
        "  padded with spaces  ",
        sample_texts[100],
        "x",
        " ".join(["word"] * (MAX_LEN - 2)),
        " ".join(["word"] * (MAX_LEN - 1)),
    ]
