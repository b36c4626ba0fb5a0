"""pytest plugin: the `sim_target` fixture, seeds and replay on failure.

A test asks for `sim_target` and gets a SimTargetRun for its seed: run()
boots the target under the sim engine, drives a named scenario (or the
test's own scenario body, a function of a tools.sim.scenarios.Context
that spawns actors using the sim initiator) with the invariant checkers
on, stops the target, checks teardown, and fails the test with the
verdict unless it is ok. Each run happens in a child process, so the
kernel state a failed run leaves behind (a leaked session, a stuck
kthread) dies with it and cannot fail the next test: a fresh interpreter
for a listed scenario (so earlier tests' kshim state cannot change the
run, and USCST_SEED replays it exactly), a fork for a test's own body
(which reports back through ctx.count(), arriving as Outcome.stats).

The seed is the test's `@pytest.mark.sim_seed(N)` (1 without one), or
USCST_SEED=N from the environment, which replays any seed. A failing test
that used the fixture gets a report section naming its seed and the
commands that replay it (`USCST_SEED=N pytest NODEID`, and `uscst-sim run
SCENARIO --seed N` for a named scenario).

Registered from tests/conftest.py (pytest_plugins). Where it may be
called from: pytest, on its main thread.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Generator, Iterator

import pytest

from .runner import Outcome
from .scenarios import SCENARIOS, Context

SEED_ENV = "USCST_SEED"
CHILD_TIMEOUT_S = 600.0     # wall seconds one run may take


class SimTargetRun:
    """What the sim_target fixture gives a test."""

    def __init__(self, seed: int, nodeid: str) -> None:
        self.seed = seed
        self.nodeid = nodeid
        self.outcomes: list[Outcome] = []

    def run(self, scenario: str, body: Callable[[Context], None] | None = None, *,
            trace_path: str | None = None, expect_ok: bool = True,
            timeout_s: float = CHILD_TIMEOUT_S) -> Outcome:
        """Run scenario (a listed name, or body under that name) at this
        test's seed; fail the test unless the verdict is ok (expect_ok).
        A run without a verdict after timeout_s wall seconds (a livelock)
        is killed and fails as a stall."""
        # A listed scenario runs in a fresh interpreter (spawn), so the kernel
        # state earlier tests left in this process cannot change its run: the
        # seed replays the same anywhere. A test's own body cannot be sent
        # to a fresh interpreter: it runs in a fork of this process.
        ctx = multiprocessing.get_context("fork" if body is not None else "spawn")
        rx, tx = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_run_child, args=(tx, scenario, self.seed, trace_path, body),
                            name=f"uscst-sim-{scenario}")
        child.start()
        tx.close()
        try:
            out = rx.recv() if rx.poll(timeout_s) else None
        except EOFError:
            out = None
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
        if out is None:
            out = Outcome(scenario, self.seed, verdict=f"FAIL: stall: no verdict within "
                          f"{timeout_s:g} s (the run's process ended with status "
                          f"{child.exitcode})")
        self.outcomes.append(out)
        if expect_ok and not out.ok:
            pytest.fail(f"{out.line()}\n{self.replay_text()}", pytrace=False)
        return out

    def replay_text(self) -> str:
        lines = [f"replay: {SEED_ENV}={self.seed} pytest {self.nodeid}"]
        lines += [f"replay: {o.replay_command()}" for o in self.outcomes
                  if not o.ok and o.scenario in SCENARIOS]
        return "\n".join(lines)


def _run_child(tx: "multiprocessing.connection.Connection", scenario: str, seed: int,
               trace_path: str | None, body: Callable[[Context], None] | None) -> None:
    """In the forked child: one run, its Outcome sent back."""
    # Imported here: the sim engine loads kshim, which pytest's own start-up
    # and the tests that do not use this fixture need not import.
    from .simrun import run_sim
    tx.send(run_sim(scenario, seed, trace_path=trace_path, body=body))
    tx.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim_seed(n): the seed a sim_target test runs "
                            f"(${SEED_ENV} overrides it)")


def _seed_of(item: pytest.Item) -> int:
    env = os.environ.get(SEED_ENV)
    if env:
        try:
            return int(env, 0)
        except ValueError:
            raise pytest.UsageError(f"{SEED_ENV} must be an integer, not {env!r}") from None
    mark = item.get_closest_marker("sim_seed")
    return int(mark.args[0]) if mark is not None and mark.args else 1


@pytest.fixture
def sim_target(request: pytest.FixtureRequest) -> Iterator[SimTargetRun]:
    """A SimTargetRun for this test's seed (see the module docstring)."""
    run = SimTargetRun(_seed_of(request.node), request.node.nodeid)
    request.node.uscst_sim_run = run
    yield run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    run = getattr(item, "uscst_sim_run", None)
    if run is not None and report.failed:
        report.sections.append(("uscst-sim", f"seed={run.seed}\n{run.replay_text()}"))
