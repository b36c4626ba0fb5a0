"""Helpers for the kshim tests: run a body on the trio engine or on the sim
engine (virtual time), read the reports.

A module of its own (not conftest) so test files import it by a unique name."""
from __future__ import annotations

import os
import signal
from typing import Any, Callable

from kshim import bug, engine
from kshim.engine_sim import Simulation


RUN_LIMIT_S = 60        # a test body that blocks forever fails instead of hanging the run


class KernelHung(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise KernelHung(f"kernel test body still running after {RUN_LIMIT_S} s")


def run_kernel(body: Callable[[], Any]) -> Any:
    """Boot the engine, run body() in a kthread, stop, return body's result."""
    box: list[Any] = []

    def init() -> int:
        box.append(body())
        engine.request_shutdown()
        return 0
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(RUN_LIMIT_S)
    try:
        engine.run(init, handle_signals=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return box[0] if box else None


SIM_SEED = int(os.environ.get("USCST_SEED", "1"))    # USCST_SEED=N replays another seed


def run_sim_kernel(body: Callable[[], Any], seed: int = SIM_SEED) -> Any:
    """Boot the sim engine, run body() in a kthread under virtual time, stop,
    return body's result. A body that never ends raises SimStall (after an
    hour of virtual time at most), never hangs."""
    sim = Simulation(seed)
    try:
        return sim.boot(body)
    finally:
        sim.shutdown(None)


def titles() -> list[str]:
    """Titles of the reports recorded so far."""
    return [r.title for r in bug.reports]


def report(title_part: str) -> bug.bug_report:
    """The one report whose title contains title_part (fails otherwise)."""
    found = bug.find_reports(title_part)
    assert len(found) == 1, f"want one report {title_part!r}, got {titles()}"
    return found[0]
