"""Run one scenario on one world and judge it: the core of `uscst-sim run`.

drive() runs a scenario (tools/sim/scenarios.py) on any world (the sim
engine's Simulation or tools/sim/tcp.py's TcpWorld) with the invariant
checkers on, and turns whatever ended the run into a one-line verdict:
"ok", or "FAIL: <invariant>: detail" (an invariant from
tools/sim/invariants.py; "stall", "protocol", "connection" or "crash"
when the run ended some other way).

Outcome.line() is the last line `uscst-sim run` prints:
`seed=N events=E virtual_s=T trace=HEX16 verdict=ok`.

Where it may be called from: the CLI, the pytest fixture, tests. It runs
the world to its end on the calling thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .channel import ChannelError
from .initiator import ProtocolViolation
from .invariants import Invariants, InvariantViolation
from .scenarios import SCENARIOS, Context, TargetSpec

MAX_VIRTUAL_S = 3600.0


class SeedTimeout(Exception):
    """A run took longer than its wall-clock limit (a livelock that keeps
    virtual time from advancing; raised from a SIGALRM handler)."""


@dataclass
class Outcome:
    scenario: str
    seed: int
    events: int = 0
    virtual_s: float = 0.0
    trace: str = "-"
    verdict: str = "ok"
    stats: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)    # every teardown report

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def line(self) -> str:
        return (f"seed={self.seed} events={self.events} virtual_s={self.virtual_s:.3f} "
                f"trace={self.trace} verdict={self.verdict}")

    def replay_command(self) -> str:
        return f"uscst-sim run {self.scenario} --seed {self.seed}"


def one_line(text: str) -> str:
    return " ".join(text.split())


def verdict_of(exc: BaseException) -> str:
    """The verdict for an exception that ended a run."""
    if isinstance(exc, InvariantViolation):
        return f"FAIL: {one_line(str(exc))}"
    kind = {ChannelError: "connection", ProtocolViolation: "protocol"}.get(type(exc))
    if kind is None:
        kind = "stall" if isinstance(exc, SeedTimeout) or type(exc).__name__ == "SimStall" \
            else "crash"
    return f"FAIL: {kind}: {type(exc).__name__}: {one_line(str(exc))}"


def drive(name: str, world: Any, target: TargetSpec, seed: int, *,
          max_virtual_s: float = MAX_VIRTUAL_S,
          teardown: Callable[[], list[str]] | None = None,
          body: Callable[[Context], None] | None = None) -> Outcome:
    """Run scenario name (or body, a scenario function of a test, named
    name) on world against target; never raises for a failing run (the
    verdict says it), only for an unknown scenario.
    teardown, called after a run that kept every invariant, stops the
    target and returns what it left behind (leaks, lockdep and
    debugobjects reports): any line is a "teardown" violation."""
    scenario = body or SCENARIOS.get(name)
    if scenario is None:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    inv = Invariants(target.block_size, torn_blocks=getattr(world, "torn_blocks", False))
    ctx = Context(world, target, inv)
    out = Outcome(name, seed, stats=ctx.stats)
    try:
        scenario(ctx)
        world.run(max_virtual_s=max_virtual_s)
        inv.finish()
        reports = teardown() if teardown is not None else []
        out.details = reports
        if reports:
            more = f" (+{len(reports) - 1} more)" if len(reports) > 1 else ""
            raise InvariantViolation(f"teardown: {reports[0]}{more}")
    except Exception as e:      # every way a run can end becomes its verdict
        out.verdict = verdict_of(e)
    out.events = world.events
    out.virtual_s = world.now_ns / 1e9
    return out
