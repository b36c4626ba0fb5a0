"""Softirq context, bottom-half disabling and tasklets.

Twin of kernel/softirq.c and include/linux/bottom_half.h, interrupt.h.

Contexts: raise_softirq() and tasklet_schedule() from any context;
local_bh_disable/enable from a task or softirq; softirq_run() from the
engine only (it is how every socket, timer and I/O-completion callback is
delivered).

Differs from the kernel: there are no softirq vectors numbered by kind; a
pending softirq is a (function, argument) pair queued FIFO. Pending
softirqs run when the engine regains the CPU, after each task switch, and at
local_bh_enable() when the count drops to zero, as do_softirq() would.
There is no hardirq layer: the engine's events enter straight at softirq.

Debug aids: softirq_stats counts runs and host time per handler name when
sched.sched_clock_stats is on.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import attrs

from kshim import host, sched
from kshim.bug import report_bug

_pending: deque[tuple[Callable[[Any], None], Any]] = deque()
softirq_stats: dict[str, list[int]] = {}     # name -> [count, ns]


def softirq_run(fn: Callable[[Any], None], arg: Any) -> None:
    """Run fn(arg) in softirq context now (engine and do_softirq only)."""
    sched.softirq_serving += 1
    sched.softirq_fn = fn
    try:
        if sched.sched_clock_stats:
            t0 = host.thread_time_ns()
            fn(arg)
            st = softirq_stats.setdefault(getattr(fn, "__qualname__", repr(fn)), [0, 0])
            st[0] += 1
            st[1] += host.thread_time_ns() - t0
        else:
            fn(arg)
    except Exception as e:   # an oops in a softirq names the callback
        import traceback
        report_bug("oops in softirq", callback=getattr(fn, "__qualname__", repr(fn)),
                   error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
    finally:
        sched.softirq_serving -= 1


def raise_softirq(fn: Callable[[Any], None], arg: Any = None) -> None:
    """Queue fn(arg) to run in softirq context at the next chance."""
    _pending.append((fn, arg))


def do_softirq() -> None:
    """Run all pending softirqs, unless bottom halves are disabled."""
    if sched.bh_disable_count or sched.softirq_serving:
        return
    while _pending:
        fn, arg = _pending.popleft()
        softirq_run(fn, arg)


def local_softirq_pending() -> bool:
    return bool(_pending)


def _after_switch() -> None:
    if _pending:
        do_softirq()


sched.softirq_hook = _after_switch


def local_bh_disable() -> None:
    sched.bh_disable_count += 1


def local_bh_enable() -> None:
    sched.bh_disable_count -= 1
    if sched.bh_disable_count < 0:
        sched.bh_disable_count = 0
        report_bug("local_bh_enable() without local_bh_disable()")
    if not sched.bh_disable_count and _pending and not sched.softirq_serving:
        do_softirq()


def local_irq_disable() -> None:
    sched.irqs_off += 1


def local_irq_enable() -> None:
    sched.irqs_off -= 1
    if sched.irqs_off < 0:
        sched.irqs_off = 0
        report_bug("local_irq_enable() with interrupts already enabled")


def local_irq_save() -> int:
    flags = sched.irqs_off
    sched.irqs_off += 1
    return flags


def local_irq_restore(flags: int) -> None:
    sched.irqs_off = flags


TASKLET_STATE_SCHED = 0


@attrs.define(slots=True, eq=False)
class tasklet_struct:
    func: Callable[[Any], None]
    data: Any = None
    scheduled: bool = False    # TASKLET_STATE_SCHED
    disabled: int = 0


def tasklet_init(t: tasklet_struct, func: Callable[[Any], None], data: Any) -> None:
    t.func = func
    t.data = data
    t.scheduled = False
    t.disabled = 0


def _tasklet_action(t: tasklet_struct) -> None:
    t.scheduled = False
    if t.disabled:
        return
    t.func(t.data)


def tasklet_schedule(t: tasklet_struct) -> None:
    """Queue t once; scheduling it again before it runs does nothing."""
    if t.scheduled:
        return
    t.scheduled = True
    raise_softirq(_tasklet_action, t)


def tasklet_disable(t: tasklet_struct) -> None:
    t.disabled += 1


def tasklet_enable(t: tasklet_struct) -> None:
    t.disabled -= 1


def tasklet_kill(t: tasklet_struct) -> None:
    t.disabled += 1
    t.scheduled = False
