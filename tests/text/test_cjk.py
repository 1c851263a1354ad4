"""Chinese and other scripts: token offsets and chunk char spans on CJK text and emoji, with a tiny
bert-base-chinese-style model built here (WordPiece vocab of single CJK characters, some emoji, ## pieces).

Every span is checked against the original Python string: offsets are code point indices, never bytes or
UTF-16 units, so a text where emoji (4 bytes, 2 UTF-16 units each) precede CJK tells them apart.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from bertflow.config import CHUNK_COLUMNS, TOKEN_COLUMNS
from bertflow.text.tokenize import TextTokenizer
from tests.conftest import run_cli, write_rows

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KNOWN_EMOJI = ["😀", "👍"]  # in the vocab; 🙂, 👩, 💻 and the regional indicators 🇨 🇳 are not
UNKNOWN_CJK = "龘𠀀"  # Chinese characters left out of the vocab: each is one [UNK] of one code point
OTHER_SCRIPTS = ["に", "き", "##ま", "##す", "한", "##국", "##어"]  # kana and hangul in pieces
WORDS = ["bert", "2018", "cafe", "token", "##s"]

TEXTS = {
    "chinese": "自然语言处理很有趣。",
    "mixed": "BERT模型在2018年发布",
    "emoji": "我爱😀，但不认识🙂！",
    "zwj and flag first": "👩\u200d💻写代码🇨🇳中国",
    "combining and full-width": "café和cafe\u0301，全角标点！（测试）「引号」",
    "other scripts": "東京に行きます。한국어 tokens",
    "rare characters": "𠀀与龘\u3000好",
    "spaces": "  前后 有空格\t",
    "variation selector and skin tone": "我❤\ufe0f你👍🏽",
}

LONG = (
    "自然语言处理是人工智能的一个重要方向😀。2018年，谷歌发布了BERT模型🇨🇳，它在许多任务上都取得了很好的成绩！"
    "研究人员👩\u200d💻用大量的中文文本训练模型，让机器学会理解句子的意思🙂。今天，我们可以用它来做文本分类、"
    "情感分析和问答系统👍。\n\n在中文里，每个汉字都是一个词元；表情符号😀也会被切开。比如“我爱北京天安门🇨🇳”这句话，"
    "有七个汉字和一面旗帜。𠀀是一个很少见的字，模型可能不认识它🙂🙂。最后，我们把长文本切成许多小窗口，"
    "每个窗口都有自己的字符范围😀"
)

DOCS = [
    {"id": "a", "text": "今天天气很好😀，我们去公园散步吧！公园里有很多花🌸，还有小朋友在玩耍👍。"},
    {"id": "b", "text": "👩\u200d💻程序员每天写代码，用BERT模型处理中文文本🇨🇳，效果不错🙂。"},
    {"id": "c", "text": "𠀀是一个罕见的汉字。这段文字很短，但是也要被切成几个窗口😀😀，每个窗口都有字符范围。"},
]


def is_cjk(ch: str) -> bool:
    """BERT's "Chinese character" ranges (the CJK Unified Ideographs blocks), as handle_chinese_chars uses."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def bert_normal(s: str) -> str:
    """What BertNormalizer(lowercase=True, strip_accents=None) makes of a span: lowercased, accents stripped,
    control and format characters (ZWJ) dropped."""
    s = unicodedata.normalize("NFD", s.lower())
    return "".join(c for c in s if unicodedata.category(c) not in ("Mn", "Cc", "Cf"))


def build_vocab() -> list[str]:
    chars = "".join([*TEXTS.values(), LONG, *(d["text"] for d in DOCS)])
    cjk = [c for c in chars if is_cjk(c) and c not in UNKNOWN_CJK]
    cjk += [chr(cp) for cp in range(0x4E00, 0x4E00 + 300)]  # others, as a real vocab has thousands
    punct = [c for c in chars if unicodedata.category(c).startswith("P")]
    ascii_ = [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # no capitals, as bert-base-chinese
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = [*SPECIAL, *cjk, *punct, *ascii_, *pieces, *WORDS, *OTHER_SCRIPTS, *KNOWN_EMOJI]
    return list(dict.fromkeys(vocab))


@pytest.fixture(scope="module")
def chinese_bert(tmp_path_factory) -> Path:
    """A bert-base-chinese-style model directory: vocab.txt, tokenizer.json and a tiny random BertModel."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-chinese-bert")
    vocab = build_vocab()
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    ids = {t: i for i, t in enumerate(vocab)}
    backend = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    BertTokenizerFast(  # transformers 5: an alias of BertTokenizer, backed by `tokenizers`
        tokenizer_object=backend,
        do_lower_case=True,
        tokenize_chinese_chars=True,
        model_max_length=512,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    ).save_pretrained(out)
    assert (out / "tokenizer.json").is_file()

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    assert (out / "model.safetensors").is_file()
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(chinese_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chinese_bert, use_fast=True)
    assert tokenizer.is_fast
    return tokenizer


@pytest.fixture(scope="module")
def vocab(chinese_bert) -> dict[str, int]:
    lines = (chinese_bert / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {t: i for i, t in enumerate(lines)}


def check_token_spans(text: str, tokens: list[str], offsets: list[tuple[int, int]], special: list[bool], vocab) -> None:
    """Each token's span slices `text` (Python str indices) to that token; spans are in order, disjoint, and
    what lies between them is whitespace or characters the normalizer drops; every CJK character is a token."""
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert special == [t in ("[CLS]", "[SEP]") for t in tokens]
    at = 0
    between = []
    for k, (token, (start, end), is_special) in enumerate(zip(tokens, offsets, special)):
        if is_special:
            assert (start, end) == (0, 0)
            continue
        piece = text[start:end]
        assert 0 <= at <= start < end <= len(text), (text, token, start, end)
        between.append(text[at:start])
        if token == "[UNK]":  # the original characters it stands for: no space, nothing the vocab knows
            assert piece.strip() == piece and bert_normal(piece) not in vocab, (text, piece)
        elif token.startswith("##"):  # a piece of the word before it, with no gap
            assert start == offsets[k - 1][1] and bert_normal(piece) == token[2:], (text, token, piece)
        else:
            assert bert_normal(piece) == token, (text, token, piece)
        at = end
    between.append(text[at:])
    assert all(bert_normal(gap).strip() == "" for gap in between), (text, between)
    spans = {tuple(o) for o, s in zip(offsets, special) if not s}
    for i, ch in enumerate(text):
        if is_cjk(ch):
            assert (i, i + 1) in spans, f"{ch!r} at {i} in {text!r} is not a token of its own"


def test_token_offsets_slice_the_original_text_in_code_points(hf_tokenizer, vocab):
    texts = list(TEXTS.values())
    out = TextTokenizer(hf_tokenizer.backend_tokenizer, 512).tokenize_tokens(texts)

    for i, text in enumerate(texts):
        check_token_spans(text, out.tokens[i], out.offsets[i], out.special[i], vocab)
        assert out.tok.ids[i] == [vocab[t] for t in out.tokens[i]]
        assert out.tok.n_tokens[i] == len(out.tokens[i])
    assert not out.tok.truncated.any()
    assert out.tok.ids == TextTokenizer(hf_tokenizer.backend_tokenizer, 512).tokenize(texts).ids

    by_name = {name: (out.tokens[i], out.offsets[i]) for i, name in enumerate(TEXTS)}
    assert by_name["chinese"] == (
        ["[CLS]", *"自然语言处理很有趣。", "[SEP]"],
        [(0, 0), *((i, i + 1) for i in range(10)), (0, 0)],
    )
    assert by_name["mixed"] == (
        ["[CLS]", "bert", "模", "型", "在", "2018", "年", "发", "布", "[SEP]"],
        [(0, 0), (0, 4), (4, 5), (5, 6), (6, 7), (7, 11), (11, 12), (12, 13), (13, 14), (0, 0)],
    )
    # 😀 is in the vocab, 🙂 is not: one [UNK] of exactly one code point
    assert by_name["emoji"] == (
        ["[CLS]", "我", "爱", "😀", "，", "但", "不", "认", "识", "[UNK]", "！", "[SEP]"],
        [(0, 0), *((i, i + 1) for i in range(10)), (0, 0)],
    )
    # 👩 ZWJ 💻 is 3 code points (11 UTF-8 bytes, 5 UTF-16 units), 🇨🇳 two: byte or UTF-16 offsets would
    # put 写 at 11 or 5 and 中 at 27 or 12
    text = TEXTS["zwj and flag first"]
    tokens, offsets = by_name["zwj and flag first"]
    assert tokens == ["[CLS]", "[UNK]", "写", "代", "码", "[UNK]", "中", "国", "[SEP]"]
    assert offsets == [(0, 0), (0, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 9), (9, 10), (0, 0)]
    assert [text[s:e] for s, e in offsets[1:-1]] == ["👩\u200d💻", "写", "代", "码", "🇨🇳", "中", "国"]
    assert len(text[:3].encode()) == 11 and len(text[:3].encode("utf-16-le")) // 2 == 5
    # accents stripped (precomposed é and e + U+0301 alike), full-width punctuation split off
    tokens, offsets = by_name["combining and full-width"]
    text = TEXTS["combining and full-width"]
    assert tokens[1:4] == ["cafe", "和", "cafe"] and [text[s:e] for s, e in offsets[1:3]] == ["café", "和"]
    assert tokens[4:] == ["，", "全", "角", "标", "点", "！", "（", "测", "试", "）", "「", "引", "号", "」", "[SEP]"]
    # kanji one by one; a kana word in ## pieces; ASCII lowercased into pieces. Hangul is one [UNK] of three
    # code points although 한 ##국 ##어 are in the vocab: stripping accents (NFD) decomposes its syllables into jamo
    tokens, offsets = by_name["other scripts"]
    text = TEXTS["other scripts"]
    assert tokens == ["[CLS]", *"東京に行", "き", "##ま", "##す", "。", "[UNK]", "token", "##s", "[SEP]"]
    assert [text[s:e] for s, e in offsets[1:-1]] == [*"東京に行きます。", "한국어", "token", "s"]
    # U+FE0F (a nonspacing mark, stripped with the accents) lies outside every span: text[1:2] is ❤ without it.
    # 👍 is in the vocab but 👍🏽 is one word the vocab lacks: a [UNK] over both code points
    tokens, offsets = by_name["variation selector and skin tone"]
    assert tokens == ["[CLS]", "我", "[UNK]", "你", "[UNK]", "[SEP]"]
    assert offsets[1:-1] == [(0, 1), (1, 2), (3, 4), (4, 6)]
    # a CJK character beyond the BMP (𠀀, U+20000) and one missing from the vocab: one [UNK] each
    tokens, offsets = by_name["rare characters"]
    assert tokens == ["[CLS]", "[UNK]", "与", "[UNK]", "好", "[SEP]"]
    assert offsets[1:-1] == [(0, 1), (1, 2), (2, 3), (4, 5)]


def test_truncated_cjk_rows_keep_the_leading_spans(hf_tokenizer, vocab):
    texts = [TEXTS["zwj and flag first"], LONG]
    full = TextTokenizer(hf_tokenizer.backend_tokenizer, 512).tokenize_tokens(texts)
    cut = TextTokenizer(hf_tokenizer.backend_tokenizer, 6).tokenize_tokens(texts)
    assert cut.tok.truncated.tolist() == [True, True]
    for i, text in enumerate(texts):
        assert cut.tokens[i] == [*full.tokens[i][:5], "[SEP]"]
        assert cut.offsets[i] == [*full.offsets[i][:5], (0, 0)]
        assert [text[s:e] for s, e in cut.offsets[i][1:-1]] == [text[s:e] for s, e in full.offsets[i][1:5]]


@pytest.mark.parametrize(("chunk_tokens", "stride"), [(16, 4), (32, 8), (10, 0), (7, 4)])
def test_chunk_char_spans_cover_long_chinese_text_on_token_boundaries(hf_tokenizer, chunk_tokens, stride):
    backend = hf_tokenizer.backend_tokenizer
    texts = [LONG, TEXTS["zwj and flag first"], "😀"]
    chunks = TextTokenizer(backend, 512).tokenize_chunks(texts, chunk_tokens, stride)
    content = chunk_tokens - 2  # [CLS] ... [SEP]

    for d, text in enumerate(texts):
        whole = backend.encode(text, add_special_tokens=False)
        starts = {s: k for k, (s, _) in enumerate(whole.offsets)}
        ends = {e: k for k, (_, e) in enumerate(whole.offsets)}
        rows = [r for r in range(len(chunks.doc)) if chunks.doc[r] == d]
        assert chunks.chunk_index[rows].tolist() == list(range(len(rows)))
        windows = []  # (first token, last token) of each window, from its char span alone
        for r in rows:
            start, end = int(chunks.char_start[r]), int(chunks.char_end[r])
            piece = text[start:end]
            assert piece and piece.strip() == piece, (chunk_tokens, stride, start, end)
            assert start in starts and end in ends, "a window's span must start and end on token boundaries"
            first, last = starts[start], ends[end]
            ids = chunks.tok.ids[r]
            assert ids[0] == hf_tokenizer.cls_token_id and ids[-1] == hf_tokenizer.sep_token_id
            assert ids[1:-1] == whole.ids[first : last + 1]
            assert len(ids) <= chunk_tokens and chunks.tok.n_tokens[r] == len(ids)
            # the window's text, tokenized again, gives its ids back
            assert backend.encode(piece, add_special_tokens=False).ids == ids[1:-1], piece
            windows.append((first, last))
        assert windows[0][0] == 0 and windows[-1][1] == len(whole.ids) - 1  # nothing lost at either end
        assert int(chunks.char_start[rows[0]]) == whole.offsets[0][0]
        assert int(chunks.char_end[rows[-1]]) == whole.offsets[-1][1]
        for (r0, (f0, l0)), (r1, (f1, _)) in zip(zip(rows, windows), zip(rows[1:], windows[1:])):
            assert l0 - f0 + 1 == content  # every window but the last is full
            assert l0 - f1 + 1 == stride  # consecutive windows share exactly `stride` tokens ...
            end0, start1 = int(chunks.char_end[r0]), int(chunks.char_start[r1])
            if stride:  # ... and so exactly those tokens' characters
                assert text[start1:end0] == text[whole.offsets[f1][0] : whole.offsets[l0][1]]
                assert start1 == whole.offsets[l0 - stride + 1][0]
            else:  # no overlap: only what lies between two tokens separates the windows
                assert end0 <= start1 and bert_normal(text[end0:start1]).strip() == ""
        covered = set()
        for r in rows:
            covered.update(range(int(chunks.char_start[r]), int(chunks.char_end[r])))
        assert all(bert_normal(ch).strip() == "" for i, ch in enumerate(text) if i not in covered)

    assert len([d for d in chunks.doc if d == 0]) > 3  # the long text really is cut into several windows
    assert chunks.tok.ids[-1] == [hf_tokenizer.cls_token_id, hf_tokenizer.vocab["😀"], hf_tokenizer.sep_token_id]


@pytest.mark.slow  # two CLI runs (~20 s each); tests/text is otherwise the quick loop
def test_cli_chunk_and_token_outputs_slice_chinese_documents(tmp_path, chinese_bert, hf_tokenizer, vocab):
    src = write_rows(tmp_path / "docs.jsonl", DOCS)
    texts = {d["id"]: d["text"] for d in DOCS}
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home")}

    chunked = tmp_path / "chunked"
    result = run_cli(
        "embed", str(src), str(chunked), "--model", str(chinese_bert), "--long-text", "chunk",
        "--chunk-tokens", "16", "--stride", "4", "--pooling", "mean", "--device", "cpu",
        env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parts = pl.read_parquet(chunked / "part-*.parquet")
    assert parts.columns[: 1 + len(CHUNK_COLUMNS)] == ["id", *CHUNK_COLUMNS]
    expected = TextTokenizer(hf_tokenizer.backend_tokenizer, 512).tokenize_chunks(list(texts.values()), 16, 4)
    for d, (doc_id, text) in enumerate(texts.items()):
        rows = parts.filter(pl.col("id") == doc_id).sort("chunk_index")
        assert rows["chunk_index"].to_list() == list(range(rows.height)) and rows.height > 1
        starts, ends = rows["char_start"].to_list(), rows["char_end"].to_list()
        assert starts == expected.char_start[expected.doc == d].tolist()
        assert ends == expected.char_end[expected.doc == d].tolist()
        assert all(text[s:e] and text[s:e].strip() == text[s:e] for s, e in zip(starts, ends))
        assert starts == sorted(starts) and ends == sorted(ends)
        assert all(s1 < e0 for e0, s1 in zip(ends, starts[1:]))  # stride 4: windows overlap, no gap
        assert starts[0] == 0 and ends[-1] == len(text)  # each document starts and ends with a token
        assert rows["n_tokens"].max() <= 16 and not rows["truncated"].any()
    assert json.loads((chunked / "_manifest.json").read_text())["status"] == "complete"

    tokens_dest = tmp_path / "tokens"
    result = run_cli(
        "embed", str(src), str(tokens_dest), "--model", str(chinese_bert), "--pooling", "none", "--device", "cpu",
        env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parts = pl.read_parquet(tokens_dest / "part-*.parquet")
    assert set(TOKEN_COLUMNS) <= set(parts.columns)
    expected = TextTokenizer(hf_tokenizer.backend_tokenizer, 512).tokenize_tokens(list(texts.values()))
    assert sorted(parts["id"].to_list()) == list(texts)
    for d, (doc_id, text) in enumerate(texts.items()):
        row = parts.filter(pl.col("id") == doc_id).row(0, named=True)
        offsets = [tuple(o) for o in row["offsets"]]
        check_token_spans(text, row["tokens"], offsets, row["special"], vocab)
        assert row["tokens"] == expected.tokens[d] and offsets == expected.offsets[d]
        assert len(row["token_embeddings"]) == len(row["tokens"]) == row["n_tokens"]
