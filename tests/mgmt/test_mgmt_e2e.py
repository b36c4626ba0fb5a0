"""The management layer end to end: uscstd --config, uscstadmin over the
control socket, the FUSE mount, live LUN changes seen by a logged-in
initiator, config validation, write-back round trip, SIGHUP and systemd
notification. Every test runs a real uscstd on a free loopback port."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mgmt_support import TARGET, Daemon  # type: ignore[import-not-found]
from initiator import Initiator, parse_report_luns

LUNS = f"targets/iscsi/{TARGET}/luns"


def login(d: Daemon, name: str = "iqn.1993-08.org.debian:01:mgmt-test") -> Initiator:
    ini = Initiator(port=d.port, initiator_name=name)
    ini.connect()
    ini.login(TARGET)
    return ini


def report_luns(ini: Initiator) -> list[int]:
    r = ini.report_luns()
    r.check()
    return parse_report_luns(r.data)


def test_config_at_start_serves_its_luns_and_groups(daemon: Daemon) -> None:
    with login(daemon) as ini:
        assert report_luns(ini) == [0, 1]
    with login(daemon, "iqn.1993-08.org.special:host7") as ini:
        assert report_luns(ini) == [0]          # the group's own LUN map
    out = json.loads(daemon.admin("--json", "list", "all").stdout)
    t = next(t for t in out["targets"] if t["name"] == TARGET)
    assert [x["lun"] for x in t["luns"]] == [0, 1]
    assert t["groups"][0]["initiators"] == ["iqn.1993-08.org.special:*"]
    assert t["groups"][0]["luns"][0]["read_only"] is True


def test_add_lun_with_uscstadmin_shows_in_report_luns_of_logged_in_initiator(daemon: Daemon) -> None:
    with login(daemon) as ini:
        assert report_luns(ini) == [0, 1]
        daemon.admin("add-lun", TARGET, "2", "null2")
        assert report_luns(ini) == [0, 1, 2]
        assert ini.test_unit_ready(2).status is not None
        ini.read10(0, 1, bs=4096, lun=2)   # the new LUN serves I/O


def test_add_lun_raises_reported_luns_data_changed_ua(daemon: Daemon) -> None:
    """Needs the core's hook: scst_cmd_init_done calls scst_core.ua.scst_check_ua."""
    with login(daemon) as ini:
        assert ini.test_unit_ready(0).ok
        daemon.admin("add-lun", TARGET, "2", "null2")
        r = ini.test_unit_ready(0)
        assert r.status == 0x02, "no CHECK CONDITION after the LUN inventory changed"
        assert r.sense_key == 0x06 and r.asc_ascq == (0x3F, 0x0E)
        assert ini.test_unit_ready(0).ok            # reported once
        assert report_luns(ini) == [0, 1, 2]


def test_add_lun_also_sends_an_async_message_with_the_unit_attention(daemon: Daemon) -> None:
    """SCST's report_aen: the iSCSI driver sends AsyncEvent 0 (SCSI event)
    carrying the new unit attention's sense (RFC 7143 11.9.1)."""
    with login(daemon) as ini:
        assert ini.test_unit_ready(0).ok
        daemon.admin("add-lun", TARGET, "2", "null2")
        ini.nop_out(b"sync")                       # the Async Messages come first
        events = [p for p in ini.async_msgs if p.async_event == 0]
        assert events, "no SCSI Async Message after the LUN inventory changed"
        sense = events[0].data[2:]
        assert sense[2] & 0x0F == 0x06 and (sense[12], sense[13]) == (0x3F, 0x0E)


def test_fuse_mount_takes_lun_add_by_echo_into_mgmt(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mount cannot be tested here")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        pytest.skip("pyfuse3 is not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = Daemon(tmp_path, extra=["--fuse", str(mnt)])
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        if not d.wait_for("management tree mounted", 5):
            pytest.skip(f"FUSE mount failed here: {d.output()[-300:]}")
        assert (mnt / "version").read_text().startswith("3.")
        assert sorted(os.listdir(mnt / "targets" / "iscsi" / TARGET / "luns")) == ["0", "1", "mgmt"]
        assert os.readlink(mnt / "targets" / "iscsi" / TARGET / "luns" / "0" / "device") \
            == "../../../../../devices/disk0"
        with login(d) as ini:
            r = subprocess.run(["sh", "-c", f"echo 'add null2 5' > '{mnt}/{LUNS}/mgmt'"],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr
            assert report_luns(ini) == [0, 1, 5]
            bad = subprocess.run(["sh", "-c", f"echo 'add nosuch 6' > '{mnt}/{LUNS}/mgmt'"],
                                 capture_output=True, text=True, timeout=20)
            assert bad.returncode != 0 and "error" in bad.stderr      # FUSE reports ENODEV as EIO
        assert (mnt / "last_sysfs_mgmt_res").read_text().strip() == "-19"
        with pytest.raises(PermissionError):
            (mnt / "version").write_text("x")
    finally:
        d.stop()
    assert not os.path.ismount(mnt), "the FUSE mount must be gone after uscstd exits"


def test_malformed_config_is_refused_with_position_and_target_untouched(daemon: Daemon) -> None:
    before = daemon.admin("write-config").stdout
    bad = daemon.tmp / "bad.conf"
    bad.write_text("HANDLER vdisk_nullio {\n\tDEVICE n9 {\n\t\tsize 1G\n\t}\n"
                   "TARGET_DRIVER iscsi {\n\tTARGET iqn.2026-11.org.uscst:x {\n\t}\n")
    with login(daemon) as ini:
        r = daemon.admin("config", str(bad), check=False)
        assert r.returncode == 1
        assert f"{bad}:5:1: TARGET_DRIVER inside HANDLER vdisk_nullio (opened at line 1, " \
               f"column 1): expected '}}' to close it first" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert report_luns(ini) == [0, 1]
        assert ini.test_unit_ready(0).ok
    assert daemon.admin("write-config").stdout == before


def test_unknown_attribute_is_refused_and_nothing_applied(daemon: Daemon) -> None:
    before = daemon.admin("write-config").stdout
    bad = daemon.tmp / "unknown.conf"
    bad.write_text("HANDLER vdisk_nullio {\n\tDEVICE n9 {\n\t\tsize 1G\n\t}\n}\n"
                   "HANDLER vdisk_fileio {\n\tDEVICE disk0 {\n"
                   f"\t\tfilename {daemon.tmp}/disk0.img\n\t\tflavour vanilla\n\t}}\n}}\n")
    r = daemon.admin("config", str(bad), check=False)
    assert r.returncode == 1
    assert f"{bad}:9:3: unknown attribute 'flavour' for DEVICE disk0 of HANDLER vdisk_fileio" \
        in r.stderr
    assert daemon.admin("write-config").stdout == before      # n9 was not created


def test_write_config_round_trip_is_identical_with_zero_changes(daemon: Daemon) -> None:
    daemon.admin("add-group", TARGET, "extra")
    daemon.admin("add-init", TARGET, "extra", "iqn.2000-01.com.example:h1")
    daemon.admin("set", f"targets/iscsi/{TARGET}/HeaderDigest", "CRC32C,None")
    out = daemon.tmp / "written.conf"
    daemon.admin("write-config", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    first = out.read_text()
    assert "HeaderDigest CRC32C,None" in first and "INITIATOR iqn.2000-01.com.example:h1" in first
    r = json.loads(daemon.admin("--json", "config", str(out)).stdout)
    assert r["changes"] == 0 and r["actions"] == []
    assert daemon.admin("write-config").stdout == first


def test_config_applies_only_the_difference_and_sessions_keep_running(daemon: Daemon) -> None:
    text = daemon.config.read_text().replace("\t\tLUN 1 null1\n", "\t\tLUN 1 null1\n\t\tLUN 3 null2\n")
    new = daemon.tmp / "new.conf"
    new.write_text(text)
    with login(daemon) as ini:
        ini.write10(0, b"\xab" * 512).check()
        dry = json.loads(daemon.admin("--json", "config", "--dry-run", str(new)).stdout)
        assert dry["actions"] == [f"add LUN 3 (null2) to {TARGET}"]
        assert report_luns(ini) == [0, 1]
        r = json.loads(daemon.admin("--json", "config", str(new)).stdout)
        assert r["changes"] == 1
        assert report_luns(ini) == [0, 1, 3]
        assert ini.read10(0, 1).data == b"\xab" * 512
    # LUN 2 added by hand is not in the file: it stays without --force
    daemon.admin("add-lun", TARGET, "2", "null2")
    assert json.loads(daemon.admin("--json", "config", str(new)).stdout)["changes"] == 0
    r = json.loads(daemon.admin("--json", "config", "--force", str(new)).stdout)
    assert r["actions"] == [f"del LUN 2 of {TARGET}"]


def test_sighup_reapplies_the_config_file(daemon: Daemon) -> None:
    daemon.config.write_text(daemon.config.read_text().replace(
        "\t\tLUN 1 null1\n", "\t\tLUN 1 null1\n\t\tLUN 7 null2\n"))
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_for("SIGHUP:"), daemon.output()
    assert "1 changes applied" in daemon.output()
    with login(daemon) as ini:
        assert report_luns(ini) == [0, 1, 7]


def test_live_attribute_change_and_read_only_attribute_refusal(daemon: Daemon) -> None:
    daemon.admin("set", "devices/null1/usn", "SERIAL42")
    assert daemon.admin("get", "devices/null1/usn").stdout.strip() == "SERIAL42"
    r = daemon.admin("set", "devices/disk0/filename", "/etc/passwd", check=False)
    assert r.returncode == 1 and r.stderr.startswith("uscstadmin: ")
    bad = daemon.tmp / "ro.conf"
    bad.write_text(daemon.config.read_text().replace("\t\tsize 2G\n", "\t\tsize 2G\n\t\trotational 0\n"))
    r = daemon.admin("config", str(bad), check=False)
    assert r.returncode == 1 and ":14:3: attribute 'rotational' of device null2 cannot change" in r.stderr


def test_statistics_count_session_io(daemon: Daemon) -> None:
    with login(daemon) as ini:
        ini.write10(0, b"\x01" * 1024).check()
        ini.read10(0, 2).check()
        ini.read10(0, 2).check()
        st = json.loads(daemon.admin("--json", "stats").stdout)
        s = next(x for x in st["sessions"] if x["target"] == TARGET)
        assert (s["reads"], s["writes"], s["read_bytes"], s["write_bytes"]) == (2, 1, 2048, 1024)


def test_session_statistics_keep_the_io_of_a_removed_lun(daemon: Daemon) -> None:
    """DEV_DONE counts a command once, in its LUN (decision 0068): the
    session's totals add the LUNs up, and a LUN removed while the session
    lives leaves its I/O in them."""
    def session_io() -> tuple[int, int, int, int]:
        st = json.loads(daemon.admin("--json", "stats").stdout)
        s = next(x for x in st["sessions"] if x["target"] == TARGET)
        return s["reads"], s["writes"], s["read_bytes"], s["write_bytes"]
    with login(daemon) as ini:
        ini.write10(0, b"\x01" * 1024).check()
        ini.read10(0, 2).check()
        ini.read10(0, 1, bs=4096, lun=1).check()
        assert session_io() == (2, 1, 1536, 1024)
        daemon.admin("rem-lun", TARGET, "1")
        assert session_io() == (2, 1, 1536, 1024)
        assert ini.read10(0, 2).status == 2         # the LUN change's unit attention
        ini.read10(0, 2).check()
        assert session_io() == (3, 1, 2560, 1024)


def test_mgmt_errors_are_one_line_with_exit_codes(daemon: Daemon, tmp_path: Path) -> None:
    r = daemon.admin("add-lun", TARGET, "0", "null2", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == "uscstadmin: scst: LUN 0 already exists in group default"
    r = daemon.admin("close-dev", "disk0", check=False)
    assert r.returncode == 1 and "still exported" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket",
                        str(tmp_path / "none.sock"), "list"], cwd=Path(__file__).parents[2],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "cannot reach uscstd" in r.stderr
    r = daemon.admin("--help")
    assert "Examples:" in r.stdout and "add-lun" in r.stdout


def test_control_socket_is_private(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.sock).st_mode) == 0o600


def test_sd_notify_ready_when_started_by_systemd(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    d = Daemon(tmp_path, env={"NOTIFY_SOCKET": path})
    try:
        msg = s.recv(4096).decode()
        assert "READY=1" in msg
    finally:
        d.stop()
        s.close()


def test_unit_file_runs_uscstd_as_notify_service() -> None:
    unit = (Path(__file__).parents[2] / "tools" / "uscstd.service").read_text()
    assert "Type=notify" in unit and "--config" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_driver_enabled_switch_refuses_new_logins_and_keeps_running_sessions(
        daemon: Daemon) -> None:
    from initiator import LoginError
    with login(daemon) as running:
        daemon.admin("set", "targets/iscsi/enabled", "0")
        assert daemon.admin("get", "targets/iscsi/enabled").stdout.strip() == "0"
        with Initiator(port=daemon.port, initiator_name="iqn.1993-08.org.debian:01:late") as late:
            late.connect()
            with pytest.raises(LoginError) as e:
                late.login(TARGET)
        assert e.value.status_class == 0x02            # initiator error: target not found
        assert report_luns(running) == [0, 1]         # the session logged in before goes on
        daemon.admin("set", "targets/iscsi/enabled", "1")
    with login(daemon, "iqn.1993-08.org.debian:01:late") as ini:
        assert report_luns(ini) == [0, 1]
