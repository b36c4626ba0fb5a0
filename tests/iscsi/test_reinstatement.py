"""Session reinstatement and connection loss with I/O in flight.

RFC 7143 behaviour checked here:
  - 6.3.5 session reinstatement: a leading login (TSIH 0) with the ISID and
    InitiatorName of a live session logs that session out implicitly: its
    connections are closed and its tasks are terminated (ErrorRecoveryLevel
    0), and the new session works.
  - 4.2.7.6 (ISID rule): the session identity is the pair (InitiatorName,
    ISID); the same ISID from another initiator is another session.
  - ErrorRecoveryLevel 0 (7.1.5): a connection dropped in the middle of a
    WRITE ends the session, and a new login with the same ISID and TSIH 0
    gets a working session.
  - 11.14 / 11.5: a Logout, or ABORT TASK and LOGICAL UNIT RESET, while a
    WRITE waits for its data and a READ is in flight end those tasks
    without leaking them (teardown races).

"Nothing leaks" is read from the emulated kernel's slab counters: the
active objects of the scst_cmd and iscsi_cmnd caches return to what they
were before the test once the old session is gone (polled, bounded). The
counters come from uscstd's control socket (--control): the op
{"op": "proc", "name": "slabinfo"} answering {"ok": true, "value": TEXT}
with TEXT as kshim.proc.proc_read("slabinfo") gives it, or, failing that, a
read of /kernel/debug/slabinfo in the management tree. Sessions are counted
in the tree under scst_tgt/targets/iscsi/<target>/sessions.
"""
from __future__ import annotations

import json
import socket
import struct
import tempfile
import time
from typing import Iterator

import pytest

from initiator import (
    LOGOUT_CLOSE_SESSION,
    OP_R2T,
    TMF_ABORT_TASK,
    TMF_LUN_RESET,
    TMF_RSP_COMPLETE,
    Initiator,
    TaskAborted,
)

BS = 512
TIMEOUT = 10.0
SETTLE = 5.0           # seconds the target gets to tear a session down
READY = 10.0           # seconds for the control socket to appear
CACHES = ("scst_cmd", "iscsi_cmnd")
ISID = bytes([0x80, 0x12, 0x34, 0x56, 0x00, 0x01])
TREE_ROOT = "/kernel/scst_tgt"


# --- control socket ------------------------------------------------------------------

def _ctl(sock_path: str, **req) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(sock_path)
        f = s.makefile("rwb")
        f.write(json.dumps(req).encode() + b"\n")
        f.flush()
        line = f.readline()
    assert line, f"control socket closed without answering {req}"
    return json.loads(line)


def _slabinfo_text(ctl: str) -> str:
    rsp = _ctl(ctl, op="proc", name="slabinfo")
    if rsp.get("ok"):
        return rsp["value"]
    alt = _ctl(ctl, op="read", path="/kernel/debug/slabinfo")
    if alt.get("ok"):
        return alt["value"]
    pytest.fail("uscstd exposes no slab counters: this test needs the control-socket op "
                '{"op": "proc", "name": "slabinfo"} -> {"ok": true, "value": '
                'kshim.proc.proc_read("slabinfo")} (or a readable /kernel/debug/slabinfo '
                f"attribute); got {rsp} and {alt}")


def slab_active(ctl: str) -> dict[str, int]:
    """Active objects of the caches this file watches."""
    out: dict[str, int] = {}
    for line in _slabinfo_text(ctl).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in CACHES and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    missing = [c for c in CACHES if c not in out]
    assert not missing, f"slabinfo lists no cache {missing}"
    return out


def session_names(ctl: str, iqn: str) -> list[str]:
    rsp = _ctl(ctl, op="ls", path=f"{TREE_ROOT}/targets/iscsi/{iqn}/sessions")
    assert rsp.get("ok"), rsp
    return [e["name"] for e in rsp["entries"]]


def wait_until(pred, timeout: float = SETTLE, step: float = 0.05):
    """Poll pred() until it returns something truthy or timeout passes;
    return its last value. Bounded by timeout."""
    deadline = time.monotonic() + timeout
    val = pred()
    while not val and time.monotonic() < deadline:
        time.sleep(step)
        val = pred()
    return val


# --- helpers -----------------------------------------------------------------------

@pytest.fixture
def srv(uscstd) -> Iterator:
    # A short directory: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="uscst-") as d:
        s = uscstd("--control", f"{d}/ctl.sock", "--log-level", "info")
        s.ctl = f"{d}/ctl.sock"
        # "ready at" comes before the control socket is bound.
        assert wait_until(lambda: "uscstd: control socket" in s.stdout_text(), READY), \
            s.stdout_text() + s.stderr_text()[-2000:]
        yield s


def _login(srv, isid: bytes = ISID, **kw) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, isid=isid, **kw)
    ini.connect()
    ini.login(srv.iqn)
    return ini


def _cdb10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


def _start_write_waiting_for_r2t(ini: Initiator, lba: int, n: int) -> int:
    """Send a WRITE whose data the target must ask for (no immediate data,
    InitialR2T=Yes), and wait for its R2T: the command is now in the target,
    waiting for data that will never come. Returns the ITT."""
    assert ini.negotiated.get("InitialR2T", "Yes") == "Yes", ini.negotiated
    itt = ini.submit(_cdb10(0x2A, lba, n // BS), data_out=b"\x77" * n, immediate=False)
    # Read the R2T ourselves so the initiator does not answer it.
    pdu = ini.recv_pdu(TIMEOUT)
    assert pdu.opcode == OP_R2T and pdu.itt == itt, f"expected the R2T, got {pdu!r}"
    return itt


def _abort_tcp(ini: Initiator) -> None:
    """Drop the connection with a RST, as a crashed initiator host would."""
    assert ini.sock is not None
    ini.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ini.close()


def _works(ini: Initiator, lba: int) -> None:
    data = bytes(range(256)) * 256            # 64 KiB
    assert ini.test_unit_ready().ok
    assert ini.write10(lba, data, immediate=False).ok
    res = ini.read10(lba, len(data) // BS)
    assert res.ok and res.data == data


def _assert_back_to(ctl: str, baseline: dict[str, int], what: str) -> None:
    got = wait_until(lambda: (lambda a: a if a == baseline else None)(slab_active(ctl)))
    assert got == baseline, (f"{what}: active objects {slab_active(ctl)} did not return to "
                             f"the baseline {baseline} within {SETTLE} s")


# --- tests -------------------------------------------------------------------------

def test_drop_mid_write_then_login_with_same_isid_gets_a_working_session(srv) -> None:
    old = _login(srv)
    old_tsih = old.tsih
    _start_write_waiting_for_r2t(old, 100, 256 * 1024)
    _abort_tcp(old)
    new = _login(srv)
    try:
        assert new.tsih != 0
        _works(new, 2000)
        # The old session does not linger beside the new one.
        names = wait_until(lambda: (lambda n: n if len(n) == 1 else None)(
            session_names(srv.ctl, srv.iqn)))
        assert names and len(names) == 1, \
            f"sessions after re-login (old TSIH {old_tsih:#x}): " \
            f"{session_names(srv.ctl, srv.iqn)}"
        assert new.logout() == 0
    finally:
        new.close()
    srv.assert_healthy()


def test_drop_mid_write_and_relogin_leak_no_commands(srv) -> None:
    baseline = slab_active(srv.ctl)
    old = _login(srv)
    _start_write_waiting_for_r2t(old, 100, 256 * 1024)
    # A second command in flight: a READ whose Data-In we never read.
    old.submit(_cdb10(0x28, 0, 128), read_len=128 * BS)
    _abort_tcp(old)
    new = _login(srv)
    try:
        _works(new, 3000)
        assert new.logout() == 0
    finally:
        new.close()
    assert wait_until(lambda: not session_names(srv.ctl, srv.iqn)), \
        f"sessions left: {session_names(srv.ctl, srv.iqn)}"
    _assert_back_to(srv.ctl, baseline, "after a drop mid-WRITE and a new session")
    srv.assert_healthy()


def test_second_login_with_same_isid_replaces_the_live_session(srv) -> None:
    first = _login(srv)
    _start_write_waiting_for_r2t(first, 100, 256 * 1024)
    # The first connection stays open: the target must close it itself.
    second = _login(srv)
    try:
        assert first.expect_closed(SETTLE), \
            "the first session's connection is still open after a reinstating login"
        _works(second, 4000)
        names = wait_until(lambda: (lambda n: n if len(n) == 1 else None)(
            session_names(srv.ctl, srv.iqn)))
        assert names and len(names) == 1, session_names(srv.ctl, srv.iqn)
        assert second.logout() == 0
    finally:
        second.close()
        first.close()
    srv.assert_healthy()


def test_reinstated_session_leaks_no_commands(srv) -> None:
    baseline = slab_active(srv.ctl)
    first = _login(srv)
    _start_write_waiting_for_r2t(first, 100, 256 * 1024)
    first.submit(_cdb10(0x28, 0, 128), read_len=128 * BS)
    second = _login(srv)
    try:
        assert first.expect_closed(SETTLE), \
            "the first session's connection is still open after a reinstating login"
        _works(second, 5000)
        assert second.logout() == 0
    finally:
        second.close()
        first.close()
    assert wait_until(lambda: not session_names(srv.ctl, srv.iqn)), \
        f"sessions left: {session_names(srv.ctl, srv.iqn)}"
    _assert_back_to(srv.ctl, baseline, "after a reinstated session")
    srv.assert_healthy()


def test_same_isid_from_another_initiator_name_is_a_separate_session(srv) -> None:
    a = _login(srv, initiator_name="iqn.2026-11.org.uscst:host-a")
    b = _login(srv, initiator_name="iqn.2026-11.org.uscst:host-b")
    try:
        assert not a.expect_closed(0.3), "a login by another initiator closed this session"
        assert a.test_unit_ready().ok and b.test_unit_ready().ok
        assert a.tsih != b.tsih
        assert a.logout() == 0 and b.logout() == 0
    finally:
        a.close()
        b.close()
    srv.assert_healthy()


def test_logout_with_a_write_waiting_for_data_and_a_read_in_flight_leaks_nothing(srv) -> None:
    baseline = slab_active(srv.ctl)
    ini = _login(srv)
    try:
        _start_write_waiting_for_r2t(ini, 100, 256 * 1024)
        ini.submit(_cdb10(0x28, 0, 256), read_len=256 * BS)
        # Logout (close the session) with both tasks outstanding; Data-In for
        # the READ that arrives first is taken by the initiator meanwhile.
        assert ini.logout(LOGOUT_CLOSE_SESSION) == 0
    finally:
        ini.close()
    assert wait_until(lambda: not session_names(srv.ctl, srv.iqn)), \
        f"sessions left after logout: {session_names(srv.ctl, srv.iqn)}"
    _assert_back_to(srv.ctl, baseline, "after a logout with I/O in flight")
    srv.assert_healthy()


def test_abort_task_and_lun_reset_with_io_in_flight_leak_nothing(srv) -> None:
    baseline = slab_active(srv.ctl)
    ini = _login(srv)
    try:
        w = _start_write_waiting_for_r2t(ini, 100, 256 * 1024)
        assert ini.task_mgmt(TMF_ABORT_TASK, ref_itt=w) == TMF_RSP_COMPLETE
        with pytest.raises(TaskAborted):
            ini.wait(w)
        w2 = _start_write_waiting_for_r2t(ini, 600, 256 * 1024)
        ini.submit(_cdb10(0x28, 0, 256), read_len=256 * BS)
        assert ini.task_mgmt(TMF_LUN_RESET) == TMF_RSP_COMPLETE
        with pytest.raises(TaskAborted):
            ini.wait(w2)
        # The session still works after the reset (a unit attention first).
        res = ini.test_unit_ready()
        if not res.ok and res.sense_key == 6:
            res = ini.test_unit_ready()
        assert res.ok, res
        assert ini.logout() == 0
    finally:
        ini.close()
    assert wait_until(lambda: not session_names(srv.ctl, srv.iqn))
    _assert_back_to(srv.ctl, baseline, "after ABORT TASK and LUN RESET with I/O in flight")
    srv.assert_healthy()
