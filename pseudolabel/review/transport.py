"""Calls to Label Studio with bounded retries and one-line errors.

Every request the Label Studio client makes goes through :func:`call`. It

- retries *transient* failures (connection refused or dropped, timeouts, HTTP 5xx / 408 /
  429) with exponential backoff, for at most ``RetryPolicy.retry_seconds`` in total;
- retries a *write that may have reached the server* (an import whose response was lost)
  only when the caller says the call is idempotent: otherwise it raises
  :class:`AmbiguousWrite` so that the caller reconciles first (the SDK's own client retries
  any POST on a dropped connection, which duplicates tasks: its retries are off);
- turns everything else into a :class:`LabelStudioError` subclass whose message is one line
  naming the server URL, the operation and the cause — never response headers or cookies.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

# Status codes worth another try: the server is up but busy, restarting or overloaded.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class LabelStudioError(RuntimeError):
    """Label Studio answered something this program cannot use; the message says what, in one line."""


class LabelStudioUnavailable(LabelStudioError):
    """The server could not be reached (or kept failing) within the retry budget."""


class LabelStudioAuthError(LabelStudioError):
    """The server refused the token (HTTP 401 / 403)."""


class LabelStudioProtocolError(LabelStudioError):
    """The server's answer is not Label Studio's API (another program on that port, a proxy page...)."""


class AmbiguousWrite(LabelStudioError):
    """A non-idempotent request failed in a way that does not tell whether the server applied it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for Label Studio.

    - ``timeout``: seconds for one request (connect + read);
    - ``retry_seconds``: total seconds spent retrying one operation before giving up;
    - ``initial_delay`` / ``max_delay``: backoff between tries, doubling, with ±20 % jitter.
    """

    timeout: float = 30.0
    retry_seconds: float = 60.0
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        for name in ("timeout", "retry_seconds", "initial_delay", "max_delay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (name == "timeout" and v == 0):
                raise ValueError(f"RetryPolicy.{name} = {v!r} must be a number >= 0 (timeout > 0), in seconds")


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return int(code) if isinstance(code, int) else None


def _detail(body: Any, limit: int = 200) -> str:
    """A short, header-free description of an error body."""
    if isinstance(body, dict):
        for key in ("detail", "error", "message", "validation_errors"):
            if key in body:
                body = body[key]
                break
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(str(text).split())
    if text.lstrip().startswith("<"):
        return "an HTML page"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_transient(exc: BaseException) -> bool:
    """Connection refused / dropped, timeouts and HTTP 5xx, 408, 425, 429."""
    if isinstance(exc, (httpx.TransportError,)):
        return True
    status = _status(exc)
    return status is not None and status in TRANSIENT_STATUS


def maybe_applied(exc: BaseException) -> bool:
    """Whether a failed write may still have been applied by the server.

    A refused connection (or a connect timeout) never reached it; a read timeout, a dropped
    response or a 5xx may have come after the server did the work.
    """
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return False
    return is_transient(exc)


def describe(exc: BaseException, *, url: str, what: str, timeout: float | None = None) -> str:
    """One line naming the cause of ``exc`` (no headers, no cookies, no traceback)."""
    status = _status(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach Label Studio at {url} ({what}): connection refused or host unknown; is the server running?"
    if isinstance(exc, httpx.TimeoutException):
        limit = f" within {timeout:g} s" if timeout else ""
        return f"Label Studio at {url} did not answer {what}{limit} (label_studio.timeout)"
    if isinstance(exc, httpx.TransportError):
        return f"Label Studio at {url} dropped the connection during {what} ({type(exc).__name__})"
    if status is not None:
        body = _detail(getattr(exc, "body", None))
        if 200 <= status < 300:  # a success status whose body the SDK could not read
            return (f"the server at {url} answered {what} with {body or 'an empty body'}, not Label Studio's API: "
                    "is label_studio.url the Label Studio server?")
        if status in (401, 403):
            return f"Label Studio at {url} refused the token for {what} (HTTP {status}: {body})"
        return f"Label Studio at {url} answered {what} with HTTP {status}: {body}"
    if isinstance(exc, (json.JSONDecodeError, ValueError, TypeError, KeyError)):
        return (f"the server at {url} answered {what} with something that is not Label Studio's API "
                f"({type(exc).__name__}: {_detail(str(exc), 120)})")
    return f"{what} at {url} failed: {type(exc).__name__}: {_detail(str(exc), 160)}"


def auth_hint(token_env: str | None) -> str:
    """What to check after an authentication error: the token's variable ``token_env`` and its kind."""
    where = f"the environment variable {token_env}" if token_env else "the token"
    return (f"check {where}: use a Personal Access Token (Label Studio → Account & Settings → Personal "
            "Access Token), or a legacy token with legacy tokens enabled for the organization "
            "(Organization → API Tokens Settings)")


def call(
    what: str,
    fn: Callable[[], T],
    *,
    url: str,
    policy: RetryPolicy,
    idempotent: bool = True,
    token_env: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``fn()`` (one Label Studio operation named ``what``), retrying transient failures.

    ``idempotent=False``: a failure that may have been applied (see :func:`maybe_applied`)
    raises :class:`AmbiguousWrite` at once; the caller reconciles before trying again.
    Raises :class:`LabelStudioUnavailable` when the budget runs out,
    :class:`LabelStudioAuthError` for 401/403, :class:`LabelStudioProtocolError` for an answer
    that is not the API, :class:`LabelStudioError` for other HTTP errors.
    """
    start = time.monotonic()
    delay = policy.initial_delay
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except LabelStudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is translated below
            line = describe(exc, url=url, what=what, timeout=policy.timeout)
            status = _status(exc)
            if status in (401, 403):
                raise LabelStudioAuthError(f"{line}; {auth_hint(token_env)}") from exc
            if not is_transient(exc):
                if (status is None and not isinstance(exc, httpx.HTTPError)) or (status is not None and 200 <= status < 300):
                    raise LabelStudioProtocolError(line) from exc
                raise LabelStudioError(line) from exc
            if not idempotent and maybe_applied(exc):
                raise AmbiguousWrite(line) from exc
            spent = time.monotonic() - start
            if spent + delay > policy.retry_seconds:
                raise LabelStudioUnavailable(
                    f"{line} ({tries} {'try' if tries == 1 else 'tries'} over {spent:.0f} s); "
                    "nothing is lost: run the command again when the server is back"
                ) from exc
            if on_retry is not None:
                on_retry(f"{line}; retrying in {delay:.1f} s")
            sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, policy.max_delay)
