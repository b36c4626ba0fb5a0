"""uscstd as a command: options, exit statuses, messages, signals, portals,
the default data directory and the nullio LUN.

Conventions checked (the usual ones for a daemon's command line): --help
exits 0; a usage error prints ONE line on stderr and exits 2; a run-time
start-up failure prints one line naming the cause and exits 1, never a
traceback; SIGTERM and SIGINT stop it with exit 0 and "stopped".
Servers run through the `uscstd` fixture (tests/conftest.py), which checks
exit status 0 and a clean log at teardown.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from initiator import Initiator, parse_read_capacity16
from uscstd_support import free_port

CLI_TIMEOUT = 30
REPO_ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.uscstd", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_help_exits_0_and_lists_the_options() -> None:
    p = _cli("--help")
    assert p.returncode == 0, p.stderr
    for opt in ("--portal", "--disk", "--size", "--iqn", "--nullio", "--blocksize",
                "--data-dir", "--log-level", "--debug"):
        assert opt in p.stdout, opt
    assert p.stderr == ""


@pytest.mark.parametrize("args", [
    pytest.param(["--bogus"], id="unknown-option"),
    pytest.param(["--blocksize", "1000"], id="bad-choice"),
    pytest.param(["--size", "12Q"], id="bad-size"),
    pytest.param(["--portal", "nonsense"], id="bad-portal"),
    pytest.param(["--iqn", "not an iqn"], id="bad-iqn"),
])
def test_bad_option_prints_one_line_on_stderr_and_exits_2(args: list[str]) -> None:
    p = _cli(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = _lines(p.stderr)
    assert len(lines) == 1, f"want exactly one line on stderr, got {len(lines)}:\n{p.stderr}"
    assert lines[0].startswith("uscstd: "), lines[0]
    assert "Traceback" not in p.stderr
    assert "ready at" not in p.stdout


def test_port_in_use_prints_one_line_and_exits_1(uscstd, tmp_path: Path) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        srv = uscstd(port=port, wait=False)
        srv.checked = True                  # this test checks the exit itself
        rc = srv.proc.wait(CLI_TIMEOUT)
    finally:
        blocker.close()
    err = srv.stderr_text()
    assert rc == 1, (rc, err)
    hits = [ln for ln in err.splitlines() if "address already in use" in ln]
    assert len(hits) == 1, f"want one line saying 'address already in use':\n{err}"
    assert hits[0].startswith("uscstd: ") and str(port) in hits[0], hits[0]
    assert "Traceback" not in err and "BUG:" not in err and "Oops" not in err, err
    assert "ready at" not in srv.stdout_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_0_and_stopped(uscstd, sig: int) -> None:
    srv = uscstd()
    # A live session at the moment of the signal must not hold the exit up.
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    assert ini.test_unit_ready().ok
    try:
        rc = srv.stop(sig)
    finally:
        ini.close()
    assert rc == 0, srv.stderr_text()
    assert "uscstd: stopped" in srv.stdout_text()
    assert not srv.unhealthy_lines(), srv.stderr_text()


def test_nullio_lun_reports_its_size_to_iscsi_readcapacity16(uscstd) -> None:
    exe = shutil.which("iscsi-readcapacity16")
    if exe is None:
        pytest.skip("iscsi-readcapacity16 is not installed")
    srv = uscstd("--nullio", disk=None, size="1G")
    p = subprocess.run([exe, srv.url], capture_output=True, text=True, timeout=CLI_TIMEOUT,
                       errors="replace")
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^Total size:%d$" % (1 << 30), p.stdout, re.M), p.stdout
    assert "nullio" in srv.stdout_text()


def test_nullio_with_4096_blocks_through_the_test_initiator(uscstd) -> None:
    srv = uscstd("--nullio", "--blocksize", "4096", disk=None, size="256M")
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    last, bs = parse_read_capacity16(ini.read_capacity16().check().data)
    assert bs == 4096 and (last + 1) * bs == 256 << 20
    assert ini.write10(0, b"\x11" * 8192, bs=4096).ok
    assert len(ini.read10(0, 2, bs=4096).check().data) == 8192
    assert ini.logout() == 0


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_loopback_portal_serves(uscstd) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback")
    srv = uscstd(host="::1")
    assert srv.url.startswith(f"iscsi://[::1]:{srv.port}/"), srv.url
    ini = Initiator(host="::1", port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    assert ini.test_unit_ready().ok
    assert ini.logout() == 0
    disc = Initiator(host="::1", port=srv.port, timeout=10.0)
    disc.connect()
    disc.login(discovery=True)
    targets = disc.send_targets()
    assert targets and targets[0][0] == srv.iqn
    assert any(a.startswith(f"[::1]:{srv.port},") for a in targets[0][1]), targets
    exe = shutil.which("iscsi-inq")
    if exe is not None:
        p = subprocess.run([exe, srv.url], capture_output=True, text=True,
                           timeout=CLI_TIMEOUT, errors="replace")
        assert p.returncode == 0 and "Vendor:USCST" in p.stdout, p.stdout + p.stderr


def test_two_portals_serve_the_same_target(uscstd) -> None:
    second = free_port()
    srv = uscstd("--portal", f"127.0.0.1:{second}")
    for port in (srv.port, second):
        ini = Initiator(host="127.0.0.1", port=port, timeout=10.0)
        ini.connect()
        ini.login(srv.iqn)
        assert ini.test_unit_ready().ok
        assert ini.logout() == 0
    assert srv.stdout_text().count("ready at") == 2


def test_default_data_dir_is_created_and_default_disk_is_sparse(uscstd, tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    srv = uscstd("--data-dir", str(data_dir), disk=None, size="1G")
    disk = data_dir / "disk0.img"
    assert data_dir.is_dir()
    assert disk.is_file()
    st = disk.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < (4 << 20), f"default disk is not sparse: {st.st_blocks} blocks"
    assert str(disk) in srv.stdout_text()
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    last, bs = parse_read_capacity16(ini.read_capacity16().check().data)
    assert (last + 1) * bs == 1 << 30
    assert ini.read10(0, 8).check().data == bytes(4096)      # a sparse hole reads zeros
    assert ini.logout() == 0


def test_existing_disk_keeps_its_size_and_data_across_restarts(uscstd, tmp_path: Path) -> None:
    disk = tmp_path / "keep.img"
    payload = os.urandom(8192)
    srv = uscstd(disk=disk, size="32M")
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    assert ini.write10(100, payload).ok
    assert ini.logout() == 0
    assert srv.stop() == 0
    srv2 = uscstd(disk=disk, size="64M")      # --size ignored for an existing file
    ini = Initiator(host=srv2.host, port=srv2.port, timeout=10.0)
    ini.connect()
    ini.login(srv2.iqn)
    last, bs = parse_read_capacity16(ini.read_capacity16().check().data)
    assert (last + 1) * bs == 32 << 20
    assert ini.read10(100, 16).check().data == payload
    assert ini.logout() == 0


# --- the fixture's health check can fail ------------------------------------------

def test_fixture_check_fails_on_a_killed_server(uscstd) -> None:
    srv = uscstd()
    srv.proc.kill()
    srv.proc.wait(CLI_TIMEOUT)
    with pytest.raises(AssertionError, match="exit status"):
        uscstd.check(srv)
    srv.checked = True


def test_fixture_check_fails_on_a_bug_line_in_the_log(uscstd) -> None:
    srv = uscstd()
    with open(srv.log, "a") as f:
        f.write("[    1.000000] BUG: injected by the test\n")
    with pytest.raises(AssertionError, match="BUG: injected"):
        srv.assert_healthy()
    with pytest.raises(AssertionError, match="reports a bug"):
        uscstd.check(srv)
    assert srv.returncode == 0          # the process itself stopped cleanly
    srv.checked = True
