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

uscstd runs with --config setting NopInInterval 1 and NopInTimeout 1, so
every wait here is a few seconds at most, and each is an explicit bound
(a select or socket timeout), never a sleep.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from initiator import (
    OP_NOP_IN,
    RESERVED_TAG,
    ConnectionClosed,
    Initiator,
    pack_nop_out,
)

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
        t0 = time.monotonic()
        pdu = _next_nop_in(ini, INTERVAL + SLACK)
        assert time.monotonic() - t0 <= INTERVAL + SLACK
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
        # Stay idle past the point where an unanswered first ping would have
        # closed the connection (interval + timeout + slack), answering every ping.
        span = INTERVAL + NOP_TIMEOUT + SLACK
        end = time.monotonic() + span
        seen = 0
        while time.monotonic() < end:
            pdu = _next_nop_in(ini, INTERVAL + SLACK)
            assert pdu.itt == RESERVED_TAG and pdu.ttt != RESERVED_TAG, pdu
            _answer(ini, pdu)
            seen += 1
        assert seen >= 2, f"{seen} NOP-Ins in {span:.1f} s with NopInInterval {INTERVAL:g}"
        assert ini.test_unit_ready().ok
        assert ini.logout() == 0
    finally:
        ini.close()
    srv.assert_healthy()


def test_unanswered_nop_in_closes_the_connection_after_the_timeout(srv) -> None:
    ini = _login(srv)
    try:
        pdu = _next_nop_in(ini, INTERVAL + SLACK)
        t_ping = time.monotonic()
        assert pdu.ttt != RESERVED_TAG, pdu
        # No answer: the connection must go within NopInTimeout (+ slack).
        assert ini.expect_closed(NOP_TIMEOUT + SLACK), \
            f"connection still open {NOP_TIMEOUT + SLACK:.1f} s after an unanswered NOP-In"
        waited = time.monotonic() - t_ping
        assert waited >= NOP_TIMEOUT * 0.5, f"closed {waited:.2f} s after the ping, " \
            f"well before NopInTimeout {NOP_TIMEOUT:g}"
    finally:
        ini.close()
    # Another initiator is served as before.
    other = _login(srv)
    try:
        assert other.test_unit_ready().ok
    finally:
        other.close()
    srv.assert_healthy()
