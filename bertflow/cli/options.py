"""The options of `bertflow embed` (and `--storage-option`, which every command that reads storage takes),
one annotated type each: the commands' signatures stay readable."""

from __future__ import annotations

from typing import Annotated

import typer

Source = Annotated[
    str, typer.Argument(help="File, directory or glob of .parquet/.jsonl/.ndjson/.csv/.txt; local or s3://")
]
Dest = Annotated[str, typer.Argument(help="Output directory (local or s3://): parts, _manifest.json, _rejects.parquet")]
Model = Annotated[
    str,
    typer.Option(
        help="Local Hugging Face model directory or Hub id (ORG/NAME: from the Hugging Face cache, else downloaded; safetensors only)"
    ),
]
Revision = Annotated[
    str | None,
    typer.Option(
        help="With a Hub id: the branch, tag or commit sha to load (default: main); the run records the commit"
    ),
]
Prompt = Annotated[
    str | None,
    typer.Option(
        help='Text put before every text, e.g. "passage: " for e5 models (default: the model\'s default prompt, if any)'
    ),
]
PromptName = Annotated[
    str | None, typer.Option(help="One of the model's named prompts (config_sentence_transformers.json), e.g. document")
]
Pooling = Annotated[
    str | None,
    typer.Option(
        help="cls, mean, max, mean_max, mean_sqrt_len, last_token, first_last_avg, several comma-separated (one pass, a column each), none (token-level), or mean_lstm with --pooler (default: the model's own)"
    ),
]
ExcludeSpecial = Annotated[bool, typer.Option(help="Leave special tokens ([CLS], [SEP]) out of mean and max pooling")]
LongText = Annotated[
    str, typer.Option(help="Texts longer than the model's limit: 'truncate' or 'chunk' (a row per token window)")
]
ChunkTokens = Annotated[
    int | None,
    typer.Option(help="Tokens per window with --long-text chunk, special tokens included (default: --max-length)"),
]
Stride = Annotated[int, typer.Option(help="Tokens shared by consecutive windows with --long-text chunk")]
Aggregate = Annotated[
    str,
    typer.Option(
        help="With --long-text chunk: also write one row per document under documents/: none, mean (token-weighted) or max"
    ),
]
Pooler = Annotated[str | None, typer.Option(help="Head trained by `bertflow train-pooler`, for --pooling mean_lstm")]
Reduction = Annotated[
    str | None, typer.Option(help="PCA/whitening fitted by `bertflow fit-reduction`, applied before writing")
]
TruncateDim = Annotated[
    int | None,
    typer.Option(
        help="Keep the first N dimensions of each vector (Matryoshka models), L2-normalized again when normalizing"
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        help="Store compact vectors: int8 or uint8 (4x smaller; per-dimension ranges calibrated on the run's first "
        "1000 rows), binary or ubinary (32x smaller; the sign bit, 8 dimensions per byte)"
    ),
]
QuantizeRanges = Annotated[
    str | None,
    typer.Option(
        help="With --quantize int8/uint8: use the ranges recorded by this earlier DEST (keeps a series of days comparable)"
    ),
]
Layers = Annotated[str, typer.Option(help="Layers to pool, negative indices: -1, or -4,-3,-2,-1")]
LayerMode = Annotated[str, typer.Option(help="Combine several layers by 'mean' or 'concat'")]
Normalize = Annotated[
    bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalize (default: the model's own)")
]
MaxLength = Annotated[int | None, typer.Option(help="Truncate at this many tokens (default: the model's limit)")]
IdColumn = Annotated[str, typer.Option(help="Column holding unique row ids")]
TextColumn = Annotated[str, typer.Option(help="Column holding the text to embed")]
Keep = Annotated[str | None, typer.Option(help="Comma-separated columns to pass through to the output")]
ShardRows = Annotated[
    str,
    typer.Option(
        help="Rows per output part (the unit of resume and fan-out), or auto: sized so a shard takes --shard-seconds"
    ),
]
ShardSeconds = Annotated[
    float, typer.Option(min=1, help="With --shard-rows auto: about how long one shard should take, in seconds")
]
BatchTokens = Annotated[int | None, typer.Option(help="Padded tokens per forward pass (default per device)")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps")]
Devices = Annotated[
    str | None,
    typer.Option(help="CUDA cards to embed on, one model each, e.g. 0,1 (default: every card; not with --pool)"),
]
Precision = Annotated[str, typer.Option(help="fp32, bf16 or fp16")]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(help="Allow a model's own Python code to run (off: safetensors and stock architectures only)"),
]
Overwrite = Annotated[bool, typer.Option(help="Delete bertflow's output in DEST and start over")]
Reuse = Annotated[
    list[str] | None,
    typer.Option(
        help="An earlier DEST (local or s3://) embedded the same way: rows with the same id and text are copied, not embedded; repeatable, newest first"
    ),
]
ReuseMismatch = Annotated[
    str,
    typer.Option(help="An earlier DEST embedded otherwise: 'error' (exit 2, naming the setting) or 'ignore' (skip it)"),
]
DeletedIds = Annotated[
    bool,
    typer.Option(help="Write the ids of the newest --reuse DEST that SOURCE no longer has to DEST/_deleted.parquet"),
]
Pool = Annotated[
    str | None,
    typer.Option(
        help="Run each shard as an embed-shard run on this work pool's workers (see `bertflow deploy`); default: all in this process"
    ),
]
ShardsPerRun = Annotated[
    str,
    typer.Option(
        help="With --pool: shards one worker run embeds one after another, loading the model once for them; "
        "auto: long runs first, single shards last, so every slot finishes together",
    ),
]
ShardWave = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="With --pool: at most this many shard runs submitted and unfinished at once "
        "(default: twice what the pool runs at once)",
    ),
]
ShardAttempts = Annotated[
    int,
    typer.Option(
        min=1, help="With --pool: runs per shard before the run fails (a crashed or failed shard is submitted again)"
    ),
]
ShardTimeout = Annotated[
    float,
    typer.Option(
        min=1, help="With --pool: seconds to wait for all shard runs; then the unfinished are cancelled (rerun resumes)"
    ),
]
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=VALUE for the filesystem (e.g. endpoint_url=..., key=..., secret=...); repeatable; never logged or stored"
    ),
]
StorageBlock = Annotated[
    str | None,
    typer.Option(help="Prefect Secret block whose JSON value holds the storage options (for workers and deployments)"),
]
