"""The sans-IO sim initiator (tools/sim/initiator.py) against a real uscstd.

Real TCP on loopback through tools/sim/tcp.py's TcpWorld; the target is
tests/sim/tcp_target.py's (MaxConnections 8, InitialR2T No allowed). The
wire is watched by tests/sim/wire.py's WirePeer, so each test proves the
PDUs it claims were really sent: immediate data, unsolicited and R2T-driven
Data-Out, multi-PDU Data-In. Every data check also runs through the
invariant checkers (tools/sim/invariants.py). Every wait is bounded by the
world's time limit.
"""
from __future__ import annotations

import random
from typing import Callable

import pytest

from wire import WirePeer

from tools.sim.channel import Channel, ChannelError
from tools.sim.initiator import InitiatorSession
from tools.sim.invariants import Invariants
from tools.sim.pdu import (
    LOGOUT_CLOSE_CONNECTION,
    OP_DATA_IN,
    OP_R2T,
    RESERVED_TAG,
    TMF_ABORT_TASK,
    TMF_LUN_RESET,
    TMF_RSP_COMPLETE,
    TMF_RSP_NO_TASK,
)
from tools.sim.scenarios import TargetSpec, cdb_rw
from tools.sim.tcp import TcpWorld

BS = 512
LIMIT_S = 60.0


def run(spec: TargetSpec, body: Callable[[TcpWorld, Invariants], None], seed: int = 1) -> Invariants:
    """Run body as one actor of a TcpWorld; the invariants must hold at the end."""
    world = TcpWorld(seed)
    inv = Invariants(BS)
    world.spawn(lambda: body(world, inv), "test")
    world.run(max_virtual_s=LIMIT_S)
    inv.finish()
    return inv


def session(world: TcpWorld, spec: TargetSpec, inv: Invariants, *,
            keys: dict[str, str] | None = None, isid: bytes | None = None) -> InitiatorSession:
    return InitiatorSession(spec.iqn, isid=isid or bytes([0x80]) + world.rng.randbytes(5),
                            observer=inv, session_keys=keys)


def channel(world: TcpWorld, spec: TargetSpec, sess: InitiatorSession, cid: int = 0,
            **wire_kw: object) -> tuple[Channel, WirePeer]:
    wire = WirePeer(world.connect(spec.addr), **wire_kw)     # type: ignore[arg-type]
    return Channel(sess.connection(cid), wire), wire


def write(ch: Channel, lba: int, data: bytes, lun: int = 0, imm: bool = True):
    return ch.submit(cdb_rw(True, lba, len(data) // BS, lba > 0xFFFF), lun=lun,
                     data_out=data, use_immediate=imm)


def read(ch: Channel, lba: int, blocks: int, lun: int = 0):
    return ch.submit(cdb_rw(False, lba, blocks, False), lun=lun, read_len=blocks * BS)


def test_login_enters_full_feature_phase_with_the_negotiated_session_keys(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = session(world, spec, inv, keys={"InitialR2T": "No", "FirstBurstLength": "16384"})
        ch, _ = channel(world, spec, sess)
        ev = ch.login({"MaxRecvDataSegmentLength": "8192"})
        assert ev.tsih != 0 and sess.tsih == ev.tsih
        assert ch.conn.full_feature
        assert sess.params["InitialR2T"] == "No"
        assert sess.params["FirstBurstLength"] == "16384"
        assert ch.conn.our_mrdsl == 8192
        assert ch.logout() == 0
        assert ch.eof
    run(spec, body)


def test_qd32_writes_and_reads_use_immediate_data_unsolicited_data_out_r2t_and_multi_pdu_data_in(
        sim_server):
    """64 writes of 1-64 blocks at queue depth 32 (FirstBurstLength 16 KiB,
    so the larger ones need R2Ts), then every block read back at QD 32 in
    64-block reads that come as several 8 KiB Data-Ins; the invariant
    checkers compare every block read with what was written."""
    _, spec = sim_server
    rng = random.Random(11)

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = session(world, spec, inv, keys={"InitialR2T": "No", "ImmediateData": "Yes",
                                               "FirstBurstLength": "16384"})
        ch, wire = channel(world, spec, sess)
        ch.login({"MaxRecvDataSegmentLength": "8192"})
        works = []
        for i in range(64):
            blocks = rng.randint(1, 64)
            lba = rng.randrange(0, 256 - blocks + 1)
            data = rng.randbytes(blocks * BS)
            works.append(lambda ch, lba=lba, data=data, i=i: write(ch, lba, data, imm=i % 4 != 0))
        # Writes to overlapping blocks at QD 32 may land in any order:
        # write them, then read back once they all ended.
        wrote = ch.run(works, 32)
        assert all(c.good for c in wrote)
        reads = ch.run([lambda ch, lba=lba: read(ch, lba, 64) for lba in range(0, 256, 64)] * 8,
                       32)
        assert all(c.good for c in reads)
        assert inv.reads_checked == 32
        assert wire.immediate_data > 0
        assert wire.unsolicited_data_out > 0
        assert wire.solicited_data_out > 0 and wire.received[OP_R2T] > 0
        assert wire.received[OP_DATA_IN] >= 32 * 4
        ch.logout()
    run(spec, body)


def test_initiator_reassembles_pdus_delivered_one_to_seven_bytes_at_a_time(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = session(world, spec, inv)
        ch, _ = channel(world, spec, sess, split=random.Random(5))
        ch.login({"MaxRecvDataSegmentLength": "4096"})
        data = bytes(range(256)) * 64          # 32 blocks
        w = write(ch, 300, data)
        ch.wait([w])
        r = read(ch, 300, 32)
        ch.wait([r])
        assert w.good and r.good and bytes(r.data) == data
        ch.ping()
        ch.logout()
    run(spec, body)


def test_abort_task_and_lun_reset_end_every_command_exactly_once(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = session(world, spec, inv)
        ch, _ = channel(world, spec, sess)
        ch.login()
        done = read(ch, 0, 1)
        ch.wait([done])
        # A finished task is no longer there to abort.
        assert ch.task_mgmt(TMF_ABORT_TASK, ref_itt=done.itt) == TMF_RSP_NO_TASK
        cmds = [write(ch, 512 + 8 * i, world.rng.randbytes(8 * BS)) for i in range(16)]
        assert ch.task_mgmt(TMF_ABORT_TASK, ref_itt=cmds[-1].itt) in (TMF_RSP_COMPLETE,
                                                                       TMF_RSP_NO_TASK)
        assert ch.task_mgmt(TMF_LUN_RESET, lun=0) == TMF_RSP_COMPLETE
        ch.wait(cmds)
        assert all(c.finished for c in cmds)
        # After a LUN reset the nexus holds a unit attention: clear it.
        for _ in range(4):
            tur = ch.submit(bytes(6))
            ch.wait([tur])
            if tur.good:
                break
        assert tur.good
        ch.logout()
    inv = run(spec, body)
    assert inv.commands >= 18


def test_mcs_connections_of_one_session_share_its_cmdsn_space(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = session(world, spec, inv)
        lead, _ = channel(world, spec, sess, 0)
        lead.login({"MaxConnections": "4"})
        assert sess.param("MaxConnections") == "4"
        second, _ = channel(world, spec, sess, 1)
        second.login()
        assert sess.tsih == lead.conn.session.tsih
        a = write(lead, 1000, b"A" * BS)
        b = write(second, 1001, b"B" * BS)
        lead.wait([a])
        second.wait([b])
        assert a.good and b.good and b.cmd_sn == a.cmd_sn + 1
        r = read(second, 1000, 2)
        second.wait([r])
        assert bytes(r.data) == b"A" * BS + b"B" * BS
        assert second.logout(LOGOUT_CLOSE_CONNECTION) == 0
        lead.ping()            # the session lives on with its leading connection
        assert lead.logout() == 0
    run(spec, body)


def test_login_with_a_live_sessions_isid_reinstates_it_and_closes_the_old_connection(
        sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        isid = bytes([0x80, 1, 2, 3, 4, 5])
        old, _ = channel(world, spec, session(world, spec, inv, isid=isid))
        old.login()
        w = write(old, 2000, b"x" * BS)
        old.wait([w])
        new_sess = session(world, spec, inv, isid=isid)
        new, _ = channel(world, spec, new_sess)
        new.login()
        assert new_sess.tsih != old.conn.session.tsih
        with pytest.raises(ChannelError):
            old.wait_for(lambda: False)
        assert old.eof
        r = read(new, 2000, 1)
        new.wait([r])
        assert bytes(r.data) == b"x" * BS
        new.logout()
    run(spec, body)


def test_login_to_an_unknown_target_fails_without_entering_full_feature(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        sess = InitiatorSession("iqn.2026-11.org.uscst:nope", isid=bytes([0x80, 0, 0, 0, 0, 9]))
        ch = Channel(sess.connection(0), world.connect(spec.addr))
        with pytest.raises(ChannelError, match="login failed: class 0x02"):
            ch.login()
        assert not ch.conn.full_feature and sess.tsih == 0
        ch.peer.close()
    run(spec, body)


def test_nop_out_ping_is_answered_with_its_itt(sim_server):
    _, spec = sim_server

    def body(world: TcpWorld, inv: Invariants) -> None:
        ch, wire = channel(world, spec, session(world, spec, inv))
        ch.login()
        ch.ping()
        ch.ping()
        assert wire.sent[0x00] >= 2 and wire.received[0x20] >= 2
        assert all(e.itt != RESERVED_TAG for e in ch.events if type(e).__name__ == "PingComplete")
        ch.logout()
    run(spec, body)
