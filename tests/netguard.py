"""Fail any test that tries to reach a non-loopback address from the test process.

Installed by conftest.py for the whole session: ``socket.connect`` / ``connect_ex`` to an
address outside 127.0.0.0/8 and ::1, and name lookups of anything but localhost, raise
:class:`NonLoopbackConnection` (and are recorded, so a library that swallows the error still
fails the session). The Label Studio server subprocess is kept offline by its environment
(telemetry switches, a dead proxy) — see pseudolabel/review/server.py.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
attempts: list[str] = []


class NonLoopbackConnection(ConnectionError):
    pass


def _check_host(host: Any, what: str) -> None:
    if not isinstance(host, str):
        return
    h = host.strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        if h.lower() in _LOCAL_NAMES:
            return
        attempts.append(f"{what} {host!r}")
        raise NonLoopbackConnection(f"blocked {what} of non-loopback host {host!r} during tests") from None
    if not (ip.is_loopback or ip.is_unspecified):
        attempts.append(f"{what} {host!r}")
        raise NonLoopbackConnection(f"blocked {what} to non-loopback address {host!r} during tests")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        _check_host(address[0], "connection")
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        _check_host(address[0], "connection")
    return _real_connect_ex(self, address)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None:
        _check_host(host.decode() if isinstance(host, bytes) else host, "name lookup")
    return _real_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]
