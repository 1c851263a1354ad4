"""A fake Hugging Face Hub for the tests: model repositories served over HTTP on 127.0.0.1.

`FakeHub` answers the few endpoints that `huggingface_hub` uses to look up and download model repositories, with the
headers and error codes the real Hub sends, so that `snapshot_download`, `hf_hub_download`, `HfApi().repo_info` /
`model_info` and `HfApi().list_repo_tree` work against it (pass `endpoint=hub.url`, or set `HF_ENDPOINT=hub.url`
before `huggingface_hub` is imported: it reads the variable once, at import)::

    with FakeHub() as hub:
        sha = hub.commit("org/tiny", {"config.json": b"{}", "model.safetensors": weights}, tags=["v1"])
        path = snapshot_download("org/tiny", revision="v1", endpoint=hub.url, cache_dir=tmp_path)
        assert Path(path).name == sha and "model.safetensors" in hub.downloaded()

Endpoints (model repositories only; ``{revision}`` is a branch, a tag, a full commit sha, or one of those URL-encoded,
e.g. ``refs%2Fpr%2F1``; ``refs/heads/X`` and ``refs/tags/X`` are understood too):

- ``GET /api/models/{repo_id}[/revision/{revision}]``: model info (``id``, ``sha``, ``siblings``, ``private``, ...),
  ``?blobs=true`` adds sizes and LFS info to the siblings, ``?expand=...`` keeps only the listed properties.
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=&expand=``: the tree listing, paginated with a
  ``Link: <...>; rel="next"`` header like the Hub (``tree_page_size`` entries a page, at most 50 with ``expand``).
- ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1, or the sha256
  for LFS files, which also get ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length``; GET honours ``Range``.
  Files are served directly (no redirect to a CDN) and never through Xet.

``GET /api/agent-harnesses`` (which huggingface_hub fetches from ``HF_ENDPOINT`` once a day) gets an empty registry.

Errors carry ``X-Error-Code`` and ``X-Error-Message`` headers and a ``{"error": ...}`` body, as the Hub's do:
an unknown (or private, without the right token) repository is 401 ``RepoNotFound`` without an ``Authorization``
header and 404 ``RepoNotFound`` with one; an unknown revision is 404 ``RevisionNotFound``; an unknown file or folder
is 404 ``EntryNotFound`` (with ``X-Repo-Commit`` on ``resolve``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["FakeHub"]

_SHA_RE = re.compile(r"[0-9a-f]{40}")
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".gguf")


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """One file's content and the ids the Hub reports for it."""

    data: bytes
    oid: str  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files
    pointer_size: int | None

    @classmethod
    def of(cls, name: str, data: bytes) -> _Blob:
        if not name.endswith(_LFS_SUFFIXES):
            return cls(data, _git_blob_sha(data), None, None)
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        return cls(data, _git_blob_sha(pointer), sha256, len(pointer))

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid

    def lfs(self, sha_key: str) -> dict[str, Any] | None:
        if self.sha256 is None:
            return None
        return {sha_key: self.sha256, "size": len(self.data), "pointerSize": self.pointer_size}


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _Blob]
    title: str
    date: str

    def tree_oid(self, folder: str) -> str | None:
        """A git-tree-like id for `folder` ("" is the root), None if the commit has no file under it."""
        prefix = f"{folder}/" if folder else ""
        items = sorted((name, blob.oid) for name, blob in self.files.items() if name.startswith(prefix))
        if not items:
            return None
        return hashlib.sha1(json.dumps(items).encode()).hexdigest()

    def entry_oid(self, path: str) -> str | None:
        blob = self.files.get(path)
        return blob.oid if blob is not None else self.tree_oid(path)


@dataclass
class _Repo:
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # private when set
    created_at: str = ""

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.commits:
            return self.commits[revision]
        for prefix, refs in (
            ("refs/heads/", self.branches),
            ("refs/tags/", self.tags),
            ("", self.branches),
            ("", self.tags),
        ):
            name = revision[len(prefix) :] if revision.startswith(prefix) else None
            if name is not None and name in refs:
                return self.commits[refs[name]]
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})


class FakeHub:
    """An in-memory Hub of model repositories, served on ``http://127.0.0.1:<free port>`` by a daemon thread.

    Thread-safe: commits may be added while the server runs. ``requests`` records ``(method, path)`` of every request
    received (the path as sent, percent-encoding kept, without the query string).
    """

    tree_page_size: int = 1000  # entries per /tree page (the Hub's 1000; 50 at most with expand=true)

    def __init__(self) -> None:
        self.url: str = ""
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[str, _Repo] = {}
        self._downloads: list[tuple[str, str]] = []  # (repo_id, path) of files served by GET /resolve
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; sets `url`. Returns self."""
        if self._server is None:
            hub = self

            class Handler(_Handler):
                fake_hub = hub

            self._server = _Server(("127.0.0.1", 0), Handler)
            self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (the repositories stay; `start` serves them again on a new port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------------------------

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str] | Path,
        *,
        branch: str = "main",
        tags: Sequence[str] = (),
        message: str | None = None,
    ) -> str:
        """Add a commit to `repo_id` (creating the repository) and return its 40-hex sha.

        `files` is the commit's whole tree (not a diff): names with '/' separators mapped to contents (str is encoded
        as UTF-8), or a directory whose every file is taken, named relative to it. The commit's parent is the head of
        `branch`, or of main when `branch` is new; `branch` and every tag in `tags` then point to it. The sha is
        deterministic (sha1 over the parent sha and the sorted names and contents); older commits stay reachable by
        sha.
        """
        if isinstance(files, Path):
            contents = {
                p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()
            }
        else:
            contents = {name: data.encode() if isinstance(data, str) else bytes(data) for name, data in files.items()}
        for name in contents:
            parts = name.split("/")
            if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"invalid file name in repo: {name!r}")
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(created_at=_now()))
            parent = repo.branches.get(branch) or repo.branches.get("main")
            digest = hashlib.sha1((parent or "").encode())
            for name in sorted(contents):
                digest.update(b"\0%s\0%d\0" % (name.encode(), len(contents[name])) + contents[name])
            sha = digest.hexdigest()
            blobs = {name: _Blob.of(name, contents[name]) for name in sorted(contents)}
            title = message or f"Commit {len(repo.commits) + 1}"
            repo.commits.setdefault(sha, _Commit(sha, parent, blobs, title, _now()))
            repo.branches[branch] = sha
            for tag in tags:
                repo.tags[tag] = sha
            return sha

    def private(self, repo_id: str, token: str) -> None:
        """Make `repo_id` private: only requests with ``Authorization: Bearer <token>`` see it (others get 401/404
        ``RepoNotFound``, as from the Hub). May be called before the first commit."""
        with self._lock:
            self._repos.setdefault(repo_id, _Repo(created_at=_now())).token = token

    def downloaded(self, repo_id: str | None = None) -> set[str]:
        """Paths of the files served by ``GET /{repo}/resolve/...`` (of `repo_id` only, if given)."""
        with self._lock:
            return {path for repo, path in self._downloads if repo_id is None or repo == repo_id}

    # -- request handling (called from the server threads) -----------------------------------------------------

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _lookup(self, repo_id: str, authorization: str | None) -> _Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None or not repo.commits or (repo.token is not None and authorization != f"Bearer {repo.token}"):
            if authorization:
                raise _HubError(404, "RepoNotFound", "Repository not found")
            raise _HubError(401, "RepoNotFound", "Invalid username or password.")
        return repo

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _is_repo(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._repos


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is no news
            super().handle_error(request, client_address)


def _split_repo(fake_hub: FakeHub, segments: list[str], marker: str) -> tuple[str, list[str]] | None:
    """Split ``[*repo_id_parts, marker, *rest]``; repo ids have one or two segments, known repos win."""
    candidates = [n for n in (2, 1) if len(segments) > n and segments[n] == marker]
    if not candidates:
        return None
    known = [n for n in candidates if fake_hub._is_repo("/".join(segments[:n]))]
    n = (known or candidates)[0]
    return "/".join(segments[:n]), segments[n + 1 :]


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: no request log on stderr

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, *, head: bool) -> None:
        hub = self.fake_hub
        split = urlsplit(self.path)
        hub._record(self.command, split.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        try:
            if segments == ["api", "agent-harnesses"] and not head:
                self._json({"standardEnvVars": [], "harnesses": {}})  # fetched once a day by huggingface_hub
            elif segments[:2] == ["api", "models"] and not head:
                rest = segments[2:]
                if (found := _split_repo(hub, rest, "revision")) is not None and len(found[1]) == 1:
                    self._model_info(found[0], found[1][0], query)
                elif (found := _split_repo(hub, rest, "tree")) is not None and found[1]:
                    self._tree(found[0], found[1][0], "/".join(found[1][1:]), query)
                elif 1 <= len(rest) <= 2 and "" not in rest:
                    self._model_info("/".join(rest), "main", query)
                else:
                    raise _HubError(404, None, "Sorry, we can't find the page you are looking for.")
            elif (found := _split_repo(hub, segments, "resolve")) is not None and len(found[1]) >= 2:
                self._resolve(found[0], found[1][0], "/".join(found[1][1:]), head=head)
            else:
                raise _HubError(404, None, "Sorry, we can't find the page you are looking for.")
        except _HubError as error:
            self._error(error, head=head)

    # -- endpoints ---------------------------------------------------------------------------------------------

    def _model_info(self, repo_id: str, revision: str, query: dict[str, str]) -> None:
        hub = self.fake_hub
        repo = hub._lookup(repo_id, self.headers.get("Authorization"))
        commit = hub._commit_at(repo, revision)
        blobs = query.get("blobs", "").lower() == "true"
        siblings = []
        for name, blob in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling.update(size=len(blob.data), blobId=blob.oid)
                if (lfs := blob.lfs("sha256")) is not None:
                    sibling["lfs"] = lfs
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.token is not None,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(len(blob.data) for blob in commit.files.values()),
        }
        if expand := parse_qs(urlsplit(self.path).query).get("expand"):
            info = {key: value for key, value in info.items() if key in ("_id", "id") or key in expand}
        self._json(info)

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, str]) -> None:
        hub = self.fake_hub
        repo = hub._lookup(repo_id, self.headers.get("Authorization"))
        commit = hub._commit_at(repo, revision)
        folder = folder.strip("/")
        if folder and (folder in commit.files or commit.tree_oid(folder) is None):
            raise _HubError(404, "EntryNotFound", f'{folder} does not exist on "{revision}"')
        recursive = query.get("recursive", "").lower() == "true"
        expand = query.get("expand", "").lower() == "true"
        entries = [_tree_entry(repo, commit, path, is_dir, expand) for path, is_dir in _walk(commit, folder, recursive)]
        page_size = min(hub.tree_page_size, 50) if expand else hub.tree_page_size
        start = int(query.get("cursor", "0"))
        page, headers = entries[start : start + page_size], {}
        if start + page_size < len(entries):
            base = f"{hub.url}{urlsplit(self.path).path}"
            next_query = "&".join(
                f"{k}={quote(v, safe='')}" for k, v in {**query, "cursor": str(start + page_size)}.items()
            )
            headers["Link"] = f'<{base}?{next_query}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        hub = self.fake_hub
        repo = hub._lookup(repo_id, self.headers.get("Authorization"))
        commit = hub._commit_at(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            message = f'{path} does not exist on "{revision}"'
            raise _HubError(404, "EntryNotFound", message, {"X-Repo-Commit": commit.sha})
        size = len(blob.data)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(size)})
        status, body = 200, blob.data
        if not head and (wanted := self.headers.get("Range")) is not None:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            first, last = (match.group(1), match.group(2)) if match else ("", "")
            if match and (first or last):
                begin = int(first) if first else max(size - int(last), 0)
                end = min(int(last), size - 1) if first and last else size - 1
                if begin > end or begin >= size:
                    raise _HubError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
                status, body = 206, blob.data[begin : end + 1]
                headers["Content-Range"] = f"bytes {begin}-{end}/{size}"
        if not head:
            with hub._lock:
                hub._downloads.append((repo_id, path))
        self._send(status, headers, body, head=head)

    # -- responses ---------------------------------------------------------------------------------------------

    def _send(self, status: int, headers: Mapping[str, str], body: bytes, *, head: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body, head=False)

    def _error(self, error: _HubError, *, head: bool) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": error.message}
        if error.code is not None:
            headers["X-Error-Code"] = error.code
        headers.update(error.headers)
        self._send(error.status, headers, json.dumps({"error": error.message}).encode(), head=head)


def _walk(commit: _Commit, folder: str, recursive: bool) -> Iterator[tuple[str, bool]]:
    """(path, is_directory) under `folder`, folders before files at each level, depth first when recursive."""
    prefix = f"{folder}/" if folder else ""
    dirs: set[str] = set()
    files: list[str] = []
    for name in commit.files:
        if not name.startswith(prefix):
            continue
        head, sep, _ = name[len(prefix) :].partition("/")
        if sep:
            dirs.add(prefix + head)
        else:
            files.append(name)
    for sub in sorted(dirs):
        yield sub, True
        if recursive:
            yield from _walk(commit, sub, recursive)
    for name in sorted(files):
        yield name, False


def _tree_entry(repo: _Repo, commit: _Commit, path: str, is_dir: bool, expand: bool) -> dict[str, Any]:
    if is_dir:
        entry: dict[str, Any] = {"type": "directory", "oid": commit.tree_oid(path), "size": 0, "path": path}
    else:
        blob = commit.files[path]
        entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
        if (lfs := blob.lfs("oid")) is not None:
            entry["lfs"] = lfs
    if expand:
        # The last commit that changed the entry: walk back while the parent has the same content there.
        last = commit
        while last.parent is not None and repo.commits[last.parent].entry_oid(path) == last.entry_oid(path):
            last = repo.commits[last.parent]
        entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        if not is_dir:
            scan = {"virusFound": False, "virusNames": None}
            entry["securityFileStatus"] = {"status": "safe", "avScan": scan, "pickleImportScan": None}
    return entry
