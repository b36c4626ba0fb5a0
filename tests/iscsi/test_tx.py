"""iscsi_scst transmit side: a sent PDU leaves nothing for the cyclic GC;
responses queued from any context go out in queue order."""
from __future__ import annotations

import gc

from iscsi_scst.conn import iscsi_conn
from iscsi_scst.iscsi import iscsi_tx_done, iscsi_tx_pdu
from iscsi_scst.nthread import iscsi_queue_tx, iscsi_tx_take
from kshim.list import list_empty, list_head


def test_sent_tx_pdu_leaves_no_self_referencing_list_head():
    """A NOP-In, R2T or Reject is an iscsi_tx_pdu whose write_list_entry
    points at itself while unlinked: left so after the send, each one was
    a cycle only a GC pass frees (the 64-session RSS run grew ~63 bytes per
    NOP-In exchange, issue 12)."""
    pdu = iscsi_tx_pdu(bytearray(48))
    entry = pdu.write_list_entry
    assert entry in gc.get_referents(entry)          # INIT_LIST_HEAD: next = prev = self
    iscsi_tx_done(iscsi_conn(sock=None, portal=None), [pdu], 0)     # sent; no on_sent
    assert pdu.write_list_entry is None
    assert entry not in gc.get_referents(entry)
    assert pdu not in gc.get_referents(entry)


def _entry(name: str) -> list_head:
    e = list_head()
    e.owner = name
    return e


def test_queue_tx_off_rd_thread_keeps_queue_order_across_llist_and_write_list():
    """Decision 0071: a response queued outside the rd thread goes lock-free
    on conn.cpl_list while the rd thread has none pending, else on
    write_list after cpl_list's and the rd thread's; the sender takes
    write_list, cpl_list, rd_write_list, which is queue order."""
    conn = iscsi_conn(sock=None, portal=None)         # queueing touches no socket
    conn.rd_task = object()                         # the caller is not the rd thread
    conn.rd_write_list.append(_entry("w1"))         # the rd thread's pending response
    iscsi_queue_tx(conn, _entry("w2"))              # locked path: w1, w2 on write_list
    iscsi_queue_tx(conn, _entry("c1"))              # rd list empty now: lock-free
    assert [e.owner for e in conn.cpl_list] == ["c1"]
    conn.rd_write_list.append(_entry("r1"))
    iscsi_queue_tx(conn, _entry("w3"))              # moves c1, r1 to write_list first
    conn.rd_write_list.append(_entry("r2"))
    assert [e.owner for e in iscsi_tx_take(conn)] == ["w1", "w2", "c1", "r1", "w3", "r2"]
    conn.rd_write_list.append(_entry("r3"))
    iscsi_queue_tx(conn, _entry("w4"))              # locked: r3, w4 on write_list
    iscsi_queue_tx(conn, _entry("c2"))              # lock-free, behind write_list
    conn.rd_write_list.append(_entry("r4"))
    assert [e.owner for e in iscsi_tx_take(conn)] == ["r3", "w4", "c2", "r4"]
    iscsi_queue_tx(conn, _entry("c3"))
    conn.rd_write_list.append(_entry("r5"))
    assert [e.owner for e in iscsi_tx_take(conn)] == ["c3", "r5"]   # the lock-free take
    assert not conn.cpl_list and not conn.rd_write_list and list_empty(conn.write_list)
