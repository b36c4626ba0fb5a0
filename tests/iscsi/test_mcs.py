"""Multiple connections per session (MC/S) against a running uscstd.

RFC 7143 behaviour checked here:
  - 6.3 / 11.12.4: a login with the TSIH of a live session and the same ISID
    and InitiatorName adds a connection (new CID) to that session; the final
    Login Response carries the same TSIH, and ExpCmdSN is the session's, so
    CmdSN numbering continues across connections (4.2.2.1).
  - 13.2 MaxConnections: a login that would exceed the negotiated value is
    refused with status 0x0206 "too many connections".
  - 4.2.2.1 / 3.2.2.1: commands are delivered to SCSI in CmdSN order across
    all connections of a session; one that arrives before a gap is filled is
    held (with its unsolicited data) until the gap closes.
  - 11.14: Logout reason 1 closes only the named connection (the leading
    one included) and the session lives on; reason 0 closes every
    connection of the session.

How a session is driven: tests/initiator.py's Initiator is one TCP
connection; _Session below makes several of them one session: they share
ISID and TSIH, take CmdSNs from one counter, draw ITTs from disjoint ranges
(ITTs are unique per session, 11.2.1.8), and every connection after the
first offers only connection-level keys (LO keys belong to the leading
login, 6.2; their session values are copied from the leading connection).

The target is uscstd started with --config: one 64 MiB file LUN on a target
with `MaxConnections 8` (without it the target offers 1, see the last test).
Every wait is bounded by the initiators' timeouts.
"""
from __future__ import annotations

import os
import select
import struct
from pathlib import Path
from typing import Iterator

import pytest

import uscstd_support

from initiator import (
    ATTR_ORDERED,
    LOGOUT_CLOSE_CONNECTION,
    LOGOUT_CLOSE_SESSION,
    Initiator,
    LoginError,
    Rejected,
    ScsiResult,
    sn_lt,
)

IQN = "iqn.2026-11.org.uscst:mcs"
BS = 512
TIMEOUT = 10.0
QUIET = 0.3            # seconds a held command must stay unanswered
# Keys RFC 7143 marks LO (leading only) that the test initiator offers.
LO_KEYS = ("MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
           "FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder",
           "DataSequenceInOrder", "ErrorRecoveryLevel", "DefaultTime2Wait",
           "DefaultTime2Retain")


def _config(tmp: Path) -> str:
    return f"""HANDLER vdisk_fileio {{
\tDEVICE disk0 {{
\t\tfilename {tmp}/disk0.img
\t\tsize 64M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN} {{
\t\tMaxConnections 8
\t\tLUN 0 disk0
\t\tenabled 1
\t}}
}}
"""


@pytest.fixture(scope="module")
def mcs_server(tmp_path_factory) -> Iterator:
    """One uscstd for the module: target IQN with MaxConnections 8."""
    cf = uscstd_support
    tmp = tmp_path_factory.mktemp("mcs")
    cfg = tmp / "mcs.conf"
    cfg.write_text(_config(tmp))
    srv = cf.start_uscstd(tmp / "srv", "--config", str(cfg), disk=None, size=None, iqn=IQN)
    try:
        yield srv
    finally:
        try:
            cf.finish_uscstd(srv)
        finally:
            srv.kill()


def _cdb10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


def _pattern(seed: int, n: int) -> bytes:
    return (struct.pack(">I", seed) * (n // 4 + 1))[:n]


class _Session:
    """Several Initiator connections that form one iSCSI session."""

    def __init__(self, srv, max_connections: str = "8", extra_keys: dict | None = None):
        self.srv = srv
        self.lead = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, cid=0)
        self.lead.connect()
        self.lead._next_itt = 1
        self.lead.login(IQN, keys={"MaxConnections": max_connections, **(extra_keys or {})})
        self.tsih = self.lead.tsih
        self.conns: dict[int, Initiator] = {0: self.lead}
        self.made: list[Initiator] = [self.lead]     # every socket, for close()
        self.cmd_sn = self.lead.cmd_sn

    def _sync(self, ini: Initiator) -> None:
        """Give ini the session's CmdSN and the newest window any connection saw."""
        ini.cmd_sn = self.cmd_sn
        for other in self.conns.values():
            if sn_lt(ini.exp_cmd_sn, other.exp_cmd_sn):
                ini.exp_cmd_sn = other.exp_cmd_sn
            if sn_lt(ini.max_cmd_sn, other.max_cmd_sn):
                ini.max_cmd_sn = other.max_cmd_sn

    def new_conn(self, cid: int) -> Initiator:
        """Log in one more connection with CID cid (raises LoginError)."""
        ini = Initiator(host=self.srv.host, port=self.srv.port, timeout=TIMEOUT,
                        isid=self.lead.isid, cid=cid,
                        initiator_name=self.lead.initiator_name)
        ini.connect()
        self.made.append(ini)
        ini.tsih = self.tsih
        ini.cmd_sn = self.cmd_sn          # the login's CmdSN: the session's next one
        ini._next_itt = (cid << 24) | 1   # disjoint ITT ranges per connection
        try:
            ini.login(IQN, keys={k: None for k in LO_KEYS})
        except BaseException:
            ini.close()
            raise
        # Session-wide values come from the leading login.
        for k in LO_KEYS:
            if k in self.lead.params:
                ini.params[k] = self.lead.params[k]
        self.conns[cid] = ini
        return ini

    def submit(self, ini: Initiator, cdb: bytes, *, cmd_sn: int | None = None, **kw) -> int:
        """Send a command on ini with the session's next CmdSN (or cmd_sn)."""
        self._sync(ini)
        if cmd_sn is not None:
            ini.cmd_sn = cmd_sn
        itt = ini.submit(cdb, **kw)
        if cmd_sn is None or sn_lt(self.cmd_sn, ini.cmd_sn):
            self.cmd_sn = ini.cmd_sn
        return itt

    def write(self, ini: Initiator, lba: int, data: bytes, **kw) -> int:
        return self.submit(ini, _cdb10(0x2A, lba, len(data) // BS), data_out=data, **kw)

    def read(self, ini: Initiator, lba: int, nbytes: int, **kw) -> int:
        return self.submit(ini, _cdb10(0x28, lba, nbytes // BS), read_len=nbytes, **kw)

    def tur(self, ini: Initiator) -> ScsiResult:
        return ini.wait(self.submit(ini, bytes(6)))

    def logout(self, ini: Initiator, reason: int) -> int:
        self._sync(ini)
        rsp = ini.logout(reason)
        if rsp == 0:
            self.conns = {c: i for c, i in self.conns.items() if i is not ini}
        return rsp

    def close(self) -> None:
        for ini in self.made:
            ini.close()


def _early_pdu(ini: Initiator, seconds: float) -> str | None:
    """None if nothing arrives on ini's socket for `seconds`, else a
    description of what did (the test fails then, so consuming it is fine)."""
    assert ini.sock is not None
    if not ini._rbuf:
        r, _, _ = select.select([ini.sock], [], [], seconds)
        if not r:
            return None
    try:
        pdu = ini.recv_pdu(1.0, track=False)
    except Exception as e:              # closed, or a partial PDU
        return f"{type(e).__name__}: {e}"
    extra = f" reason 0x{pdu.reason:02x}" if pdu.name == "Reject" else ""
    return f"{pdu!r}{extra}"


def _explain(srv) -> str:
    return "uscstd stderr (tail):\n" + srv.stderr_text()[-3000:]


# --- joining -----------------------------------------------------------------------

def test_four_connections_join_one_session_with_its_tsih_and_cmdsn(mcs_server) -> None:
    s = _Session(mcs_server)
    try:
        assert s.lead.negotiated.get("MaxConnections") == "8", \
            f"target answered MaxConnections={s.lead.negotiated.get('MaxConnections')!r} " \
            f"with `MaxConnections 8` configured"
        for _ in range(3):                    # move CmdSN past the login's
            assert s.tur(s.lead).ok
        for cid in (1, 2, 3):
            try:
                ini = s.new_conn(cid)
            except LoginError as e:
                pytest.fail(f"connection CID {cid} could not join session TSIH "
                            f"{s.tsih:#x}: {e}\n{_explain(mcs_server)}")
            # The final Login Response names the existing session, and its
            # ExpCmdSN continues the session's numbering (strict login checks
            # ExpCmdSN == our CmdSN, which is the session's next).
            assert ini.tsih == s.tsih
            assert ini.exp_cmd_sn == s.cmd_sn
            assert s.tur(ini).ok
        # Every connection keeps serving, in turn, on one CmdSN sequence.
        for ini in s.conns.values():
            assert s.tur(ini).ok
        assert len(s.conns) == 4
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_reads_and_r2t_writes_flow_on_every_connection_at_once(mcs_server) -> None:
    s = _Session(mcs_server)
    try:
        for cid in (1, 2, 3):
            s.new_conn(cid)
        conns = list(s.conns.values())
        n = 128 * 1024                       # over FirstBurstLength: R2T-driven
        base = 4096
        writes = {}
        for i, ini in enumerate(conns):
            data = _pattern(0xC0DE0000 + i, n)
            # immediate=False: no immediate data, every byte goes after an R2T.
            writes[i] = (ini, s.write(ini, base + i * (n // BS), data, immediate=False), data)
        for ini, itt, _data in writes.values():
            res = ini.wait(itt)
            assert res.ok, res
            assert res.r2ts >= 1, f"write on CID {ini.cid} got no R2T"
        # Read each range back on another connection, all in flight together.
        reads = {}
        for i in range(len(conns)):
            other = conns[(i + 1) % len(conns)]
            reads[i] = (other, s.read(other, base + i * (n // BS), n))
        for i, (other, itt) in reads.items():
            res = other.wait(itt)
            assert res.ok, res
            assert res.data == writes[i][2], f"range {i} read on CID {other.cid} differs"
    finally:
        s.close()
    mcs_server.assert_healthy()


# --- CmdSN order across connections --------------------------------------------------

def test_command_sent_before_the_cmdsn_gap_is_filled_is_held_then_answered(mcs_server) -> None:
    """CmdSN n+1 (a READ) goes out on connection B before n (a WRITE to
    other blocks) on A: B must stay unanswered until n arrives, then both
    complete and the session's ExpCmdSN has moved past both."""
    s = _Session(mcs_server)
    try:
        b = s.new_conn(1)
        a = s.lead
        n = 4096
        known = _pattern(0x5EED0001, n)
        assert a.wait(s.write(a, 7000, known)).ok
        data = _pattern(0x5EED0002, n)
        sn = s.cmd_sn
        itt_b = s.read(b, 7000, n, cmd_sn=(sn + 1) & 0xFFFFFFFF)
        early = _early_pdu(b, QUIET)
        assert early is None, f"CmdSN n+1 answered before CmdSN n was sent: {early}"
        itt_a = s.write(a, 7100, data, cmd_sn=sn)
        s.cmd_sn = (sn + 2) & 0xFFFFFFFF
        res_a = a.wait(itt_a)
        res_b = b.wait(itt_b)
        assert res_a.ok, res_a
        assert res_b.ok and res_b.data == known, res_b
        assert b.exp_cmd_sn == s.cmd_sn or a.exp_cmd_sn == s.cmd_sn, \
            (f"ExpCmdSN after CmdSN {sn} and {sn + 1}: A saw {a.exp_cmd_sn}, "
             f"B saw {b.exp_cmd_sn}")
        res = b.wait(s.read(b, 7100, n))
        assert res.ok and res.data == data
        assert s.tur(a).ok and s.tur(b).ok
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_ordered_write_then_read_on_one_connection_run_in_order(mcs_server) -> None:
    """Baseline for the next test (SAM-5 8.6: an ORDERED task starts after
    every older task completed): a pipelined ORDERED WRITE then ORDERED
    READ of the same blocks on one connection; the READ sees the WRITE."""
    ini = Initiator(host=mcs_server.host, port=mcs_server.port, timeout=TIMEOUT)
    ini.connect()
    try:
        ini.login(IQN)
        stale = 0
        for i in range(20):
            lba = 30000 + 8 * i
            data = _pattern(0x0D0D0000 + i, 4096)
            w = ini.submit(_cdb10(0x2A, lba, 8), data_out=data, attr=ATTR_ORDERED)
            r = ini.submit(_cdb10(0x28, lba, 8), read_len=4096, attr=ATTR_ORDERED)
            assert ini.wait(w).ok
            res = ini.wait(r)
            assert res.ok, res
            stale += res.data != data
        assert stale == 0, f"{stale} of 20 ORDERED READs ran before the ORDERED WRITE ahead of them"
    finally:
        ini.close()
    mcs_server.assert_healthy()


def test_ordered_commands_across_connections_run_in_cmdsn_order(mcs_server) -> None:
    """CmdSN n+1 (an ORDERED READ) goes out on B before n (an ORDERED WRITE
    of the same blocks) on A. Delivered to SCSI in CmdSN order, the READ
    sees the WRITE's data."""
    s = _Session(mcs_server)
    try:
        b = s.new_conn(1)
        a = s.lead
        lba, n = 9000, 4096
        assert a.wait(s.write(a, lba, bytes(n))).ok          # known old contents
        data = _pattern(0xA5A50001, n)
        sn = s.cmd_sn
        itt_b = s.read(b, lba, n, cmd_sn=(sn + 1) & 0xFFFFFFFF, attr=ATTR_ORDERED)
        early = _early_pdu(b, QUIET)
        assert early is None, f"CmdSN n+1 answered before CmdSN n was sent: {early}"
        itt_a = s.write(a, lba, data, cmd_sn=sn, attr=ATTR_ORDERED)
        s.cmd_sn = (sn + 2) & 0xFFFFFFFF
        res_a = a.wait(itt_a)
        res_b = b.wait(itt_b)
        assert res_a.ok, res_a
        assert res_b.ok, res_b
        assert res_b.data == data, "ORDERED READ CmdSN n+1 ran before ORDERED WRITE CmdSN n"
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_joined_connection_follows_the_sessions_leading_only_keys(mcs_server) -> None:
    """LO keys (InitialR2T, FirstBurstLength, ...) are negotiated once, on the
    leading connection, and hold on every connection of the session (RFC
    7143 6.2, 13): with InitialR2T=No agreed at the leading login, an
    in-order WRITE on a joined connection may send its first burst as
    unsolicited Data-Out, and the target takes it without an R2T."""
    s = _Session(mcs_server, extra_keys={"InitialR2T": "No"})
    try:
        assert s.lead.negotiated.get("InitialR2T") == "No", s.lead.negotiated
        b = s.new_conn(1)
        assert b.params.get("InitialR2T") == "No"
        n = 32 * 1024
        data = _pattern(0x1A2B0000, n)
        try:
            res = b.wait(s.write(b, 15000, data, immediate=False))
        except Rejected as e:
            pytest.fail(f"unsolicited Data-Out on a joined connection of an InitialR2T=No "
                        f"session was rejected (reason {e.reason:#04x})\n{_explain(mcs_server)}")
        assert res.ok, res
        assert res.r2ts == 0 and res.data_out_pdus >= 1, res
        res = s.lead.wait(s.read(s.lead, 15000, n))
        assert res.ok and res.data == data
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_held_write_keeps_its_unsolicited_data_until_the_gap_is_filled(mcs_server) -> None:
    """With InitialR2T=No, a WRITE with CmdSN n+1 and its unsolicited
    Data-Out arrive on the leading connection A before n (a READ of other
    blocks) on B. Nothing is answered on A until n arrives; then the WRITE
    completes from the data it was sent first (no R2T), and a READ sees it.
    (The held WRITE is on the leading connection so that this test does not
    depend on a joined connection's LO keys, which the test above covers.)"""
    s = _Session(mcs_server, extra_keys={"InitialR2T": "No"})
    try:
        assert s.lead.negotiated.get("InitialR2T") == "No", s.lead.negotiated
        a = s.lead
        b = s.new_conn(1)
        lba, n = 12000, 32 * 1024
        other = _pattern(0x0B0B0000, 4096)
        new = _pattern(0x0E0E0000, n)
        assert a.wait(s.write(a, 11000, other)).ok
        sn = s.cmd_sn
        # immediate=False: the 32 KiB travel as unsolicited Data-Out PDUs.
        itt_a = s.write(a, lba, new, cmd_sn=(sn + 1) & 0xFFFFFFFF, immediate=False)
        early = _early_pdu(a, QUIET)
        assert early is None, f"held WRITE (CmdSN n+1) answered before CmdSN n: {early}"
        itt_b = s.read(b, 11000, 4096, cmd_sn=sn)
        s.cmd_sn = (sn + 2) & 0xFFFFFFFF
        res_b = b.wait(itt_b)
        res_a = a.wait(itt_a)
        assert res_b.ok and res_b.data == other, res_b
        assert res_a.ok, res_a
        assert res_a.data_out_pdus >= 1 and res_a.r2ts == 0, \
            f"held write: {res_a.data_out_pdus} unsolicited Data-Out, {res_a.r2ts} R2T"
        res = b.wait(s.read(b, lba, n))
        assert res.ok and res.data == new, "the held WRITE's unsolicited data was lost"
    finally:
        s.close()
    mcs_server.assert_healthy()


# --- MaxConnections ------------------------------------------------------------------

def test_login_beyond_negotiated_max_connections_fails_with_02_06(mcs_server) -> None:
    s = _Session(mcs_server, max_connections="4")
    try:
        assert s.lead.negotiated.get("MaxConnections") == "4", s.lead.negotiated
        for cid in (1, 2, 3):
            s.new_conn(cid)
        with pytest.raises(LoginError) as ei:
            extra = s.new_conn(4)
            extra.close()
        assert (ei.value.status_class, ei.value.status_detail) == (0x02, 0x06), str(ei.value)
        # The four connections keep working.
        for ini in s.conns.values():
            assert s.tur(ini).ok
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_default_target_offers_one_connection_and_refuses_a_second(uscstd) -> None:
    """Without `MaxConnections` in its configuration the target answers
    MaxConnections=1 (the RFC default), so a second connection is 02/06."""
    srv = uscstd()
    lead = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT)
    lead.connect()
    try:
        lead.login(srv.iqn, keys={"MaxConnections": "8"})
        assert lead.negotiated.get("MaxConnections") == "1", lead.negotiated
        second = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, isid=lead.isid, cid=1)
        second.connect()
        second.tsih = lead.tsih
        second.cmd_sn = lead.cmd_sn
        try:
            with pytest.raises(LoginError) as ei:
                second.login(srv.iqn, keys={k: None for k in LO_KEYS})
            assert (ei.value.status_class, ei.value.status_detail) == (0x02, 0x06), str(ei.value)
        finally:
            second.close()
        assert lead.test_unit_ready().ok
    finally:
        lead.close()


# --- logout --------------------------------------------------------------------------

def test_logout_of_the_leading_connection_leaves_the_others_working(mcs_server) -> None:
    s = _Session(mcs_server)
    try:
        for cid in (1, 2):
            s.new_conn(cid)
        lead = s.lead
        assert s.logout(lead, LOGOUT_CLOSE_CONNECTION) == 0
        assert 0 not in s.conns
        rest = list(s.conns.values())
        lba, n = 20000, 64 * 1024
        data = os.urandom(n)
        res = rest[0].wait(s.write(rest[0], lba, data, immediate=False))
        assert res.ok, res
        res = rest[1].wait(s.read(rest[1], lba, n))
        assert res.ok and res.data == data
        # The session is still there: a new connection can join it.
        joined = s.new_conn(5)
        assert joined.tsih == s.tsih and s.tur(joined).ok
    finally:
        s.close()
    mcs_server.assert_healthy()


def test_logout_closing_the_session_closes_every_connection(mcs_server) -> None:
    s = _Session(mcs_server)
    try:
        for cid in (1, 2):
            s.new_conn(cid)
        others = [s.conns[1], s.conns[2]]
        assert s.logout(s.lead, LOGOUT_CLOSE_SESSION) == 0
        for ini in others:
            assert ini.expect_closed(5.0), \
                f"CID {ini.cid} still open after Logout 'close the session'"
        # The session is gone: joining it by TSIH is 02/0a (session does not exist).
        s.conns = {}
        with pytest.raises(LoginError) as ei:
            s.new_conn(7)
        assert (ei.value.status_class, ei.value.status_detail) == (0x02, 0x0A), str(ei.value)
    finally:
        s.close()
    mcs_server.assert_healthy()
