"""uscst-sim: run, replay and explore sim scenarios from one seed.

    uscst-sim list
    uscst-sim run SCENARIO --seed N [--trace FILE]
    uscst-sim run SCENARIO --seed N --portal HOST:PORT [--iqn IQN]
    uscst-sim explore SCENARIO --seeds K [--jobs J] [--random]

`run` boots the target in-process under the sim engine, runs the scenario
with the invariant checkers on, and ends with one line
`seed=N events=E virtual_s=T trace=HEX16 verdict=ok` (or
`verdict=FAIL: <invariant>: detail`); exit 0 only when ok. --trace writes
the run's event log, one event a line. With --portal the same scenario
drives a running uscstd over real TCP instead (no trace: the target's
choices are not the seed's; trace=-).

`explore` runs seeds 1..K (or K random 64-bit seeds with --random) in J
worker processes, prints each failing seed with the one command that
replays it, and ends with `explored K seeds: F failed, R seeds/s`; exit 0
only when none failed.

A bad command line gets one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
from typing import NoReturn, Sequence

from tools.sim.runner import Outcome, drive
from tools.sim.scenarios import SCENARIOS, TargetSpec
from tools.sim.tcp import TcpWorld

SEED_MAX = (1 << 64) - 1
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
    e = sub.add_parser("explore", help="run many seeds")
    e.add_argument("scenario", type=_scenario)
    e.add_argument("--seeds", type=_positive, required=True, metavar="K")
    e.add_argument("--jobs", type=_positive, default=1, metavar="J",
                   help="worker processes (default 1)")
    e.add_argument("--random", action="store_true",
                   help="K random 64-bit seeds instead of 1..K")
    return p


def run_seed(scenario: str, seed: int, trace: str | None = None) -> Outcome:
    """One seed under the sim engine (in this process)."""
    # Imported here: the sim engine loads kshim, which list, --portal runs
    # and the parent of explore's workers do not need.
    from tools.sim import simrun
    return simrun.run_sim(scenario, seed, trace_path=trace)


def run_tcp(scenario: str, seed: int, addr: tuple[str, int], iqn: str) -> Outcome:
    spec = TargetSpec(addr=addr, iqn=iqn, fresh=False)
    world = TcpWorld(seed)
    try:
        return drive(scenario, world, spec, seed, max_virtual_s=600.0)
    finally:
        world.shutdown()


def _explore_batch(scenario: str, seeds: list[int]) -> list[Outcome]:
    """Run seeds in order, stopping after the first failure: a failed run
    may leave kernel state behind, so the rest go to a fresh process."""
    outs = []
    for s in seeds:
        out = run_seed(scenario, s)
        outs.append(out)
        if not out.ok:
            break
    return outs


def explore(scenario: str, seeds: list[int], jobs: int) -> tuple[list[Outcome], float]:
    """Run every seed in J worker processes; return the outcomes (in seed
    order) and the seconds taken."""
    t0 = time.monotonic()
    outs: list[Outcome] = []
    size = max(1, min(BATCH, -(-len(seeds) // (jobs * 4))))
    # fork, one batch per process: workers start at once with the parent's
    # imports (the parent never boots kshim), and a batch cut short by a
    # failure leaves its kernel state with its process.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=jobs, maxtasksperchild=1) as pool:
        pending = [(pool.apply_async(_explore_batch, (scenario, seeds[i:i + size])),
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
                pending.append((pool.apply_async(_explore_batch, (scenario, rest)), rest))
    order = {s: i for i, s in enumerate(seeds)}
    outs.sort(key=lambda o: order[o.seed])
    return outs, time.monotonic() - t0


def _report(out: Outcome) -> None:
    if not out.ok:
        print(f"seed={out.seed} {out.verdict}\n  replay: {out.replay_command()}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
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
            if args.trace:
                print("uscst-sim: --trace needs the sim engine, not --portal", file=sys.stderr)
                return 2
            out = run_tcp(args.scenario, args.seed, args.portal, args.iqn)
        else:
            out = run_seed(args.scenario, args.seed, args.trace)
        for k, v in sorted(out.stats.items()):
            print(f"{k}={v}")
        print(out.line(), flush=True)
        return 0 if out.ok else 1
    rng = random.SystemRandom()
    seeds = ([rng.randrange(SEED_MAX + 1) for _ in range(args.seeds)] if args.random
             else list(range(1, args.seeds + 1)))
    outs, took = explore(args.scenario, seeds, args.jobs)
    failed = sum(not o.ok for o in outs)
    print(f"explored {len(outs)} seeds: {failed} failed, {len(outs) / max(took, 1e-9):.1f} seeds/s")
    return 0 if failed == 0 else 1
