"""Softirq context, bottom-half disabling, interrupt flags and tasklets.

Twin of kernel/softirq.c and include/linux/bottom_half.h, interrupt.h,
irqflags.h.

Contexts: raise_softirq(), tasklet_schedule() and the local_irq_* calls from
any context; local_bh_disable/enable from a task or softirq; softirq_run()
and softirq_run_jobs() from the engine only (they are how every socket,
timer and I/O-completion callback is delivered).

Differs from the kernel: there are no softirq vectors numbered by kind; a
pending softirq is a (function, argument) pair queued FIFO, and its "kind"
for statistics is the function's qualified name (tasklets count under
tasklet_action, timers under their callback). Pending softirqs run when the
engine regains the CPU, after each task switch, and at local_bh_enable() when
the count drops to zero, as do_softirq() would. There is no hardirq layer:
the engine's events enter straight at softirq. local_irq_disable only
counts, so irqs_disabled() answers truthfully and softirqs stay off.
A tasklet disabled when it comes to run stays scheduled and runs at
tasklet_enable(), as the kernel's re-raise does.

Debug aids: an exception escaping a softirq is an oops naming the callback
and the CPU's context is restored; with the debug switch on, a softirq that
returns with a different preempt count (a leaked spin_lock) is reported, a
softirq that ran longer than the soft-lockup threshold is reported, and
softirq_stats counts runs, host time and the longest run per kind
(/proc/softirqs-like text from softirqs()). Tracepoint: softirq, one span
per handler run (the kernel's softirq_entry/exit); a traced run takes the
timed path.
"""
from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Callable

import attrs

from kshim import sched, tracepoint
from kshim.bug import report_bug
from kshim.fault_sched import fail_softirq, softirq_fault
from kshim.host import ops
from kshim.module import find_module_of
from kshim.tracepoint import TRACE_EVENT

debug_softirq = True
_pending: deque[tuple[Callable[[Any], None], Any]] = deque()
softirq_stats: dict[str, list[int]] = {}     # kind -> [runs, ns, max_ns]
_cpu = sched.cpu

# include/trace/events/irq.h softirq_entry/softirq_exit, as one span
trace_softirq = TRACE_EVENT("softirq", ("name",), span=True)


def _kind(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def softirq_run(fn: Callable[[Any], None], arg: Any) -> None:
    """Run fn(arg) in softirq context now (engine and do_softirq only)."""
    c = _cpu
    if debug_softirq or sched.sched_clock_stats or trace_softirq.enabled:
        _softirq_run_debug(fn, arg)
        return
    pc, bh, irqs = c.preempt_count, c.bh_disable_count, c.irqs_off
    c.softirq_serving += 1
    prev_fn = c.softirq_fn
    c.softirq_fn = fn
    try:
        fn(arg)
    except Exception as e:   # an oops in a softirq names the callback
        _softirq_oops(fn, e, pc, bh, irqs)
    finally:
        c.softirq_serving -= 1
        c.softirq_fn = prev_fn


def softirq_run_jobs(jobs: list) -> None:
    """Run job.complete(job) in softirq context for each of a batch of
    finished I/O jobs (engine only), in order: one entry into softirq
    context for the batch, as a block softirq ends every request of its
    completion list. With the debugging aids, statistics or tracing on,
    each runs as softirq_run() would; either way a completion that raises
    is an oops of its own and the others still run."""
    c = _cpu
    if debug_softirq or sched.sched_clock_stats or trace_softirq.enabled:
        for job in jobs:
            _softirq_run_debug(job.complete, job)
        return
    pc, bh, irqs = c.preempt_count, c.bh_disable_count, c.irqs_off
    c.softirq_serving += 1
    prev_fn = c.softirq_fn
    try:
        for job in jobs:
            fn = c.softirq_fn = job.complete
            try:
                fn(job)
            except Exception as e:   # an oops in a softirq names the callback
                _softirq_oops(fn, e, pc, bh, irqs)
    finally:
        c.softirq_serving -= 1
        c.softirq_fn = prev_fn


def _softirq_oops(fn: Callable, e: BaseException, pc: int, bh: int, irqs: int) -> None:
    c = _cpu
    # Name the loadable module the callback belongs to, as the kernel's
    # oops prints "Modules linked in" and the faulting symbol's [module].
    mod = find_module_of(getattr(fn, "__module__", None) or "")
    where = f" (module {mod.name})" if mod is not None else ""
    report_bug(f"oops in softirq{where}", callback=_kind(fn),
               module=mod.name if mod is not None else None,
               error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
    # The handler died mid-way: put the CPU's context back as it found it.
    c.preempt_count = pc
    c.bh_disable_count = bh
    c.irqs_off = irqs


def _softirq_run_debug(fn: Callable[[Any], None], arg: Any) -> None:
    c = _cpu
    pc, bh, irqs = c.preempt_count, c.bh_disable_count, c.irqs_off
    c.softirq_serving += 1
    prev_fn = c.softirq_fn
    c.softirq_fn = fn
    mono = ops.monotonic_ns
    clock = ops.thread_time_ns if sched.sched_clock_stats else mono
    m0 = mono()
    traced = trace_softirq.enabled
    ts = tracepoint.now() if traced else 0
    t0 = clock()
    try:
        fn(arg)
    except Exception as e:
        _softirq_oops(fn, e, pc, bh, irqs)
    finally:
        c.softirq_serving -= 1
        c.softirq_fn = prev_fn
    dt = clock() - t0
    kind = _kind(fn)
    if traced:
        # Counted in the softirq's context: the span belongs on its track.
        c.softirq_serving += 1
        trace_softirq.span_end(ts, kind)
        c.softirq_serving -= 1
    st = softirq_stats.get(kind)
    if st is None:
        st = softirq_stats[kind] = [0, 0, 0]
    st[0] += 1
    st[1] += dt
    if dt > st[2]:
        st[2] = dt
    if not debug_softirq:
        return
    if c.preempt_count != pc or c.irqs_off != irqs or c.bh_disable_count != bh:
        report_bug("softirq returned with a changed preempt count (a lock left held?)",
                   callback=kind, preempt_count_before=pc, preempt_count_after=c.preempt_count,
                   held_locks=sched._held_lock_names(sched.idle_task))
        c.preempt_count, c.bh_disable_count, c.irqs_off = pc, bh, irqs
    # Elapsed time, as for a kthread (kshim.sched): a softirq that holds the
    # CPU is stuck however little of the host's CPU time it got meanwhile.
    ran = mono() - m0
    if ran > sched.softlockup_thresh_ns and sched.debug_sched:
        report_bug(f"soft lockup - CPU#0 stuck for {ran / 1e9:.1f}s! in softirq {kind}",
                   callback=kind, ran_ms=ran // 1_000_000)


def raise_softirq(fn: Callable[[Any], None], arg: Any = None) -> None:
    """Queue fn(arg) to run in softirq context at the next chance."""
    if fail_softirq.armed and softirq_fault(fn, arg):
        return
    _pending.append((fn, arg))


raise_softirq_irqoff = raise_softirq


def do_softirq() -> None:
    """Run all pending softirqs, unless bottom halves are disabled."""
    c = _cpu
    if c.bh_disable_count or c.softirq_serving or c.irqs_off:
        return
    pend = _pending
    while pend:
        fn, arg = pend.popleft()
        softirq_run(fn, arg)


def local_softirq_pending() -> bool:
    return bool(_pending)


def _after_switch() -> None:
    if _pending:
        do_softirq()


def _boot() -> None:
    _pending.clear()


sched.softirq_hook = _after_switch
sched.softirq_pending = _pending
sched.boot_hooks.append(_boot)


def local_bh_disable() -> None:
    _cpu.bh_disable_count += 1


def local_bh_enable() -> None:
    c = _cpu
    c.bh_disable_count -= 1
    if c.bh_disable_count <= 0:
        if c.bh_disable_count < 0:
            c.bh_disable_count = 0
            report_bug("local_bh_enable() without local_bh_disable()")
        if _pending and not c.softirq_serving and not c.irqs_off:
            do_softirq()


local_bh_enable_ip = local_bh_enable


def local_irq_disable() -> None:
    _cpu.irqs_off += 1


def local_irq_enable() -> None:
    c = _cpu
    c.irqs_off -= 1
    if c.irqs_off < 0:
        c.irqs_off = 0
        report_bug("local_irq_enable() with interrupts already enabled")


def local_irq_save() -> int:
    """Disable interrupts; return the flags to give local_irq_restore()."""
    c = _cpu
    flags = c.irqs_off
    c.irqs_off = flags + 1
    return flags


def local_irq_restore(flags: int) -> None:
    _cpu.irqs_off = flags


def irqs_disabled_flags(flags: int) -> bool:
    """True if `flags` (from local_irq_save) say interrupts were off."""
    return bool(flags)


# -- tasklets -------------------------------------------------------------------

TASKLET_STATE_SCHED = 0
TASKLET_STATE_RUN = 1


@attrs.define(slots=True, eq=False)
class tasklet_struct:
    func: Callable[[Any], None] | None = None
    data: Any = None
    scheduled: bool = False    # TASKLET_STATE_SCHED
    running: bool = False      # TASKLET_STATE_RUN
    disabled: int = 0          # the count of tasklet_disable()
    use_callback: bool = False  # tasklet_setup(): func gets the tasklet itself


def tasklet_init(t: tasklet_struct, func: Callable[[Any], None], data: Any) -> None:
    """Old-style set-up: func(data) runs."""
    t.func = func
    t.data = data
    t.scheduled = t.running = False
    t.disabled = 0
    t.use_callback = False


def tasklet_setup(t: tasklet_struct, callback: Callable[[tasklet_struct], None]) -> None:
    """New-style set-up: callback(t) runs (from_tasklet() is t's owner)."""
    tasklet_init(t, callback, None)
    t.use_callback = True


def DECLARE_TASKLET(callback: Callable[[tasklet_struct], None]) -> tasklet_struct:
    t = tasklet_struct()
    tasklet_setup(t, callback)
    return t


def tasklet_action(t: tasklet_struct) -> None:
    """The TASKLET_SOFTIRQ handler for one tasklet."""
    if not t.scheduled:
        return                  # killed while queued
    if t.disabled:
        return                  # stays scheduled; tasklet_enable() queues it again
    t.scheduled = False
    t.running = True
    try:
        if t.use_callback:
            t.func(t)
        else:
            t.func(t.data)
    finally:
        t.running = False


def tasklet_schedule(t: tasklet_struct) -> None:
    """Queue t once; scheduling it again before it runs does nothing."""
    if t.scheduled:
        return
    t.scheduled = True
    _pending.append((tasklet_action, t))


tasklet_hi_schedule = tasklet_schedule


def tasklet_disable_nosync(t: tasklet_struct) -> None:
    t.disabled += 1


def tasklet_disable(t: tasklet_struct) -> None:
    """Disable t; with one CPU it cannot be running on another, so no wait."""
    t.disabled += 1


def tasklet_enable(t: tasklet_struct) -> None:
    t.disabled -= 1
    if t.disabled < 0:
        t.disabled = 0
        report_bug("tasklet_enable() of an enabled tasklet", func=_kind(t.func))
    if not t.disabled and t.scheduled:
        _pending.append((tasklet_action, t))


def tasklet_kill(t: tasklet_struct) -> None:
    """Make sure t is not scheduled (its queued run, if any, is dropped)."""
    if _cpu.softirq_serving and t.running:
        report_bug("tasklet_kill() from the tasklet itself", func=_kind(t.func))
    t.scheduled = False


def tasklet_unlock_wait(t: tasklet_struct) -> None:
    """Nothing to wait for: a tasklet never runs while a task does."""


# -- statistics -----------------------------------------------------------------

@attrs.frozen
class softirq_kind_stats:
    """One softirq kind in statistics()."""

    kind: str
    runs: int
    total_ns: int
    max_ns: int


def statistics() -> list[softirq_kind_stats]:
    """Per softirq kind: runs, host time and the longest run (debug or clock stats on)."""
    return [softirq_kind_stats(k, v[0], v[1], v[2]) for k, v in softirq_stats.items()]


def softirqs() -> str:
    """/proc/softirqs-like text, busiest kind first."""
    lines = [f"{'KIND':<60} {'RUNS':>10} {'TOTAL ms':>10} {'MAX us':>9}"]
    for s in sorted(statistics(), key=lambda s: s.total_ns, reverse=True):
        lines.append(f"{s.kind[-60:]:<60} {s.runs:>10} {s.total_ns / 1e6:>10.1f} "
                     f"{s.max_ns / 1e3:>9.0f}")
    lines.append(f"pending: {len(_pending)}")
    return "\n".join(lines) + "\n"
