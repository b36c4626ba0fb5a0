"""Kernel sockets: struct socket, struct sock and the kernel_* calls.

Twin of net/socket.c, include/linux/net.h, include/net/sock.h and the
sk_* callback defaults of net/core/sock.c.

Contexts: kernel_sendmsg/kernel_recvmsg with MSG_DONTWAIT, kernel_accept
with O_NONBLOCK, and the setsockopt calls from any context; the blocking
forms sleep, so task context only. sk_data_ready, sk_write_space and
sk_state_change are called in softirq context by the engine.

Differs from the kernel: the TCP stack is the host's. A sockaddr is a
Python address tuple: (host, port) for AF_INET, (host, port, flowinfo,
scope_id) or (host, port) for AF_INET6. kvecs are lists of buffers
(memoryview, bytearray or bytes). sk_data_ready fires when data arrives after
a receive found the socket empty (see kshim.engine_trio): a receive that
returned -EAGAIN, or fewer bytes than asked (a TCP receive returns less only
when its queue ran dry), arms it, and sock_rx_armed() tells a reader that
may sleep now without receiving again; sk_state_change fires
when a receive or send finds the peer gone. Every host call goes through the
host-ops table (kshim.host.ops), so the same code runs on real sockets
(engine_trio) and on the simulation's in-memory ones (engine_sim).
A pending sk_err (a fault's "reset after N bytes") is what the next
kernel_sendmsg or kernel_recvmsg returns (sock_error), as tcp_sendmsg and
tcp_recvmsg do; the socket is then closed.

kernel_sendfile sends a range of a file from the page cache without a
copy, the way kernel_sendpage sent page-cache pages (iscsi-scst sends its
Data-In with sendpage): the host's sendfile(2) behind ops.sock_sendfile.
Its file range is a kshim.filemap.file_extent; statistics() counts its
calls, bytes, short sends, -EAGAINs, ends of file and errors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs

from kshim import host
from kshim.err import (EAGAIN, ECONNRESET, EINPROGRESS, EINVAL, ENOTCONN, EPIPE, ERESTARTSYS,
                       ETIMEDOUT)
from kshim.fault_sock import (fail_sock_recv, fail_sock_send, fail_sock_sendfile, sock_fault,
                              sock_sendfile_fault)
from kshim.host import ops
from kshim import sched
from kshim.sched import MAX_SCHEDULE_TIMEOUT
from kshim.softirq import raise_softirq
from kshim.spinlock import rwlock_t
from kshim.sysfs import __ATTR_RO, kernel_kobj, kobject_create_and_add, sysfs_create_file
from kshim.wait import (wait_event_interruptible, wait_event_interruptible_timeout,
                        wait_queue_head, wake_up_interruptible_all)

if TYPE_CHECKING:
    from kshim.filemap import file_extent

AF_UNIX = host.AF_UNIX
AF_INET = host.AF_INET
AF_INET6 = host.AF_INET6
SOCK_STREAM = host.SOCK_STREAM
IPPROTO_TCP = host.IPPROTO_TCP
SOL_SOCKET = host.SOL_SOCKET
SOL_TCP = host.IPPROTO_TCP
SO_REUSEADDR = host.SO_REUSEADDR
SO_SNDBUF = host.SO_SNDBUF
SO_RCVBUF = host.SO_RCVBUF
SO_KEEPALIVE = host.SO_KEEPALIVE
TCP_NODELAY = host.TCP_NODELAY
TCP_QUICKACK = host.TCP_QUICKACK
TCP_CORK = host.TCP_CORK
MSG_DONTWAIT = host.MSG_DONTWAIT
MSG_MORE = host.MSG_MORE
MSG_NOSIGNAL = host.MSG_NOSIGNAL
MSG_PEEK = host.MSG_PEEK
MSG_WAITALL = host.MSG_WAITALL
SHUT_RD = host.SHUT_RD
SHUT_WR = host.SHUT_WR
SHUT_RDWR = host.SHUT_RDWR
O_NONBLOCK = 0o4000

TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_FIN_WAIT1 = 4
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LISTEN = 10

SS_UNCONNECTED = 1
SS_CONNECTING = 2
SS_CONNECTED = 3
SS_DISCONNECTING = 4


def sock_def_readable(sk: "sock") -> None:
    wake_up_interruptible_all(sk.sk_wq)


def sock_def_write_space(sk: "sock") -> None:
    wake_up_interruptible_all(sk.sk_wq)


def sock_def_wakeup(sk: "sock") -> None:
    wake_up_interruptible_all(sk.sk_wq)


class sock:
    """struct sock: the protocol side, with the callbacks kernel code hooks."""

    __slots__ = ("host", "sk_family", "sk_state", "sk_err", "sk_user_data",
                 "sk_callback_lock", "sk_data_ready", "sk_write_space", "sk_state_change",
                 "sk_wq", "sk_socket", "rx_armed", "tx_armed", "engine_priv",
                 "sk_sndbuf", "sk_rcvbuf", "sk_sndtimeo")

    def __init__(self, hs: Any, family: int) -> None:
        self.host = hs                      # the engine's socket handle: opaque
        self.sk_family = family
        self.sk_state = TCP_CLOSE
        self.sk_err = 0
        self.sk_user_data: Any = None
        self.sk_callback_lock = rwlock_t("sk_callback_lock")
        self.sk_data_ready: Callable[[sock], None] = sock_def_readable
        self.sk_write_space: Callable[[sock], None] = sock_def_write_space
        self.sk_state_change: Callable[[sock], None] = sock_def_wakeup
        self.sk_wq = wait_queue_head("sk_wq")
        self.sk_socket: socket | None = None
        # readiness wanted: set by the net code through ops.sock_arm_*,
        # cleared by the engine when it delivers the callback
        self.rx_armed = False
        self.tx_armed = False
        self.engine_priv: Any = None        # the engine's own per-socket state: opaque
        self.sk_sndbuf = 0
        self.sk_rcvbuf = 0
        # jiffies a blocking connect waits (SO_SNDTIMEO; kernel users set it directly)
        self.sk_sndtimeo = MAX_SCHEDULE_TIMEOUT


class socket:
    """struct socket: the BSD-socket side."""

    __slots__ = ("sk", "state", "type", "f_flags")

    def __init__(self, sk: sock, type_: int) -> None:
        self.sk = sk
        self.state = SS_UNCONNECTED
        self.type = type_
        self.f_flags = 0
        sk.sk_socket = self


def sock_create_kern(family: int, type_: int, protocol: int = 0) -> "socket | int":
    hs = ops.sock_new(family, type_, protocol)
    if isinstance(hs, int):
        return hs
    return socket(sock(hs, family), type_)


def _set_state(sk: sock, state: int) -> None:
    if sk.sk_state != state:
        sk.sk_state = state
        raise_softirq(_state_change, sk)


def sock_error(sk: sock) -> int:
    """include/net/sock.h: the socket's pending error as -errno, cleared
    (0 if none)."""
    err, sk.sk_err = sk.sk_err, 0
    return -err


def _sock_error_close(sk: sock) -> int:
    """A call on a socket with a pending error (a reset a fault left after
    the bytes it let through): the error, and the socket is closed."""
    _set_state(sk, TCP_CLOSE)
    return sock_error(sk)


def _state_change(sk: sock) -> None:
    sk.sk_state_change(sk)


def kernel_bind(sock_: socket, addr: tuple) -> int:
    if sock_.sk.host is None:
        return -EINVAL
    ops.sock_setsockopt(sock_.sk.host, SOL_SOCKET, SO_REUSEADDR, 1)
    return ops.sock_bind(sock_.sk.host, addr)


def kernel_listen(sock_: socket, backlog: int) -> int:
    sk = sock_.sk
    ret = ops.sock_listen(sk.host, backlog)
    if ret == 0:
        sk.sk_state = TCP_LISTEN
        ops.sock_attach(sk)
    return ret


def kernel_accept(sock_: socket, flags: int = O_NONBLOCK) -> "socket | int":
    """A new connected socket, or -EAGAIN when none is pending (non-blocking),
    or another -errno."""
    sk = sock_.sk
    while True:
        if sk.host is None:
            return -EINVAL
        r = ops.sock_accept(sk.host)
        if not isinstance(r, int):
            break
        if r != -EAGAIN:
            return r
        ops.sock_arm_rx(sk)
        if flags & O_NONBLOCK:
            return r
        if wait_event_interruptible(sk.sk_wq, lambda: not sk.rx_armed or sk.host is None) < 0:
            return -ERESTARTSYS
    hs, _addr = r
    new = socket(sock(hs, sk.sk_family), sock_.type)
    new.state = SS_CONNECTED
    new.sk.sk_state = TCP_ESTABLISHED
    ops.sock_attach(new.sk)
    return new


def kernel_connect(sock_: socket, addr: "tuple | str", flags: int = 0) -> int:
    """Connect to addr (a (host, port) tuple, or a path for AF_UNIX): 0, or
    -EINPROGRESS with O_NONBLOCK or when sk_sndtimeo jiffies pass first (as
    inet_stream_connect), -ERESTARTSYS, or the connect's -errno
    (-ECONNREFUSED, -ENOENT...)."""
    sk = sock_.sk
    if sk.host is None:
        return -EINVAL
    ret = ops.sock_connect(sk.host, addr)
    if ret == -EINPROGRESS or ret == -EAGAIN:
        ops.sock_attach(sk)
        ops.sock_arm_tx(sk)
        if flags & O_NONBLOCK:
            return -EINPROGRESS
        r = wait_event_interruptible_timeout(sk.sk_wq, lambda: not sk.tx_armed, sk.sk_sndtimeo)
        if r < 0:
            return -ERESTARTSYS
        if r == 0:
            return -EINPROGRESS
        ret = ops.sock_error(sk.host)
    if ret == 0:
        sock_.state = SS_CONNECTED
        sk.sk_state = TCP_ESTABLISHED
        ops.sock_attach(sk)
    return ret


def kernel_sendmsg(sock_: socket, vec: list, flags: int = 0, size: int = -1) -> int:
    """Send the kvecs. With MSG_DONTWAIT return bytes sent (possibly short;
    sk_write_space follows when there is room again) or -EAGAIN; otherwise
    sleep until all is sent. -EPIPE/-ECONNRESET when the peer is gone.
    size is the kvecs' total length, as the kernel's argument of that name,
    when the caller keeps it (a batch's sender does); -1 counts it here."""
    if fail_sock_send.armed and (r := sock_fault(fail_sock_send, sock_, vec, flags,
                                                 kernel_sendmsg, flags)) is not None:
        return r
    sk = sock_.sk
    if sk.sk_err:
        return _sock_error_close(sk)
    if sk.host is None:
        return -ENOTCONN
    n = ops.sock_sendmsg(sk.host, vec, flags)
    if n >= 0:
        if n < (size if size >= 0 else host.iov_len(vec)):
            ops.sock_arm_tx(sk)
            if not (flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK):
                return _send_rest(sock_, vec, flags, n)
        return n
    if n == -EAGAIN:
        ops.sock_arm_tx(sk)
        if not (flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK):
            return _send_rest(sock_, vec, flags, 0)
        return n
    sk.sk_err = -n
    _set_state(sk, TCP_CLOSE)
    return n


def _send_rest(sock_: socket, vec: list, flags: int, sent: int) -> int:
    sk = sock_.sk
    want = host.iov_len(vec)
    while sent < want:
        if wait_event_interruptible(sk.sk_wq, lambda: not sk.tx_armed or sk.host is None) < 0:
            return sent or -ERESTARTSYS
        if sk.host is None:
            return sent or -ENOTCONN
        n = ops.sock_sendmsg(sk.host, host.iov_advance(vec, sent), flags)
        if n == -EAGAIN:
            ops.sock_arm_tx(sk)
            continue
        if n < 0:
            sk.sk_err = -n
            _set_state(sk, TCP_CLOSE)
            return sent or n
        sent += n
        if sent < want:
            ops.sock_arm_tx(sk)
    return sent


# errors of a sendfile that are the socket's (it is closed, as for a send);
# any other is the file's, and leaves the socket to the caller
_SOCK_ERRORS = frozenset((-EPIPE, -ECONNRESET, -ETIMEDOUT, -ENOTCONN))


@attrs.frozen
class sendfile_stats:
    """kernel_sendfile since boot: calls, bytes sent, sends cut short by a
    full socket, -EAGAINs, calls that found the file ended, and errors (of
    the socket or the file)."""
    calls: int
    bytes: int
    short: int
    eagain: int
    eof: int
    errors: int


# one CPU: no lock
_sf = {"calls": 0, "bytes": 0, "short": 0, "eagain": 0, "eof": 0, "errors": 0}


def _sendfile_vec(sock_: socket, vec: list, flags: int) -> int:
    """kernel_sendfile of a one-extent vector: how sock_fault calls it again
    for a short send."""
    return kernel_sendfile(sock_, vec[0], flags)


def kernel_sendfile(sock_: socket, ext: "file_extent", flags: int = 0) -> int:
    """Send ext's bytes of its file from the page cache, without copying
    them (kernel_sendpage of page-cache pages; the host's sendfile(2)).
    With MSG_DONTWAIT, one host call: bytes sent, fewer when the socket
    filled or the file ended (sk_write_space is armed, as kernel_sendmsg
    does; the next call tells: -EAGAIN, or 0), -EAGAIN when none fit, 0
    when the file ends at ext.pos (it was truncated), or -errno: the
    socket's (-EPIPE, -ECONNRESET, ...: it is closed, as kernel_sendmsg
    does) or the file's (-EIO: the socket is left as it is; the bytes
    already sent make the stream useless, so the caller closes it).
    Without MSG_DONTWAIT, sleep until all is sent or the file ends: the
    bytes sent, or -errno if none. MSG_MORE: more of the stream follows
    (the real host's sendfile cannot hold its last segment back; the sim's
    sockets do).
    Fault points: fail_sock_send (as kernel_sendmsg's, the range counting
    as its bytes) and fail_sock_sendfile (EIO, or eof)."""
    if fail_sock_send.armed and (r := sock_fault(fail_sock_send, sock_, [ext], flags,
                                                 _sendfile_vec, flags)) is not None:
        return r
    if fail_sock_sendfile.armed and (r := sock_sendfile_fault(len(ext))) is not None:
        return r
    sk = sock_.sk
    if sk.sk_err:
        return _sock_error_close(sk)
    st = _sf
    st["calls"] += 1
    nonblock = flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK
    want = ext.count
    sent = 0
    while True:
        if sk.host is None:
            return sent or -ENOTCONN
        n = ops.sock_sendfile(sk.host, ext.file.fd, ext.pos + sent, want - sent, flags)
        if n > 0:
            st["bytes"] += n
            sent += n
            if sent == want:
                return sent
            st["short"] += 1
        elif n == 0:
            st["eof"] += 1
            return sent
        elif n == -EAGAIN:
            st["eagain"] += 1
        else:
            st["errors"] += 1
            if n in _SOCK_ERRORS:
                sk.sk_err = -n
                _set_state(sk, TCP_CLOSE)
            return sent or n
        ops.sock_arm_tx(sk)
        if nonblock:
            return sent or -EAGAIN
        if n > 0:
            continue          # full, or the file ended: the next call tells
        if wait_event_interruptible(sk.sk_wq, lambda: not sk.tx_armed or sk.host is None) < 0:
            return sent or -ERESTARTSYS


def statistics() -> sendfile_stats:
    """kernel_sendfile's counters (the live tree's /sys/kernel/net/sendfile)."""
    return sendfile_stats(**_sf)


def _sendfile_show(_k: Any, _a: Any) -> str:
    return "".join(f"{k} {v}\n" for k, v in _sf.items())


def _boot() -> None:
    for k in _sf:
        _sf[k] = 0


sched.boot_hooks.append(_boot)
sysfs_create_file(kobject_create_and_add("net", kernel_kobj), __ATTR_RO("sendfile", _sendfile_show))


def kernel_recvmsg(sock_: socket, vec: list, size: int, flags: int = 0) -> int:
    """Receive into the kvecs: bytes received, 0 when the peer closed, -EAGAIN
    when nothing is there (MSG_DONTWAIT), or -errno. Without MSG_DONTWAIT,
    sleep until something arrives."""
    if fail_sock_recv.armed and (r := sock_fault(fail_sock_recv, sock_, vec, flags,
                                                 kernel_recvmsg, size, flags)) is not None:
        return r
    sk = sock_.sk
    if sk.sk_err:
        return _sock_error_close(sk)
    while True:
        if sk.host is None:
            return -ENOTCONN
        if len(vec) == 1:
            n = ops.sock_recv_into(sk.host, vec[0], flags & ~MSG_DONTWAIT)
        else:
            n = ops.sock_recvmsg_into(sk.host, vec, flags & ~MSG_DONTWAIT)
        if n > 0:
            if n < size:
                # Drained: the next arrival must wake the reader, as every
                # arrival calls sk_data_ready in the kernel.
                ops.sock_arm_rx(sk)
            return n
        if n == 0:
            if size:
                _set_state(sk, TCP_CLOSE_WAIT)
            return 0
        if n != -EAGAIN:
            sk.sk_err = -n
            _set_state(sk, TCP_CLOSE)
            return n
        ops.sock_arm_rx(sk)
        if flags & MSG_DONTWAIT or sock_.f_flags & O_NONBLOCK:
            return n
        if wait_event_interruptible(sk.sk_wq, lambda: not sk.rx_armed or sk.host is None) < 0:
            return -ERESTARTSYS


def sock_rx_armed(sock_: socket) -> bool:
    """Will sk_data_ready fire when data arrives? True after a receive found
    the socket drained (-EAGAIN, or fewer bytes than asked) until the engine
    delivers the callback: a reader may then sleep without receiving again
    (an injected short receive arms nothing, so its reader receives on)."""
    return sock_.sk.rx_armed


def kernel_setsockopt(sock_: socket, level: int, optname: int, val: int) -> int:
    return ops.sock_setsockopt(sock_.sk.host, level, optname, val)


def kernel_getsockopt(sock_: socket, level: int, optname: int) -> int:
    return ops.sock_getsockopt(sock_.sk.host, level, optname)


def tcp_sock_set_nodelay(sk: sock) -> None:
    ops.sock_setsockopt(sk.host, SOL_TCP, TCP_NODELAY, 1)


def tcp_sock_set_cork(sk: sock, on: bool) -> None:
    ops.sock_setsockopt(sk.host, SOL_TCP, TCP_CORK, 1 if on else 0)


def kernel_getpeername(sock_: socket) -> "tuple | int":
    if sock_.sk.host is None:
        return -ENOTCONN
    return ops.sock_name(sock_.sk.host, True)


def kernel_getsockname(sock_: socket) -> "tuple | int":
    if sock_.sk.host is None:
        return -ENOTCONN
    return ops.sock_name(sock_.sk.host, False)


def kernel_sock_shutdown(sock_: socket, how: int) -> int:
    if sock_.sk.host is None:
        return -ENOTCONN
    sock_.state = SS_DISCONNECTING
    return ops.sock_shutdown(sock_.sk.host, how)


def sock_release(sock_: socket) -> None:
    sk = sock_.sk
    sk.sk_state = TCP_CLOSE
    ops.sock_detach(sk)
    wake_up_interruptible_all(sk.sk_wq)
