"""Socket "reset after N bytes" (issue 16, section 2): with `space=N` and a
resetting error, fail_sock_recv and fail_sock_send let exactly N bytes
through (the call that reaches N is cut short there), then the next call
returns -ECONNRESET. Real TCP on 127.0.0.1: the kernel side runs on the
trio engine in a kthread, the peer is a host thread with a plain socket.
"""
from __future__ import annotations

import socket
import threading

import pytest

from kshim import fault_inject as fi
from kshim.err import ECONNRESET
from kshim.fault_sock import fail_sock_recv, fail_sock_send
from kshim.net import (AF_INET, SOCK_STREAM, kernel_accept, kernel_bind, kernel_getsockname,
                       kernel_listen, kernel_recvmsg, kernel_sendmsg, sock_create_kern,
                       sock_release)
from tests.kshim.kshim_support import run_kernel

PEER_BYTES = 100
PEER_TIMEOUT_S = 10.0
MAX_CALLS = 200             # receives before the reset, at most (one byte each, worst case)


@pytest.fixture(autouse=True)
def clean_points():
    fi.fault_reset()
    yield
    fi.fault_reset()


def _peer(port: int, got: bytearray) -> None:
    """Send PEER_BYTES, then read what comes until the kernel closes (a
    reset when it closed with our bytes unread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT_S) as s:
        s.sendall(b"p" * PEER_BYTES)
        for _ in range(1000):          # bounded: the kernel closes after its sends
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return
            if not chunk:
                return
            got += chunk


def _kernel_side(spec: str, act) -> tuple[object, bytes]:
    """Accept one peer, arm spec, run act(sock); return act's result and
    what the peer read."""
    got = bytearray()
    box: list = []

    def body() -> object:
        ls = sock_create_kern(AF_INET, SOCK_STREAM, 0)
        assert kernel_bind(ls, ("127.0.0.1", 0)) == 0 and kernel_listen(ls, 1) == 0
        port = kernel_getsockname(ls)[1]
        t = threading.Thread(target=_peer, args=(port, got), daemon=True)
        t.start()
        c = kernel_accept(ls, 0)
        assert not isinstance(c, int), c
        fi.apply_fault_specs([spec])
        box.append(act(c))
        sock_release(c)
        sock_release(ls)
        return 0
    run_kernel(body)
    return box[0], bytes(got)


def test_recv_reset_after_30_bytes_receives_exactly_30_then_econnreset_seed_16014() -> None:
    def act(c) -> list[int]:
        calls = []
        for _ in range(MAX_CALLS):
            buf = bytearray(64)
            n = kernel_recvmsg(c, [memoryview(buf)], len(buf), 0)
            calls.append(n)
            if n <= 0:
                break
        return calls
    calls, _ = _kernel_side("fail_sock_recv:space=30,probability=100,times=1,error=ECONNRESET,"
                            "seed=16014,verbose=0", act)
    assert calls[-1] == -ECONNRESET, calls
    assert sum(calls[:-1]) == 30, calls
    assert fail_sock_recv.injected == 1


def test_send_reset_after_40_bytes_delivers_exactly_40_then_econnreset_seed_16015() -> None:
    def act(c) -> tuple[int, int]:
        # Read the peer's bytes first: a close with them unread would reset
        # the peer, which may then lose what we sent.
        buf = bytearray(PEER_BYTES)
        got = 0
        for _ in range(MAX_CALLS):
            if got == PEER_BYTES:
                break
            n = kernel_recvmsg(c, [memoryview(buf)[got:]], PEER_BYTES - got, 0)
            assert n > 0, n
            got += n
        return (kernel_sendmsg(c, [b"k" * 100], 0), kernel_sendmsg(c, [b"k" * 100], 0))
    (first, second), peer_got = _kernel_side(
        "fail_sock_send:space=40,probability=100,times=1,error=ECONNRESET,seed=16015,verbose=0",
        act)
    assert (first, second) == (40, -ECONNRESET)
    assert peer_got == b"k" * 40
    assert fail_sock_send.injected == 1
