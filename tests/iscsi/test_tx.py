"""iscsi_scst transmit side: a sent PDU leaves nothing for the cyclic GC."""
from __future__ import annotations

import gc

from iscsi_scst.iscsi import iscsi_tx_done, iscsi_tx_pdu


def test_sent_tx_pdu_leaves_no_self_referencing_list_head():
    """A NOP-In, R2T or Reject is an iscsi_tx_pdu whose write_list_entry
    points at itself while unlinked: left so after the send, each one was
    a cycle only a GC pass frees (the 64-session RSS run grew ~63 bytes per
    NOP-In exchange, issue 12)."""
    pdu = iscsi_tx_pdu(bytearray(48))
    entry = pdu.write_list_entry
    assert entry in gc.get_referents(entry)          # INIT_LIST_HEAD: next = prev = self
    iscsi_tx_done(None, [pdu], 0)                    # sent; no on_sent, so no conn needed
    assert pdu.write_list_entry is None
    assert entry not in gc.get_referents(entry)
    assert pdu not in gc.get_referents(entry)
