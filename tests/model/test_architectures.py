"""Every encoder AutoModel loads, through bertflow's own path, against plain transformers.

Each architecture is a tiny random model (2 layers, hidden 32, 2 heads, safetensors) built here with
a tokenizer made the way the real checkpoints make theirs: WordPiece (BERT's real vocabulary) for
BERT, DistilBERT, ELECTRA, nomic-bert and MPNet (which wraps it in <s> </s>, pad id 1), byte-level
BPE for RoBERTa (pad id 1: positions start after it), ModernBERT and EuroBERT (pad ids past the text
tokens), Unigram for XLM-R, CamemBERT, gte and jina-embeddings-v3 (pad id 1), ALBERT and DeBERTa-v2
(pad id 0). The reference is transformers' own tokenizer and forward, each text alone (no padding):
CLS is `last_hidden_state[:, 0]`, mean the average over the text's tokens; bertflow must agree
within 1e-5 in fp32 through the steps a shard runs, with the texts batched (padded) together.

Decoder-only models (Qwen3, GPT-2) embed with last-token pooling only, equal to transformers' last
token; encoder-decoder models (T5, BART) are refused; both in one line, at resolve time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from bertflow.config import EmbedConfig
from bertflow.errors import InputError, ModelError, one_line
from bertflow.model.resolve import encoder_for, resolve_config
from bertflow.pipeline import shard as steps
from tests.conftest import run_cli, write_rows

MAX_LENGTH = 64
TOL = 1e-5
HIDDEN, LAYERS, HEADS = 32, 2, 2

# Short, empty, odd whitespace, accents, CJK and emoji (unknown to a small vocabulary), and (below)
# real docstrings of every length, many over 64 tokens: truncation and padding both matter.
EDGE_TEXTS = [
    "",
    "x",
    "Two words",
    "A short one.",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\nin between",
    "naïve café, Ångström, façade — déjà vu",
    "東京 and 北京 are cities; 🙂 is a face",
    "UPPER lower MiXeD 12345 3.14159 #hashtag @mention http://example.com/a?b=c",
    "Tokenizers turn text into ids. " * 12,
    "Return the indices that would sort an array, along the given axis, using the algorithm specified by the kind "
    "keyword; the result has the same shape as the input.",
    "a" * 300,
]


def _unigram(corpus: list[str], specials: list[str], unk: str, vocab_size: int = 400) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary trained on `corpus`, specials first (ids 0..)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk)
    tok.train_from_iterator(corpus, trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    assert [p for p, _ in vocab[: len(specials)]] == specials
    return vocab


def _byte_bpe(
    corpus: list[str], specials: list[str], vocab_size: int = 600
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2-style byte-level BPE (vocab, merges) trained on `corpus`, specials first (ids 0..)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert [t for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1])][: len(specials)] == specials
    return model["vocab"], merges


def _templated_bpe(
    vocab: dict[str, int], merges: list[tuple[str, str]], single: str, model_input_names: list[str], **tokens: str
):
    """A fast tokenizer: byte-level BPE whose post-processor wraps a text as `single` says ("[CLS] $A [SEP]")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(sorted(set(tokens.values())))
    wraps = [t for t in single.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(t, vocab[t]) for t in wraps])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=model_input_names, **tokens)


def _bert_vocab(bundled: Path) -> list[str]:
    return (bundled / "vocab.txt").read_text(encoding="utf-8").splitlines()


def _small(positions: int = MAX_LENGTH) -> dict:
    """The shared size of every tiny encoder, in BERT's config names."""
    return dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=positions,
    )


def _save(out: Path, model: torch.nn.Module, tokenizer) -> None:
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# Each builder writes a model directory from (out, corpus, the bundled model's directory).
def build_bert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30522, **_small())).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(bundled / name, out / name)


def build_distilbert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    config = DistilBertConfig(
        vocab_size=30522,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=2 * HIDDEN,
        max_position_embeddings=MAX_LENGTH,
    )
    _save(out, DistilBertModel(config), DistilBertTokenizer(vocab=str(bundled / "vocab.txt")))


def build_electra(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import ElectraConfig, ElectraModel, ElectraTokenizer

    # embedding_size below hidden_size: ELECTRA's projection between the two runs too
    config = ElectraConfig(vocab_size=30522, embedding_size=16, **_small())
    _save(out, ElectraModel(config), ElectraTokenizer(vocab=str(bundled / "vocab.txt")))


def build_mpnet(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    # microsoft/mpnet-base: <s> <pad> </s> <unk>, BERT's uncased vocabulary, <mask> (30527 ids);
    # as there, two more positions than tokens: positions start after the padding index (1)
    words = ["<s>", "<pad>", "</s>", "<unk>", *_bert_vocab(bundled), "<mask>"]
    tokenizer = MPNetTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = MPNetConfig(
        vocab_size=len(words), pad_token_id=1, bos_token_id=0, eos_token_id=2, **_small(MAX_LENGTH + 2)
    )
    _save(out, MPNetModel(config, add_pooling_layer=False), tokenizer)


def build_roberta(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab, merges = _byte_bpe(corpus, ["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    # as roberta-base (514 positions for 512 tokens): positions start after the padding index (1)
    config = RobertaConfig(
        vocab_size=len(vocab),
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **_small(MAX_LENGTH + 2),
    )
    _save(out, RobertaModel(config, add_pooling_layer=False), RobertaTokenizer(vocab=vocab, merges=merges))


def build_xlm_roberta(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    # multilingual-e5 and bge-m3: SentencePiece Unigram, <s> <pad> </s> <unk> first, <mask> last
    vocab = [*_unigram(corpus, ["<s>", "<pad>", "</s>", "<unk>"], "<unk>"), ("<mask>", 0.0)]
    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **_small(MAX_LENGTH + 2),
    )
    _save(out, XLMRobertaModel(config, add_pooling_layer=False), XLMRobertaTokenizer(vocab=vocab))


def build_camembert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import CamembertConfig, CamembertModel, CamembertTokenizer

    # camembert-base: <s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED <s> </s> ..., <mask> last
    specials = ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED", "<s>", "</s>"]
    vocab = [*_unigram(corpus, specials, "<unk>"), ("<mask>", 0.0)]
    config = CamembertConfig(
        vocab_size=len(vocab),
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=5,
        eos_token_id=6,
        **_small(MAX_LENGTH + 2),
    )
    _save(out, CamembertModel(config, add_pooling_layer=False), CamembertTokenizer(vocab=vocab))


def build_albert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import AlbertConfig, AlbertModel, AlbertTokenizer

    # albert-base-v2: <pad> <unk> [CLS] [SEP] [MASK] first
    vocab = _unigram(corpus, ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>")
    config = AlbertConfig(
        vocab_size=len(vocab), embedding_size=16, pad_token_id=0, bos_token_id=2, eos_token_id=3, **_small()
    )
    _save(out, AlbertModel(config, add_pooling_layer=False), AlbertTokenizer(vocab=vocab))


def build_deberta_v2(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

    # deberta-v3: [PAD] [CLS] [SEP] [UNK] first, [MASK] last; relative positions only, no token types
    vocab = [*_unigram(corpus, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[UNK]"), ("[MASK]", 0.0)]
    config = DebertaV2Config(
        vocab_size=len(vocab),
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
        pad_token_id=0,
        **_small(),
    )
    _save(out, DebertaV2Model(config), DebertaV2Tokenizer(vocab=vocab, unk_id=3))


def build_modernbert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import ModernBertConfig, ModernBertModel

    # answerdotai/ModernBERT-base: byte-level BPE, then [UNK] [CLS] [SEP] [PAD] [MASK] past the text
    # tokens (pad id 50283 there, not 0 or 1); [CLS] text [SEP]; no token types
    vocab, merges = _byte_bpe(corpus, ["<|endoftext|>"])
    for token in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        vocab[token] = len(vocab)
    tokenizer = _templated_bpe(
        vocab,
        merges,
        "[CLS] $A [SEP]",
        ["input_ids", "attention_mask"],
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    config = ModernBertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=3,  # global attention every third layer: layer 0 global, 1 and 2 local
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_LENGTH,
        local_attention=16,  # a window shorter than the texts, as 128 is in the real one
        pad_token_id=vocab["[PAD]"],
        cls_token_id=vocab["[CLS]"],
        sep_token_id=vocab["[SEP]"],
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
    )
    _save(out, ModernBertModel(config), tokenizer)


def build_gte(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import GteConfig, GteModel, XLMRobertaTokenizer

    # Alibaba-NLP/gte-multilingual-base: XLM-R's tokenizer (pad id 1), rotary positions
    vocab = [*_unigram(corpus, ["<s>", "<pad>", "</s>", "<unk>"], "<unk>"), ("<mask>", 0.0)]
    config = GteConfig(vocab_size=len(vocab), pad_token_id=1, **_small())
    _save(out, GteModel(config), XLMRobertaTokenizer(vocab=vocab))


def build_nomic_bert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import BertTokenizer, NomicBertConfig, NomicBertModel

    # nomic-ai/nomic-embed-text-v1.5: BERT's WordPiece, rotary positions, SwiGLU
    config = NomicBertConfig(vocab_size=30522, pad_token_id=0, **_small())
    _save(out, NomicBertModel(config), BertTokenizer(vocab=str(bundled / "vocab.txt")))


def build_jina_embeddings_v3(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model, XLMRobertaTokenizer

    # jinaai/jina-embeddings-v3: XLM-R's tokenizer (pad id 1), rotary positions
    vocab = [*_unigram(corpus, ["<s>", "<pad>", "</s>", "<unk>"], "<unk>"), ("<mask>", 0.0)]
    config = JinaEmbeddingsV3Config(vocab_size=len(vocab), pad_token_id=1, bos_token_id=0, eos_token_id=2, **_small())
    _save(out, JinaEmbeddingsV3Model(config), XLMRobertaTokenizer(vocab=vocab))


def build_eurobert(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import EuroBertConfig, EuroBertModel

    # EuroBERT/EuroBERT-210m: Llama-3's byte-level BPE, <|begin_of_text|> text <|end_of_text|>, pad = end
    vocab, merges = _byte_bpe(corpus, ["<|begin_of_text|>", "<|end_of_text|>", "<|mask|>"])
    bos, eos = vocab["<|begin_of_text|>"], vocab["<|end_of_text|>"]
    tokenizer = _templated_bpe(
        vocab,
        merges,
        "<|begin_of_text|> $A <|end_of_text|>",
        ["input_ids", "attention_mask"],
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        mask_token="<|mask|>",
    )
    config = EuroBertConfig(
        vocab_size=len(vocab),
        num_key_value_heads=HEADS,
        pad_token_id=eos,
        bos_token_id=bos,
        eos_token_id=eos,
        mask_token_id=vocab["<|mask|>"],
        **_small(),
    )
    _save(out, EuroBertModel(config), tokenizer)


@dataclass(frozen=True)
class Arch:
    """One architecture: how its tiny model is built and what bertflow should make of it."""

    name: str
    model_type: str
    tokenizer: str  # what its tokenizer is, as the real checkpoints have it
    build: Callable[[Path, list[str], Path], None]
    pad: int | str | None  # the pad id, or the pad token where its id is wherever the vocabulary put it
    fused: bool = False  # runs on the fused CPU forward (`bertflow.model.fused`)


ENCODERS = [
    Arch("bert", "bert", "WordPiece", build_bert, 0, fused=True),
    Arch("roberta", "roberta", "byte-level BPE", build_roberta, 1, fused=True),
    Arch("xlm-roberta", "xlm-roberta", "SentencePiece Unigram", build_xlm_roberta, 1, fused=True),
    Arch("camembert", "camembert", "SentencePiece Unigram", build_camembert, 1, fused=True),
    Arch("distilbert", "distilbert", "WordPiece", build_distilbert, 0),
    Arch("electra", "electra", "WordPiece", build_electra, 0),
    Arch("mpnet", "mpnet", "WordPiece, <s> </s> specials", build_mpnet, 1),
    Arch("albert", "albert", "SentencePiece Unigram", build_albert, 0),
    Arch("deberta-v2", "deberta-v2", "SentencePiece Unigram", build_deberta_v2, 0),
    Arch("modernbert", "modernbert", "byte-level BPE", build_modernbert, "[PAD]"),  # past the text tokens
    Arch("gte", "gte", "SentencePiece Unigram", build_gte, 1),
    Arch("nomic-bert", "nomic_bert", "WordPiece", build_nomic_bert, 0),
    Arch("jina-embeddings-v3", "jina_embeddings_v3", "SentencePiece Unigram", build_jina_embeddings_v3, 1),
    Arch("eurobert", "eurobert", "byte-level BPE", build_eurobert, "<|end_of_text|>"),
]


@pytest.fixture(scope="module")
def corpus(sample_texts) -> list[str]:
    """What the small tokenizers are trained on: a few hundred docstrings."""
    return sample_texts[::6][:400]


@pytest.fixture(scope="module")
def texts(sample_texts) -> list[str]:
    """40 texts: the edge cases and docstrings of every length, short to far over 64 tokens."""
    by_length = sorted(sample_texts[1::6], key=len)
    picks = [by_length[round(q * (len(by_length) - 1))] for q in np.linspace(0, 1, 40 - len(EDGE_TEXTS))]
    return [*EDGE_TEXTS, *picks]


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, bundled_model) -> Callable[[Arch], Path]:
    """The model directory of an architecture, built on first use."""
    from transformers import CONFIG_MAPPING

    cache: dict[str, Path] = {}

    def get(arch: Arch) -> Path:
        if arch.model_type not in CONFIG_MAPPING:
            pytest.skip(f"the installed transformers has no {arch.model_type}")
        if arch.name not in cache:
            torch.manual_seed(0)
            out = tmp_path_factory.mktemp(arch.name)
            arch.build(out, corpus, bundled_model)
            cache[arch.name] = out
        return cache[arch.name]

    return get


@dataclass(frozen=True)
class Reference:
    """Plain transformers, each text alone: token ids, CLS, mean and last token's state per text."""

    ids: list[list[int]]
    truncated: list[bool]
    cls: np.ndarray  # (N, H)
    mean: np.ndarray  # (N, H)
    last: np.ndarray  # (N, H)
    pad_token: str | None
    pad_token_id: int | None


def transformers_reference(path: Path, texts: list[str]) -> Reference:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.is_fast and (path / "tokenizer.json").is_file()
    model = AutoModel.from_pretrained(str(path)).eval()  # transformers' default attention (SDPA)
    ids, truncated, cls, mean, last = [], [], [], [], []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            ids.append(enc["input_ids"][0].tolist())
            truncated.append(len(tokenizer(text)["input_ids"]) > MAX_LENGTH)
            if not ids[-1]:  # GPT-2 adds no special tokens: "" has none, and bertflow's vector is zeros
                for vectors in (cls, mean, last):
                    vectors.append(np.zeros(model.config.hidden_size, np.float32))
                continue
            h = model(**enc).last_hidden_state[0].float()  # (T, H): one text, no padding
            cls.append(h[0].numpy())
            mean.append(h.mean(0).numpy())
            last.append(h[-1].numpy())
    pad = tokenizer.pad_token
    return Reference(ids, truncated, np.stack(cls), np.stack(mean), np.stack(last), pad, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def reference(texts) -> Callable[[Path], Reference]:
    cache: dict[Path, Reference] = {}

    def get(path: Path) -> Reference:
        if path not in cache:
            cache[path] = transformers_reference(path, texts)
        return cache[path]

    return get


def bertflow_vectors(
    path: Path, texts: list[str], pooling: tuple[str, ...], batch_tokens: int | None = None
) -> np.ndarray:
    """bertflow's own path: resolve, the process's Encoder, and a shard's tokenize and embed steps."""
    resolved = resolve_config(
        EmbedConfig(
            model=str(path),
            pooling=pooling,
            max_length=MAX_LENGTH,
            normalize=False,
            device="cpu",
            batch_tokens=batch_tokens,
        )
    )
    encoder = encoder_for(resolved)
    text = steps.ShardText(pl.DataFrame({"id": list(range(len(texts))), "text": texts}), [])
    vectors = steps.embed(encoder, steps.tokenize(encoder, text, resolved), resolved)
    assert isinstance(vectors, np.ndarray)
    return vectors


@pytest.fixture(scope="module", params=ENCODERS, ids=lambda a: a.name)
def arch(request) -> Arch:
    return request.param


@pytest.fixture(scope="module")
def model_dir(arch, built) -> Path:
    return built(arch)


def loaded(path: Path):
    """The Encoder bertflow runs for this model directory (model loaded once per process)."""
    return encoder_for(resolve_config(EmbedConfig(model=str(path), max_length=MAX_LENGTH, device="cpu")))


def test_tokenizer_is_the_models_own_with_its_pad_id(arch, model_dir, reference, texts):
    ref = reference(model_dir)
    assert (ref.pad_token_id if isinstance(arch.pad, int) else ref.pad_token) == arch.pad
    # bertflow pads with the tokenizer's pad id; the model (RoBERTa's position ids) reads its config's
    assert json.loads((model_dir / "config.json").read_text()).get("pad_token_id") == ref.pad_token_id
    encoder = loaded(model_dir)
    assert encoder.pad_id == ref.pad_token_id
    tok = encoder.tokenizer.tokenize(texts)
    assert tok.ids == ref.ids  # same special tokens, same truncation at 64
    assert tok.truncated.tolist() == ref.truncated and sum(ref.truncated) >= 10
    assert int(tok.n_tokens.min()) <= 3


@pytest.mark.parametrize("batch_tokens", [None, 8192], ids=["token-budget-batches", "one-padded-batch"])
def test_cls_and_mean_equal_transformers(arch, model_dir, reference, texts, batch_tokens):
    ref = reference(model_dir)
    vectors = bertflow_vectors(model_dir, texts, ("cls", "mean"), batch_tokens)
    hidden = ref.cls.shape[1]
    assert vectors.shape == (len(texts), 2 * hidden)
    np.testing.assert_allclose(vectors[:, :hidden], ref.cls, rtol=0, atol=TOL)
    np.testing.assert_allclose(vectors[:, hidden:], ref.mean, rtol=0, atol=TOL)


def test_bert_family_runs_fused_the_rest_on_transformers_sdpa(arch, model_dir):
    encoder = loaded(model_dir)
    if torch.backends.mkldnn.is_available():  # without oneDNN nothing runs fused
        assert (encoder._fused is not None) == arch.fused
    # transformers' forward with its default attention: SDPA wherever the model has it (not MPNet, DeBERTa-v2)
    sdpa = type(encoder.model)._supports_sdpa
    assert encoder.model.config._attn_implementation == ("sdpa" if sdpa else "eager")


def test_length_limit_is_the_models_positions(arch, model_dir):
    # every tiny model has room for exactly 64 tokens (the padding-offset ones in 66 positions)
    assert resolve_config(EmbedConfig(model=str(model_dir), device="cpu")).max_length == MAX_LENGTH
    with pytest.raises(InputError, match=f"exceeds the model's limit of {MAX_LENGTH} tokens"):
        resolve_config(EmbedConfig(model=str(model_dir), max_length=MAX_LENGTH + 1, device="cpu"))


# Decoder-only and encoder-decoder models: AutoModel loads them too, but only a decoder-only one's
# last token has read the whole text; anything else is refused at resolve time, in one line.
def build_qwen3(out: Path, corpus: list[str], bundled: Path) -> None:
    from tokenizers import processors
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    # Qwen3-Embedding: byte-level BPE, <|endoftext|> (pad as well) after each text, last-token pooling
    vocab, merges = _byte_bpe(corpus, ["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    eos = vocab["<|endoftext|>"]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>", special_tokens=[("<|endoftext|>", eos)]
    )
    config = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=4 * MAX_LENGTH,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    _save(out, Qwen3Model(config), tokenizer)


def build_gpt2(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import GPT2Config, GPT2Model, GPT2Tokenizer

    vocab, merges = _byte_bpe(corpus, ["<|endoftext|>"])  # no pad token, as gpt2
    config = GPT2Config(
        vocab_size=len(vocab),
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=4 * MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=0,
    )
    _save(out, GPT2Model(config), GPT2Tokenizer(vocab=vocab, merges=merges))


def build_t5(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import T5Config, T5Model, T5Tokenizer

    vocab = _unigram(corpus, ["<pad>", "</s>", "<unk>"], "<unk>")
    config = T5Config(
        vocab_size=len(vocab), d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=2 * HIDDEN, num_layers=LAYERS, num_heads=HEADS
    )
    _save(out, T5Model(config), T5Tokenizer(vocab=vocab, extra_ids=0))


def build_bart(out: Path, corpus: list[str], bundled: Path) -> None:
    from transformers import BartConfig, BartModel, BartTokenizer

    vocab, merges = _byte_bpe(corpus, ["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    config = BartConfig(
        vocab_size=len(vocab),
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=2 * HIDDEN,
        decoder_ffn_dim=2 * HIDDEN,
        max_position_embeddings=4 * MAX_LENGTH,
    )
    _save(out, BartModel(config), BartTokenizer(vocab=vocab, merges=merges))


DECODERS = [
    Arch("qwen3", "qwen3", "byte-level BPE, <|endoftext|> appended", build_qwen3, "<|endoftext|>"),
    Arch("gpt2", "gpt2", "byte-level BPE, no pad token", build_gpt2, None),
]
ENCODER_DECODERS = [
    Arch("t5", "t5", "SentencePiece Unigram", build_t5, 0),
    Arch("bart", "bart", "byte-level BPE", build_bart, 1),
]


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda a: a.name)
def test_decoder_only_is_refused_for_cls_and_mean(built, decoder):
    path = built(decoder)
    for pooling in [("cls",), ("mean",), ("cls", "mean"), ("last_token", "mean")]:
        with pytest.raises(ModelError) as e:
            resolve_config(EmbedConfig(model=str(path), pooling=pooling, device="cpu"))
        message = str(e.value)
        assert one_line(e.value) == message and "\n" not in message
        assert decoder.model_type in message and "decoder-only" in message and "--pooling last_token" in message
    # its default is the last token
    assert resolve_config(EmbedConfig(model=str(path), device="cpu")).pooling == ("last_token",)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda a: a.name)
def test_decoder_only_last_token_equals_transformers(built, reference, texts, decoder):
    path = built(decoder)
    ref = reference(path)
    for batch_tokens in (None, 8192):
        vectors = bertflow_vectors(path, texts, ("last_token",), batch_tokens)
        np.testing.assert_allclose(vectors, ref.last, rtol=0, atol=TOL)


@pytest.mark.parametrize("model", ENCODER_DECODERS, ids=lambda a: a.name)
@pytest.mark.parametrize("pooling", [("cls",), ("mean",), ("last_token",)], ids=lambda p: p[0])
def test_encoder_decoder_is_refused_in_one_line(built, model, pooling):
    path = built(model)
    with pytest.raises(ModelError) as e:
        resolve_config(EmbedConfig(model=str(path), pooling=pooling, device="cpu"))
    message = str(e.value)
    assert one_line(e.value) == message and "\n" not in message
    assert model.model_type in message and "encoder-decoder" in message


@pytest.mark.slow  # a whole `bertflow embed` run, on a Prefect server
def test_roberta_through_the_cli_writes_the_transformers_vectors(built, reference, texts, tmp_path, prefect_server):
    path = built(next(a for a in ENCODERS if a.name == "roberta"))
    ref = reference(path)
    src = write_rows(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    dest = tmp_path / "out"
    env = {"PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = run_cli(
        "embed",
        str(src),
        str(dest),
        "--model",
        str(path),
        "--pooling",
        "mean",
        "--no-normalize",
        "--max-length",
        str(MAX_LENGTH),
        "--shard-rows",
        "16",
        "--device",
        "cpu",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    parts = pl.read_parquet(dest / "part-*.parquet").sort("id")
    assert parts["id"].to_list() == list(range(len(texts)))
    np.testing.assert_allclose(np.stack(parts["embedding"].to_list()), ref.mean, rtol=0, atol=TOL)
    assert parts["truncated"].to_list() == ref.truncated
