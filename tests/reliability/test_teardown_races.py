"""Teardown races (issue 16 campaign 6.4), the CI-sized run: 300 sessions
dropped, reset, cut mid-PDU, logged out or aborted at random points with
I/O in flight against uscstd --debug (seed 1604). No slab-debug report, no
stuck session, every kmem cache back to its baseline active count.
tests/reliability/teardown_race.py runs the 10,000-iteration campaign."""
from __future__ import annotations

from pathlib import Path

from teardown_race import ENDINGS, run


def test_300_random_teardowns_during_io_leak_no_command_seed_1604(tmp_path: Path) -> None:
    r = run(tmp_path, iterations=300, seed=1604, check_every=100, max_seconds=300)
    assert r["iterations"] == 300, r
    assert r["alive"] and r["exit_status"] == 0, r
    assert r["reports"] == [], r["reports"]
    assert r["stuck"] == 0, r
    assert r["leaks"] == [], r["leaks"]
    assert all(r["endings"][e] > 0 for e in ENDINGS), r["endings"]
