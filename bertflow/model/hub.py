"""Models by Hugging Face Hub id: fetched through `huggingface_hub`, pinned to a commit, safetensors only.

A run resolves `--model ORG/NAME [--revision BRANCH|TAG|SHA]` once, to a commit sha, and records it;
every shard run on every host then loads exactly that commit (from its cache, or fetched). Only the
files bertflow reads come down: config and tokenizer files, sentence-transformers module configs and
safetensors weights, never pickled `.bin` weights. huggingface_hub itself reads `HF_ENDPOINT`,
`HF_HOME`, `HF_HUB_OFFLINE` and `HF_TOKEN`; the token is never put in an error, a log or the manifest.
"""

from __future__ import annotations

import re
from pathlib import Path

from bertflow.errors import HostError, ModelError

# What a model directory needs: configs (incl. sentence-transformers modules), tokenizer files, weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model", "*.tiktoken"]
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository id (ORG/NAME) rather than a local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def commit_of(path: Path) -> str | None:
    """The commit a snapshot directory of the Hugging Face cache holds (its name), else None."""
    return path.name if COMMIT.fullmatch(path.name) and path.parent.name == "snapshots" else None


def _how_to_get(repo_id: str, revision: str | None) -> str:
    pinned = f" --revision {revision}" if revision else ""
    return (
        f"`hf download {repo_id}{pinned}` on a machine that can reach the Hub (same HF_HOME), or unset HF_HUB_OFFLINE"
    )


def _check_weights(repo_id: str, revision: str, files: list[str]) -> None:
    if any(f in files for f in SAFETENSORS):
        return
    pickled = [f for f in PICKLED if f in files]
    if pickled:
        raise ModelError(
            f"model {repo_id!r} at {revision} has only pickled weights ({pickled[0]}); bertflow loads safetensors "
            "only: pick a revision with model.safetensors (the Hub's conversion bot opens one as refs/pr/N) "
            "or convert it with transformers' save_pretrained(safe_serialization=True)"
        )
    raise ModelError(f"model {repo_id!r} at {revision} has no model.safetensors; it is not a model bertflow can load")


def _cached(repo_id: str, revision: str | None, why: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        at = f" at {revision}" if revision else ""
        raise ModelError(
            f"model {repo_id!r}{at} is not in the Hugging Face cache and {why}: get it with "
            + _how_to_get(repo_id, revision)
        ) from None


def fetch(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of `repo_id` at `revision` (default: main), downloaded when not cached."""
    import httpx2
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return _cached(repo_id, revision, "HF_HUB_OFFLINE is set")
    if revision and COMMIT.fullmatch(revision):
        try:  # a pinned commit already cached needs no request at all (shard runs, reruns)
            return _cached(repo_id, revision, "")
        except ModelError:
            pass
    endpoint = constants.ENDPOINT
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except GatedRepoError:
        raise ModelError(
            f"model {repo_id!r} is gated: accept its terms on the Hub, then set HF_TOKEN to a token of that account"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"model {repo_id!r} has no revision {revision!r} (a branch, tag or commit sha)") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {repo_id!r} is neither a local directory nor a repository on {endpoint} "
            "(check the id; for a private repository set HF_TOKEN)"
        ) from None
    except (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled, HfHubHTTPError) as e:
        why = f"{endpoint} cannot be reached ({type(e).__name__})"
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            why = f"{endpoint} answered {e.response.status_code}"
        path = _cached(repo_id, revision, why)
        return path
    _check_weights(repo_id, revision or "main", [s.rfilename for s in info.siblings or []])
    try:  # by the name asked for, so the cache maps it (refs/) to its commit for offline reruns
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except (httpx2.HTTPError, HfHubHTTPError, OSError) as e:
        raise HostError(f"downloading model {repo_id!r} at {revision or 'main'} from {endpoint} failed: {e}") from None
