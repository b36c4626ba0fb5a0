"""The sim invariant checkers (tools/sim/invariants.py) catch planted faults.

Each fault is planted on the wire between a real uscstd and the sim
initiator (tests/sim/wire.py's WirePeer rewrites, drops or duplicates a
received PDU), so the checker sees exactly what a buggy target would
send; the same exchange without the fault passes, so the checker does not
cry wolf. The shadow disk's rule (which values a block may hold) is also
checked directly.
"""
from __future__ import annotations

import struct
from typing import Callable

import pytest

from wire import WirePeer

from tools.sim.channel import Channel
from tools.sim.initiator import InitiatorSession
from tools.sim.invariants import (Invariants, InvariantViolation, ShadowDisk, _Write, _byte_mix,
                                  decode_rw)
from tools.sim.pdu import DATAIN_FLAG_STATUS, OP_DATA_IN, OP_SCSI_RSP
from tools.sim.scenarios import TargetSpec, cdb_rw
from tools.sim.tcp import TcpWorld

BS = 512
Hook = Callable[[bytes], list[bytes]]


def is_status(pdu: bytes) -> bool:
    op = pdu[0] & 0x3F
    return op == OP_SCSI_RSP or (op == OP_DATA_IN and bool(pdu[1] & DATAIN_FLAG_STATUS))


def nth_status(n: int, fault: Callable[[bytes], list[bytes]]) -> Hook:
    """Apply fault to the n-th (from 1) status-bearing SCSI PDU received."""
    seen = [0]

    def hook(pdu: bytes) -> list[bytes]:
        if is_status(pdu):
            seen[0] += 1
            if seen[0] == n:
                return fault(pdu)
        return [pdu]
    return hook


def put_u32(pdu: bytes, off: int, value: int) -> bytes:
    return pdu[:off] + struct.pack(">I", value & 0xFFFFFFFF) + pdu[off + 4:]


def exchange(spec: TargetSpec, hook: Hook | None, torn_blocks: bool = False) -> Invariants:
    """Log in, write 8 blocks, read them back twice, ping; finish() at the
    end. Runs under a TcpWorld; raises what the checkers raise."""
    world = TcpWorld(3)
    inv = Invariants(BS, torn_blocks=torn_blocks)

    def body() -> None:
        sess = InitiatorSession(spec.iqn, isid=bytes([0x80, 9, 9, 9, 9, 9]), observer=inv)
        ch = Channel(sess.connection(0), WirePeer(world.connect(spec.addr), rx_hook=hook))
        try:
            ch.login()
            data = bytes(range(256)) * 2 * 8
            w = ch.submit(cdb_rw(True, 3000, 8, False), data_out=data)
            ch.wait([w])
            inv.baseline(0, 3000, data)      # the disk is not new: what we wrote
            reads = [ch.submit(cdb_rw(False, 3000, 8, False), read_len=8 * BS) for _ in range(2)]
            ch.wait_for(lambda: reads[-1].finished)     # the first may never be
            ch.ping()
            inv.finish()
        finally:
            ch.peer.close()
    world.spawn(body, "exchange")
    world.run(max_virtual_s=30)
    return inv


def test_clean_exchange_passes_every_checker(sim_server):
    _, spec = sim_server
    inv = exchange(spec, None)
    assert inv.violations == [] and inv.reads_checked == 2


def test_duplicated_scsi_response_is_an_answered_once_violation(sim_server):
    _, spec = sim_server
    with pytest.raises(InvariantViolation, match=r"^answered-once: a second answer for ITT"):
        exchange(spec, nth_status(2, lambda pdu: [pdu, pdu]))


def test_dropped_scsi_response_is_reported_unanswered_at_the_end(sim_server):
    """A target that forgets one response and numbers on as if it had
    not been due: no StatSN gap, so only the end-of-run count sees it."""
    _, spec = sim_server
    state = {"seen": 0, "dropped": False}

    def forget(pdu: bytes) -> list[bytes]:
        op = pdu[0] & 0x3F
        if is_status(pdu):
            state["seen"] += 1
            if state["seen"] == 2:
                state["dropped"] = True
                return []
        if state["dropped"] and (is_status(pdu) or op in (0x20, 0x31)):
            return [put_u32(pdu, 24, struct.unpack_from(">I", pdu, 24)[0] - 1)]
        return [pdu]
    with pytest.raises(InvariantViolation, match=r"^answered-once: 1 command\(s\) never answered"):
        exchange(spec, forget)


@pytest.mark.parametrize("torn_blocks", [False, True])
def test_corrupted_read_data_is_a_read_data_violation(sim_server, torn_blocks):
    """Also where blocks may tear (over real files): a block with one
    possible value has nothing to tear between."""
    _, spec = sim_server

    def corrupt(pdu: bytes) -> list[bytes]:
        off = 48 + 700               # inside block 1 of the Data-In segment
        return [pdu[:off] + bytes([pdu[off] ^ 0xFF]) + pdu[off + 1:]]
    with pytest.raises(InvariantViolation, match=r"^read-data: LUN 0 LBA 3001 "):
        exchange(spec, nth_status(2, corrupt), torn_blocks)


def test_a_block_torn_between_its_possible_values_is_a_byte_mix_of_them_only():
    a, b = b"AAAA", b"BBBB"
    assert _byte_mix(b"AABB", [a, b]) and _byte_mix(b"BABA", [a, b, bytes(4)])
    assert not _byte_mix(b"AAXB", [a, b])            # a byte from no possible value
    assert not _byte_mix(b"AABB", [a])               # one value: nothing to tear between


def test_statsn_skipping_ahead_is_an_sn_monotonic_violation(sim_server):
    _, spec = sim_server
    with pytest.raises(InvariantViolation, match=r"^sn-monotonic: .*StatSN \d+ after \d+"):
        exchange(spec, nth_status(2, lambda pdu: [put_u32(pdu, 24, struct.unpack_from(
            ">I", pdu, 24)[0] + 5)]))


def test_maxcmdsn_going_back_is_an_sn_monotonic_violation(sim_server):
    _, spec = sim_server

    def lower(pdu: bytes) -> list[bytes]:
        exp = struct.unpack_from(">I", pdu, 28)[0]
        return [put_u32(pdu, 32, exp)]          # MaxCmdSN == ExpCmdSN: a window of one
    with pytest.raises(InvariantViolation, match=r"^sn-monotonic: .*MaxCmdSN \d+ after \d+"):
        exchange(spec, nth_status(2, lower))


def test_shadow_disk_allows_either_of_two_overlapping_writes_but_not_a_superseded_one():
    disk = ShadowDisk(4)
    a, b, c = b"AAAA", b"BBBB", b"CCCC"
    disk.writes[7] = [(_Write(issued=1, ended=4, good=True), a),      # overlaps b
                      (_Write(issued=2, ended=3, good=True), b),
                      (_Write(issued=10, ended=None), c)]            # in flight
    assert sorted(disk.candidates(7, read_issued=5, read_done=6)) == [a, b]
    assert sorted(disk.candidates(7, read_issued=5, read_done=11)) == [a, b, c]
    disk.writes[7].append((_Write(issued=5, ended=6, good=True), b"DDDD"))
    assert disk.candidates(7, read_issued=8, read_done=9) == [b"DDDD"]
    assert disk.candidates(8, read_issued=8, read_done=9) == [bytes(4)]


def test_decode_rw_reads_lba_and_length_of_10_and_16_byte_cdbs():
    assert decode_rw(cdb_rw(True, 0x12345678, 9, False)) == (True, 0x12345678, 9)
    assert decode_rw(cdb_rw(False, 1 << 40, 70000, True)) == (False, 1 << 40, 70000)
    assert decode_rw(bytes(6)) is None


def test_shadow_disk_allows_exactly_the_candidates():
    disk = ShadowDisk(4)
    a, b, c = b"AAAA", b"BBBB", b"CCCC"
    disk.writes[7] = [(_Write(issued=1, ended=4, good=True), a),
                      (_Write(issued=2, ended=3, good=True), b),
                      (_Write(issued=10, ended=None), c)]
    disk.writes[8] = [(_Write(issued=3, ended=5, good=False), a)]
    for lba in (7, 8, 9):
        for issued, done in ((1, 2), (5, 6), (5, 11), (6, 12)):
            allowed = disk.candidates(lba, issued, done)
            for got in (a, b, c, bytes(4)):
                assert disk.allows(lba, got, issued, done) == (got in allowed), \
                    (lba, issued, done, got)
