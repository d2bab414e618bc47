"""Retries, budgets and one-line errors of the Label Studio transport (pure logic, fake calls),
and the same against real loopback servers that are not Label Studio."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.transport import (
    AmbiguousWrite,
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioProtocolError,
    LabelStudioUnavailable,
    RetryPolicy,
    call,
    describe,
    is_transient,
)


class FakeApiError(Exception):
    """Shaped like the SDK's ApiError: status, body and (secret) headers."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(f"headers: {{'set-cookie': 'sessionid=SECRET'}}, status_code: {status}, body: {body}")
        self.status_code = status
        self.body = body
        self.headers = {"set-cookie": "sessionid=SECRET", "Authorization": "Token SECRET"}


def _flaky(errors: list[BaseException], result: str = "ok"):  # noqa: ANN202
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


POLICY = RetryPolicy(timeout=1, retry_seconds=5, initial_delay=0.01, max_delay=0.02)


def test_transient_errors_are_retried_then_succeed() -> None:
    req = httpx.Request("GET", "http://x")
    fn, calls = _flaky([httpx.ConnectError("refused", request=req), FakeApiError(503, "busy"),
                        httpx.ReadTimeout("slow", request=req)])
    sleeps: list[float] = []
    assert call("list tasks", fn, url="http://x", policy=POLICY, sleep=sleeps.append) == "ok"
    assert calls["n"] == 4 and len(sleeps) == 3
    assert sleeps[1] > sleeps[0] * 1.2 or sleeps[1] >= POLICY.initial_delay  # backoff grows (with jitter)


def test_budget_runs_out_with_one_line_naming_url_and_cause() -> None:
    def always() -> None:
        raise FakeApiError(500, {"detail": "Internal Server Error"})

    policy = RetryPolicy(timeout=1, retry_seconds=0.05, initial_delay=0.01, max_delay=0.01)
    with pytest.raises(LabelStudioUnavailable) as e:
        call("import 20 tasks", always, url="http://127.0.0.1:8080", policy=policy)
    msg = str(e.value)
    assert "\n" not in msg and "http://127.0.0.1:8080" in msg and "HTTP 500" in msg and "import 20 tasks" in msg
    assert "SECRET" not in msg and "cookie" not in msg.lower()


def test_auth_errors_are_not_retried_and_say_what_to_do() -> None:
    fn, calls = _flaky([FakeApiError(401, {"detail": "Invalid token."})])
    with pytest.raises(LabelStudioAuthError) as e:
        call("list projects", fn, url="http://ls:8080", policy=POLICY, token_env="LABEL_STUDIO_API_KEY")
    assert calls["n"] == 1
    msg = str(e.value)
    assert "Invalid token." in msg and "LABEL_STUDIO_API_KEY" in msg and "Personal Access Token" in msg
    assert "SECRET" not in msg


def test_non_idempotent_write_is_ambiguous_unless_the_connection_was_refused() -> None:
    req = httpx.Request("POST", "http://x")
    fn, calls = _flaky([httpx.RemoteProtocolError("dropped", request=req)])
    with pytest.raises(AmbiguousWrite):
        call("import", fn, url="http://x", policy=POLICY, idempotent=False)
    assert calls["n"] == 1                      # not sent again blindly
    fn, calls = _flaky([httpx.ConnectError("refused", request=req)])
    assert call("import", fn, url="http://x", policy=POLICY, idempotent=False, sleep=lambda s: None) == "ok"
    assert calls["n"] == 2                      # never reached the server: safe to send again


def test_classification_and_messages() -> None:
    req = httpx.Request("GET", "http://x")
    assert is_transient(httpx.ConnectError("x", request=req)) and is_transient(FakeApiError(502, ""))
    assert not is_transient(FakeApiError(400, "bad")) and not is_transient(ValueError("x"))
    html = describe(FakeApiError(404, "<html><body>Not found</body></html>"), url="http://u", what="GET /x")
    assert "an HTML page" in html and "<html" not in html
    long = describe(FakeApiError(400, "x" * 5000), url="http://u", what="op")
    assert len(long) < 400


def test_other_http_errors_and_garbage_are_one_line() -> None:
    fn, _ = _flaky([FakeApiError(400, {"detail": "bad filter"})])
    with pytest.raises(LabelStudioError) as e:
        call("list tasks", fn, url="http://u", policy=POLICY)
    assert "HTTP 400: bad filter" in str(e.value)
    fn, _ = _flaky([RecursionError("maximum recursion depth exceeded while decoding a JSON array")])
    with pytest.raises(LabelStudioProtocolError) as e:
        call("pull annotations", fn, url="http://u", policy=POLICY)
    assert "not Label Studio's API" in str(e.value) or "failed" in str(e.value)


@pytest.fixture()
def not_label_studio() -> Iterator[str]:
    """A plain HTTP server on loopback (answers every path with an HTML 404)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def _client(url: str, tmp_path: Path) -> LabelStudioClient:
    (tmp_path / "images").mkdir(exist_ok=True)
    return LabelStudioClient(url, "0" * 40, "a project", ["a", "b"], images_root=tmp_path / "images",
                             retry=RetryPolicy(timeout=2, retry_seconds=0.5, initial_delay=0.1), token_env="TOKEN_VAR")


def test_a_server_that_is_not_label_studio_is_named(tmp_path: Path, not_label_studio: str) -> None:
    with pytest.raises(LabelStudioProtocolError) as e:
        _client(not_label_studio, tmp_path).ensure_project()
    assert "is it Label Studio?" in str(e.value) and not_label_studio in str(e.value)


def test_nothing_listening_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again when the block ends: nothing listens
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(LabelStudioUnavailable) as e:
        _client(url, tmp_path).ensure_project()
    assert url in str(e.value) and "connection refused" in str(e.value) and "\n" not in str(e.value)
