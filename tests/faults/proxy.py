"""A loopback HTTP proxy that injects faults between pseudolabel and a real Label Studio.

Standard library only. Every request from the client is matched against the proxy's
:class:`Rule` list (first match wins; a rule with ``times`` stops matching once used up);
unmatched requests are forwarded unchanged. Actions:

- ``drop``: close the connection without an answer (the client sees a dropped connection;
  the server never sees the request);
- ``status``: answer ``status`` (default 500) with a small JSON body, without forwarding;
- ``body``: answer ``status`` with the raw ``body`` bytes (an HTML page, a non-JSON text...),
  without forwarding;
- ``hang``: hold the connection ``seconds`` without answering, then close it (never forwarded);
- ``forward_drop``: forward to the server, wait for its complete answer, then close the
  client's connection without passing it on (the write was applied, its answer lost);
- ``slow_commit``: hold the request ``seconds`` (the client times out meanwhile), then forward
  it and drop the answer: the server applies the write *after* the client gave up, as a
  loaded server does;
- ``rewrite``: forward, then replace the JSON answer by ``rewrite(body, path)``.

Each handled request is appended to :attr:`FaultProxy.log` as ``(method, path, action)``, so
a test can assert that its fault really fired; an error inside the proxy itself (a rewrite
that raised, an unreachable upstream) closes the client's connection and is kept in
:attr:`FaultProxy.errors`, which a test asserts empty.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

ACTIONS = ("drop", "status", "body", "hang", "forward_drop", "slow_commit", "rewrite")
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "host", "accept-encoding"}


@dataclass
class Rule:
    """One fault: ``action`` for requests whose method is ``method`` (None: any) and whose
    path + query matches the regex ``path`` (None: any), at most ``times`` times (None: always).

    ``status``: HTTP status of ``status`` / ``body`` answers; ``seconds``: how long ``hang``
    holds a connection or ``slow_commit`` delays the request; ``body``: raw answer bytes of
    ``body``; ``rewrite``: (parsed JSON answer, request path) -> new JSON answer.
    """

    action: str
    method: str | None = None
    path: str | None = None
    times: int | None = None
    status: int = 500
    seconds: float = 0.0
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    rewrite: Callable[[Any, str], Any] | None = None
    used: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {ACTIONS}")
        if self.action == "rewrite" and self.rewrite is None:
            raise ValueError("a rewrite rule needs rewrite=(body, path) -> body")

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        return self.path is None or re.search(self.path, path) is not None


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    Use as a context manager (or :meth:`start` / :meth:`stop`); :attr:`url` is what the client
    should talk to. :meth:`set` replaces the rules, :meth:`clear` removes them (plain pass-through).
    """

    def __init__(self, upstream: str, *, upstream_timeout: float = 300.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream {upstream!r} must be http://host:port")
        self.upstream = (parts.hostname, parts.port)
        self.upstream_timeout = upstream_timeout
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set(self, *rules: Rule) -> None:
        """Replace the rules (and forget how often the old ones fired)."""
        with self._lock:
            self.rules = list(rules)

    def clear(self) -> None:
        self.set()

    def fired(self, action: str | None = None) -> int:
        """How many requests got a fault (``action``, or any but ``pass``)."""
        with self._lock:
            return sum(1 for _, _, a in self.log if (a == action if action else a != "pass"))

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.used += 1
                    self.log.append((method, path, rule.action))
                    return rule
            self.log.append((method, path, "pass"))
            return None

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the proxy stops meanwhile."""
        self._stopping.wait(seconds)

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request upstream; returns (status, reason, headers, body)."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.upstream_timeout)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            out["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
            conn.request(method, path, body=body or None, headers=out)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    owner: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops a kept-alive connection is normal here (timeouts, faults); any
        other error is recorded for the test instead of printed (it would land in the output
        a test inspects)."""
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            self.owner.errors.append(f"{client_address}: {type(exc).__name__}: {exc}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def _handle(self) -> None:
        try:
            self._proxy()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout): nothing to answer
        except Exception as exc:  # noqa: BLE001 - recorded for the test, which fails on it
            self.owner.errors.append(f"{self.command} {self.path}: {type(exc).__name__}: {exc}")
            self.close_connection = True

    def _proxy(self) -> None:
        proxy = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding"):
            raise RuntimeError("chunked request bodies are not supported by the fault proxy")
        body = self.rfile.read(length) if length else b""
        method, path = self.command, self.path
        rule = proxy._pick(method, path)
        action = "pass" if rule is None else rule.action
        if action == "drop":
            self.close_connection = True
            return
        if action == "hang":
            proxy._wait(rule.seconds)  # type: ignore[union-attr]
            self.close_connection = True
            return
        if action in ("status", "body"):
            payload = rule.body if action == "body" else json.dumps(  # type: ignore[union-attr]
                {"detail": f"fault proxy: HTTP {rule.status}"}).encode()  # type: ignore[union-attr]
            ctype = rule.content_type if action == "body" else "application/json"  # type: ignore[union-attr]
            self._send(rule.status, "fault", [("Content-Type", ctype)], payload)  # type: ignore[union-attr]
            return
        if action == "slow_commit":
            proxy._wait(rule.seconds)  # type: ignore[union-attr]
        status, reason, headers, data = proxy.forward(method, path, dict(self.headers.items()), body)
        if action in ("forward_drop", "slow_commit"):
            self.close_connection = True
            return
        if action == "rewrite":
            new = rule.rewrite(json.loads(data), path)  # type: ignore[union-attr]
            data = new if isinstance(new, bytes) else json.dumps(new).encode()
        self._send(status, reason, headers, data)

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815
