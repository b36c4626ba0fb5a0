"""Target-initiated NOP-In pings (SCST's NopInInterval / NopInTimeout).

RFC 7143 behaviour checked here:
  - 11.19: a NOP-In the target sends on its own has ITT 0xffffffff; when it
    wants an answer its TTT is not 0xffffffff; it carries the connection's
    next StatSN without advancing it (11.19.3), and the F bit is set.
  - 11.18: the initiator answers with a NOP-Out carrying ITT 0xffffffff and
    the same TTT (and LUN), sent as an immediate PDU.
SCST's keys (iscsi-scst, docs/config.md): every NopInInterval seconds of an
idle connection the target pings; if no answer comes within NopInTimeout
seconds the connection is closed.

The TCP tests run uscstd with --config setting NopInInterval 1 and
NopInTimeout 1 and check the protocol only; every wait is an explicit bound
(a select or socket timeout), never a sleep, and no wall-clock duration is
asserted. The WHEN is checked on the sim engine (kshim.engine_sim), where
time is virtual: the target's timers fire exactly when they should, so the
sim tests assert exact delays (seed in each test's name; USCST_SEED=N picks
another) and cost no wall time.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from initiator import (
    OP_NOP_IN,
    RESERVED_TAG,
    ConnectionClosed,
    Initiator,
    pack_nop_out,
)
from kshim.engine_sim import Simulation, teardown_problems
from tools.sim.channel import Channel
from tools.sim.initiator import InitiatorSession, TargetPing
from tools.sim_target import boot_target, stop_target

IQN = "iqn.2026-11.org.uscst:nop"
INTERVAL = 1.0
NOP_TIMEOUT = 1.0
SLACK = 1.5            # scheduling and timer granularity allowance, seconds
TIMEOUT = 10.0


def _config(tmp: Path) -> str:
    return f"""HANDLER vdisk_nullio {{
\tDEVICE null0 {{
\t\tsize 64M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN} {{
\t\tNopInInterval {int(INTERVAL)}
\t\tNopInTimeout {int(NOP_TIMEOUT)}
\t\tLUN 0 null0
\t\tenabled 1
\t}}
}}
"""


@pytest.fixture
def srv(uscstd, tmp_path: Path):
    cfg = tmp_path / "nop.conf"
    cfg.write_text(_config(tmp_path))
    return uscstd("--config", str(cfg), disk=None, size=None, iqn=IQN)


def _login(srv) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT)
    ini.connect()
    ini.login(IQN)
    return ini


def _next_nop_in(ini: Initiator, within: float):
    """The next PDU, which must be a target NOP-In, arriving within `within`
    seconds; fails the test on anything else or on a timeout."""
    try:
        pdu = ini.recv_pdu(within)
    except TimeoutError:
        pytest.fail(f"no NOP-In within {within:.1f} s of an idle connection "
                    f"(NopInInterval {INTERVAL:g})")
    except ConnectionClosed:
        pytest.fail("target closed the connection instead of sending a NOP-In")
    assert pdu.opcode == OP_NOP_IN, f"expected a NOP-In, got {pdu!r}"
    return pdu


def _answer(ini: Initiator, nop_in) -> None:
    bhs = pack_nop_out(itt=RESERVED_TAG, ttt=nop_in.ttt, cmd_sn=ini.cmd_sn,
                       exp_stat_sn=ini.exp_stat_sn, lun=nop_in.lun_raw, immediate=True)
    ini.send_pdu(bhs)


def test_idle_connection_gets_a_nop_in_asking_for_an_answer(srv) -> None:
    ini = _login(srv)
    try:
        stat_sn_before = ini.exp_stat_sn
        pdu = _next_nop_in(ini, INTERVAL + SLACK)
        assert pdu.itt == RESERVED_TAG, f"ITT {pdu.itt:#010x}"
        assert pdu.ttt != RESERVED_TAG, "TTT 0xffffffff: the target asked for no answer"
        assert pdu.final, "NOP-In without the F bit"
        # It names the next StatSN and does not consume one.
        assert pdu.stat_sn == stat_sn_before, (pdu.stat_sn, stat_sn_before)
        _answer(ini, pdu)
        res = ini.test_unit_ready()
        assert res.ok, res
        assert res.final_pdu is not None and res.final_pdu.stat_sn == stat_sn_before
    finally:
        ini.close()
    srv.assert_healthy()


def test_answered_nop_ins_keep_the_connection(srv) -> None:
    ini = _login(srv)
    try:
        # Three pings answered: each answer re-arms the interval, so the
        # connection outlives what an unanswered first ping would have allowed.
        for _ in range(3):
            pdu = _next_nop_in(ini, INTERVAL + SLACK)
            assert pdu.itt == RESERVED_TAG and pdu.ttt != RESERVED_TAG, pdu
            _answer(ini, pdu)
        assert ini.test_unit_ready().ok
        assert ini.logout() == 0
    finally:
        ini.close()
    srv.assert_healthy()


def test_unanswered_nop_in_closes_the_connection_after_the_timeout(srv) -> None:
    ini = _login(srv)
    try:
        pdu = _next_nop_in(ini, INTERVAL + SLACK)
        assert pdu.ttt != RESERVED_TAG, pdu
        # No answer: the connection must go (when: test_sim_nop_in_timing_*).
        assert ini.expect_closed(NOP_TIMEOUT + SLACK), \
            f"connection still open {NOP_TIMEOUT + SLACK:.1f} s after an unanswered NOP-In"
    finally:
        ini.close()
    # Another initiator is served as before.
    other = _login(srv)
    try:
        assert other.test_unit_ready().ok
    finally:
        other.close()
    srv.assert_healthy()


# -- the same on virtual time (the sim engine) ------------------------------------

SIM_SEED = int(os.environ.get("USCST_SEED", "15"))
SIM_INTERVAL = 30           # SCST's defaults: a 30 s ping, 30 s to answer it
SIM_TIMEOUT = 30
NS = 1_000_000_000
MS = 1_000_000


def _sim_nop_run(seed: int, answer: bool, pings: int) -> tuple[Simulation, dict]:
    """Log in on a sim target, go idle, and record (virtual ns) when each
    NOP-In arrived and when the connection closed."""
    sim = Simulation(seed)
    t = boot_target(sim, tgt_params={"nop_in_interval": SIM_INTERVAL,
                                     "nop_in_timeout": SIM_TIMEOUT})
    seen: dict = {"pings": [], "closed": None}

    def actor() -> None:
        sess = InitiatorSession(t.iqn, isid=bytes([0x80]) + sim.rng.randbytes(5))
        ch = Channel(sess.connection(0), sim.connect(t.addr))
        ch.conn.answer_nop_in = answer
        ch.login()
        seen["idle_since"] = sim.now_ns
        while len(seen["pings"]) < pings and not ch.eof:
            for ev in ch.pump():
                if isinstance(ev, TargetPing):
                    seen["pings"].append(sim.now_ns)
        if answer:
            ch.ping()
            ch.logout()
        else:
            ch.wait_closed()
            seen["closed"] = sim.now_ns
    sim.spawn(actor, "idle-initiator")
    sim.run(max_virtual_s=10 * (SIM_INTERVAL + SIM_TIMEOUT))
    stop_target(sim)
    return sim, seen


def test_sim_nop_in_timing_pings_every_interval_while_answered_seed_15():
    sim, seen = _sim_nop_run(SIM_SEED, answer=True, pings=4)
    t = [seen["idle_since"], *seen["pings"]]
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    # Each ping one NopInInterval after the last activity the target saw; as
    # the initiator sees it, give or take a jiffy and the network latency.
    assert all(abs(g - SIM_INTERVAL * NS) < 2 * MS for g in gaps), gaps
    assert sim.now_ns >= 4 * SIM_INTERVAL * NS
    assert teardown_problems(sim) == []


def test_sim_nop_in_timing_unanswered_ping_closes_after_nop_in_timeout_seed_15():
    sim, seen = _sim_nop_run(SIM_SEED, answer=False, pings=1)
    (ping,) = seen["pings"]
    assert abs(ping - seen["idle_since"] - SIM_INTERVAL * NS) < 2 * MS
    waited = seen["closed"] - ping
    assert abs(waited - SIM_TIMEOUT * NS) < 2 * MS, waited
    assert teardown_problems(sim) == []
