"""uscst-sim: run, replay and explore sim scenarios from one seed.

    uscst-sim list
    uscst-sim run SCENARIO --seed N [--trace FILE] [--check-determinism]
    uscst-sim run SCENARIO --seed N --portal HOST:PORT [--iqn IQN]
    uscst-sim explore SCENARIO --seeds K [--jobs J] [--random] [--seed-timeout S]
                     [--check-determinism]

`run` boots the target in-process under the sim engine, runs the scenario
with the invariant checkers on (with --check-determinism twice, failing
unless both runs give the same trace), and ends with one line
`seed=N events=E virtual_s=T trace=HEX16 verdict=ok` (or
`verdict=FAIL: <invariant>: detail`); exit 0 only when ok. --trace writes
the run's event log, one event a line. With --portal the same scenario
drives a running uscstd over real TCP instead (no trace: the target's
choices are not the seed's; trace=-).

`explore` runs seeds 1..K (or K random 64-bit seeds with --random) in J
worker processes, prints each failing seed with the one command that
replays it, and ends with `explored K seeds: F failed, R seeds/s`; exit 0
only when none failed. With --check-determinism every seed runs twice and
fails unless both runs give the same trace, event count and verdict (R
then counts seeds, each run twice).

A bad command line gets one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import time
from types import FrameType
from typing import NoReturn, Sequence

from . import simrun
from .runner import Outcome, SeedTimeout, drive
from .scenarios import SCENARIOS, TargetSpec
from .tcp import TcpWorld

SEED_MAX = (1 << 64) - 1
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
SEED_TIMEOUT_S = 600
RETRY_ALARM_S = 5
BATCH = 50                  # most seeds one explore worker process runs
DESCRIPTIONS = {name: (fn.__doc__ or "").strip().split("\n")[0] for name, fn in SCENARIOS.items()}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("uscst-sim: ...", exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see uscst-sim --help)")


def _seed(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, not {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed must be in 0..2**64-1, not {v}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {v}")
    return v


def _portal(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"portal must be HOST:PORT, not {text!r}")
    return host, int(port)


def _scenario(text: str) -> str:
    if text not in SCENARIOS:
        raise argparse.ArgumentTypeError(f"unknown scenario {text!r} "
                                         f"(known: {', '.join(SCENARIOS)})")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="uscst-sim", description="Deterministic simulation runs of the uscst "
                "target: one seed replays a run exactly.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="name the scenarios")
    r = sub.add_parser("run", help="run one seed")
    r.add_argument("scenario", type=_scenario)
    r.add_argument("--seed", type=_seed, required=True)
    r.add_argument("--trace", metavar="FILE", help="write the event log here")
    r.add_argument("--portal", type=_portal, metavar="HOST:PORT",
                   help="drive a running uscstd over TCP instead of the sim engine")
    r.add_argument("--iqn", default="iqn.2026-11.org.uscst:default",
                   help="target name with --portal (default: uscstd's default target)")
    r.add_argument("--check-determinism", action="store_true",
                   help="run the seed twice; FAIL unless both runs give the same trace")
    e = sub.add_parser("explore", help="run many seeds")
    e.add_argument("scenario", type=_scenario)
    e.add_argument("--seeds", type=_positive, required=True, metavar="K")
    e.add_argument("--jobs", type=_positive, default=1, metavar="J",
                   help="worker processes (default 1)")
    e.add_argument("--random", action="store_true",
                   help="K random 64-bit seeds instead of 1..K")
    e.add_argument("--seed-timeout", type=_positive, default=SEED_TIMEOUT_S, metavar="S",
                   help=f"wall seconds one seed may take before it fails as a stall "
                        f"(default {SEED_TIMEOUT_S})")
    e.add_argument("--check-determinism", action="store_true",
                   help="run every seed twice; FAIL unless both runs give the same trace")
    for sp in (r, e):
        sp.add_argument("--log-level", choices=LEVELS, default="warning",
                        help="kernel messages up to this level reach stderr (default warning)")
    return p


def run_seed(scenario: str, seed: int, trace: str | None = None,
             log_level: str = "warning") -> Outcome:
    """One seed under the sim engine (in this process)."""
    return simrun.run_sim(scenario, seed, trace_path=trace, log_level=log_level)


def replay_check(out: Outcome, again: Outcome) -> None:
    """Judge a seed's second run: out's verdict becomes a determinism
    failure unless again gave the same trace, event count and verdict."""
    if (again.trace, again.events, again.verdict) != (out.trace, out.events, out.verdict):
        out.verdict = (f"FAIL: determinism: seed {out.seed} gave traces {out.trace} "
                       f"({out.events} events) and {again.trace} ({again.events} events)")


def run_tcp(scenario: str, seed: int, addr: tuple[str, int], iqn: str) -> Outcome:
    """One seed against a running uscstd: its disk is not new, and its
    NOP-In timing is the target default (30 s and 30 s)."""
    spec = TargetSpec(addr=addr, iqn=iqn, fresh=False, nop_in_interval=30.0,
                      nop_in_timeout=30.0)
    world = TcpWorld(seed)
    try:
        return drive(scenario, world, spec, seed, max_virtual_s=600.0)
    finally:
        world.shutdown()


_alarms: list[int] = []       # SIGALRMs during the current seed (explore workers)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    # Again in a few seconds: stopping a livelocked target may hang too.
    _alarms.append(signum)
    signal.alarm(RETRY_ALARM_S)
    raise SeedTimeout("no verdict within the --seed-timeout")


def _explore_batch(scenario: str, seeds: list[int], log_level: str,
                   seed_timeout: int, twice: bool = False) -> list[Outcome]:
    """Run seeds in order (in a worker process), stopping after the first
    failure: a failed run may leave kernel state behind, so the rest go to
    a fresh process. A seed that takes over seed_timeout wall seconds (a
    livelock: virtual time stops, so the engine's own limit never comes)
    fails as a stall. twice: run each seed again and compare (replay_check);
    the timeout is for both runs."""
    outs = []
    signal.signal(signal.SIGALRM, _on_alarm)
    stall = f"FAIL: stall: SeedTimeout: no verdict within {seed_timeout} s"
    for s in seeds:
        _alarms.clear()
        signal.alarm(seed_timeout)
        try:
            out = run_seed(scenario, s, log_level=log_level)
            if twice:
                replay_check(out, run_seed(scenario, s, log_level=log_level))
        except SeedTimeout:
            out = Outcome(scenario, s, verdict=stall)
        finally:
            signal.alarm(0)
        if _alarms:
            # Raised inside a kthread the timeout shows as an oops: it is a stall.
            out.verdict = stall
        outs.append(out)
        if not out.ok:
            break
    return outs


def explore(scenario: str, seeds: list[int], jobs: int, log_level: str = "warning",
            seed_timeout: int = SEED_TIMEOUT_S,
            twice: bool = False) -> tuple[list[Outcome], float]:
    """Run every seed in J worker processes; return the outcomes (in seed
    order) and the seconds taken."""
    t0 = time.monotonic()
    outs: list[Outcome] = []
    size = max(1, min(BATCH, -(-len(seeds) // (jobs * 4))))
    # fork, one batch per process: workers start at once with the parent's
    # imports (the parent imports kshim but never boots it), and a batch
    # cut short by a failure leaves its kernel state with its process.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=jobs, maxtasksperchild=1) as pool:
        pending = [(pool.apply_async(_explore_batch, (scenario, seeds[i:i + size], log_level,
                                                    seed_timeout, twice)),
                    seeds[i:i + size]) for i in range(0, len(seeds), size)]
        # Each pass retires the first batch; a cut-short batch resubmits
        # only the seeds it did not run, so every seed runs once.
        while pending:
            res, todo = pending.pop(0)
            got = res.get()
            for out in got:
                _report(out)
            outs.extend(got)
            if len(got) < len(todo):
                rest = todo[len(got):]
                pending.append((pool.apply_async(_explore_batch, (scenario, rest, log_level,
                                                                    seed_timeout, twice)),
                                rest))
    order = {s: i for i, s in enumerate(seeds)}
    outs.sort(key=lambda o: order[o.seed])
    return outs, time.monotonic() - t0


def _report(out: Outcome) -> None:
    if not out.ok:
        again = " --check-determinism" if out.verdict.startswith("FAIL: determinism") else ""
        print(f"seed={out.seed} {out.verdict}\n  replay: {out.replay_command()}{again}",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rc = _main(argv)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # The reader went away (`uscst-sim list | head`): nothing more to say,
        # and the flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"uscst-sim: {e}", file=sys.stderr)
        return 2
    if args.command == "list":
        for name in SCENARIOS:
            print(f"{name:14} {DESCRIPTIONS[name]}")
        return 0
    if args.command == "run":
        if args.portal is not None:
            if args.trace or args.check_determinism:
                print("uscst-sim: --trace and --check-determinism need the sim engine, "
                      "not --portal", file=sys.stderr)
                return 2
            if args.scenario == "config-churn":
                print("uscst-sim: config-churn changes the configuration in-process: "
                      "not with --portal", file=sys.stderr)
                return 2
            out = run_tcp(args.scenario, args.seed, args.portal, args.iqn)
        else:
            out = run_seed(args.scenario, args.seed, args.trace, args.log_level)
            if args.check_determinism:
                again = run_seed(args.scenario, args.seed, None, args.log_level)
                print(f"determinism: first trace={out.trace} events={out.events}, "
                      f"second trace={again.trace} events={again.events}")
                replay_check(out, again)
        for k, v in sorted(out.stats.items()):
            print(f"{k}={v}")
        for line in out.details:
            print(f"teardown: {line}")
        print(out.line(), flush=True)
        return 0 if out.ok else 1
    rng = random.SystemRandom()
    seeds = ([rng.randrange(SEED_MAX + 1) for _ in range(args.seeds)] if args.random
             else list(range(1, args.seeds + 1)))
    outs, took = explore(args.scenario, seeds, args.jobs, args.log_level, args.seed_timeout,
                         args.check_determinism)
    failed = sum(not o.ok for o in outs)
    print(f"explored {len(outs)} seeds: {failed} failed, {len(outs) / max(took, 1e-9):.1f} seeds/s")
    return 0 if failed == 0 else 1
