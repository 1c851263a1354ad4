"""A real S3 HTTP endpoint on localhost: moto's server behind a fault-injecting front of our own.

Faults are chosen per request (method and path): an S3 error status (503 SlowDown, 403, ...),
a dropped connection (the socket shut without a response), or a slow response (served late).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bertflow-test-key",
    "AWS_SECRET_ACCESS_KEY": "bertflow-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # keep test output readable
        pass


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    remaining: int
    status: int
    code: str
    hits: int = 0
    kind: str = "error"  # "error": answer with status/code; "drop": close the connection; "slow": serve late
    delay: float = 0.0


@dataclass
class S3Endpoint:
    """moto's S3 behind a WSGI wrapper that can fail chosen requests, like a flaky store."""

    host: str = "127.0.0.1"
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> S3Endpoint:
        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ, start_response):
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            delay = 0.0
            with self._lock:
                self.requests.append((method, path))
                for fault in self.faults:
                    if fault.remaining > 0 and fault.method == method and fault.pattern.search(path):
                        fault.remaining -= 1
                        fault.hits += 1
                        if fault.kind == "slow":
                            delay = fault.delay
                            break
                        if fault.kind == "drop":
                            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                            raise ConnectionAbortedError("injected: connection dropped")
                        body = (
                            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                            f"<Message>injected fault</Message></Error>"
                        ).encode()
                        start_response(
                            f"{fault.status} Injected",
                            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                        )
                        return [body]
            if delay:
                time.sleep(delay)
            return moto_app(environ, start_response)

        self._server = make_server(self.host, self.port, app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a user's shell would export to reach this store."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def fail(
        self,
        method: str,
        path_regex: str,
        times: int,
        status: int = 503,
        code: str | None = None,
        kind: str = "error",
        delay: float = 0.0,
    ) -> Fault:
        """Answer the next `times` matching requests with an S3 error (or drop them, or serve them `delay` s late)."""
        code = code or {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}.get(status, "InternalError")
        fault = Fault(method, re.compile(path_regex), times, status, code, kind=kind, delay=delay)
        with self._lock:
            self.faults.append(fault)
        return fault

    def reset(self) -> None:
        """Clear faults and forget every bucket (moto's reset endpoint)."""
        import httpx

        with self._lock:
            self.faults.clear()
            self.requests.clear()
        httpx.post(f"{self.url}/moto-api/reset")
