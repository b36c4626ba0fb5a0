"""An NBD client in the kernel: one connection to an NBD server, requests
matched to replies by cookie, reconnect with backoff.

Twin of drivers/block/nbd.c (struct nbd_device, struct nbd_cmd,
nbd_send_cmd, recv_work/nbd_read_stat, nbd_requeue_cmd, the dead
connection timeout), plus the fixed-newstyle handshake that the kernel
leaves to the nbd-client program (doc/proto.md); vdisk.nbd_proto holds the
wire format, vdisk.nbd the dev handler on top.

Contexts: nbd_dev_start, nbd_dev_stop and nbd_submit sleep: task
context (a device kthread, a management call); nbd_queue (asynchronous
requests) may be called from any context. nbd_data_ready and
nbd_state_change are the socket's callbacks: softirq context, they only
wake. Two kthreads per device: the connection thread (`nbd/<name>`) owns
the socket's receive side: it connects, does the handshake, queues again
what was unanswered, then reads replies and completes their requests
(end_io, or the submitter's completion) until the connection breaks, and
starts over. The send thread (`nbd_tx/<name>`) sends what is queued, in
one sendmsg per batch, under tx_lock, as nbd.c's nbd_send_cmd does under
nsock->tx_lock.

Differs from the kernel: one connection per device (nbd.c can spread
requests over several when the server sets NBD_FLAG_CAN_MULTI_CONN);
requests go to a send thread rather than being sent from blk-mq's
queue_rq. Reconnecting is the kernel's job here, not a user-space
daemon's: the thread retries with doubling backoff
(NBD_BACKOFF_MIN..NBD_BACKOFF_MAX); requests wait while it does, and fail
with -ENOTCONN once the connection has been down for reconnect_timeout
(nbd.c's dead_conn_timeout). Structured replies and block status when
the server grants them (nbd.c takes simple replies only); no TLS
(vdisk.nbd_proto says why). No request timeout: a server that accepts a
request and never answers holds its command until the initiator aborts it
(and the abort waits for that answer).
"""
from __future__ import annotations

import itertools
from typing import Callable

import attrs

from kshim.completion import complete, completion, wait_for_completion
from kshim.err import (EAGAIN, ECONNRESET, EINPROGRESS, EINVAL, EIO, ENOMEM, ENOSPC, ENOTCONN,
                       EOPNOTSUPP, EOVERFLOW, EPERM, EPROTO, ESHUTDOWN, ETIMEDOUT)
from kshim.host import iov_advance, iov_head
from kshim.jiffies import HZ, jiffies, time_after_eq
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.net import (AF_INET, AF_INET6, AF_UNIX, MSG_DONTWAIT, SHUT_RDWR, SOCK_STREAM, sock,
                       socket, kernel_connect, kernel_recvmsg, kernel_sendmsg,
                       kernel_sock_shutdown, sock_create_kern, sock_release,
                       tcp_sock_set_nodelay)
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.sched import MAX_SCHEDULE_TIMEOUT, task_struct
from kshim.spinlock import spin_lock_bh, spin_unlock_bh, spinlock_t
from kshim.wait import (wait_event_interruptible, wait_event_interruptible_timeout,
                        wait_queue_head, wake_up, wake_up_all)
from vdisk.nbd_proto import (HELLO_SIZE, NBD_CMD_DISC, NBD_CMD_NAMES, NBD_CMD_READ,
                             NBD_FLAG_HAS_FLAGS, NBD_MAX_CHUNK_META, NBD_META_BASE_ALLOCATION,
                             NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY,
                             NBD_REP_ACK, NBD_REP_FLAG_ERROR, NBD_REP_INFO, NBD_REP_META_CONTEXT,
                             NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
                             NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_NONE,
                             NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE,
                             OPT_REPLY_HDR_SIZE, REQUEST_SIZE, SIMPLE_REPLY_SIZE,
                             STRUCTURED_REPLY_SIZE, NBDProtocolError, client_flags,
                             nbd_export_info, nbd_opt_reply_error, pack_opt_go,
                             pack_opt_set_meta_context, pack_opt_structured_reply, pack_request,
                             parse_block_status, parse_chunk_error, parse_hello, parse_info,
                             parse_meta_context, parse_opt_reply_hdr, parse_simple_reply,
                             parse_structured_reply, reply_is_structured)

NBD_CONNECT_TIMEOUT = 10 * HZ       # one connect or handshake
NBD_BACKOFF_MIN = HZ // 10          # first retry after a lost connection
NBD_BACKOFF_MAX = 5 * HZ
NBD_RECONNECT_TIMEOUT = 30 * HZ     # default: requests fail after the link is down this long
NBD_MAX_OPT_REPLIES = 64            # NBD_REP_INFO replies to one NBD_OPT_GO we accept

# the server's errno values (doc/proto.md "Error values") -> ours
_NBD_EIO = 5
_NBD_ERRNO = {1: EPERM, 5: EIO, 12: ENOMEM, 22: EINVAL, 28: ENOSPC, 75: EOVERFLOW,
              95: EOPNOTSUPP, 108: ESHUTDOWN}


@attrs.define(slots=True, eq=False)
class nbd_cmd:
    """One NBD request (nbd.c: struct nbd_cmd)."""
    type: int
    flags: int
    offset: int
    length: int
    iov: list                        # READ: where the data goes; WRITE: where it comes from
    cookie: int = 0
    # under nbd.tx_lock: the connection generation it was last sent on
    sent_gen: int = -1
    # set by the connection thread before complete(done) or end_io(cmd);
    # reset when the request is sent again
    error: int = 0
    err_offset: int = -1             # where it failed, when an ERROR_OFFSET chunk said
    extents: list = attrs.field(factory=list)    # BLOCK_STATUS: [(length, flags)...]
    done: completion = attrs.field(factory=lambda: completion("nbd_cmd.done"))
    # asynchronous requests: called instead of complete(done), in the
    # connection thread (or the stopping task), never in softirq
    end_io: "Callable[[nbd_cmd], None] | None" = None
    private: object = None           # the submitter's (vdisk.nbd: the scst_cmd's nbd_io)
    hdr: bytearray = attrs.field(factory=lambda: bytearray(REQUEST_SIZE))


@attrs.define(slots=True, eq=False)
class nbd_device:
    """One export of one NBD server (nbd.c: struct nbd_device and its one
    struct nbd_sock). name, family, addr, export and reconnect_timeout are
    set before nbd_dev_start and fixed afterwards."""
    name: str
    family: int
    addr: "tuple | str"              # (host, port), or a path for AF_UNIX
    export: str
    reconnect_timeout: int = NBD_RECONNECT_TIMEOUT
    # what the first handshake found; a reconnect must find the same size
    info: nbd_export_info = attrs.field(factory=nbd_export_info)
    # protected by tx_lock: the socket senders write to, its generation
    tx_lock: mutex = attrs.field(factory=lambda: mutex("nbd.tx_lock"))
    sock: socket | None = None
    gen: int = 0
    # written by the connection thread only; read by anyone (one CPU)
    connected: bool = False
    dead: bool = False               # down longer than reconnect_timeout: fail at once
    down_since: int = 0              # jiffies when the outage began
    # this connection completed a request, or had none to resend
    progress: bool = True
    reconnects: int = 0
    stopping: bool = False
    task: task_struct | None = None  # the connection thread
    # protected by queue_lock (spin_lock_bh: exec_nowait queues from any
    # context): every request not yet answered, by cookie, and those not
    # yet sent on this connection, in order
    queue_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("nbd.queue_lock"))
    inflight: dict = attrs.field(factory=dict)
    tx_queue: list = attrs.field(factory=list)
    cookies: itertools.count = attrs.field(factory=lambda: itertools.count(1))
    tx_wq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("nbd.tx_wq"))
    tx_task: task_struct | None = None  # the send thread
    # set by nbd_data_ready (softirq), cleared by the connection thread
    rx_ready: bool = False
    rx_wq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("nbd.rx_wq"))


def nbd_describe(nbd: nbd_device) -> str:
    """The server as the log names it."""
    if nbd.family == AF_UNIX:
        return f"nbd+unix:///{nbd.export}?socket={nbd.addr}"
    host, port = nbd.addr[0], nbd.addr[1]
    h = f"[{host}]" if ":" in host else host
    return f"nbd://{h}:{port}/{nbd.export}"


# -- socket callbacks (softirq) ---------------------------------------------------

def nbd_data_ready(sk: sock) -> None:
    nbd: nbd_device = sk.sk_user_data
    nbd.rx_ready = True
    wake_up_all(nbd.rx_wq)


def nbd_state_change(sk: sock) -> None:
    nbd: nbd_device = sk.sk_user_data
    nbd.rx_ready = True              # the receive that follows reports how it ended
    wake_up_all(nbd.rx_wq)


# -- byte transport (the connection thread and tx_lock holders) --------------------

def _recv_full(nbd: nbd_device, sk_sock: socket, iov: list, timeout: int) -> int:
    """Receive exactly the buffers' length: 0, -ECONNRESET when the server
    closed, -ETIMEDOUT after timeout jiffies without a byte, -ESHUTDOWN
    when the device stops, or the receive's -errno. Sleeps on rx_wq, woken
    by nbd_data_ready."""
    want = sum(len(v) for v in iov)
    got = 0
    while got < want:
        nbd.rx_ready = False
        rest = iov_advance(iov, got) if got else iov
        n = kernel_recvmsg(sk_sock, rest, want - got, MSG_DONTWAIT)
        if n > 0:
            got += n
            continue
        if n == 0:
            return -ECONNRESET
        if n != -EAGAIN:
            return n
        r = wait_event_interruptible_timeout(
            nbd.rx_wq, lambda: nbd.rx_ready or nbd.stopping or kthread_should_stop(), timeout)
        if nbd.stopping or kthread_should_stop():
            return -ESHUTDOWN
        if r == 0:
            return -ETIMEDOUT
    return 0


def _send_full(sk_sock: socket, vec: list) -> int:
    """Send all of vec (sleeping for room): 0 or -errno."""
    want = sum(len(v) for v in vec)
    n = kernel_sendmsg(sk_sock, vec, 0)
    if n < 0:
        return n
    return 0 if n == want else -ECONNRESET


# -- the handshake (doc/proto.md, fixed newstyle + NBD_OPT_GO) ----------------------

def _opt_reply(nbd: nbd_device, s: socket, option: int) -> "tuple[int, bytes] | int":
    """One option reply: (reply type, payload), or a transport -errno."""
    hdr = bytearray(OPT_REPLY_HDR_SIZE)
    ret = _recv_full(nbd, s, [hdr], NBD_CONNECT_TIMEOUT)
    if ret < 0:
        return ret
    rtype, length = parse_opt_reply_hdr(hdr, option)
    payload = bytearray(length)
    if length:
        ret = _recv_full(nbd, s, [payload], NBD_CONNECT_TIMEOUT)
        if ret < 0:
            return ret
    return rtype, bytes(payload)


def _negotiate_structured(nbd: nbd_device, s: socket, info: nbd_export_info) -> int:
    """Ask for structured replies, then for the base:allocation context
    (NBD_CMD_BLOCK_STATUS). A refusal of either is no failure: info says
    what was granted. 0 or a transport -errno."""
    ret = _send_full(s, [pack_opt_structured_reply()])
    if ret < 0:
        return ret
    r = _opt_reply(nbd, s, NBD_OPT_STRUCTURED_REPLY)
    if isinstance(r, int):
        return r
    if not r[0] & NBD_REP_FLAG_ERROR and r[0] != NBD_REP_ACK:
        raise NBDProtocolError(f"unexpected reply type {r[0]} to NBD_OPT_STRUCTURED_REPLY")
    info.structured = r[0] == NBD_REP_ACK
    if not info.structured:
        return 0
    ret = _send_full(s, [pack_opt_set_meta_context(nbd.export, NBD_META_BASE_ALLOCATION)])
    if ret < 0:
        return ret
    for _ in range(NBD_MAX_OPT_REPLIES):
        r = _opt_reply(nbd, s, NBD_OPT_SET_META_CONTEXT)
        if isinstance(r, int):
            return r
        rtype, payload = r
        if rtype == NBD_REP_META_CONTEXT:
            ctx, name = parse_meta_context(payload)
            if name == NBD_META_BASE_ALLOCATION:
                info.alloc_ctx = ctx
        elif rtype == NBD_REP_ACK or rtype & NBD_REP_FLAG_ERROR:
            return 0
        else:
            raise NBDProtocolError(f"unexpected reply type {rtype} to NBD_OPT_SET_META_CONTEXT")
    raise NBDProtocolError(f"more than {NBD_MAX_OPT_REPLIES} replies to "
                           f"NBD_OPT_SET_META_CONTEXT")


def _handshake(nbd: nbd_device, s: socket, info: nbd_export_info) -> int:
    """Negotiate the export on a connected socket, filling info: 0, or
    -EPROTO / -EINVAL (the server refused; logged with its reason), or a
    transport -errno."""
    who = f"vdisk_nbd: {nbd.name}: {nbd_describe(nbd)}"
    hello = bytearray(HELLO_SIZE)
    ret = _recv_full(nbd, s, [hello], NBD_CONNECT_TIMEOUT)
    if ret < 0:
        return ret
    try:
        sflags = parse_hello(hello)
        ret = _send_full(s, [client_flags(sflags)])
        if ret == 0:
            ret = _negotiate_structured(nbd, s, info)
        if ret == 0:
            ret = _send_full(s, [pack_opt_go(nbd.export)])
        if ret < 0:
            return ret
        for _ in range(NBD_MAX_OPT_REPLIES):
            r = _opt_reply(nbd, s, NBD_OPT_GO)
            if isinstance(r, int):
                return r
            rtype, payload = r
            if rtype == NBD_REP_INFO:
                parse_info(payload, info)
            elif rtype == NBD_REP_ACK:
                if info.size < 0 or not info.flags & NBD_FLAG_HAS_FLAGS:
                    raise NBDProtocolError("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
                return 0
            elif rtype & NBD_REP_FLAG_ERROR:
                pr_err(f"{who}: server refused export '{nbd.export}': "
                       f"{nbd_opt_reply_error(rtype, payload)}")
                return -EINVAL
            else:
                raise NBDProtocolError(f"unexpected option reply type {rtype}")
        raise NBDProtocolError(f"more than {NBD_MAX_OPT_REPLIES} replies to NBD_OPT_GO")
    except NBDProtocolError as e:
        pr_err(f"{who}: handshake failed: {e}")
        return -EPROTO


def nbd_connect(nbd: nbd_device, info: nbd_export_info) -> "socket | int":
    """A new connection with the export negotiated, or -errno (logged when
    the server refused; transport errors are the caller's to log)."""
    s = sock_create_kern(nbd.family, SOCK_STREAM, 0)
    if isinstance(s, int):
        return s
    sk = s.sk
    sk.sk_sndtimeo = NBD_CONNECT_TIMEOUT
    ret = kernel_connect(s, nbd.addr)
    if ret == -EINPROGRESS:
        ret = -ETIMEDOUT
    if ret == 0:
        if nbd.family != AF_UNIX:
            tcp_sock_set_nodelay(sk)
        sk.sk_user_data = nbd
        sk.sk_data_ready = nbd_data_ready
        sk.sk_state_change = nbd_state_change
        ret = _handshake(nbd, s, info)
    if ret < 0:
        sock_release(s)
        return ret
    return s


# -- requests --------------------------------------------------------------------

def _send_batch(nbd: nbd_device, cmds: list[nbd_cmd]) -> int:
    """Put requests on the wire in one sendmsg (tx_lock held, connected):
    0 or -errno. On a transport error the socket is shut down, so the
    connection thread sees the break; the requests are resent after the
    reconnect (their sent_gen is an old generation by then)."""
    vec: list = []
    for c in cmds:
        pack_request(c.hdr, flags=c.flags, type_=c.type, cookie=c.cookie, offset=c.offset,
                     length=c.length)
        vec.append(c.hdr)
        if c.type != NBD_CMD_READ:
            vec.extend(c.iov)
        c.sent_gen = nbd.gen
        c.error, c.err_offset, c.extents = 0, -1, []
    ret = _send_full(nbd.sock, vec)
    if ret < 0:
        kernel_sock_shutdown(nbd.sock, SHUT_RDWR)
    return ret


def nbd_queue(nbd: nbd_device, cmds: list[nbd_cmd]) -> int:
    """Queue requests for the send thread, which sends them back to back
    (so they are outstanding together): 0, or -ENOTCONN when the server
    has been unreachable for reconnect_timeout, -ESHUTDOWN when the
    device stops (nothing queued then). Each is answered through
    end_io(cmd), or complete(cmd.done) when end_io is None. Any context."""
    if nbd.dead or nbd.stopping:
        return -ENOTCONN if nbd.dead else -ESHUTDOWN
    spin_lock_bh(nbd.queue_lock)
    for c in cmds:
        c.cookie = next(nbd.cookies)
        nbd.inflight[c.cookie] = c
        nbd.tx_queue.append(c)
    spin_unlock_bh(nbd.queue_lock)
    wake_up(nbd.tx_wq)
    return 0


def nbd_submit(nbd: nbd_device, cmds: list[nbd_cmd]) -> int:
    """Queue the requests and sleep until each is answered: 0 or the first
    failed one's -errno (cmd.error tells which). While the connection is
    down they wait for the reconnect; -ENOTCONN when it has been down for
    reconnect_timeout, -ESHUTDOWN when the device stops. Task context."""
    ret = nbd_queue(nbd, cmds)
    if ret < 0:
        for c in cmds:
            c.error = ret
        return ret
    for c in cmds:
        wait_for_completion(c.done)
        if c.error and not ret:
            ret = c.error
    return ret


def nbd_tx_thread(nbd: nbd_device) -> int:
    """The send thread: while connected, send what is queued, in batches
    (nbd.c sends from the blk-mq queue_rq context instead)."""
    while True:
        wait_event_interruptible(nbd.tx_wq, lambda: (bool(nbd.tx_queue) and nbd.connected)
                                 or nbd.stopping or kthread_should_stop())
        if nbd.stopping or kthread_should_stop():
            return 0
        mutex_lock(nbd.tx_lock)
        while nbd.connected and nbd.sock is not None:
            spin_lock_bh(nbd.queue_lock)
            batch = [c for c in nbd.tx_queue
                     if c.sent_gen != nbd.gen and nbd.inflight.get(c.cookie) is c]
            nbd.tx_queue.clear()
            spin_unlock_bh(nbd.queue_lock)
            if not batch or _send_batch(nbd, batch) < 0:
                break
        mutex_unlock(nbd.tx_lock)


def _end(cmd: nbd_cmd, error: int) -> None:
    cmd.error = error
    if cmd.end_io is not None:
        cmd.end_io(cmd)
    else:
        complete(cmd.done)


def _finish(nbd: nbd_device, cmd: nbd_cmd, error: int) -> None:
    spin_lock_bh(nbd.queue_lock)
    nbd.inflight.pop(cmd.cookie, None)
    spin_unlock_bh(nbd.queue_lock)
    nbd.progress = True
    _end(cmd, error)


def _fail_all(nbd: nbd_device, error: int) -> None:
    spin_lock_bh(nbd.queue_lock)
    cmds = sorted(nbd.inflight.values(), key=lambda c: c.cookie)
    nbd.inflight.clear()
    nbd.tx_queue.clear()
    spin_unlock_bh(nbd.queue_lock)
    for c in cmds:
        _end(c, error)


def _server_errno(error: int) -> int:
    return -_NBD_ERRNO.get(error, EIO)


def _log_failure(nbd: nbd_device, cmd: nbd_cmd, error: int, msg: str = "") -> None:
    pr_err(f"vdisk_nbd: {nbd.name}: {nbd_describe(nbd)}: "
           f"{NBD_CMD_NAMES.get(cmd.type, cmd.type)} of {cmd.length} bytes at {cmd.offset} "
           f"failed: server error {error}{': ' + msg if msg else ''}")


def _recv_chunk(nbd: nbd_device, s: socket, cmd: nbd_cmd, type_: int, length: int) -> int:
    """Take one structured reply chunk's payload into cmd: 0 or a transport
    -errno; raise NBDProtocolError for a chunk the request cannot have."""
    if type_ in (NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE):
        if cmd.type != NBD_CMD_READ or length < 8 or \
                (type_ == NBD_REPLY_TYPE_OFFSET_HOLE and length != 12):
            raise NBDProtocolError(f"chunk type {type_} of {length} bytes for "
                                   f"{NBD_CMD_NAMES.get(cmd.type, cmd.type)}")
        head = bytearray(8 if type_ == NBD_REPLY_TYPE_OFFSET_DATA else 12)
        ret = _recv_full(nbd, s, [head], MAX_SCHEDULE_TIMEOUT)
        if ret < 0:
            return ret
        start = int.from_bytes(head[:8], "big") - cmd.offset
        n = length - 8 if type_ == NBD_REPLY_TYPE_OFFSET_DATA else int.from_bytes(head[8:], "big")
        if start < 0 or n <= 0 or start + n > cmd.length:
            raise NBDProtocolError(f"chunk for bytes {start}+{n} outside the request's "
                                   f"{cmd.length}")
        dst = iov_head(iov_advance(cmd.iov, start), n)
        if type_ == NBD_REPLY_TYPE_OFFSET_DATA:
            return _recv_full(nbd, s, dst, MAX_SCHEDULE_TIMEOUT)
        for v in dst:
            v[:] = bytes(len(v))
        return 0
    if type_ == NBD_REPLY_TYPE_NONE:
        if length:
            raise NBDProtocolError(f"NBD_REPLY_TYPE_NONE with {length} bytes")
        return 0
    if length > NBD_MAX_CHUNK_META:
        raise NBDProtocolError(f"chunk type {type_} of {length} bytes is too long")
    payload = bytearray(length)
    ret = _recv_full(nbd, s, [payload], MAX_SCHEDULE_TIMEOUT)
    if ret < 0:
        return ret
    if type_ == NBD_REPLY_TYPE_BLOCK_STATUS:
        ctx, extents = parse_block_status(bytes(payload))
        if ctx == nbd.info.alloc_ctx:
            cmd.extents = extents
    elif type_ & 0x8000:
        error, msg, off = parse_chunk_error(bytes(payload),
                                            type_ == NBD_REPLY_TYPE_ERROR_OFFSET) \
            if type_ <= NBD_REPLY_TYPE_ERROR_OFFSET else (_NBD_EIO, f"error chunk type {type_}", -1)
        _log_failure(nbd, cmd, error, msg + (f" (at {off})" if off >= 0 else ""))
        if not cmd.error:
            cmd.error, cmd.err_offset = _server_errno(error), off
    else:
        raise NBDProtocolError(f"unknown chunk type {type_}")
    return 0


def _read_replies(nbd: nbd_device, s: socket) -> int:
    """Read replies and complete their requests until the connection breaks
    (nbd.c: recv_work/nbd_handle_reply): the -errno that ended it. A
    simple reply completes its request; structured chunks add to theirs
    until the one flagged NBD_REPLY_FLAG_DONE."""
    who = f"vdisk_nbd: {nbd.name}: {nbd_describe(nbd)}"
    hdr = bytearray(STRUCTURED_REPLY_SIZE)
    while True:
        ret = _recv_full(nbd, s, [memoryview(hdr)[:SIMPLE_REPLY_SIZE]], MAX_SCHEDULE_TIMEOUT)
        if ret < 0:
            return ret
        try:
            structured = reply_is_structured(hdr, nbd.info.structured)
            if structured:
                ret = _recv_full(nbd, s, [memoryview(hdr)[SIMPLE_REPLY_SIZE:]],
                                 MAX_SCHEDULE_TIMEOUT)
                if ret < 0:
                    return ret
                flags, type_, cookie, length = parse_structured_reply(hdr)
            else:
                error, cookie = parse_simple_reply(memoryview(hdr)[:SIMPLE_REPLY_SIZE])
            cmd = nbd.inflight.get(cookie)
            if cmd is None or cmd.sent_gen != nbd.gen:
                raise NBDProtocolError(f"reply to unknown cookie {cookie:#x}")
            if structured:
                ret = _recv_chunk(nbd, s, cmd, type_, length)
                if ret < 0:
                    return ret       # resent whole after the reconnect
                if flags & NBD_REPLY_FLAG_DONE:
                    _finish(nbd, cmd, cmd.error)
                continue
        except NBDProtocolError as e:
            pr_err(f"{who}: {e}; reconnecting")
            return -EPROTO
        if cmd.type == NBD_CMD_READ and error == 0:
            ret = _recv_full(nbd, s, cmd.iov, MAX_SCHEDULE_TIMEOUT)
            if ret < 0:
                return ret           # resent whole after the reconnect
        if error:
            _log_failure(nbd, cmd, error)
        _finish(nbd, cmd, _server_errno(error) if error else 0)


def _requeue_all(nbd: nbd_device) -> None:
    """After a reconnect: every unanswered request goes out again, oldest
    first (nbd.c: nbd_requeue_cmd). READ, WRITE, FLUSH and WRITE_ZEROES
    are idempotent, so one the old server did run may run twice."""
    spin_lock_bh(nbd.queue_lock)
    nbd.tx_queue[:] = sorted(nbd.inflight.values(), key=lambda c: c.cookie)
    spin_unlock_bh(nbd.queue_lock)
    wake_up(nbd.tx_wq)


def _lose_connection(nbd: nbd_device, why: int) -> None:
    """Close the broken connection. An outage starts now unless the
    connection made no progress (it only resent requests and broke again):
    then the outage that led to it goes on, so a server that accepts
    connections but breaks each one still reaches reconnect_timeout."""
    mutex_lock(nbd.tx_lock)
    s, nbd.sock = nbd.sock, None
    nbd.connected = False
    mutex_unlock(nbd.tx_lock)
    if s is not None:
        sock_release(s)
    if nbd.progress:
        nbd.down_since = jiffies()
        if not nbd.stopping:
            pr_warn(f"vdisk_nbd: {nbd.name}: connection to {nbd_describe(nbd)} lost ({why}); "
                    f"reconnecting, {len(nbd.inflight)} request(s) wait up to "
                    f"{nbd.reconnect_timeout // HZ} s")


def _reconnect(nbd: nbd_device) -> int:
    """Connect again with the same export: 0 (nbd.sock set, pending requests
    queued again) or -errno."""
    info = nbd_export_info()
    s = nbd_connect(nbd, info)
    if isinstance(s, int):
        return s
    if info.size != nbd.info.size:
        pr_err(f"vdisk_nbd: {nbd.name}: export '{nbd.export}' is now {info.size} bytes, was "
               f"{nbd.info.size}; not using it")
        sock_release(s)
        return -EINVAL
    mutex_lock(nbd.tx_lock)
    nbd.gen += 1
    nbd.sock = s
    nbd.info = info              # this connection's replies and flags
    nbd.connected = True
    nbd.progress = not nbd.inflight      # until a reply completes a request
    mutex_unlock(nbd.tx_lock)
    _requeue_all(nbd)
    return 0


def _backoff(nbd: nbd_device, delay: int) -> None:
    wait_event_interruptible_timeout(nbd.rx_wq, lambda: nbd.stopping or kthread_should_stop(),
                                     delay)


def _check_dead(nbd: nbd_device) -> None:
    """Down (or only failing) for reconnect_timeout: fail what waits, and
    new requests until a connection makes progress again."""
    if not nbd.dead and time_after_eq(jiffies(), nbd.down_since + nbd.reconnect_timeout):
        nbd.dead = True
        pr_err(f"vdisk_nbd: {nbd.name}: {nbd_describe(nbd)} unreachable for "
               f"{nbd.reconnect_timeout // HZ} s (or breaking each connection); failing "
               f"{len(nbd.inflight)} request(s) and new ones until it is back")
        _fail_all(nbd, -ENOTCONN)


def nbd_conn_thread(nbd: nbd_device) -> int:
    """The connection thread: read replies; on a break, reconnect (at once
    after a connection that made progress, else with doubling backoff),
    failing what waits once the outage has lasted reconnect_timeout,
    until the device stops."""
    delay = NBD_BACKOFF_MIN
    failures = 0
    while not (nbd.stopping or kthread_should_stop()):
        if nbd.connected:
            ret = _read_replies(nbd, nbd.sock)
            _lose_connection(nbd, ret)
            if nbd.progress:
                delay, failures = NBD_BACKOFF_MIN, 0
                continue
        else:
            ret = _reconnect(nbd)
            if ret == 0:
                nbd.reconnects += 1
                nbd.dead = False
                pr_info(f"vdisk_nbd: {nbd.name}: reconnected to {nbd_describe(nbd)}")
                continue
            failures += 1
            if failures == 1:
                pr_warn(f"vdisk_nbd: {nbd.name}: reconnect to {nbd_describe(nbd)} failed: "
                        f"{ret}; retrying")
        _check_dead(nbd)
        _backoff(nbd, delay)
        delay = min(delay * 2, NBD_BACKOFF_MAX)
    return 0


def nbd_dev_start(nbd: nbd_device) -> int:
    """Connect, negotiate and start the connection thread: 0, or -errno
    after a log line saying why. Task context."""
    s = nbd_connect(nbd, nbd.info)
    if isinstance(s, int):
        if s not in (-EINVAL, -EPROTO):
            pr_err(f"vdisk_nbd: {nbd.name}: cannot connect to {nbd_describe(nbd)}: {s}")
        return s
    nbd.sock = s
    nbd.connected = True
    nbd.task = kthread_run(nbd_conn_thread, nbd, f"nbd/{nbd.name}")
    nbd.tx_task = kthread_run(nbd_tx_thread, nbd, f"nbd_tx/{nbd.name}")
    return 0


def nbd_dev_stop(nbd: nbd_device) -> None:
    """Say goodbye (NBD_CMD_DISC), close, stop the threads, fail anything
    left with -ESHUTDOWN. Task context."""
    nbd.stopping = True
    wake_up_all(nbd.tx_wq)
    if nbd.tx_task is not None:
        kthread_stop(nbd.tx_task)
        nbd.tx_task = None
    mutex_lock(nbd.tx_lock)
    if nbd.sock is not None and nbd.connected:
        _send_batch(nbd, [nbd_cmd(type=NBD_CMD_DISC, flags=0, offset=0, length=0, iov=[])])
        kernel_sock_shutdown(nbd.sock, SHUT_RDWR)
    mutex_unlock(nbd.tx_lock)
    wake_up_all(nbd.rx_wq)
    if nbd.task is not None:
        kthread_stop(nbd.task)
        nbd.task = None
    if nbd.sock is not None:
        sock_release(nbd.sock)
        nbd.sock = None
    nbd.connected = False
    _fail_all(nbd, -ESHUTDOWN)


def nbd_family_of(host: str) -> int:
    return AF_INET6 if ":" in host else AF_INET
