"""The cluster link: uscstd nodes that export one shared device (cluster_mode
1) tell each other what their initiators did to it, so every node's
nexuses learn of it as if there were one SCSI target device.

Mirrors what SCST's cluster_mode does (scst/src/scst_dlm.c, the vdisk
`cluster_mode` attribute): for a device whose backing store several
SCST nodes share, state and events that SAM/SPC make device-wide are kept
coherent between the nodes. SCST does it through the kernel's DLM (a
lockspace per device, lock value blocks, blocking-AST callbacks); we have
no DLM, so a small peer protocol carries the events. This module is the
link: connections, framing, delivery and answers. What an event does to
a device, and the agreement on persistent reservations, are
scst_core.cluster_dev's (plugged in through scst_cluster_apply_hook and
scst_cluster_link_up_hook); scst_core.cluster_proto is the wire format.

An event (scst_cluster_dev_event) goes to every peer; its done callback
runs once every reachable peer has answered (applied), so the command
or task management function that caused it completes only then (or after
CLUSTER_ACK_TIMEOUT), and an initiator that goes on through the other
node finds its effect there.

Configuration (the node, in scst.conf's top level or /sys/kernel/scst_tgt):
`cluster_listen HOST:PORT` where this node accepts its peers' links, and
`cluster_peers HOST:PORT ...` the other nodes' cluster_listen addresses;
per device the vdisk attribute `cluster_mode 1`. cluster_state shows
each link.

Links: for each peer, this node keeps one outgoing TCP connection (the
peer thread `scst_cl/<addr>`), on which it sends HELLO then its events,
and reads the answers (CLM_ACK); the peer's events come on the
connection the peer opened to us (one `scst_cl_rx/<n>` thread per
accepted connection), answered on that same connection. Both threads are
kshim socket users as iscsi_scst's rd thread is: woken by sk_data_ready,
receiving with MSG_DONTWAIT, never a blocking host socket.

When a peer is unreachable: events for it are dropped at once (logged
once per outage), so a node alone keeps serving and nothing waits; the
peer thread reconnects with doubling backoff (CLUSTER_BACKOFF_MIN..MAX),
at once when the peer connects to us, and logs when the link is up
again. An event the peer did not answer within CLUSTER_ACK_TIMEOUT
breaks the link (logged) and completes as undelivered. Events lost
during an outage are not replayed (reservation state is swapped at
link-up, scst_core.cluster_dev): an initiator that used the other node
during the outage may miss a unit attention.

Contexts: scst_cluster_dev_event from any context (spin_lock_bh only);
its done callback runs in the caller's context when no peer needs the
event, else in the peer thread (task context). scst_cluster_dev_event_wait
sleeps unless called atomic. Configuration stores from task context
(scst_cluster_mutex). The threads apply peer events in task context.

Differs from SCST: no DLM, no quorum and no fencing: a node that cannot
reach its peer goes on serving (SCST's DLM would block lock requests
until the cluster manager fences the lost node).
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable

import attrs

from kshim.completion import complete, completion, wait_for_completion_timeout
from kshim.err import (EAGAIN, EINPROGRESS, EINVAL, ENODEV, ENOTCONN, EOPNOTSUPP, EPROTO,
                       ESHUTDOWN, ETIMEDOUT)
from kshim.jiffies import HZ, jiffies, time_after_eq
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.net import (AF_INET, AF_INET6, MSG_DONTWAIT, SHUT_RDWR, SOCK_STREAM,
                       kernel_accept, kernel_bind, kernel_connect, kernel_listen,
                       kernel_recvmsg, kernel_sendmsg, kernel_sock_shutdown, sock,
                       sock_create_kern, sock_release, socket, tcp_sock_set_nodelay)
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.sched import MAX_SCHEDULE_TIMEOUT, TASK_DEAD, in_atomic, task_struct
from kshim.spinlock import spin_lock_bh, spin_unlock_bh, spinlock_t
from kshim.wait import wait_event_interruptible_timeout, wait_queue_head, wake_up_all
from scst_core.cluster_proto import (CL_EV_NAMES, CL_EV_PR_SYNC,
                                     CLM_ACK,
                                     CLM_DEV_EVENT, CLM_HDR_SIZE, CLM_HELLO, CLM_NAMES,
                                     ClusterProtocolError, clm_dev_event, pack_ack,
                                     pack_dev_event, pack_hello, parse_ack,
                                     parse_addr, parse_dev_event, parse_hdr, parse_hello)

if TYPE_CHECKING:
    from scst_core.scst import scst_device

CLUSTER_CONNECT_TIMEOUT = 5 * HZ
CLUSTER_ACK_TIMEOUT = 5 * HZ        # a peer that does not answer an event this long is down
CLUSTER_BACKOFF_MIN = HZ // 10
CLUSTER_BACKOFF_MAX = 5 * HZ
CLUSTER_RECV_CHUNK = 4096

# Set by scst_core.cluster_dev, which knows what an event does to a device:
# apply(conn, ev) -> 0 or -errno for a peer's event (task context);
# link_up(peer) queues what a (re)linked peer is offered.
scst_cluster_apply_hook: "Callable[[scst_cluster_conn, clm_dev_event], int] | None" = None
scst_cluster_link_up_hook: "Callable[[scst_cluster_peer], None] | None" = None


@attrs.define(slots=True, eq=False)
class scst_cluster_event:
    """One device event told to every peer. pending and failed are
    touched under the peers' locks' holders one at a time (one CPU)."""
    msg: clm_dev_event
    pending: int
    done: "Callable[[scst_cluster_event], None] | None"
    failed: list = attrs.field(factory=list)     # peers that did not apply it
    comp: completion = attrs.field(factory=lambda: completion("cluster_event"))


@attrs.define(slots=True, eq=False)
class scst_cluster_msg:
    """One event on one peer's link."""
    ev: scst_cluster_event
    seq: int = 0
    sent_at: int = 0                 # jiffies; set by the peer thread


@attrs.define(slots=True, eq=False)
class scst_cluster_peer:
    """Our link to one peer node. addr and name are fixed at creation."""
    addr: tuple
    name: str
    # written by the peer thread only; read anywhere (one CPU)
    sock: socket | None = None
    connected: bool = False
    down_logged: bool = False        # this outage was logged
    ever_up: bool = False
    reconnects: int = 0              # links up after the first
    events_sent: int = 0
    events_failed: int = 0
    stopping: bool = False
    kick: bool = False               # the peer connected to us: retry now
    task: task_struct | None = None
    rxbuf: bytearray = attrs.field(factory=bytearray)
    # protected by lock (spin_lock_bh: events are queued from any context)
    lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("cluster_peer.lock"))
    tx_queue: list = attrs.field(factory=list)
    pending: dict = attrs.field(factory=dict)     # seq -> scst_cluster_msg, sent, unanswered
    seqs: itertools.count = attrs.field(factory=lambda: itertools.count(1))
    # set by the socket callbacks (softirq) and by queuers; cleared by the thread
    rx_ready: bool = False
    wq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("cluster_peer.wq"))


@attrs.define(slots=True, eq=False)
class scst_cluster_conn:
    """A link a peer opened to us: its events come in, our answers go out."""
    sock: socket
    id: int
    peer_node: str = "?"             # from its HELLO
    rxbuf: bytearray = attrs.field(factory=bytearray)
    events: int = 0
    rx_ready: bool = True
    stopping: bool = False
    task: task_struct | None = None
    wq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("cluster_conn.wq"))


@attrs.define(slots=True, eq=False)
class scst_cluster_listener:
    addr: tuple
    sock: socket
    ready: bool = True
    task: task_struct | None = None
    conns: list = attrs.field(factory=list)     # scst_cluster_conn, task context only
    conn_ids: itertools.count = attrs.field(factory=lambda: itertools.count(1))
    wq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("cluster_listen.wq"))


# protected by scst_cluster_mutex (configuration, task context); read anywhere
scst_cluster_mutex = mutex("scst_cluster_mutex")
cluster_listen_text = ""
cluster_listener: scst_cluster_listener | None = None
cluster_peers: list[scst_cluster_peer] = []


def _family(host: str) -> int:
    return AF_INET6 if ":" in host else AF_INET


def _hold(text: str) -> str:
    return text if len(text) < 80 else text[:77] + "..."


# -- socket callbacks (softirq: they only wake) ----------------------------------

def _peer_data_ready(sk: sock) -> None:
    peer: scst_cluster_peer = sk.sk_user_data
    peer.rx_ready = True
    wake_up_all(peer.wq)


def _conn_data_ready(sk: sock) -> None:
    conn: scst_cluster_conn = sk.sk_user_data
    conn.rx_ready = True
    wake_up_all(conn.wq)


def _listen_data_ready(sk: sock) -> None:
    lst: scst_cluster_listener = sk.sk_user_data
    lst.ready = True
    wake_up_all(lst.wq)


# -- framing, shared by both ends ---------------------------------------------------

def _recv_some(s: socket, rxbuf: bytearray) -> int:
    """Append what the socket has to rxbuf: bytes read, -EAGAIN when
    empty, -ENOTCONN when the other end closed, or the receive's -errno."""
    chunk = bytearray(CLUSTER_RECV_CHUNK)
    n = kernel_recvmsg(s, [chunk], CLUSTER_RECV_CHUNK, MSG_DONTWAIT)
    if n > 0:
        rxbuf += memoryview(chunk)[:n]
        return n
    return -ENOTCONN if n == 0 else n


def _next_msg(rxbuf: bytearray) -> "tuple[int, int, bytes] | None":
    """(type, seq, payload) of the first whole message in rxbuf, removed
    from it; None when more bytes are needed. ClusterProtocolError for a
    bad one."""
    if len(rxbuf) < CLM_HDR_SIZE:
        return None
    hdr = parse_hdr(bytes(rxbuf[:CLM_HDR_SIZE]))
    end = CLM_HDR_SIZE + hdr.length
    if len(rxbuf) < end:
        return None
    payload = bytes(rxbuf[CLM_HDR_SIZE:end])
    del rxbuf[:end]
    return hdr.type, hdr.seq, payload


# -- the sending side: one peer thread per peer --------------------------------------

def _event_peer_done(ev: scst_cluster_event, peer: str, status: int) -> None:
    if status:
        ev.failed.append(f"{peer} ({status})")
    ev.pending -= 1
    if ev.pending == 0:
        complete(ev.comp)
        if ev.done is not None:
            ev.done(ev)


def _peer_fail_all(peer: scst_cluster_peer, status: int) -> None:
    spin_lock_bh(peer.lock)
    msgs = list(peer.tx_queue) + sorted(peer.pending.values(), key=lambda m: m.seq)
    peer.tx_queue.clear()
    peer.pending.clear()
    spin_unlock_bh(peer.lock)
    peer.events_failed += len(msgs)
    for m in msgs:
        _event_peer_done(m.ev, peer.name, status)


def _peer_connect(peer: scst_cluster_peer) -> int:
    """Connect and say HELLO; 0 once the peer answered it, or -errno."""
    s = sock_create_kern(_family(peer.addr[0]), SOCK_STREAM, 0)
    if isinstance(s, int):
        return s
    s.sk.sk_sndtimeo = CLUSTER_CONNECT_TIMEOUT
    ret = kernel_connect(s, peer.addr)
    if ret == -EINPROGRESS:
        ret = -ETIMEDOUT
    if ret == 0:
        tcp_sock_set_nodelay(s.sk)
        s.sk.sk_user_data = peer
        s.sk.sk_data_ready = _peer_data_ready
        s.sk.sk_state_change = _peer_data_ready
        peer.rxbuf.clear()
        hello = pack_hello(0, cluster_listen_text or "?")
        ret = kernel_sendmsg(s, [hello])
        ret = 0 if ret == len(hello) else (ret if ret < 0 else -ENOTCONN)
    while ret == 0:                  # bounded by the connect timeout below
        peer.rx_ready = False
        n = _recv_some(s, peer.rxbuf)
        if n == -EAGAIN:
            if wait_event_interruptible_timeout(
                    peer.wq, lambda: peer.rx_ready or peer.stopping or kthread_should_stop(),
                    CLUSTER_CONNECT_TIMEOUT) == 0:
                ret = -ETIMEDOUT
            elif peer.stopping or kthread_should_stop():
                ret = -ESHUTDOWN
            continue
        if n < 0:
            ret = n
            break
        try:
            m = _next_msg(peer.rxbuf)
        except ClusterProtocolError as e:
            pr_err(f"scst_cluster: peer {peer.name}: bad answer to HELLO: {e}")
            ret = -EPROTO
            break
        if m is not None:
            if m[0] != CLM_ACK or m[1] != 0 or parse_ack(m[2]) != 0:
                pr_err(f"scst_cluster: peer {peer.name}: refused HELLO")
                ret = -EPROTO
            break
    if ret < 0:
        sock_release(s)
        return ret
    peer.sock = s
    peer.connected = True
    return 0


def _peer_send_queued(peer: scst_cluster_peer) -> int:
    spin_lock_bh(peer.lock)
    batch = list(peer.tx_queue)
    peer.tx_queue.clear()
    now = jiffies()
    for m in batch:
        m.seq, m.sent_at = next(peer.seqs), now
        peer.pending[m.seq] = m
    spin_unlock_bh(peer.lock)
    if not batch:
        return 0
    vec = [pack_dev_event(m.seq, m.ev.msg) for m in batch]
    peer.events_sent += sum(m.ev.msg.event != CL_EV_PR_SYNC for m in batch)
    n = kernel_sendmsg(peer.sock, vec)
    return 0 if n == sum(len(v) for v in vec) else (n if n < 0 else -ENOTCONN)


def _peer_take_acks(peer: scst_cluster_peer) -> int:
    """Complete the answered events: 0, or -errno when the link broke."""
    while True:                      # bounded: each pass consumes bytes or returns
        peer.rx_ready = False
        n = _recv_some(peer.sock, peer.rxbuf)
        if n == -EAGAIN:
            break
        if n < 0:
            return n
    while True:                      # bounded by rxbuf's length
        try:
            m = _next_msg(peer.rxbuf)
            if m is None:
                return 0
            type_, seq, payload = m
            if type_ != CLM_ACK:
                raise ClusterProtocolError(f"{CLM_NAMES[type_]} where an ACK belongs")
            status = parse_ack(payload)
        except ClusterProtocolError as e:
            pr_err(f"scst_cluster: peer {peer.name}: {e}; closing the link")
            return -EPROTO
        spin_lock_bh(peer.lock)
        msg = peer.pending.pop(seq, None)
        spin_unlock_bh(peer.lock)
        if msg is None:
            pr_err(f"scst_cluster: peer {peer.name}: answer to unknown event {seq}; "
                   f"closing the link")
            return -EPROTO
        if status:
            pr_warn(f"scst_cluster: peer {peer.name} did not apply "
                    f"{CL_EV_NAMES[msg.ev.msg.event]} of {msg.ev.msg.dev_name}: {status}")
        _event_peer_done(msg.ev, peer.name, status)


def _peer_oldest(peer: scst_cluster_peer) -> int:
    return min((m.sent_at for m in peer.pending.values()), default=-1)


def _peer_run(peer: scst_cluster_peer) -> int:
    """Send events and take answers until the link breaks: the -errno."""
    while True:
        def woken() -> bool:
            return peer.rx_ready or bool(peer.tx_queue) or peer.stopping or \
                kthread_should_stop()
        oldest = _peer_oldest(peer)
        timeout = MAX_SCHEDULE_TIMEOUT if oldest < 0 else \
            max(1, oldest + CLUSTER_ACK_TIMEOUT - jiffies())
        wait_event_interruptible_timeout(peer.wq, woken, timeout)
        if peer.stopping or kthread_should_stop():
            return -ESHUTDOWN
        ret = _peer_send_queued(peer)
        if ret == 0:
            ret = _peer_take_acks(peer)
        if ret < 0:
            return ret
        oldest = _peer_oldest(peer)
        if oldest >= 0 and time_after_eq(jiffies(), oldest + CLUSTER_ACK_TIMEOUT):
            pr_err(f"scst_cluster: peer {peer.name} did not answer an event in "
                   f"{CLUSTER_ACK_TIMEOUT // HZ} s; closing the link")
            return -ETIMEDOUT


def _peer_lose(peer: scst_cluster_peer, why: int) -> None:
    s, peer.sock = peer.sock, None
    peer.connected = False
    if s is not None:
        sock_release(s)
    n = len(peer.pending) + len(peer.tx_queue)
    if not peer.stopping:
        pr_warn(f"scst_cluster: link to peer {peer.name} lost ({why}); {n} event(s) "
                f"unconfirmed; reconnecting")
        peer.down_logged = True
    _peer_fail_all(peer, -ENOTCONN)


def _peer_thread(peer: scst_cluster_peer) -> int:
    delay = CLUSTER_BACKOFF_MIN
    while not (peer.stopping or kthread_should_stop()):
        ret = _peer_connect(peer)
        if ret == 0:
            pr_info(f"scst_cluster: link to peer {peer.name} up"
                    + (" again" if peer.down_logged else ""))
            if peer.ever_up:
                peer.reconnects += 1
            peer.ever_up = True
            peer.down_logged = False
            if scst_cluster_link_up_hook is not None:
                scst_cluster_link_up_hook(peer)
            delay = CLUSTER_BACKOFF_MIN
            _peer_lose(peer, _peer_run(peer))
            continue
        if not peer.down_logged and ret != -ESHUTDOWN:
            pr_warn(f"scst_cluster: peer {peer.name} unreachable ({ret}); its devices' "
                    f"events are not delivered until it is back; retrying")
            peer.down_logged = True
        wait_event_interruptible_timeout(
            peer.wq, lambda: peer.kick or peer.stopping or kthread_should_stop(), delay)
        delay = CLUSTER_BACKOFF_MIN if peer.kick else min(delay * 2, CLUSTER_BACKOFF_MAX)
        peer.kick = False
    return 0


def _peer_start(addr: tuple, name: str) -> scst_cluster_peer:
    peer = scst_cluster_peer(addr=addr, name=name)
    peer.task = kthread_run(_peer_thread, peer, f"scst_cl/{name}")
    return peer


def _peer_stop(peer: scst_cluster_peer) -> None:
    peer.stopping = True
    if peer.sock is not None:
        kernel_sock_shutdown(peer.sock, SHUT_RDWR)
    wake_up_all(peer.wq)
    if peer.task is not None:
        kthread_stop(peer.task)
        peer.task = None
    _peer_fail_all(peer, -ESHUTDOWN)


# -- the receiving side: the listener and one thread per accepted link ----------------

def _conn_handle(conn: scst_cluster_conn, type_: int, seq: int, payload: bytes) -> bytes:
    """The answer to one message from the peer."""
    if type_ == CLM_HELLO:
        conn.peer_node = _hold(parse_hello(payload))
        pr_info(f"scst_cluster: peer node {conn.peer_node} connected (link {conn.id})")
        # it is back: our link to it need not wait out its backoff
        for p in cluster_peers:
            if p.name == conn.peer_node and not p.connected:
                p.kick = True
                wake_up_all(p.wq)
        return pack_ack(seq, 0)
    if type_ == CLM_DEV_EVENT:
        ev = parse_dev_event(payload)
        conn.events += ev.event != CL_EV_PR_SYNC
        status = scst_cluster_apply_hook(conn, ev) if scst_cluster_apply_hook is not None \
            else -EOPNOTSUPP
        if status:
            why = {-ENODEV: "no such device", -EOPNOTSUPP: "its cluster_mode is 0"}
            pr_warn(f"scst_cluster: peer {conn.peer_node}: {CL_EV_NAMES[ev.event]} of "
                    f"{ev.dev_name} not applied: {why.get(status, status)}")
        return pack_ack(seq, status)
    raise ClusterProtocolError(f"unexpected {CLM_NAMES[type_]}")


def _conn_thread(conn: scst_cluster_conn) -> int:
    ret = 0
    while not (conn.stopping or kthread_should_stop()):
        wait_event_interruptible_timeout(
            conn.wq, lambda: conn.rx_ready or conn.stopping or kthread_should_stop(),
            MAX_SCHEDULE_TIMEOUT)
        if conn.stopping or kthread_should_stop():
            break
        conn.rx_ready = False
        ret = _recv_some(conn.sock, conn.rxbuf)
        if ret == -EAGAIN:
            continue
        if ret < 0:
            break
        answers = []
        try:
            while (m := _next_msg(conn.rxbuf)) is not None:     # bounded by rxbuf
                answers.append(_conn_handle(conn, *m))
        except ClusterProtocolError as e:
            pr_err(f"scst_cluster: link {conn.id} from peer {conn.peer_node}: {e}; closing it")
            ret = -EPROTO
        if answers and kernel_sendmsg(conn.sock, answers) < 0:
            break
        if ret == -EPROTO:
            break
        conn.rx_ready = True         # more may have come while we applied
    if not conn.stopping:
        # the peer sees the close now; the socket is released when reaped
        kernel_sock_shutdown(conn.sock, SHUT_RDWR)
        pr_info(f"scst_cluster: peer node {conn.peer_node} disconnected (link {conn.id}, "
                f"{ret})")
    return 0


def _accept_thread(lst: scst_cluster_listener) -> int:
    while not kthread_should_stop():
        new = kernel_accept(lst.sock)
        if new == -EAGAIN:
            lst.ready = False
            wait_event_interruptible_timeout(
                lst.wq, lambda: lst.ready or kthread_should_stop(), MAX_SCHEDULE_TIMEOUT)
            continue
        if isinstance(new, int):
            pr_warn(f"scst_cluster: accept failed: {new}")
            continue
        conn = scst_cluster_conn(sock=new, id=next(lst.conn_ids))
        new.sk.sk_user_data = conn
        new.sk.sk_data_ready = _conn_data_ready
        new.sk.sk_state_change = _conn_data_ready
        _conns_reap(lst)
        lst.conns.append(conn)
        conn.task = kthread_run(_conn_thread, conn, f"scst_cl_rx/{conn.id}")
    return 0


def _conn_stop(conn: scst_cluster_conn) -> None:
    conn.stopping = True
    kernel_sock_shutdown(conn.sock, SHUT_RDWR)
    wake_up_all(conn.wq)
    if conn.task is not None:
        kthread_stop(conn.task)
        conn.task = None
    sock_release(conn.sock)


def _conns_reap(lst: scst_cluster_listener) -> None:
    """Collect the links whose thread ended (the peer went away)."""
    for c in [c for c in lst.conns if c.task is not None and c.task.state == TASK_DEAD]:
        _conn_stop(c)
        lst.conns.remove(c)


def _listen_start(addr: tuple) -> "scst_cluster_listener | int":
    s = sock_create_kern(_family(addr[0]), SOCK_STREAM, 0)
    if isinstance(s, int):
        return s
    ret = kernel_bind(s, addr)
    if ret == 0:
        ret = kernel_listen(s, 16)
    if ret < 0:
        sock_release(s)
        return ret
    lst = scst_cluster_listener(addr=addr, sock=s)
    s.sk.sk_user_data = lst
    s.sk.sk_data_ready = _listen_data_ready
    lst.task = kthread_run(_accept_thread, lst, f"scst_cl_accept/{addr[1]}")
    return lst


def _listen_stop(lst: scst_cluster_listener) -> None:
    if lst.task is not None:
        kthread_stop(lst.task)
        lst.task = None
    sock_release(lst.sock)
    for c in lst.conns:
        _conn_stop(c)
    lst.conns.clear()


# -- what the core and the handlers call ------------------------------------------

def scst_cluster_dev_event(dev: "scst_device", event: int, sense: tuple[int, int, int],
                           done: "Callable[[scst_cluster_event], None] | None" = None,
                           data: bytes = b"") -> "scst_cluster_event | None":
    """Tell every peer that event happened to dev (a cluster_mode device),
    so it establishes sense on its nexuses of dev. None when there is
    nobody to tell (cluster_mode 0, no peers): done is then not called.
    Otherwise the event, whose done(ev) runs once every peer answered or
    was found unreachable (ev.failed names those that did not apply it):
    possibly before this returns. Any context."""
    if not dev.cluster_mode or not cluster_peers:
        return None
    peers = list(cluster_peers)
    ev = scst_cluster_event(msg=clm_dev_event(event, sense, dev.virt_name, data),
                            pending=len(peers), done=done)
    for peer in peers:
        if not peer.connected:
            peer.events_failed += 1
            _event_peer_done(ev, peer.name, -ENOTCONN)
            continue
        spin_lock_bh(peer.lock)
        peer.tx_queue.append(scst_cluster_msg(ev))
        spin_unlock_bh(peer.lock)
        wake_up_all(peer.wq)
    return ev


def scst_cluster_dev_event_wait(dev: "scst_device", event: int,
                                sense: tuple[int, int, int], data: bytes = b"") -> None:
    """scst_cluster_dev_event, then, unless atomic, sleep until every peer
    answered (at most CLUSTER_ACK_TIMEOUT and a second: the peer thread
    gives up on an unanswered event by then)."""
    ev = scst_cluster_dev_event(dev, event, sense, data=data)
    if ev is not None and not in_atomic():
        wait_for_completion_timeout(ev.comp, CLUSTER_ACK_TIMEOUT + HZ)


# -- configuration (task context) --------------------------------------------------

def scst_cluster_set_listen(text: str) -> int:
    """Listen for peers' links on HOST:PORT (empty: stop listening): 0 or
    -errno after a log line."""
    global cluster_listener, cluster_listen_text
    t = text.strip()
    addr = parse_addr(t) if t else None
    if isinstance(addr, str):
        pr_err(f"scst_cluster: cluster_listen: {addr}")
        return -EINVAL
    mutex_lock(scst_cluster_mutex)
    try:
        if t == cluster_listen_text:
            return 0
        if cluster_listener is not None:
            _listen_stop(cluster_listener)
            cluster_listener = None
        cluster_listen_text = ""
        if addr is None:
            return 0
        r = _listen_start(addr)
        if isinstance(r, int):
            pr_err(f"scst_cluster: cannot listen on {t}: {r}")
            return r
        cluster_listener, cluster_listen_text = r, t
        pr_info(f"scst_cluster: listening for peers on {t}")
        return 0
    finally:
        mutex_unlock(scst_cluster_mutex)


def scst_cluster_set_peers(text: str) -> int:
    """The peers' cluster_listen addresses, separated by spaces (empty:
    none): 0 or -EINVAL after a log line. Links to peers no longer named
    are closed; their pending events complete as undelivered."""
    global cluster_peers
    names = text.split()
    addrs = [parse_addr(n) for n in names]
    bad = next((a for a in addrs if isinstance(a, str)), None)
    if bad is not None:
        pr_err(f"scst_cluster: cluster_peers: {bad}")
        return -EINVAL
    if len(set(names)) != len(names):
        pr_err(f"scst_cluster: cluster_peers names a peer twice: {text.strip()}")
        return -EINVAL
    mutex_lock(scst_cluster_mutex)
    keep = [p for p in cluster_peers if p.name in names]
    for p in cluster_peers:
        if p not in keep:
            _peer_stop(p)
    have = {p.name for p in keep}
    cluster_peers = keep + [_peer_start(a, n) for n, a in zip(names, addrs, strict=True)
                            if n not in have and not isinstance(a, str)]
    mutex_unlock(scst_cluster_mutex)
    return 0


def scst_cluster_peers_text() -> str:
    return " ".join(p.name for p in cluster_peers)


def scst_cluster_state() -> str:
    """One line per link, for /sys/kernel/scst_tgt/cluster_state."""
    lines = [f"listen {cluster_listen_text or '-'}"]
    for p in cluster_peers:
        lines.append(f"peer {p.name} {'up' if p.connected else 'down'} "
                     f"sent={p.events_sent} failed={p.events_failed} "
                     f"reconnects={p.reconnects}")
    if cluster_listener is not None:
        for c in cluster_listener.conns:
            if c.task is not None and c.task.state != TASK_DEAD:
                lines.append(f"from {c.peer_node} link={c.id} events={c.events}")
    return "\n".join(lines) + "\n"


def scst_cluster_exit() -> None:
    """Close every link and stop listening (module exit, task context)."""
    scst_cluster_set_peers("")
    scst_cluster_set_listen("")
