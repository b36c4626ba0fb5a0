"""The connection's rd and wr threads: receiving PDUs into place and sending
queued responses in batches.

Twin of iscsi-scst/kernel/nthread.c.

Contexts: iscsi_rd_thread and iscsi_wr_thread are kthreads, one each per
connection. Everything here that touches conn.rx_* runs on the rd thread
only; conn.stat_sn, the tx digests and conn.tx_* belong to whichever thread
holds conn.tx_busy (iscsi_tx_flush).

Receive: the rd thread reads as much as the socket has into a 256 KiB
receive buffer (taken from iscsi_rxbuf_cache, given back before it sleeps
with the buffer empty), parses every complete BHS in it and copies data segments
straight into the command's pages; a large data segment that is not yet in
the buffer is received directly into the pages. It drains until -EAGAIN or
a receive shorter than asked (kshim.net armed sk_data_ready then), then
sleeps until sk_data_ready.

Send: before it sleeps, the rd thread flushes the responses it queued
itself (one sendmsg per batch); the wr thread sends what other contexts
queue (device threads, softirq completions, timers) and whatever did not
fit the socket. Either takes every queued response at once, builds the
iovecs (BHS, data as memoryviews of the command's pages, padding, digests)
and sends them with one sendmsg; StatSN is assigned then, in send order.

Tracepoint: while iscsi_pdu_rx is enabled the rd thread calls
iscsi_rx_hdr_traced (iscsi.py), which wraps the header's handling in a span.

Differs from iscsi-scst: per-connection threads instead of shared pools;
no zero-copy sendpage (sendmsg of memoryviews copies once into the socket,
as kernel_sendmsg would).
"""
from __future__ import annotations

import struct

from iscsi_scst.conn import (RX_DATA, RX_INIT_BHS, RX_TAIL, RXBUF_SIZE, iscsi_conn,
                             iscsi_conn_close, iscsi_conn_mark_closing, iscsi_conn_rxbuf_get,
                             iscsi_conn_rxbuf_put)
from iscsi_scst.digest import digest_header, digest_matches
from iscsi_scst.hdr import BHS_SIZE, ProtocolError
from iscsi_scst.nagle import iscsi_nagle_idle, iscsi_nagle_rx_check
from kshim import sched
from kshim.crc32c import crc32c_iov, crc32c_value
from kshim.err import EAGAIN
from kshim.host import iov_head
from kshim.kthread import kthread_should_stop
from kshim.list import list_add, list_add_tail, list_del_init, list_empty, list_head
from kshim.net import MSG_DONTWAIT, kernel_recvmsg, kernel_sendmsg, sock_rx_armed
from kshim.printk import pr_info
from kshim.spinlock import spin_lock_bh, spin_unlock_bh
from kshim.wait import wait_event_interruptible, wake_up

_DIRECT_MIN = 16384        # receive straight into pages from this size on
_COMPACT_AT = RXBUF_SIZE - 65536
_IOV_MAX = 1000
_sn3 = struct.Struct(">III")


class rx_closed(Exception):
    """The peer closed or the socket failed: leave the receive loop."""


def _fill(conn: iscsi_conn) -> int:
    start, end = conn.rx_start, conn.rx_end
    if start == end:
        conn.rx_start = conn.rx_end = start = end = 0
    elif end > _COMPACT_AT:
        tail = bytes(conn.rxmv[start:end])
        conn.rxbuf[0:len(tail)] = tail
        conn.rx_start, conn.rx_end = 0, len(tail)
        end = len(tail)
    n = kernel_recvmsg(conn.sock, [conn.rxmv[end:]], RXBUF_SIZE - end, MSG_DONTWAIT)
    if n > 0:
        conn.rx_end = end + n
    return n


def _copy_in(conn: iscsi_conn, src: memoryview) -> None:
    """Place received data bytes at the current destination."""
    if conn.ddigest_rx:
        conn.rx_dcrc = crc32c_value(src, conn.rx_dcrc)
    if conn.rx_collect is not None:
        conn.rx_collect += src
        return
    iov = conn.rx_iov
    pos = 0
    n = len(src)
    while pos < n:
        v = iov[0]
        k = len(v)
        if k > n - pos:
            k = n - pos
            v[:k] = src[pos:pos + k]
            iov[0] = v[k:]
        else:
            v[:] = src[pos:pos + k]
            iov.pop(0)
        pos += k


def _advance_iov(iov: list, n: int) -> None:
    while n:
        v = iov[0]
        if len(v) > n:
            iov[0] = v[n:]
            return
        n -= len(v)
        iov.pop(0)


def iscsi_rx(conn: iscsi_conn) -> int:
    """Receive and process PDUs until the socket is empty (-EAGAIN), the
    peer closes (0) or the socket fails (-errno). Raises ProtocolError."""
    # cycle: iscsi imports nthread
    from iscsi_scst.iscsi import iscsi_rx_hdr, iscsi_rx_hdr_traced, trace_iscsi_pdu_rx
    ret = iscsi_conn_rxbuf_get(conn)
    if ret < 0:
        return ret
    mv = conn.rxmv
    drained = False           # the last fill was short: the socket is empty
    while not conn.closing:
        state = conn.read_state
        avail = conn.rx_end - conn.rx_start
        if state == RX_INIT_BHS:
            if avail >= BHS_SIZE:
                s = conn.rx_start
                hlen = BHS_SIZE + mv[s + 4] * 4
                dlen = hlen + (4 if conn.hdigest_rx else 0)
                if avail >= dlen:
                    if conn.hdigest_rx and not digest_matches(crc32c_value(mv[s:s + hlen]),
                                                              mv[s + hlen:s + dlen]):
                        raise ProtocolError(f"header digest error from {conn.peer}", None)
                    conn.rx_start = s + dlen
                    ng = conn.nagle
                    ng.busy += 1
                    if ng.busy == ng.enter_at:
                        iscsi_nagle_rx_check(conn)
                    if trace_iscsi_pdu_rx.enabled:
                        iscsi_rx_hdr_traced(conn, conn.rxbuf, s)
                    else:
                        iscsi_rx_hdr(conn, conn.rxbuf, s)
                    continue
        elif state == RX_DATA:
            if avail:
                take = avail if avail < conn.rx_left else conn.rx_left
                s = conn.rx_start
                _copy_in(conn, mv[s:s + take])
                conn.rx_start = s + take
                conn.rx_left -= take
                if not conn.rx_left:
                    conn.read_state = RX_TAIL
                continue
            if conn.rx_left >= _DIRECT_MIN and conn.rx_collect is None:
                iov = conn.rx_iov
                n = kernel_recvmsg(conn.sock, iov, conn.rx_left, MSG_DONTWAIT)
                if n > 0:
                    if conn.ddigest_rx:
                        conn.rx_dcrc = crc32c_iov(iov_head(iov, n), conn.rx_dcrc)
                    _advance_iov(iov, n)
                    conn.rx_left -= n
                    if not conn.rx_left:
                        conn.read_state = RX_TAIL
                    continue
                return n
        else:
            need = conn.rx_tail
            if avail >= need:
                s = conn.rx_start
                if conn.ddigest_rx and need >= 4:
                    crc = crc32c_value(mv[s:s + need - 4], conn.rx_dcrc)
                    if not digest_matches(crc, mv[s + need - 4:s + need]):
                        conn.rx_start = s + need
                        conn.read_state = RX_INIT_BHS
                        _data_digest_error(conn)
                        continue
                conn.rx_start = s + need
                conn.read_state = RX_INIT_BHS
                done = conn.rx_done
                if done is not None:
                    done(conn)
                continue
        if drained:
            # Saves the receive that would return -EAGAIN (one syscall and
            # one exception per wake-up: per command at QD1).
            return -EAGAIN
        n = _fill(conn)
        if n <= 0:
            return n
        drained = conn.rx_end < RXBUF_SIZE and sock_rx_armed(conn.sock)
    return 0


def _data_digest_error(conn: iscsi_conn) -> None:
    from iscsi_scst.iscsi import iscsi_data_digest_error  # cycle: iscsi imports nthread
    iscsi_data_digest_error(conn)


def iscsi_rd_thread(conn: iscsi_conn) -> int:
    while not conn.closing:
        conn.rd_ready = False
        try:
            ret = iscsi_rx(conn)
        except ProtocolError as e:
            from iscsi_scst.iscsi import iscsi_protocol_error  # cycle: iscsi imports nthread
            if iscsi_protocol_error(conn, e):
                continue
            break
        if ret == -EAGAIN:
            if (conn.rd_write_list or not list_empty(conn.write_list)) and not conn.tx_busy:
                # Send this batch's responses now instead of waking the wr thread.
                if iscsi_tx_flush(conn, False) == -EAGAIN and conn.tx_iov:
                    wake_up(conn.wr_waitQ)
            iscsi_nagle_idle(conn)
            iscsi_conn_rxbuf_put(conn)        # an idle connection pins no buffer
            wait_event_interruptible(conn.rd_waitQ, lambda: conn.rd_ready or conn.closing)
            continue
        if ret < 0:
            pr_info(f"iscsi: connection from {conn.peer}: receive error {ret}")
        break
    iscsi_conn_close(conn)
    return 0


# -- transmit ---------------------------------------------------------------

def iscsi_queue_tx(conn: iscsi_conn, entry: list_head) -> None:
    """Queue a response (its write_list_entry) for sending (any context).
    The rd thread keeps its own on conn.rd_write_list and flushes them
    before it sleeps; any other context puts them on write_list (after the
    rd thread's pending ones, so send order is queue order) and wakes the
    wr thread."""
    if sched.cpu.curr is conn.rd_task:       # current(), without the call
        conn.rd_write_list.append(entry)
        return
    wl = conn.write_list
    spin_lock_bh(conn.write_list_lock)
    # Only the first entry wakes the wr thread: it takes the whole list (a
    # batch of softirq completions costs one wake-up, not one each).
    was_empty = wl.next is wl
    if conn.rd_write_list:
        _rd_list_to_write_list(conn)
    list_add_tail(entry, wl)
    spin_unlock_bh(conn.write_list_lock)
    if was_empty:
        wake_up(conn.wr_waitQ)


def _rd_list_to_write_list(conn: iscsi_conn) -> None:
    """Move the rd thread's pending responses to the tail of write_list
    (write_list_lock held)."""
    rd = conn.rd_write_list
    conn.rd_write_list = []
    wl = conn.write_list
    for entry in rd:
        list_add_tail(entry, wl)


def iscsi_rd_tx_requeue(conn: iscsi_conn) -> None:
    """Put the rd thread's pending responses on write_list (any context),
    e.g. for a closing connection's walk of write_list."""
    if conn.rd_write_list:
        spin_lock_bh(conn.write_list_lock)
        _rd_list_to_write_list(conn)
        spin_unlock_bh(conn.write_list_lock)


def iscsi_tx_take(conn: iscsi_conn) -> list:
    """Every queued response's entry, in send order: write_list's, then the
    rd thread's own. The rd thread's alone (the busy case) cost no lock."""
    rd = conn.rd_write_list
    wl = conn.write_list
    if wl.next is wl:
        if rd:
            conn.rd_write_list = []
        return rd
    out = []
    spin_lock_bh(conn.write_list_lock)
    node = wl.next
    while node is not wl:
        nxt = node.next
        list_del_init(node)
        out.append(node)
        node = nxt
    if conn.rd_write_list:
        out += conn.rd_write_list
        conn.rd_write_list = []
    spin_unlock_bh(conn.write_list_lock)
    return out


def iscsi_tx_flush(conn: iscsi_conn, may_sleep: bool) -> int:
    """Send everything queued, in batches of one sendmsg each. 0 when all
    is out, -EAGAIN when the socket is full and may_sleep is False (the rest
    stays in conn.tx_iov for the wr thread), or -errno on failure."""
    from iscsi_scst.iscsi import iscsi_tx_build, iscsi_tx_done  # cycle: iscsi imports nthread
    if conn.tx_busy:
        return -EAGAIN
    conn.tx_busy = True
    try:
        while not conn.closing:
            if not conn.tx_iov:
                entries = iscsi_tx_take(conn)
                if not entries:
                    return 0
                iov = conn.tx_iov
                items = conn.tx_items
                n = len(entries)
                i = 0
                while i < n and len(iov) < _IOV_MAX:
                    item = entries[i].owner
                    iscsi_tx_build(conn, item, iov)
                    items.append(item)
                    i += 1
                if i < n:
                    # Over the iovec limit: the rest goes back to the front.
                    spin_lock_bh(conn.write_list_lock)
                    for entry in reversed(entries[i:]):
                        list_add(entry, conn.write_list)
                    spin_unlock_bh(conn.write_list_lock)
                conn.tx_len = sum(map(len, iov))
            conn.wr_space = False
            n = kernel_sendmsg(conn.sock, conn.tx_iov, MSG_DONTWAIT, conn.tx_len)
            if n < 0 and n != -EAGAIN:
                return n
            if n > 0:
                if n == conn.tx_len:
                    items = conn.tx_items
                    conn.tx_items = []
                    conn.tx_iov.clear()
                    iscsi_tx_done(conn, items, 0)
                    if not conn.rd_write_list and conn.write_list.next is conn.write_list:
                        return 0          # all sent, nothing queued meanwhile
                    continue
                _advance_iov(conn.tx_iov, n)
                conn.tx_len -= n
            if not may_sleep:
                return -EAGAIN
            if wait_event_interruptible(conn.wr_waitQ,
                                        lambda: conn.wr_space or conn.closing) < 0:
                return -EAGAIN
        return 0
    finally:
        conn.tx_busy = False


def iscsi_wr_thread(conn: iscsi_conn) -> int:
    wl = conn.write_list
    while True:
        wait_event_interruptible(conn.wr_waitQ, lambda: not list_empty(wl) or bool(conn.tx_iov)
                                 or bool(conn.rd_write_list) or conn.closing
                                 or kthread_should_stop())
        if conn.closing or kthread_should_stop():
            return 0
        ret = iscsi_tx_flush(conn, True)
        if ret < 0 and ret != -EAGAIN:
            iscsi_conn_mark_closing(conn)
            return 0


def hdigest(bhs: "bytes | bytearray") -> bytes:
    return digest_header(bhs)


def fill_sn(bhs: bytearray, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int) -> None:
    _sn3.pack_into(bhs, 24, stat_sn, exp_cmd_sn, max_cmd_sn)


PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def pad_bytes(n: int) -> bytes:
    return PAD[n & 3]


