"""End to end: persistent reservations registered with APTPL=1 survive a
restart of uscstd (SPC-4 5.7.5 "Activate Persist Through Power Loss"),
APTPL=0 state does not, and a damaged APTPL state file at start is
reported and ignored.

Real uscstd processes on 127.0.0.1 serving one file LUN (device disk0);
the APTPL state lives in <dir of the disk>/pr/disk0.pr0|.pr1
(scst_core/pres.py). The project's own initiator (tests/initiator.py)
stands for three I_T nexuses: A and B register, C does not. A nexus is
its initiator name plus its ISID, so every login below reuses a fixed
ISID: after the restart, A must be the same I_T nexus it was before.

The SIGKILL variant kills the server the moment the last PERSISTENT
RESERVE OUT returns GOOD: pres.py writes and fsyncs the state before the
command completes, so nothing may be lost.
"""
from __future__ import annotations

import signal
import struct
from pathlib import Path

import pytest

from initiator import Initiator
from pr_support import (READ_FULL_STATUS, REGISTER, REPORT_CAPABILITIES, RESERVE, login, prin,
                        prout, read_keys, read_reservation, write1)
from uscstd_support import UscstdServer

GOOD = 0x00
CHECK_CONDITION = 0x02
RESERVATION_CONFLICT = 0x18

WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5

INI_A = ("iqn.1994-05.org.uscst.test:aptpl-a", bytes.fromhex("023d000000a1"))
INI_B = ("iqn.1994-05.org.uscst.test:aptpl-b", bytes.fromhex("023d000000b2"))
INI_C = ("iqn.1994-05.org.uscst.test:aptpl-c", bytes.fromhex("023d000000c3"))
KEY_A, KEY_B = 0xA1A1A1A1A1A1A1A1, 0x00000000000000B2


# ---------------------------------------------------------------- helpers

def start(uscstd, data: Path) -> UscstdServer:
    """uscstd serving data/disk.img; its APTPL state goes to data/pr."""
    data.mkdir(exist_ok=True)
    return uscstd(disk=data / "disk.img", size="16M")


def read_full_status(ini: Initiator) -> tuple[int, list[dict]]:
    d = prin(ini, READ_FULL_STATUS, 4096)
    gen, n = struct.unpack_from(">II", d)
    out, off = [], 8
    while off < 8 + n:
        key = struct.unpack_from(">Q", d, off)[0]
        tid_len = struct.unpack_from(">I", d, off + 20)[0]
        tid = d[off + 24:off + 24 + tid_len]
        out.append({"key": key, "holder": bool(d[off + 12] & 0x01),
                    "scope_type": d[off + 13], "rel_tgt_id": struct.unpack_from(">H", d, off + 18)[0],
                    "tid": tid})
        off += 24 + tid_len
    return gen, out


def tid_name(tid: bytes) -> str:
    """The iSCSI name and ISID of a TransportID (SPC-4 7.6.4.6)."""
    return tid[4:].rstrip(b"\x00").decode()


def register_and_reserve(srv: UscstdServer, kill: bool = False) -> int:
    """A and B register with APTPL=1, A reserves Write Exclusive -
    Registrants Only; return the PR generation. The last command is the
    RESERVE; with kill=True the server gets SIGKILL as soon as its GOOD
    status arrives."""
    a, b = login(srv, INI_A), login(srv, INI_B)
    assert prout(a, REGISTER, 0, KEY_A, aptpl=True).ok
    assert prout(b, REGISTER, 0, KEY_B, aptpl=True).ok
    gen, keys = read_keys(a)
    assert sorted(keys) == sorted([KEY_A, KEY_B])
    c = login(srv, INI_C)
    assert write1(c) == GOOD                        # no reservation yet
    r = prout(a, RESERVE, KEY_A, 0, ptype=WRITE_EXCLUSIVE_REGISTRANTS_ONLY, aptpl=True)
    assert r.ok, r
    if kill:
        srv.stop(signal.SIGKILL)
        srv.checked = True                          # exit by SIGKILL is expected
    else:
        assert write1(c) == RESERVATION_CONFLICT    # the reservation is in force
        c.close()
    a.close()
    b.close()
    return gen


def check_reservations_kept(srv: UscstdServer, gen: int) -> None:
    a, b, c = login(srv, INI_A), login(srv, INI_B), login(srv, INI_C)
    g, keys = read_keys(c)
    assert (g, sorted(keys)) == (gen, sorted([KEY_A, KEY_B]))
    g, res = read_reservation(b)
    assert (g, res) == (gen, (KEY_A, 0, WRITE_EXCLUSIVE_REGISTRANTS_ONLY))
    g, regs = read_full_status(a)
    assert g == gen
    by_key = {r["key"]: r for r in regs}
    assert set(by_key) == {KEY_A, KEY_B}
    assert by_key[KEY_A]["holder"] and by_key[KEY_A]["scope_type"] == WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    assert not by_key[KEY_B]["holder"]
    assert tid_name(by_key[KEY_A]["tid"]) == f"{INI_A[0]},i,0x{INI_A[1].hex()}"
    assert tid_name(by_key[KEY_B]["tid"]) == f"{INI_B[0]},i,0x{INI_B[1].hex()}"
    # PTPL_A: persist through power loss is active
    assert prin(c, REPORT_CAPABILITIES, 8)[3] & 0x01
    # the reservation still works: registrants write, C conflicts
    assert write1(c) == RESERVATION_CONFLICT
    assert write1(a) == GOOD
    assert write1(b) == GOOD
    for ini in (a, b, c):
        ini.logout()


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_aptpl_registrations_and_reservation_survive_a_restart(uscstd, tmp_path: Path, sig) -> None:
    data = tmp_path / "data"
    srv = start(uscstd, data)
    gen = register_and_reserve(srv, kill=sig == signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert srv.stop(sig) == 0
    assert srv.proc.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert sorted(p.name for p in (data / "pr").iterdir()) == ["disk0.pr0", "disk0.pr1"]
    srv2 = start(uscstd, data)
    check_reservations_kept(srv2, gen)
    srv2.assert_healthy()


def test_register_with_aptpl_0_afterwards_does_not_survive_a_restart(uscstd, tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start(uscstd, data)
    register_and_reserve(srv)
    b = login(srv, INI_B)
    # B changes its key with APTPL=0: the device's APTPL state is off now
    assert prout(b, REGISTER, KEY_B, KEY_B + 1, aptpl=False).ok
    gen, keys = read_keys(b)
    assert sorted(keys) == sorted([KEY_A, KEY_B + 1])
    assert not prin(b, REPORT_CAPABILITIES, 8)[3] & 0x01     # PTPL_A off
    b.logout()
    assert srv.stop() == 0
    srv2 = start(uscstd, data)
    c = login(srv2, INI_C)
    assert read_keys(c) == (0, [])
    assert read_reservation(c) == (0, None)
    assert write1(c) == GOOD
    c.logout()
    srv2.assert_healthy()


def test_torn_newest_state_file_falls_back_to_the_previous_state(uscstd, tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start(uscstd, data)
    a = login(srv, INI_A)
    assert prout(a, REGISTER, 0, KEY_A, aptpl=True).ok              # state 1: A registered
    assert prout(a, RESERVE, KEY_A, 0, ptype=WRITE_EXCLUSIVE_REGISTRANTS_ONLY).ok   # state 2
    a.logout()
    assert srv.stop() == 0
    pr = data / "pr"
    newest = max(pr.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    text = newest.read_bytes()
    assert b"res 5 0 0" in text, text                               # the RESERVE is in it
    newest.write_bytes(text[:len(text) // 2])                       # a crash mid-write
    srv2 = start(uscstd, data)
    c = login(srv2, INI_C)
    assert read_keys(c) == (1, [KEY_A])                             # state 1 restored
    assert read_reservation(c) == (1, None)
    c.logout()
    log = srv2.stderr_text()
    assert f"{newest.name}" in log and "corrupt or truncated" in log, log
    srv2.assert_healthy()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_state_files_at_start_are_reported_and_the_lun_has_no_reservations(
        uscstd, tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    srv = start(uscstd, data)
    register_and_reserve(srv)
    assert srv.stop() == 0
    for p in (data / "pr").iterdir():
        text = p.read_bytes()
        p.write_bytes({"garbage": b"\xff\xfe not a state file \x00\n" * 20,
                       "truncated": text[:-10],
                       "empty": b""}[damage])
    srv2 = start(uscstd, data)
    c = login(srv2, INI_C)
    assert read_keys(c) == (0, [])
    assert read_reservation(c) == (0, None)
    assert write1(c) == GOOD
    # new APTPL registrations work; two of them rewrite both damaged slots
    assert prout(c, REGISTER, 0, 0xC3, aptpl=True).ok
    assert prout(c, REGISTER, 0xC3, 0xC4, aptpl=True).ok
    c.logout()
    log = srv2.stderr_text()
    assert "disk0.pr0" in log and "disk0.pr1" in log and "corrupt or truncated" in log, log
    assert "disk0 starts without persistent reservations" in log, log
    srv2.assert_healthy()
    assert srv2.stop() == 0
    srv3 = start(uscstd, data)
    c = login(srv3, INI_C)
    assert read_keys(c) == (2, [0xC4])
    c.logout()
    assert "corrupt" not in srv3.stderr_text()
