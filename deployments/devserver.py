"""`bertflow dev-server`: a local PostgreSQL and a Prefect server on it, in the foreground.

Prefect's production guidance is a PostgreSQL-backed server; SQLite serialises writers and is for
one laptop. This runs the distribution's PostgreSQL binaries (`apt-get install postgresql`: the
same server, with the OS's security updates, that a production database runs) as an unprivileged
user when started as root (initdb and postgres refuse root), listening on 127.0.0.1 only with a
password, and `prefect server start` with the database URL in its environment, so the Prefect
server behaves exactly as in production.

The data directory holds everything and is reused by the next start:

    DIR/pgdata          the PostgreSQL cluster (owned by the unprivileged user when started as root)
    DIR/pg-password     the database password (0600); never printed, logged or put in an argument
    DIR/api-auth        the Prefect API's basic-auth string (0600), unless auth is off
    DIR/postgres.log    PostgreSQL's log
    DIR/prefect         PREFECT_HOME of the server process
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bertflow.errors import InputError
from bertflow.processes import die_with, free_port

DATABASE = "prefect"
DB_USER = "bertflow"
_TOOLS = ("initdb", "postgres", "pg_isready", "createdb")


def find_postgres() -> Path:
    """The folder of PostgreSQL's server binaries: beside `pg_ctl` on PATH, or Debian's newest
    /usr/lib/postgresql/N/bin."""
    candidates = []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in versions if Path(p).parent.name.isdigit()]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in _TOOLS):
            return folder
    raise InputError(
        "PostgreSQL's server binaries (initdb, postgres) were not found: install them "
        "(`apt-get install postgresql` on Debian/Ubuntu) or put their folder on PATH"
    )


@dataclass(frozen=True)
class Account:
    """Who PostgreSQL runs as: this process's user, or an unprivileged one when this is root."""

    name: str
    uid: int
    gid: int

    @property
    def switch(self) -> bool:
        return self.uid != os.geteuid()


def account() -> Account:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            return Account(name, user.pw_uid, user.pw_gid)
    raise InputError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


def _reachable(path: Path, who: Account) -> Path | None:
    """The first folder on the way to path that `who` cannot enter, or None."""
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if st.st_uid == who.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == who.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return folder
    return None


def _as(who: Account, parent: int) -> None:
    """In the child before exec: become `who` (when this is root), then die with the parent (set after the
    switch: changing credentials clears the parent-death signal)."""
    if who.switch:
        os.setgroups([])
        os.setgid(who.gid)
        os.setuid(who.uid)
    die_with(parent)


def _secret_file(path: Path, nbytes: int = 24) -> str:
    """The secret kept in path (0600), made on first use."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


class DevServer:
    """PostgreSQL and a Prefect server on it, started by `start()`, stopped by `stop()`."""

    def __init__(
        self, data_dir: Path, port: int, pg_port: int | None = None, auth: bool = True, server_log: Path | None = None
    ) -> None:
        self.dir = data_dir.expanduser().absolute()
        self.port, self.pg_port, self.auth = port, pg_port or free_port(), auth
        self.server_log = server_log  # the Prefect server's output (default: this process's)
        self.bin = find_postgres()
        self.who = account()
        self.postgres: subprocess.Popen | None = None
        self.prefect: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def auth_file(self) -> Path:
        return self.dir / "api-auth"

    # --- PostgreSQL --------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise InputError(f"--data-dir {self.dir} is a file; give a folder (created if missing)")
        if self.who.switch:
            existing = next(p for p in (self.dir, *self.dir.parents) if p.exists())
            if blocked := _reachable(existing if existing != self.dir else self.dir.parent, self.who):
                raise InputError(
                    f"--data-dir {self.dir}: PostgreSQL runs as user {self.who.name} (it refuses root), who "
                    f"cannot enter {blocked}; `chmod o+x {blocked}` or choose a data dir it can reach"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.who.switch:
            self.dir.chmod(0o711)  # the unprivileged user passes through to pgdata and lists nothing

    def _run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        parent = os.getpid()
        return subprocess.run(
            args,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            preexec_fn=lambda: _as(self.who, parent),
        )

    def _initdb(self, password: str) -> None:
        pgdata = self.dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.dir / "pgdata.pw"  # initdb reads the password from a file the postgres user can read
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        try:
            if self.who.switch:
                os.chown(pgdata, self.who.uid, self.who.gid)
                os.chown(pwfile, self.who.uid, self.who.gid)
            r = self._run(
                str(self.bin / "initdb"), "-D", str(pgdata), "-U", DB_USER, "--pwfile", str(pwfile),
                "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            shutil.rmtree(pgdata, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")

    def _start_postgres(self, password: str) -> None:
        log = open(self.dir / "postgres.log", "a")
        parent = os.getpid()
        self.postgres = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.dir / "pgdata"),
                "-p",
                str(self.pg_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _as(self.who, parent),
        )
        env = {"PGPASSWORD": password}
        deadline = time.monotonic() + 60
        while self._run(str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.pg_port)).returncode:
            if self.postgres.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self._log_tail('postgres.log')}")
            time.sleep(0.2)
        r = self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", DB_USER, DATABASE, env=env
        )
        if r.returncode != 0 and "already exists" not in r.stderr:
            raise RuntimeError(f"createdb {DATABASE} failed: {r.stderr.strip()}")

    def _log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            lines = (self.dir / name).read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(empty log)"
        return "(no log)"

    # --- Prefect -----------------------------------------------------------------------------
    def _start_prefect(self, password: str) -> None:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.dir / "prefect"),
            # The server reads its database from the environment, as in production.
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://{DB_USER}:{password}@127.0.0.1:{self.pg_port}/{DATABASE}"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        if self.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or _secret_file(
                self.auth_file
            )
        parent = os.getpid()
        prefect_cli = str(Path(sys.executable).with_name("prefect"))
        log = open(self.server_log, "a") if self.server_log else None
        self.prefect = subprocess.Popen(
            [prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            preexec_fn=lambda: die_with(parent),
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
        )
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            if self.prefect.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start on port {self.port} (exit {self.prefect.poll()})")
            time.sleep(0.3)

    # --- life --------------------------------------------------------------------------------
    def start(self) -> None:
        self._prepare()
        password = _secret_file(self.dir / "pg-password")
        self._initdb(password)
        self._start_postgres(password)
        self._start_prefect(password)

    def exited(self) -> str | None:
        """Which process ended on its own, if one did."""
        for name, proc in (("the Prefect server", self.prefect), ("PostgreSQL", self.postgres)):
            if proc is not None and proc.poll() is not None:
                return f"{name} exited ({proc.returncode})"
        return None

    def stop(self) -> None:
        """The Prefect server first (it holds connections), then PostgreSQL with a fast shutdown."""
        for proc, sig in ((self.prefect, signal.SIGTERM), (self.postgres, signal.SIGINT)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
