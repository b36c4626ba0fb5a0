"""The uscst-sim command line (tools/sim/cli.py), run as `python -m tools.sim`."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from uscstd_support import REPO_ROOT


def sim(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.sim", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_list_names_every_scenario():
    p = sim("list")
    assert p.returncode == 0
    names = [ln.split()[0] for ln in p.stdout.splitlines()]
    assert names == ["login-io", "mcs-reinstate", "tmf-storm", "config-churn", "nop-timeout"]


def test_list_into_a_closed_pipe_exits_without_a_traceback():
    r, w = os.pipe()
    os.close(r)                      # the reader is gone before the first write
    try:
        p = subprocess.run([sys.executable, "-m", "tools.sim", "list"], cwd=REPO_ROOT,
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert p.stderr == ""
    assert p.returncode == 1


@pytest.mark.parametrize("args", [
    (), ("run",), ("run", "nope", "--seed", "1"), ("run", "login-io"),
    ("run", "login-io", "--seed", "-1"), ("run", "login-io", "--seed", "x"),
    ("explore", "login-io"), ("explore", "login-io", "--seeds", "0"),
    ("explore", "login-io", "--seeds", "3", "--jobs", "0"),
    ("run", "login-io", "--seed", "1", "--portal", "nohost"),
    ("run", "config-churn", "--seed", "1", "--portal", "127.0.0.1:1"),
    ("bogus",),
])
def test_bad_command_line_is_one_line_on_stderr_and_exit_2(args):
    p = sim(*args)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("uscst-sim: ")


def test_run_with_portal_drives_a_running_uscstd_and_ends_with_the_verdict_line(uscstd):
    srv = uscstd()
    p = sim("run", "login-io", "--seed", "7", "--portal", srv.portal)
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"seed=7 events=\d+ virtual_s=\d+\.\d{3} trace=- verdict=ok", last), last


def test_run_with_portal_and_trace_is_refused():
    p = sim("run", "login-io", "--seed", "7", "--portal", "127.0.0.1:1", "--trace", "/tmp/x")
    assert p.returncode == 2 and "need the sim engine" in p.stderr
