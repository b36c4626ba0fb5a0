"""What the target does under injected faults, over real TCP against a real
uscstd (--debug) with a real backing file (issue 16, section 4).

Faults are armed with --fault on the command line or written into the live
debugfs tree through the control socket (uscstadmin's client). Each test
names its seed, so a failure replays.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from initiator import ConnectionClosed, Initiator, LoginError
from tools.uscstadmin import Ctl
from uscstd_support import uscstadmin_ok, uscstadmin_run

BS = 512
MEDIUM_ERROR = 0x03
SAM_STAT_CHECK_CONDITION = 0x02
SAM_STAT_BUSY = 0x08
CLEANUP_WAIT = 10.0        # seconds for a closed session's commands to be freed


def _start(uscstd, tmp_path: Path, *faults: str):
    sock = str(tmp_path / "ctl.sock")
    extra: list[str] = ["--control", sock]
    for f in faults:
        extra += ["--fault", f]
    srv = uscstd(*extra)
    deadline = time.monotonic() + 10.0
    while "uscstd: control socket" not in srv.stdout_text():   # it comes up after "ready at"
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.stderr_text()
        time.sleep(0.05)
    return srv, Ctl(sock)


def _login(srv) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    return ini


def sense_fields(sense: bytes) -> tuple[int, int, int, bool, int]:
    """(key, asc, ascq, VALID, INFORMATION) of fixed-format sense data."""
    assert sense and sense[0] & 0x7F in (0x70, 0x71), f"not fixed-format sense: {sense.hex()}"
    return (sense[2] & 0x0F, sense[12], sense[13], bool(sense[0] & 0x80),
            int.from_bytes(sense[3:7], "big"))


def assert_medium_error(sense: bytes, asc: int, lba: int) -> None:
    """MEDIUM ERROR asc/00 with VALID set and `lba` in INFORMATION."""
    key, got_asc, ascq, valid, info = sense_fields(sense)
    assert (key, got_asc, ascq) == (MEDIUM_ERROR, asc, 0), \
        f"sense {key:#x}/{got_asc:#04x}/{ascq:#04x}, want 03/{asc:02x}/00"
    assert valid, "VALID bit not set"
    assert info == lba, f"INFORMATION {info}, want LBA {lba}"


def slab_active(ctl: Ctl, cache: str) -> int:
    text = ctl.call("proc", name="slabinfo")["value"]
    m = re.search(rf"^{re.escape(cache)}\s+(\d+)", text, re.M)
    assert m, f"no cache {cache} in slabinfo:\n{text}"
    return int(m.group(1))


def wait_commands_freed(ctl: Ctl) -> None:
    """Bounded wait until no scst_cmd or iscsi_cmnd is live."""
    deadline = time.monotonic() + CLEANUP_WAIT
    while True:
        live = {c: slab_active(ctl, c) for c in ("scst_cmd", "iscsi_cmnd")}
        if not any(live.values()):
            return
        assert time.monotonic() < deadline, f"command objects still live: {live}"
        time.sleep(0.1)


def test_medium_error_checker_rejects_wrong_lba_missing_valid_and_wrong_asc() -> None:
    good = bytes([0xF0, 0, 0x03, 0, 0, 0, 100, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0])
    assert_medium_error(good, 0x11, 100)
    for planted in (good[:6] + bytes([101]) + good[7:],           # wrong LBA
                    bytes([0x70]) + good[1:],                       # VALID clear
                    good[:12] + bytes([0x0C]) + good[13:]):         # WRITE ERROR asc
        with pytest.raises(AssertionError):
            assert_medium_error(planted, 0x11, 100)


def test_read_across_an_eio_range_gets_03_11_00_naming_its_first_bad_lba_seed_16001(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, f"fail_file_read:start={100 * BS},end={108 * BS},"
                      "probability=100,times=-1,seed=16001,verbose=1")
    ini = _login(srv)
    try:
        assert ini.read10(0, 8).ok                 # outside the range: fine
        r = ini.read10(96, 8)                      # LBA 96..103: the range starts at 100
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x11, 100)
        r = ini.read10(104, 2)                     # starts inside the range
        assert_medium_error(r.sense, 0x11, 104)
        assert ini.read10(108, 8).ok
    finally:
        ini.logout()
        ini.close()
    assert int(ctl.read("debug/fail_file_read/injected")) >= 2
    wait_commands_freed(ctl)


def test_blockio_read_across_an_eio_range_names_its_first_bad_lba_seed_16010(
        uscstd, tmp_path: Path) -> None:
    iqn = "iqn.2026-11.org.uscst:blockio"
    conf = tmp_path / "blockio.conf"
    conf.write_text(f"""HANDLER vdisk_blockio {{
\tDEVICE disk0 {{
\t\tfilename {tmp_path / "bio.img"}
\t\tsize 16M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {iqn} {{
\t\tLUN 0 disk0
\t\tenabled 1
\t}}
}}
""")
    sock = str(tmp_path / "ctl.sock")
    srv = uscstd("--config", str(conf), "--control", sock, "--fault",
                 f"fail_file_read:start={100 * BS},end={108 * BS},probability=100,times=-1,"
                 "seed=16010,verbose=0", disk=None, size=None, iqn=iqn)
    ini = _login(srv)
    try:
        r = ini.read10(96, 8)
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x11, 100)
        assert ini.read10(0, 8).ok
    finally:
        ini.logout()
        ini.close()


def test_write_across_an_eio_range_gets_03_0c_00_naming_its_first_bad_lba_seed_16002(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, f"fail_file_write:start={203 * BS},end={204 * BS},"
                      "probability=100,times=-1,seed=16002,verbose=0")
    ini = _login(srv)
    try:
        r = ini.write10(200, b"\x5a" * (8 * BS))
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x0C, 203)
        assert ini.write10(300, b"\x5a" * BS).ok
    finally:
        ini.logout()
        ini.close()
    wait_commands_freed(ctl)


def test_failed_fsync_fails_the_write_it_covers_and_not_the_next_seed_16003(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path,
                      "fail_file_fsync:probability=100,times=1,seed=16003,verbose=0")
    ini = _login(srv)
    try:
        r = ini.write10(40, b"\x11" * BS)           # write-through: this WRITE syncs
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x0C, 40)
        assert ini.write10(41, b"\x22" * BS).ok, "a later WRITE saw the old fsync error"
    finally:
        ini.logout()
        ini.close()
    assert ctl.read("debug/fail_file_fsync/injected").strip() == "1"


def test_scst_cmd_allocation_failure_answers_busy_and_leaks_nothing_seed_16004(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, "failslab:cache-filter=Y,cache=scst_cmd,"
                      "probability=100,times=1,seed=16004,verbose=0")
    ini = _login(srv)
    try:
        r = ini.test_unit_ready()
        assert r.status == SAM_STAT_BUSY, r
        assert ini.test_unit_ready().ok
        assert ini.read10(0, 8).ok
    finally:
        ini.logout()
        ini.close()
    assert ctl.read("debug/failslab/injected").strip() == "1"
    wait_commands_freed(ctl)


def test_data_buffer_allocation_failure_answers_busy_seed_16005(uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path,
                      "fail_page_alloc:probability=100,times=1,seed=16005,verbose=0")
    ini = _login(srv)
    try:
        r = ini.read10(0, 8)
        assert r.status == SAM_STAT_BUSY, r
        assert ini.read10(0, 8).ok
    finally:
        ini.logout()
        ini.close()
    wait_commands_freed(ctl)


def test_login_whose_session_allocation_fails_ends_with_target_error_seed_16006(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, "fail_function:inject=iscsi_session_create,"
                      "probability=100,times=1,seed=16006,verbose=0")
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    with pytest.raises(LoginError) as e:
        ini.login(srv.iqn)
    ini.close()
    assert e.value.status_class == 0x03, e.value
    again = _login(srv)
    assert again.test_unit_ready().ok
    again.logout()
    again.close()


def test_socket_reset_frees_every_command_and_a_new_login_works_seed_16007(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path)
    ini = _login(srv)
    assert ini.read10(0, 8).ok
    for attr, value in (("seed", "16007"), ("verbose", "0"), ("times", "1"),
                        ("error", "ECONNRESET"), ("probability", "100")):
        ctl.write(f"debug/fail_sock_recv/{attr}", value)
    with pytest.raises((ConnectionClosed, TimeoutError, OSError)):
        ini.write10(0, b"\x33" * (64 * BS))
        ini.read10(0, 8)
    ini.close()
    assert ctl.read("debug/fail_sock_recv/injected").strip() == "1"
    wait_commands_freed(ctl)
    again = _login(srv)
    assert again.read10(0, 8).ok
    again.logout()
    again.close()


@pytest.mark.parametrize("seed, faults", [
    (16008, ("fail_sock_recv:error=short,probability=30,times=-1",
             "fail_sock_send:error=short,probability=30,times=-1",
             "fail_file_read:error=delay,delay-ms=5,probability=20,times=-1",
             "fail_wakeup:probability=20,times=-1")),
    (16009, ("fail_sock_recv:error=EAGAIN,probability=30,times=-1",
             "fail_sock_send:error=delay,delay-ms=5,probability=20,times=-1",
             "fail_queue_work:delay-ms=5,probability=20,times=-1",
             "fail_timer:error=late,delay-ms=5,probability=20,times=-1",
             "fail_softirq:delay-ms=2,probability=10,times=-1")),
])
def test_short_transfers_delays_and_spurious_wakeups_cause_no_failure(
        uscstd, tmp_path: Path, seed: int, faults: tuple[str, ...]) -> None:
    srv, ctl = _start(uscstd, tmp_path, *(f"{f},seed={seed},verbose=0" for f in faults))
    ini = _login(srv)
    try:
        for i in range(12):
            data = bytes([i]) * (128 * BS)
            assert ini.write10(i * 128, data).ok, i
            r = ini.read10(i * 128, 128)
            assert r.ok and r.data == data, i
    finally:
        ini.logout()
        ini.close()
    points = [f.split(":")[0] for f in faults]
    injected = {p: int(ctl.read(f"debug/{p}/injected")) for p in points}
    assert all(injected[p] > 0 for p in points[:2]), injected
    wait_commands_freed(ctl)


def test_uscstadmin_reads_and_writes_the_debugfs_points(uscstd, tmp_path: Path) -> None:
    _srv, _ctl = _start(uscstd, tmp_path)
    sock = str(tmp_path / "ctl.sock")
    out = uscstadmin_ok(sock, "get", "debug/failslab")
    assert re.search(r"^probability\s+0$", out, re.M), out
    uscstadmin_ok(sock, "set", "debug/fail_page_alloc/min-order", "3")
    assert uscstadmin_ok(sock, "get", "debug/fail_page_alloc/min-order").strip() == "3"
    bad = uscstadmin_run(sock, "set", "debug/failslab/probability", "250")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert uscstadmin_ok(sock, "get", "debug/failslab/probability").strip() == "0"
    assert "iscsi_session_create" in uscstadmin_ok(sock, "get",
                                                   "debug/fail_function/injectable")
    uscstadmin_ok(sock, "set", "debug/fail_function/inject", "iscsi_session_create")
    assert uscstadmin_ok(sock, "get", "debug/fail_function/iscsi_session_create/retval"
                         ).strip() == "-12"
