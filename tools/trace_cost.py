#!/usr/bin/env python3
"""trace_cost: what a tracepoint costs, off and on (a micro-benchmark).

Host tool. Times, with timeit (best of --repeat runs of --n loops, ns per
loop, the empty loop's time subtracted):
  off         `if ev.enabled: ev(...)` with nothing attached: the cost every
              call site pays in production
  on (ring)   the same with the recorder attached: record into the ring
  on (span)   a span: tracepoint.now() before, span_end() after
and, given the number of tracepoint sites one command passes (--sites,
default 16: a 4K READ's, counted in the code path from PDU to response),
the off cost per command.

Usage: python -m tools.trace_cost [--n N] [--repeat R] [--sites K]
"""
from __future__ import annotations

import argparse
import timeit

from kshim import sched, tracepoint  # noqa: F401  (sched wires tracepoint.cpu)
from kshim.tracepoint import TRACE_EVENT

trace_cost_probe = TRACE_EVENT("trace_cost_probe", ("sess", "lun", "tag", "op", "state"))
trace_cost_span = TRACE_EVENT("trace_cost_span", ("sess", "lun", "tag", "op", "state"),
                              span=True)

OFF = """
if ev.enabled:
    ev("iqn.x", 0, 7, 0x28, "PARSE")
"""
ON_SPAN = """
t0 = now()
if sp.enabled:
    sp.span_end(t0, "iqn.x", 0, 7, 0x28, "PARSE")
"""


def measure(n: int, repeat: int) -> dict[str, float]:
    env = {"ev": trace_cost_probe, "sp": trace_cost_span, "now": tracepoint.now}

    def best(stmt: str) -> float:
        return min(timeit.repeat(stmt, globals=env, number=n, repeat=repeat)) / n * 1e9
    empty = best("pass")
    out = {"empty loop": empty, "off": best(OFF) - empty}
    tracepoint.set_buffer_size_kb(1024)
    tracepoint.set_event(["trace_cost_*"])
    tracepoint.tracing_on()
    try:
        out["on (ring)"] = best(OFF) - empty
        out["on (span)"] = best(ON_SPAN) - empty
    finally:
        tracepoint.tracing_off()
        tracepoint.set_event(None)
        tracepoint.trace_clear()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="trace_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--sites", type=int, default=16,
                   help="tracepoint sites a command passes (for the per-command line)")
    a = p.parse_args(argv)
    if not (1000 <= a.n <= 50_000_000 and 1 <= a.repeat <= 50 and 0 < a.sites < 1000):
        p.error("--n 1000..50000000, --repeat 1..50, --sites 1..999")
    r = measure(a.n, a.repeat)
    for k, v in r.items():
        print(f"{k:<12} {v:8.1f} ns")
    print(f"off, per command ({a.sites} sites): {r['off'] * a.sites:.0f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
