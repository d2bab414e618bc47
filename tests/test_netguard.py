import socket

import pytest

import netguard


def test_non_loopback_connection_is_blocked() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(netguard.NonLoopbackConnection):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
        with pytest.raises(netguard.NonLoopbackConnection):
            socket.getaddrinfo("example.com", 443)
    finally:
        s.close()
        netguard.attempts.clear()  # these two were ours, on purpose


def test_loopback_is_allowed() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.socket()
    try:
        c.connect(srv.getsockname())
    finally:
        c.close()
        srv.close()
