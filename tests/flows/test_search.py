"""bertflow search: the query goes through DEST's own recorded settings; near duplicates come first."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import s3fs
import torch

from bertflow.config import EmbedConfig, PublishConfig
from bertflow.errors import InputError
from bertflow.flows.embed import embed_dataset
from bertflow.flows.fit_reduction import fit_reduction
from bertflow.model import fitted
from bertflow.model.heads import HeadConfig, LstmHead, head_to_bytes
from bertflow.model.loading import weights_sha256
from bertflow.pipeline.publish import publish
from bertflow.pipeline.search import embed_query, query_config, read_searchable, search
from bertflow.pipeline.table_search import search_table
from tests.conftest import build_tiny_bert, run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def corpus(sample_texts, n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": t, "title": t.split("\n")[0][:60]} for i, t in enumerate(sample_texts[:n])]


def stored(dest) -> pl.DataFrame:
    return pl.read_parquet(f"{dest}/part-*.parquet")


def brute_force(table: pl.DataFrame, query: np.ndarray, k: int) -> list[str]:
    e = table["embedding"].to_numpy()
    scores = e @ query / (np.linalg.norm(e, axis=1) * np.linalg.norm(query))
    return [table["id"][int(i)] for i in np.argsort(-scores, kind="stable")[:k]]


def near_duplicate(text: str) -> str:
    """The same docstring as someone might paste it: lower case, one word swapped, the tail cut."""
    words = text.lower().split()
    words[min(3, len(words) - 1)] = "the"
    return " ".join(words[: max(8, len(words) * 3 // 4)])


def test_a_near_duplicate_ranks_first_with_the_bundled_model(tmp_path, sample_texts):
    rows = corpus(sample_texts, 160)
    source = write_rows(tmp_path / "in.jsonl", rows)
    embed_dataset(str(source), str(tmp_path / "dest"), EmbedConfig(keep=("title",), shard_rows=50))  # 4 parts
    table = stored(tmp_path / "dest")
    config = query_config(read_searchable(str(tmp_path / "dest")))
    for i in (7, 64, 151):
        query = near_duplicate(rows[i]["text"])
        hits = search(str(tmp_path / "dest"), query, k=5)
        assert hits[0].id == f"doc-{i}", (query, hits)
        assert hits[0].score > hits[1].score
        assert hits[0].snippet == " ".join(rows[i]["title"].split())  # the kept string column, on one line
        assert [h.id for h in hits] == brute_force(table, embed_query(query, config), 5)  # merged across parts
    result = run_cli("search", str(tmp_path / "dest"), near_duplicate(rows[64]["text"]), "-k", "3")
    assert result.returncode == 0, result.stderr
    first = next(line for line in result.stdout.splitlines() if "│ 1 " in line)
    assert "doc-64" in first


def test_a_cls_dest_is_searched_with_cls_pooling(tmp_path, tiny_bert, sample_texts):
    rows = corpus(sample_texts, 60)
    source = write_rows(tmp_path / "in.jsonl", rows)
    embed_dataset(str(source), str(tmp_path / "cls"), EmbedConfig(model=str(tiny_bert), pooling="cls", max_length=32))
    embed_dataset(str(source), str(tmp_path / "mean"), EmbedConfig(model=str(tiny_bert), pooling="mean", max_length=32))
    config = query_config(read_searchable(str(tmp_path / "cls")))
    assert (config.pooling, config.max_length, config.normalize) == (("cls",), 32, False)
    cls_rows, mean_rows = stored(tmp_path / "cls"), stored(tmp_path / "mean")
    query = embed_query(rows[20]["text"], config)
    np.testing.assert_allclose(query, cls_rows["embedding"][20].to_numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(query, mean_rows["embedding"][20].to_numpy(), atol=1e-2)
    hits = search(str(tmp_path / "cls"), rows[20]["text"], k=3)
    assert hits[0].id == "doc-20" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_head_and_reduction_dests_are_queried_through_both(tmp_path, tiny_bert, sample_texts):
    torch.manual_seed(0)
    head = LstmHead(32, 6, True)
    config = HeadConfig(
        input_size=32,
        hidden=6,
        bidirectional=True,
        model=str(tiny_bert),
        model_sha256=weights_sha256(tiny_bert),
        layers=(-1,),
        layer_mode="mean",
        max_length=32,
        labels=("a", "b"),
        seed=0,
    )
    fitted.save_head(str(tmp_path / "head"), *head_to_bytes(head, config), b"{}")
    rows = corpus(sample_texts, 80)
    source = str(write_rows(tmp_path / "in.jsonl", rows))
    embed = EmbedConfig(
        model=str(tiny_bert), pooling="mean_lstm", pooler=str(tmp_path / "head"), max_length=32, normalize=True
    )
    embed_dataset(source, str(tmp_path / "lstm"), embed)
    fit_reduction(str(tmp_path / "lstm"), str(tmp_path / "red"), "whiten", 20)
    embed_dataset(source, str(tmp_path / "both"), embed.model_copy(update={"reduction": str(tmp_path / "red")}))
    manifest = read_searchable(str(tmp_path / "both"))
    assert manifest.config.pooler.uri == str(tmp_path / "head") and manifest.config.reduction.uri == str(
        tmp_path / "red"
    )
    query = embed_query(rows[33]["text"], query_config(manifest))
    assert query.shape == (20,)
    np.testing.assert_allclose(query, stored(tmp_path / "both")["embedding"][33].to_numpy(), rtol=0, atol=1e-5)
    assert search(str(tmp_path / "both"), rows[33]["text"], k=1)[0].id == "doc-33"


def test_a_dest_whose_model_changed_is_refused(tmp_path, tiny_bert, bundled_model, sample_texts):
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    source = write_rows(tmp_path / "in.jsonl", corpus(sample_texts, 10))
    embed_dataset(str(source), str(tmp_path / "dest"), EmbedConfig(model=str(model), max_length=32))
    publish(str(tmp_path / "dest"), PublishConfig(db=str(tmp_path / "db")))
    build_tiny_bert(tmp_path / "model", bundled_model, seed=1)  # other weights under the same path
    changed = "the vectors were embedded with model_sha256 '[0-9a-f]+', but .* gives '[0-9a-f]+' here"
    with pytest.raises(InputError, match=changed):
        search(str(tmp_path / "dest"), "anything")
    with pytest.raises(InputError, match=changed):  # a published table records the same, and is refused alike
        search_table(str(tmp_path / "db"), "embeddings", "anything")
    with pytest.raises(InputError, match="has no _manifest.json"):
        search(str(tmp_path / "nowhere"), "anything")


def test_search_an_s3_dest(s3, tiny_bert, sample_texts, tmp_path):
    fs = s3fs.S3FileSystem()
    fs.mkdir("emb")
    rows = corpus(sample_texts, 90)
    source = write_rows(tmp_path / "in.jsonl", rows)
    embed_dataset(
        str(source), "s3://emb/day/", EmbedConfig(model=str(tiny_bert), max_length=32, shard_rows=25, keep=("title",))
    )
    assert json.loads(fs.cat_file("emb/day/_manifest.json"))["planned_shards"] == 4
    hits = search("s3://emb/day/", rows[70]["text"], k=4)
    assert hits[0].id == "doc-70" and hits[0].snippet == " ".join(rows[70]["title"].split())
    table = pl.concat([pl.read_parquet(fs.open(p, "rb")) for p in sorted(fs.glob("emb/day/part-*.parquet"))])
    query = embed_query(rows[70]["text"], query_config(read_searchable("s3://emb/day/")))
    assert [h.id for h in hits] == brute_force(table, query, 4)


def test_a_chunked_dest_is_searched_window_by_window(tmp_path, tiny_bert, sample_texts):
    """Long texts cut into windows: the hit is the window the query comes from, with its span."""
    rows = [{"id": f"doc-{i}", "text": " ".join(sample_texts[3 * i : 3 * i + 3]), "title": f"t{i}"} for i in range(20)]
    source = write_rows(tmp_path / "in.jsonl", rows)
    embed_dataset(
        str(source),
        str(tmp_path / "dest"),
        EmbedConfig(model=str(tiny_bert), max_length=64, long_text="chunk", chunk_tokens=32, stride=4, keep=("title",)),
    )
    table = stored(tmp_path / "dest")
    assert table.height > 2 * len(rows)  # most texts span several windows
    target = table.filter((pl.col("id") == "doc-9") & (pl.col("chunk_index") == 2)).row(0, named=True)
    window = rows[9]["text"][target["char_start"] : target["char_end"]]
    hits = search(str(tmp_path / "dest"), window, k=3)
    assert (hits[0].id, hits[0].chunk) == ("doc-9", (2, target["char_start"], target["char_end"]))
    assert hits[0].snippet == "t9"
    result = run_cli("search", str(tmp_path / "dest"), window, "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "chunk" in result.stdout and f"{target['char_start']}-{target['char_end']}" in result.stdout


def test_a_dest_with_several_poolings_is_searched_in_the_column_asked_for(tmp_path, tiny_bert, sample_texts):
    rows = corpus(sample_texts, 40)
    source = write_rows(tmp_path / "in.jsonl", rows)
    embed_dataset(
        str(source), str(tmp_path / "both"), EmbedConfig(model=str(tiny_bert), pooling="mean,cls", max_length=32)
    )
    embed_dataset(str(source), str(tmp_path / "cls"), EmbedConfig(model=str(tiny_bert), pooling="cls", max_length=32))
    both, cls_only = stored(tmp_path / "both"), stored(tmp_path / "cls")
    columns = [c for c in both.columns if c.startswith("embedding")]
    assert len(columns) == 2
    cls_column = next(c for c in columns if "cls" in c)
    query = rows[12]["text"]
    # The cls column of the two-pooling DEST ranks exactly as the cls-only DEST does.
    assert [h.id for h in search(str(tmp_path / "both"), query, k=5, column=cls_column)] == [
        h.id for h in search(str(tmp_path / "cls"), query, k=5)
    ]
    np.testing.assert_allclose(both[cls_column].to_numpy(), cls_only["embedding"].to_numpy(), atol=1e-5)
    assert search(str(tmp_path / "both"), query, k=1)[0].id == "doc-12"  # default: the first column
    result = run_cli("search", str(tmp_path / "both"), query, "--column", "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--column nope: the vector columns are {', '.join(columns)}" in " ".join(result.stderr.split())
    with pytest.raises(InputError, match="has several vector columns .*a reduction applies to one pooling"):
        fit_reduction(str(tmp_path / "both"), str(tmp_path / "red"), "pca", 4)
    assert not (tmp_path / "red").exists()


def test_token_level_dests_are_refused_by_search_and_fit_reduction(tmp_path, tiny_bert, sample_texts):
    source = write_rows(tmp_path / "in.jsonl", corpus(sample_texts, 10))
    embed_dataset(
        str(source), str(tmp_path / "tokens"), EmbedConfig(model=str(tiny_bert), pooling="none", max_length=32)
    )
    for args in (
        ("search", str(tmp_path / "tokens"), "anything"),
        ("fit-reduction", str(tmp_path / "tokens"), str(tmp_path / "red"), "--method", "pca", "--dim", "4"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "--pooling none" in result.stderr
    assert not (tmp_path / "red").exists()
