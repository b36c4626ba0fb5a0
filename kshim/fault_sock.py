"""Socket fault points: receive and send errors, short transfers, spurious
EAGAIN, delays, a reset after N bytes, and the file side of a sendfile.

Ours: the kernel has no such points. The framework is kshim/fault_inject.py;
kshim/net.py tests fail_sock_recv at the top of kernel_recvmsg and
fail_sock_send at the top of kernel_sendmsg and of kernel_sendfile (whose
file range counts as its bytes) and hands the call to sock_fault;
kernel_sendfile also tests fail_sock_sendfile, the file side of the send
(sock_sendfile_fault): error=EIO, the page cache could not be read;
error=eof, the file ends where the range starts (truncated under the send).

Contexts: as the primitive: any context with MSG_DONTWAIT or a
non-blocking socket; a blocking call's `delay` sleeps (msleep), so task
context only, where the blocking call itself may be.

The faults (the `error` knob): ECONNRESET, EPIPE, ETIMEDOUT: the socket
fails and closes (sk_err, a state change), and with `space=N` only after
exactly N bytes really moved (the call that reaches N is cut short there;
the next call gets the error through kshim.net's sock_error); EAGAIN: a
spurious -EAGAIN, then data-ready or write-space as if readiness came;
short: half the bytes; delay: the data "arrives" (or the room appears)
delay-ms later.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim.err import EAGAIN, EIO
from kshim.fault_inject import (DECLARE_FAULT_ATTR, fault_attr, fault_call_later, fault_errno,
                                fault_overridden, fault_rearm, should_fail)
from kshim.host import iov_head

_RESETS = ("ECONNRESET", "EPIPE", "ETIMEDOUT")   # errors that end the connection
_SOCK_KNOBS = {"error": (str, "ECONNRESET", ("ECONNRESET", "EPIPE", "ETIMEDOUT", "EAGAIN",
                                              "short", "delay")),
               "delay-ms": (int, 100, None)}
fail_sock_recv = DECLARE_FAULT_ATTR("fail_sock_recv", _SOCK_KNOBS)
fail_sock_send = DECLARE_FAULT_ATTR("fail_sock_send", _SOCK_KNOBS)
fail_sock_sendfile = DECLARE_FAULT_ATTR("fail_sock_sendfile",
                                        {"error": (str, "EIO", ("EIO", "eof"))})


def sock_sendfile_fault(count: int) -> int | None:
    """fail_sock_sendfile's fault for a kernel_sendfile of count bytes: -EIO
    (the file could not be read), 0 (the file ended at the range's start),
    or None to go on normally."""
    if not should_fail(fail_sock_sendfile, count):
        return None
    return 0 if fail_sock_sendfile.params["error"] == "eof" else -EIO


def _sock_reset(sk: Any, err: int) -> int:
    from kshim.net import TCP_CLOSE, _set_state     # net imports this module for its hooks
    sk.sk_err = err
    _set_state(sk, TCP_CLOSE)
    return -err


def sock_fault(attr: fault_attr, sock_: Any, vec: list, flags: int,
               primitive: Callable[..., int], *args: Any) -> int | None:
    """The fault a socket primitive (kernel_sendmsg or kernel_recvmsg) is to
    show for this call: its result, or None to go on normally. `primitive`
    is the caller, called again (with this point disarmed) for a short
    transfer; args are its arguments after vec."""
    from kshim.net import MSG_DONTWAIT, O_NONBLOCK  # net imports this module for its hooks
    want = sum(len(v) for v in vec)
    err = attr.params["error"]
    if attr.space and err in _RESETS and not fault_overridden():
        return _sock_reset_after(attr, sock_, vec, want, primitive, args)
    if not should_fail(attr, want):
        return None
    sk = sock_.sk
    nonblock = bool(flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK)
    recv = attr is fail_sock_recv
    ready = sk.sk_data_ready if recv else sk.sk_write_space
    if err == "short":
        if want < 2:
            return None
        cut = iov_head(vec, max(1, want // 2))
        attr.armed = False
        try:
            n = primitive(sock_, cut, *args)
        finally:
            fault_rearm()
        if n > 0 and not recv and nonblock:
            fault_call_later(0, ready, sk)          # as when a short send arms sk_write_space
        return n
    if err in ("EAGAIN", "delay"):
        if not nonblock:
            if err == "delay":
                from kshim.timer import msleep   # timer imports this module for its hook
                msleep(attr.params["delay-ms"])
            return None
        fault_call_later(attr.params["delay-ms"] if err == "delay" else 0, ready, sk)
        return -EAGAIN
    return _sock_reset(sk, fault_errno(err))


def _sock_reset_after(attr: fault_attr, sock_: Any, vec: list, want: int,
                      primitive: Callable[..., int], args: tuple) -> int:
    """A reset after `space` bytes: count the bytes really moved; the call
    that reaches the budget moves exactly the rest of it (a short transfer
    if it asked for more) and, if the point's rules then say fail, resets
    the socket after it: the call returns its count, the next one the
    error (kshim.net's sock_error)."""
    attr.armed = False
    try:
        n = primitive(sock_, iov_head(vec, attr.space) if want > attr.space else vec, *args)
    finally:
        fault_rearm()
    if n > 0:
        attr.space -= n
        if attr.space == 0 and should_fail(attr, 0):
            sock_.sk.sk_err = fault_errno(attr.params["error"])
    return n
