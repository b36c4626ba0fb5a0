"""iSCSI connections: the structure, its socket callbacks, creation on
accept and the orderly close.

Twin of iscsi-scst/kernel/conn.c.

Contexts: iscsi_conn_alloc from the accept thread (task context). The
socket callbacks iscsi_data_ready, iscsi_write_space and iscsi_state_change
run in softirq context and only set flags and wake the connection's
threads. iscsi_conn_close runs on the connection's rd thread once it has
left its receive loop; it sleeps.

Receive buffers: the rd thread's 256 KiB receive buffer comes from the
iscsi_rxbuf kmem cache when there is something to read and goes back to it
when the socket is drained and the buffer empty (iscsi_conn_rxbuf_get/put),
so an idle connection pins no buffer; data to be thrown away lands in one
shared dummy buffer, as iscsi-scst's dummy page (its contents are never
read, and one CPU means no two receives overlap).

Differs from iscsi-scst: each connection has its own rd and wr kthreads
(iscsi-scst shares pools of them); the login runs on the rd thread.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from iscsi_scst.nagle import iscsi_nagle
from iscsi_scst.session import iscsi_session_conn_gone
from iscsi_scst.usr.iscsid import login_session
from iscsi_scst.usr.param import iscsi_sess_params
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO
from kshim.jiffies import HZ, jiffies, time_before
from kshim.kthread import kthread_run, kthread_stop
from kshim.list import list_head, list_head_release
from kshim.err import ENOMEM
from kshim.gfp import GFP_KERNEL
from kshim.net import (SHUT_RDWR, TCP_ESTABLISHED, kernel_getpeername, kernel_sock_shutdown,
                       sock_release, socket, tcp_sock_set_nodelay)
from kshim.printk import pr_info
from kshim.slab import kmem_cache_alloc, kmem_cache_create, kmem_cache_free
from kshim.spinlock import spinlock_t
from kshim.timer import del_timer, mod_timer, timer_list
from kshim.wait import wait_event_timeout, wait_queue_head, wake_up, wake_up_all

if TYPE_CHECKING:
    from iscsi_scst.session import iscsi_session
    from iscsi_scst.target import iscsi_portal

RXBUF_SIZE = 256 * 1024
DISCARD_SIZE = 65536
iscsi_rxbuf_cache = kmem_cache_create("iscsi_rxbuf", RXBUF_SIZE)
# Where discarded data segments are received (never read back).
iscsi_dummy_buf = memoryview(bytearray(DISCARD_SIZE))
# A login that has not reached full feature phase by then is dropped.
iscsi_login_timeout = 30
# Connections waiting for their last commands to come back on close.
_CLOSE_WAIT = 60 * HZ

RX_INIT_BHS = 0
RX_DATA = 1
RX_TAIL = 2


@attrs.define(slots=True, eq=False)
class iscsi_conn:
    sock: socket
    portal: "iscsi_portal"
    peer: str = ""
    cid: int = 0
    session: "iscsi_session | None" = None
    target: Any = None
    login: login_session | None = None
    sess_params: iscsi_sess_params = attrs.field(factory=iscsi_sess_params)
    # touched by softirq callbacks and the threads: plain flags, set then woken
    closing: bool = False
    rd_ready: bool = True
    wr_space: bool = True
    rd_waitQ: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("conn.rd_waitQ"))
    wr_waitQ: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("conn.wr_waitQ"))
    rd_task: Any = None
    wr_task: Any = None
    # protected by write_list_lock
    write_list_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("conn.write_list_lock"))
    write_list: list_head = attrs.field(factory=list_head)
    # The rd thread's own responses (their write_list_entry nodes), kept
    # like an llist: the rd thread appends without a lock, and whoever
    # sends or queues from another context takes the whole list at once
    # (one CPU, and the rd thread never sleeps between the two). What is
    # on write_list was queued before everything here.
    rd_write_list: list = attrs.field(factory=list)
    # Responses queued by any other context (softirq completions, device
    # threads) while rd_write_list is empty: the kernel's llist, lock-free
    # (llist_add is an append, llist_del_all takes the list and leaves an
    # empty one; one CPU). Send order: write_list, then this, then
    # rd_write_list; a context that queues on write_list moves this there
    # first (decision 0071).
    cpl_list: list = attrs.field(factory=list)
    # the sender's state: whoever holds tx_busy (the wr thread, or the rd
    # thread flushing before it sleeps) owns these
    tx_busy: bool = False
    tx_iov: list = attrs.field(factory=list)
    tx_len: int = 0
    tx_items: list = attrs.field(factory=list)
    tx_sendfile: bool = False       # tx_iov holds a file_extent (zero-copy Data-In)
    # Data-In statistics (the session's zero_copy attribute): READs whose
    # data went from the page cache (kernel_sendfile), bytes sent by
    # kernel_sendfile, its short sends (each resumed where it stopped),
    # and bytes sent as zeros because the file ended under the send
    # (decision 0067)
    tx_zc_reads: int = 0
    tx_sendfile_bytes: int = 0
    tx_sendfile_short: int = 0
    tx_sendfile_eof_bytes: int = 0
    stat_sn: int = 0
    hdigest_tx: bool = False
    ddigest_tx: bool = False
    # the rd thread's receive state: touched by the rd thread only
    hdigest_rx: bool = False
    ddigest_rx: bool = False
    max_recv_data_length: int = 8192
    rxbuf: bytearray | None = None          # from iscsi_rxbuf_cache while in use
    rxmv: memoryview | None = None
    rx_start: int = 0
    rx_end: int = 0
    read_state: int = RX_INIT_BHS
    rx_bhs: bytes = b""
    rx_iov: list = attrs.field(factory=list)
    rx_left: int = 0
    rx_tail: int = 0
    rx_dcrc: int = 0
    rx_collect: bytearray | None = None
    rx_done: Any = None
    rx_cmnd: Any = None
    # commands of this connection by ITT (rd thread adds; freeing removes)
    cmd_hash: dict = attrs.field(factory=dict)
    # free iscsi_cmnds kept for the fast READ path, as napi keeps a per-CPU
    # cache of skbs: a READ answered by scst_core.fastpath takes one and
    # its sent response gives it back, without the slab's two calls (the
    # rd and wr threads, on the one CPU: no lock); given back to the slab
    # when the connection closes
    cmnd_cache: list = attrs.field(factory=list)
    # predicted WRITEs of the current receive pass, not yet offered to
    # SCST: (cmnd, lun, cdb, queue_type, data) in CmdSN order (rd thread
    # only; iscsi_fast_wr_flush empties it before any other PDU is
    # handled and when the pass ends)
    fast_wr_list: list = attrs.field(factory=list)
    cmds_waitQ: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("conn.cmds"))
    next_ttt: int = 0
    login_started: bool = False
    logged_out: bool = False        # closed by a Logout, not lost
    login_cmd_sn: int = 0
    login_timer: timer_list = attrs.field(factory=timer_list)
    login_deadline: int = 0         # jiffies; set once before the timer is armed
    # NOP-In ping: the TTT of the unanswered ping, if any, and when the
    # timer is due (jiffies) (rd thread and timer)
    nop_timer: timer_list = attrs.field(factory=timer_list)
    nop_ttt: int | None = None
    nop_deadline: int = 0
    # Adaptive Nagle (iscsi_scst/nagle.py): the rd thread's
    nagle: iscsi_nagle = attrs.field(factory=iscsi_nagle)


def iscsi_conn_rxbuf_get(conn: iscsi_conn) -> int:
    """Give conn a receive buffer if it has none (rd thread): 0 or -ENOMEM."""
    if conn.rxbuf is None:
        buf = kmem_cache_alloc(iscsi_rxbuf_cache, GFP_KERNEL)
        if buf is None:
            return -ENOMEM
        conn.rxbuf = buf
        conn.rxmv = memoryview(buf)
        conn.rx_start = conn.rx_end = 0
    return 0


def iscsi_conn_rxbuf_put(conn: iscsi_conn) -> None:
    """Return conn's receive buffer to the cache if it holds no unread bytes
    (rd thread, before it sleeps, and at close with force)."""
    buf = conn.rxbuf
    if buf is None or conn.rx_start != conn.rx_end:
        return
    conn.rxmv.release()
    conn.rxbuf = conn.rxmv = None
    conn.rx_start = conn.rx_end = 0
    kmem_cache_free(iscsi_rxbuf_cache, buf)


conn_list: list[iscsi_conn] = []
conns_waitQ = wait_queue_head("iscsi conns")


def iscsi_conn_count() -> int:
    return len(conn_list)


def iscsi_data_ready(sk: Any) -> None:
    conn = sk.sk_user_data
    if conn is None:
        return
    conn.rd_ready = True
    wake_up(conn.rd_waitQ)


def iscsi_write_space(sk: Any) -> None:
    conn = sk.sk_user_data
    if conn is None:
        return
    conn.wr_space = True
    wake_up(conn.wr_waitQ)


def iscsi_state_change(sk: Any) -> None:
    conn = sk.sk_user_data
    if conn is not None and sk.sk_state != TCP_ESTABLISHED:
        iscsi_conn_mark_closing(conn)


def iscsi_conn_mark_closing(conn: iscsi_conn) -> None:
    """Start closing conn (any context): its threads notice and wind down."""
    if conn.closing:
        return
    conn.closing = True
    wake_up(conn.rd_waitQ)
    wake_up(conn.wr_waitQ)


def _login_timeout(timer: timer_list) -> None:
    conn = timer.data
    if conn is not None and time_before(jiffies(), conn.login_deadline):
        # Fired early (only an injected fault does that): wait the rest.
        mod_timer(timer, conn.login_deadline)
        return
    if conn is not None and conn.session is None:
        pr_info(f"iscsi: login from {conn.peer} timed out")
        iscsi_conn_mark_closing(conn)


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def iscsi_conn_alloc(sock: socket, portal: "iscsi_portal") -> "iscsi_conn | int":
    """A connection in login phase with its rd and wr threads, or -ENOMEM."""
    from iscsi_scst.nthread import iscsi_rd_thread, iscsi_wr_thread  # cycle: nthread imports conn
    from iscsi_scst.iscsi import iscsi_new_login  # cycle: iscsi imports conn
    peer = kernel_getpeername(sock)
    conn = iscsi_conn(sock, portal, peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?")
    conn.login = iscsi_new_login(conn)
    sk = sock.sk
    sk.sk_user_data = conn
    sk.sk_data_ready = iscsi_data_ready
    sk.sk_write_space = iscsi_write_space
    sk.sk_state_change = iscsi_state_change
    tcp_sock_set_nodelay(sk)
    conn.login_timer.function = _login_timeout
    conn.login_timer.data = conn
    conn.login_deadline = jiffies() + iscsi_login_timeout * HZ
    mod_timer(conn.login_timer, conn.login_deadline)
    conn_list.append(conn)
    conn.wr_task = kthread_run(iscsi_wr_thread, conn, "iscsiwr")
    conn.rd_task = kthread_run(iscsi_rd_thread, conn, "iscsird")
    return conn


def iscsi_conn_close(conn: iscsi_conn) -> None:
    """Tear conn down (its rd thread, after the receive loop)."""
    from iscsi_scst.iscsi import iscsi_conn_abort_cmnds  # cycle: iscsi imports conn
    iscsi_conn_mark_closing(conn)
    del_timer(conn.login_timer)
    del_timer(conn.nop_timer)
    kernel_sock_shutdown(conn.sock, SHUT_RDWR)
    kthread_stop(conn.wr_task)
    iscsi_conn_abort_cmnds(conn)
    if not wait_event_timeout(conn.cmds_waitQ, lambda: not conn.cmd_hash, _CLOSE_WAIT):
        pr_info(f"iscsi: {len(conn.cmd_hash)} commands of {conn.peer} still busy at close")
    sock_release(conn.sock)
    conn.rx_start = conn.rx_end      # what is left unread is lost with the socket
    iscsi_conn_rxbuf_put(conn)
    # Unhook conn from what outlives it (the socket, stale timer entries),
    # as iscsi-scst restores sk_user_data: refcounting then frees it.
    conn.sock.sk.sk_user_data = None
    # XXX: issue 16: Linux's sock_release orphans the sk (sock_orphan); kshim.net's does
    # not yet, and the sk <-> socket cycle kept ~2 KB per connection until a full GC.
    conn.sock.sk.sk_socket = None
    conn.login_timer.data = conn.nop_timer.data = None
    # and from its threads (their kthread data points back at conn)
    conn.rd_task = conn.wr_task = None
    sess = conn.session
    if sess is not None:
        if not conn.logged_out:
            # ErrorRecoveryLevel 0: losing a connection ends the session
            # (RFC 7143 7.1.5); its other connections close too.
            for other in list(sess.conn_list):
                iscsi_conn_mark_closing(other)
        iscsi_session_conn_gone(sess, conn)
    if not conn.cmd_hash:
        # No command is left to queue a response: the transmit list head
        # dies with conn (an empty head points at itself: only a GC frees it).
        list_head_release(conn.write_list)
    if conn in conn_list:
        conn_list.remove(conn)
    wake_up_all(conns_waitQ)


def iscsi_close_all_conns(timeout: int) -> None:
    """Ask every connection to close and wait for them (module exit)."""
    for conn in list(conn_list):
        iscsi_conn_mark_closing(conn)
    wait_event_timeout(conns_waitQ, lambda: not conn_list, timeout)
