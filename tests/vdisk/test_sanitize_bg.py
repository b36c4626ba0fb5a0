"""SANITIZE in the background (SBC-3 4.11, 5.30; vdisk.sbc): the operation
runs in a kthread of its own, paced at the device's sanitize_rate; while it
runs every command but INQUIRY, REPORT LUNS and REQUEST SENSE gets NOT
READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS with a progress
indication; aborts, resets and nexus loss end a waiting SANITIZE IMMED=0
but never the operation; a failed one leaves the failure mode; removing
the device stops the kthread.

Real uscstd processes on 127.0.0.1 with real backing files, driven by the
test-suite's own initiator (tests/initiator.py), plus two in-kernel tests
(the failure mode, device removal) on the real engine. Small LUNs at a low
sanitize_rate keep each operation to a few seconds; every wait is bounded.
"""
from __future__ import annotations

import resource
import struct
import time
from pathlib import Path

import pytest

from kshim import bug, sched
from kshim.timer import msleep
from tests.initiator import (TMF_ABORT_TASK, TMF_LUN_RESET, TMF_RSP_COMPLETE, Initiator,
                             TaskAborted)
from tests.vdisk.conftest import make_dev, run_cmd
from uscstd_support import uscstadmin_ok
from vdisk import vdisk as vd
from vdisk.fileio import fileio_devtype

REPO = Path(__file__).resolve().parents[2]
IQN = "iqn.2026-11.org.uscst:default"
BS = 512
SIZE = 6 << 20                  # at RATE MiB/s: a 3 s operation
RATE = 2
PATTERN = b"\xDE\xAD\xBE\xEF"
OLD = b"\x11"
NOT_READY_SANITIZING = (0x02, (0x04, 0x1B))
SANITIZE_FAILED = (0x03, 0x31, 0x03)
INVALID_FIELD_CDB = (0x05, 0x24, 0x00)
WAIT_S = 30.0                   # bound on any wait for an operation's end


def _plist(pattern: bytes = PATTERN) -> bytes:
    return bytes((0x01, 0)) + struct.pack(">H", len(pattern)) + pattern


def _sanitize_cdb(sa: int = 0x01, immed: bool = False, ause: bool = False, plen: int = 0) -> bytes:
    return bytes((0x48, (0x80 if immed else 0) | (0x20 if ause else 0) | sa, 0, 0, 0, 0, 0,
                  plen >> 8, plen & 0xFF, 0))


def _progress(sense: bytes) -> int:
    """The progress indication of fixed-format sense (SKSV must be set)."""
    assert sense[0] & 0x7F == 0x70 and len(sense) >= 18, sense.hex()
    assert sense[15] & 0x80, f"SKSV not set: {sense.hex()}"
    return int.from_bytes(sense[16:18], "big")


def _start(uscstd, tmp_path: Path, size: int = SIZE, rate: int = RATE):
    img = tmp_path / "disk0.img"
    img.write_bytes(OLD * size)
    conf = tmp_path / "sanitize.conf"
    conf.write_text(
        "HANDLER vdisk_fileio {\n"
        f"    DEVICE disk0 {{\n        filename {img}\n        sanitize_rate {rate}\n    }}\n"
        "}\n"
        "TARGET_DRIVER iscsi {\n    enabled 1\n"
        f"    TARGET {IQN} {{\n        LUN 0 disk0\n        enabled 1\n    }}\n}}\n")
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--config", str(conf), "--control", str(sock), disk=None, size=None)
    return srv, img, sock


def _login(srv) -> Initiator:
    ini = Initiator(port=srv.port)
    ini.login(IQN)
    return ini


def _tur(ini: Initiator):
    """TEST UNIT READY, past any unit attention (at most 4 are queued)."""
    for _ in range(5):
        r = ini.test_unit_ready()
        if r.sense_key != 0x06:
            return r
    raise AssertionError("unit attentions do not stop")


def _wait_in_progress(ini: Initiator) -> None:
    """Until TUR reports SANITIZE IN PROGRESS (the SANITIZE reached exec)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:              # bounded: 5 s
        r = _tur(ini)
        if (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING:
            return
        time.sleep(0.02)
    raise AssertionError("the sanitize operation did not start")


def _wait_done(ini: Initiator) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:              # bounded: WAIT_S
        r = _tur(ini)
        if r.ok:
            return
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING, (r.status, r.sense.hex())
        time.sleep(0.1)
    raise AssertionError(f"sanitize still running after {WAIT_S} s")


def _check_pattern(ini: Initiator, img: Path, size: int = SIZE) -> None:
    want = PATTERN * (BS // len(PATTERN))
    last = size // BS - 1
    assert ini.read10(0, 1).check().data == want
    assert ini.read10(last, 1).check().data == want
    assert img.read_bytes() == PATTERN * (size // len(PATTERN))


def test_immed_sanitize_gates_commands_reports_progress_and_leaves_the_pattern(uscstd, tmp_path):
    srv, img, _ = _start(uscstd, tmp_path)
    plist = _plist()
    with _login(srv) as ini:
        assert _tur(ini).ok
        ini.read10(0, 1).check()                    # LBA 0 now sits in the page cache
        r = ini.scsi(_sanitize_cdb(immed=True, plen=len(plist)), data_out=plist)
        assert r.ok, (r.status, r.sense.hex())      # IMMED=1: GOOD once started
        t = ini.test_unit_ready()
        assert (t.status, t.sense_key, t.asc_ascq) == (0x02, 0x02, (0x04, 0x1B))
        # READ: not from the page cache (fileio's exec_nowait must decline)
        rd = ini.read10(0, 1)
        assert (rd.status, rd.sense_key, rd.asc_ascq) == (0x02, 0x02, (0x04, 0x1B))
        assert not rd.data
        wr = ini.write10(0, b"\x55" * BS)
        assert (wr.sense_key, wr.asc_ascq) == NOT_READY_SANITIZING
        again = ini.scsi(_sanitize_cdb(immed=True, plen=len(plist)), data_out=plist)
        assert (again.sense_key, again.asc_ascq) == NOT_READY_SANITIZING
        inq = ini.inquiry().check()                 # SBC-3 4.11.2: still served
        assert inq.data[0] & 0x1F == 0x00
        rs = ini.scsi(bytes((0x03, 0, 0, 0, 252, 0)), read_len=252)
        assert rs.ok                                # REQUEST SENSE: GOOD, the sense as data
        assert (rs.data[2] & 0x0F, rs.data[12], rs.data[13]) == (0x02, 0x04, 0x1B)
        progress = [_progress(t.sense), _progress(rs.data)]
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:          # bounded: WAIT_S
            t = ini.test_unit_ready()
            if t.ok:
                break
            assert (t.sense_key, t.asc_ascq) == NOT_READY_SANITIZING
            progress.append(_progress(t.sense))
            time.sleep(0.25)
        assert t.ok, "sanitize did not finish"
        assert progress == sorted(progress), progress
        assert len(set(progress)) >= 3 and progress[-1] > progress[0], progress
        assert all(0 <= p <= 65535 for p in progress)
        _check_pattern(ini, img)
        rs = ini.scsi(bytes((0x03, 0, 0, 0, 252, 0)), read_len=252).check()
        assert rs.data[2] & 0x0F == 0x00            # NO SENSE once done
        ini.logout()
    srv.assert_healthy()


def test_abort_task_and_nexus_loss_end_the_command_not_the_operation(uscstd, tmp_path):
    srv, img, _ = _start(uscstd, tmp_path)
    plist = _plist()
    ini = _login(srv)
    try:
        itt = ini.submit(_sanitize_cdb(immed=False, plen=len(plist)), data_out=plist)
        _wait_in_progress(ini)
        assert ini.task_mgmt(TMF_ABORT_TASK, ref_itt=itt) == TMF_RSP_COMPLETE
        with pytest.raises(TaskAborted):
            ini.wait(itt, timeout=5)
        r = _tur(ini)                               # the abort did not wait for the end
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING
        # a second IMMED=0 SANITIZE waits no more: refused while one runs
        r = ini.scsi(_sanitize_cdb(immed=False, plen=len(plist)), data_out=plist)
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING
    finally:
        ini.close()                                 # nexus loss, no logout
    with _login(srv) as ini2:
        r = _tur(ini2)
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING
        _wait_done(ini2)
        _check_pattern(ini2, img)
        ini2.logout()
    srv.assert_healthy()


def test_lun_reset_aborts_a_waiting_sanitize_and_the_operation_survives_relogin(uscstd, tmp_path):
    srv, img, _ = _start(uscstd, tmp_path)
    plist = _plist()
    with _login(srv) as ini:
        itt = ini.submit(_sanitize_cdb(immed=False, plen=len(plist)), data_out=plist)
        _wait_in_progress(ini)
        assert ini.task_mgmt(TMF_LUN_RESET) == TMF_RSP_COMPLETE
        with pytest.raises(TaskAborted):
            ini.wait(itt, timeout=5)
        ua = ini.test_unit_ready()
        assert (ua.sense_key, ua.asc_ascq) == (0x06, (0x29, 0x03))     # LUN reset UA first
        r = ini.test_unit_ready()
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING
        ini.logout()
    with _login(srv) as ini2:
        r = ini2.test_unit_ready()
        assert (r.sense_key, r.asc_ascq) == NOT_READY_SANITIZING
        _wait_done(ini2)
        _check_pattern(ini2, img)
        ini2.logout()
    srv.assert_healthy()


def test_removing_the_device_mid_sanitize_stops_the_kthread_cleanly(uscstd, tmp_path):
    srv, img, sock = _start(uscstd, tmp_path, rate=1)           # 6 s
    plist = _plist()
    with _login(srv) as ini:
        ini.scsi(_sanitize_cdb(immed=True, plen=len(plist)), data_out=plist).check()
        _wait_in_progress(ini)
        ini.logout()
    assert uscstadmin_ok(sock, "get", "devices/disk0/sanitize_rate").split()[0] == "1"
    uscstadmin_ok(sock, "rem-lun", IQN, "0")
    uscstadmin_ok(sock, "close-dev", "disk0")
    assert "disk0" not in uscstadmin_ok(sock, "list", "devices")
    err = srv.stderr_text()
    assert "disk0: sanitize stopped" in err, err[-2000:]
    assert "sanitize done" not in err
    srv.assert_healthy()
    # teardown: SIGTERM, exit 0, no leak or bug report (uscstd runs --debug)


def test_stopping_uscstd_with_a_waiting_sanitize_exits_cleanly(uscstd, tmp_path):
    srv, img, _ = _start(uscstd, tmp_path, rate=1)
    plist = _plist()
    ini = _login(srv)
    try:
        ini.submit(_sanitize_cdb(immed=False, plen=len(plist)), data_out=plist)
        _wait_in_progress(ini)
        assert srv.stop() == 0, srv.stderr_text()[-3000:]
    finally:
        ini.close()
    assert not srv.unhealthy_lines(), srv.stderr_text()[-3000:]


# ---------------------------------------------------------------- in-kernel

def _wait_state_left(virt_dev, state: int) -> None:
    for _ in range(500):                            # bounded: 5 s
        if virt_dev.sanitize_state != state:
            return
        msleep(10)


def test_failed_sanitize_leaves_the_failure_mode_until_a_good_one_or_exit(kernel, tmp_path):
    """A write error (RLIMIT_FSIZE below the file's size: EFBIG, SIGXFSZ is
    ignored by Python) fails the operation half way (SBC-3 4.11.4)."""
    path = tmp_path / "f.img"
    path.write_bytes(OLD * (2 << 20))
    plist = _plist()
    tur = bytes(6)
    exit_fm = _sanitize_cdb(0x1F)

    def failing(dev, cdb, data):
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, old[1]))
        try:
            r = run_cmd(dev, cdb, data)
            _wait_state_left(dev.dh_priv, vd.VDISK_SANITIZE_IN_PROGRESS)
            for _ in range(100):                    # bounded: 1 s
                if r.done or cdb[1] & 0x80:
                    break
                msleep(10)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
        return r

    def body():
        dev = make_dev(fileio_devtype, "sanf", {"filename": str(path), "sanitize_rate": "1000"})
        virt_dev = dev.dh_priv
        # AUSE=1, IMMED=1: EXIT FAILURE MODE ends the failure mode
        s1 = failing(dev, _sanitize_cdb(immed=True, ause=True, plen=len(plist)), plist)
        state1 = virt_dev.sanitize_state
        t1 = run_cmd(dev, tur)
        rd1 = run_cmd(dev, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
        rs1 = run_cmd(dev, [0x03, 0, 0, 0, 252, 0])
        inq1 = run_cmd(dev, [0x12, 0, 0, 0, 96, 0])
        x1 = run_cmd(dev, exit_fm)
        t2 = run_cmd(dev, tur)
        # AUSE=0, IMMED=0: the command reports the failure; EXIT FAILURE
        # MODE is refused; a sanitize that succeeds ends the failure mode
        s2 = failing(dev, _sanitize_cdb(immed=False, plen=len(plist)), plist)
        x2 = run_cmd(dev, exit_fm)
        t3 = run_cmd(dev, tur)
        s3 = run_cmd(dev, _sanitize_cdb(immed=True, plen=len(plist)), plist)
        _wait_state_left(virt_dev, vd.VDISK_SANITIZE_IN_PROGRESS)
        t4 = run_cmd(dev, tur)
        dev.handler.detach(dev)
        return dict(s1=s1.status, state1=state1, t1=t1.key_asc_ascq, rd1=rd1.key_asc_ascq,
                    rs1=(rs1.status, rs1.data[2] & 0x0F, rs1.data[12], rs1.data[13]),
                    inq1=inq1.status, x1=x1.status, t2=t2.status,
                    s2=(bool(s2.done), s2.cmd.status, bytes(s2.cmd.sense[:14]) if s2.cmd.sense else b""),
                    x2=x2.key_asc_ascq, t3=t3.key_asc_ascq, s3=s3.status, t4=t4.status)
    r = kernel(body)
    assert (r["s1"], r["state1"]) == (0, vd.VDISK_SANITIZE_FAILED)
    assert r["t1"] == SANITIZE_FAILED and r["rd1"] == SANITIZE_FAILED
    assert r["rs1"] == (0, 0x03, 0x31, 0x03)
    assert r["inq1"] == 0 and r["x1"] == 0 and r["t2"] == 0
    done, status, sense = r["s2"]
    assert done and status == 0x02 and (sense[2] & 0x0F, sense[12], sense[13]) == SANITIZE_FAILED
    assert r["x2"] == INVALID_FIELD_CDB and r["t3"] == SANITIZE_FAILED
    assert r["s3"] == 0 and r["t4"] == 0
    assert path.read_bytes() == PATTERN * ((2 << 20) // len(PATTERN))


def test_vdisk_del_device_stops_a_running_sanitize(kernel, tmp_path):
    path = tmp_path / "d.img"
    plist = _plist()

    def body():
        from scst_core.main import scst_find_device
        assert vd.vdisk_init() == 0
        try:
            assert vd.vdisk_add_device("vdisk_fileio", "sand",
                                       {"filename": str(path), "size": "4M",
                                        "sanitize_rate": "1"}) == 0
            dev = scst_find_device("sand")
            virt_dev = dev.dh_priv
            s = run_cmd(dev, _sanitize_cdb(immed=True, plen=len(plist)), plist)
            msleep(300)
            running = virt_dev.sanitize_thread is not None and 0 < virt_dev.sanitize_progress
            ret = vd.vdisk_del_device("sand")
            left = [t.comm for t in sched.all_tasks.values() if t.comm.startswith("vdisk_sanitize")]
        finally:
            vd.vdisk_exit()
        return s.status, running, ret, virt_dev.sanitize_thread, left, len(bug.reports)
    assert kernel(body) == (0, True, 0, None, [], 0)
