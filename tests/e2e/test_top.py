"""uscstadmin top: the live view under tmux shows the session's IOPS while
iscsi-perf runs and answers its keys; --once prints a plain snapshot."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("iscsi-perf") and shutil.which("tmux")),
                                reason="libiscsi-bin and tmux needed")
PERF_INI = "iqn.2010-11.libiscsi:iscsi-perf"


def _session_iops(screen: str) -> int | None:
    """The IOPS cell of iscsi-perf's row in the Sessions table, if shown."""
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 4 and cells[1].startswith(PERF_INI[:14]) and cells[3].isdigit():
            return int(cells[3])
    return None


@pytest.fixture
def perf_run(uscstd, tmp_path):
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock))
    perf = subprocess.Popen(["iscsi-perf", "-t", "60", "-m", "4", srv.url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield sock
    perf.kill()
    perf.wait(10)


def test_top_under_tmux_shows_session_iops_and_answers_keys(perf_run):
    sock = perf_run
    server = f"uscst-top-{os.getpid()}"          # a tmux server of our own
    tmux = ["tmux", "-L", server, "-f", "/dev/null"]
    # COLUMNS/LINES of this process would override the pane's size for rich.
    cmd = (f"env -u COLUMNS -u LINES {sys.executable} -m tools.uscstadmin --socket {sock} "
           f"top --interval 0.3")
    subprocess.run(tmux + ["new-session", "-d", "-s", "top", "-x", "200", "-y", "70",
                           "-c", str(REPO), cmd], check=True, timeout=30)
    try:
        def screen() -> str:
            return subprocess.run(tmux + ["capture-pane", "-p", "-t", "top"], capture_output=True,
                                  text=True, timeout=30).stdout
        iops = None
        for _ in range(150):                       # bounded: about 30 s
            iops = _session_iops(screen())
            if iops:
                break
            time.sleep(0.2)
        assert iops and iops > 0, screen()
        assert "kthreads (sort: cpu)" in screen() and "iscsird" in screen()
        subprocess.run(tmux + ["send-keys", "-t", "top", "s"], check=True, timeout=30)
        subprocess.run(tmux + ["send-keys", "-t", "top", "d"], check=True, timeout=30)
        for _ in range(50):
            text = screen()
            if "sort: wakeups" in text and f"drilled into {PERF_INI}" in text:
                break
            time.sleep(0.2)
        assert "sort: wakeups" in text and f"drilled into {PERF_INI}" in text, text
        subprocess.run(tmux + ["send-keys", "-t", "top", "q"], check=True, timeout=30)
        for _ in range(50):                        # q ends top, and with it the tmux session
            if subprocess.run(tmux + ["has-session", "-t", "top"], capture_output=True,
                              timeout=30).returncode != 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("top did not quit on q")
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, timeout=30)


def test_top_once_prints_a_plain_snapshot(perf_run):
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(perf_run),
                        "top", "--once", "--interval", "1"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout                 # plain text, no terminal codes
    assert "Sessions" in r.stdout and "kthreads" in r.stdout and "softirqs" in r.stdout
    assert "slab scst_cmd" in r.stdout
    for _ in range(5):                             # iscsi-perf may still be logging in
        if _session_iops(r.stdout):
            break
        r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket",
                            str(perf_run), "top", "--once", "--interval", "1"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert _session_iops(r.stdout), r.stdout
