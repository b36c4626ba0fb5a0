"""The sim_target pytest plugin (tools/sim/pytest_plugin.py): the seed
comes from the sim_seed marker or USCST_SEED, and a failing test's report
names the seed and the commands that replay it.

Runs pytest in a subprocess on a test file written here, with the plugin
loaded by -p, so the report is the real one a developer sees.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from uscstd_support import REPO_ROOT

TEST_FILE = '''
import pytest
from tools.sim.invariants import InvariantViolation


@pytest.mark.sim_seed(5)
def test_fails_with_a_violation(sim_target):
    def body(ctx):
        def actor():
            raise InvariantViolation("read-data: planted")
        ctx.world.spawn(actor, "planted")
    sim_target.run("planted", body)


@pytest.mark.sim_seed(5)
def test_reports_its_seed(sim_target):
    print(f"SEED={sim_target.seed}")
'''


def pytest_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    f = tmp_path / "test_planted_sim.py"
    f.write_text(TEST_FILE)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "tools.sim.pytest_plugin", "-s",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(f), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    return p.stdout + p.stderr


def test_failing_sim_test_report_names_its_seed_and_the_replay_command(tmp_path):
    out = pytest_run(tmp_path, "-k", "fails")
    assert "1 failed" in out
    assert "verdict=FAIL: read-data: planted" in out
    assert "seed=5" in out
    assert "replay: USCST_SEED=5 pytest test_planted_sim.py::test_fails_with_a_violation" in out


def test_uscst_seed_from_the_environment_overrides_the_marker(tmp_path):
    assert "SEED=5" in pytest_run(tmp_path, "-k", "reports")
    out = pytest_run(tmp_path, "-k", "reports", env={"USCST_SEED": "9"})
    assert "SEED=9" in out and "1 passed" in out
