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
fit the socket. Other contexts queue lock-free on conn.cpl_list (an
llist) while the rd thread has nothing pending, else on write_list under
write_list_lock (decision 0071). Either takes every queued response at once, builds the
iovecs (BHS, data as memoryviews of the command's pages, padding, digests)
and sends them with one sendmsg; StatSN is assigned then, in send order.

Tracepoint: while iscsi_pdu_rx is enabled the rd thread calls
iscsi_rx_hdr_traced (iscsi.py), which wraps the header's handling in a span.

Zero-copy Data-In (decision 0067): a READ that vdisk_fileio left in the
page cache (scmd.data_file) puts file_extents in the iovec, and the batch
goes out piece by piece (_tx_send_files): buffers by kernel_sendmsg, the
extents by kernel_sendfile, MSG_MORE on all but the last, as iscsi-scst
sends headers with sock_sendmsg and data pages with sendpage.

Differs from iscsi-scst: per-connection threads instead of shared pools;
a Data-In in sg (the copy path: small READs, DataDigest, cache misses)
goes by sendmsg of memoryviews, which copies once into the socket.
"""
from __future__ import annotations

import struct

from iscsi_scst.conn import (RX_DATA, RX_INIT_BHS, RX_TAIL, RXBUF_SIZE, iscsi_conn,
                             iscsi_conn_close, iscsi_conn_mark_closing, iscsi_conn_rxbuf_get,
                             iscsi_conn_rxbuf_put)
from iscsi_scst.digest import digest_header, digest_matches
from iscsi_scst.hdr import BHS_SIZE, ProtocolError
from iscsi_scst.nagle import iscsi_nagle_idle, iscsi_nagle_rx_check
from kshim import host, sched
from kshim.crc32c import crc32c_iov, crc32c_value
from kshim.err import EAGAIN
from kshim.filemap import file_extent
from kshim.host import iov_head
from kshim.kthread import kthread_should_stop
from kshim.list import list_add, list_add_tail, list_del_init, list_empty, list_head
from kshim.net import (MSG_DONTWAIT, MSG_MORE, kernel_recvmsg, kernel_sendfile, kernel_sendmsg,
                       sock_rx_armed)
from kshim.printk import pr_err, pr_info
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
    peer closes (0) or the socket fails (-errno). Raises ProtocolError.
    The predicted WRITEs the pass kept are offered to SCST before it
    returns, also when it raises (commands received before a bad PDU run,
    as they would have, had they been started at once)."""
    try:
        return _iscsi_rx(conn)
    finally:
        if conn.fast_wr_list:
            from iscsi_scst.iscsi import iscsi_fast_wr_flush  # cycle: iscsi imports nthread
            iscsi_fast_wr_flush(conn)


def _iscsi_rx(conn: iscsi_conn) -> int:
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
            if ((conn.rd_write_list or conn.cpl_list or not list_empty(conn.write_list))
                    and not conn.tx_busy):
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
    before it sleeps. Any other context adds it lock-free to conn.cpl_list
    (llist_add) while the rd thread has none pending, else puts it on
    write_list after cpl_list's and the rd thread's pending ones, so send
    order is queue order; either wakes the wr thread."""
    if sched.cpu.curr is conn.rd_task:       # current(), without the call
        conn.rd_write_list.append(entry)
        return
    # Only the first entry wakes the wr thread: it takes the whole queue (a
    # batch of softirq completions costs one wake-up, not one each).
    wl = conn.write_list
    if not conn.rd_write_list:
        cpl = conn.cpl_list
        cpl.append(entry)
        if len(cpl) == 1 and wl.next is wl:
            wake_up(conn.wr_waitQ)
        return
    spin_lock_bh(conn.write_list_lock)
    was_empty = wl.next is wl and not conn.cpl_list
    _llists_to_write_list(conn)
    list_add_tail(entry, wl)
    spin_unlock_bh(conn.write_list_lock)
    if was_empty:
        wake_up(conn.wr_waitQ)


def _llists_to_write_list(conn: iscsi_conn) -> None:
    """Move the lock-free queued responses, conn.cpl_list's then the rd
    thread's, to the tail of write_list (write_list_lock held)."""
    cpl = conn.cpl_list
    rd = conn.rd_write_list
    conn.cpl_list = []
    conn.rd_write_list = []
    wl = conn.write_list
    for entry in cpl + rd:
        list_add_tail(entry, wl)


def iscsi_rd_tx_requeue(conn: iscsi_conn) -> None:
    """Put the lock-free queued responses (conn.cpl_list, the rd thread's)
    on write_list (any context), e.g. for a closing connection's walk of
    write_list."""
    if conn.rd_write_list or conn.cpl_list:
        spin_lock_bh(conn.write_list_lock)
        _llists_to_write_list(conn)
        spin_unlock_bh(conn.write_list_lock)


def iscsi_tx_take(conn: iscsi_conn) -> list:
    """Every queued response's entry, in send order: write_list's, then
    conn.cpl_list's, then the rd thread's own. With write_list empty (the
    busy case) it costs no lock: the other two are llists."""
    rd = conn.rd_write_list
    wl = conn.write_list
    if wl.next is wl:
        if rd:
            conn.rd_write_list = []
        cpl = conn.cpl_list
        if cpl:
            conn.cpl_list = []          # llist_del_all
            if rd:
                cpl += rd
            return cpl
        return rd
    out = []
    spin_lock_bh(conn.write_list_lock)
    node = wl.next
    while node is not wl:
        nxt = node.next
        list_del_init(node)
        out.append(node)
        node = nxt
    if conn.cpl_list:
        out += conn.cpl_list
        conn.cpl_list = []
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
                # iscsi_tx_take's lock-free case inline: the rd thread's own
                # batch with write_list empty, once per pass of a busy session.
                entries = conn.rd_write_list
                if entries and conn.write_list.next is conn.write_list and not conn.cpl_list:
                    conn.rd_write_list = []
                else:
                    entries = iscsi_tx_take(conn)
                if not entries:
                    return 0
                iov = conn.tx_iov
                n = len(entries)
                i = iscsi_tx_build(conn, entries, iov, conn.tx_items, _IOV_MAX)
                if i < n:
                    # Over the iovec limit: the rest goes back to the front.
                    spin_lock_bh(conn.write_list_lock)
                    for entry in reversed(entries[i:]):
                        list_add(entry, conn.write_list)
                    spin_unlock_bh(conn.write_list_lock)
                conn.tx_len = sum(map(len, iov))
            conn.wr_space = False
            if conn.tx_sendfile:
                n = _tx_send_files(conn)
            else:
                n = kernel_sendmsg(conn.sock, conn.tx_iov, MSG_DONTWAIT, conn.tx_len)
            if n < 0 and n != -EAGAIN:
                return n
            if n > 0:
                if n == conn.tx_len:
                    items = conn.tx_items
                    conn.tx_items = []
                    conn.tx_iov.clear()
                    conn.tx_sendfile = False
                    iscsi_tx_done(conn, items, 0)
                    if (not conn.rd_write_list and not conn.cpl_list
                            and conn.write_list.next is conn.write_list):
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


def _tx_send_files(conn: iscsi_conn) -> int:
    """Send conn.tx_iov when it holds file_extents (zero-copy Data-In): the
    buffers between them with kernel_sendmsg, each extent with
    kernel_sendfile, every piece but the last with MSG_MORE (iscsi-scst's
    write_data: headers by sock_sendmsg, data pages by sendpage). Bytes
    sent, fewer when the socket filled (its write space is armed), -EAGAIN
    if none, or -errno. The caller advances tx_iov by what was sent."""
    iov = conn.tx_iov
    sent = 0
    i = 0
    end = len(iov)
    while i < end:
        flags = MSG_DONTWAIT | MSG_MORE if i + 1 < end else MSG_DONTWAIT
        if type(iov[i]) is file_extent:
            want = len(iov[i])
            j = i + 1
            n = _tx_send_extent(conn, i, flags)
        else:
            j = i + 1
            while j < end and type(iov[j]) is not file_extent:
                j += 1
            piece = iov[i:j]
            want = host.iov_len(piece)
            n = kernel_sendmsg(conn.sock, piece, MSG_DONTWAIT | MSG_MORE if j < end else MSG_DONTWAIT)
        if n < 0:
            return sent or n
        sent += n
        if n < want:
            return sent
        i = j
    return sent


def _tx_send_extent(conn: iscsi_conn, i: int, flags: int) -> int:
    """Send conn.tx_iov[i], a file_extent: its length, fewer when the socket
    filled (-EAGAIN if none), or -errno. A short send is tried again at
    once from where it stopped: the retry tells a full socket (-EAGAIN)
    from a file that ended. An extent whose file ended under it (truncated
    since the READ) goes on as zeros, the bytes a READ past the end of the
    file reads (vdisk/fileio.py); a file that cannot be read (-EIO) leaves
    a PDU promised and unfinished, so the connection closes (RFC 7143 lets
    the initiator retry the command on a new one)."""
    v = conn.tx_iov[i]
    want = v.count
    done = 0
    while done < want:            # bounded: every pass sends bytes or returns
        n = kernel_sendfile(conn.sock, v[done:] if done else v, flags)
        if n > 0:
            conn.tx_sendfile_bytes += n
            done += n
            if done < want:
                conn.tx_sendfile_short += 1
            continue
        if n == 0:
            pr_err(f"iscsi: {conn.peer}: {v!r} ended under a Data-In: sending "
                   f"{want - done} zero bytes in its place")
            conn.tx_sendfile_eof_bytes += want - done
            zeros = bytes(want)           # same length: the caller's advance stays right
            conn.tx_iov[i] = zeros
            n = kernel_sendmsg(conn.sock, [memoryview(zeros)[done:]], flags)
            return done + n if n >= 0 else done or n
        if n != -EAGAIN:
            pr_err(f"iscsi: {conn.peer}: sending {v!r} failed ({n}): closing the connection")
            iscsi_conn_mark_closing(conn)
        return done or n
    return done


def iscsi_wr_thread(conn: iscsi_conn) -> int:
    wl = conn.write_list
    while True:
        wait_event_interruptible(conn.wr_waitQ, lambda: not list_empty(wl) or bool(conn.tx_iov)
                                 or bool(conn.rd_write_list) or bool(conn.cpl_list)
                                 or conn.closing
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


