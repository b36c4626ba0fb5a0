"""Scheduling fault points: late work, early or late timers, delayed
softirqs, spurious wake-ups, failing trylocks.

Ours: the kernel has no such points. The framework is kshim/fault_inject.py;
the primitives test their point at the top: queue_work (kshim/workqueue.py,
and so delayed work when its timer fires), mod_timer/add_timer
(kshim/timer.py), raise_softirq (kshim/softirq.py), the sleep of every
wait_event (kshim/wait.py), mutex_trylock and spin_trylock (kshim/mutex.py,
kshim/spinlock.py).

Contexts: any; nothing here sleeps. A delayed work item or softirq runs
later from a timer (kshim.fault_inject.fault_call_later), in softirq context
as it would have.

The faults: fail_queue_work queues the item delay-ms later (pending
meanwhile; a cancel in the delay drops it); fail_timer moves the expiry
delay-ms later or earlier (never before now); fail_softirq runs the
softirq delay-ms later; fail_wakeup wakes a task about to sleep with
nothing for it; fail_trylock fails a trylock of a free lock.
"""
from __future__ import annotations

from typing import Any, Callable

from kshim import sched
from kshim.fault_inject import DECLARE_FAULT_ATTR, fault_call_later, fault_rearm, should_fail
from kshim.jiffies import jiffies, msecs_to_jiffies

fail_queue_work = DECLARE_FAULT_ATTR("fail_queue_work", {"delay-ms": (int, 50, None)})
fail_timer = DECLARE_FAULT_ATTR("fail_timer", {"error": (str, "late", ("early", "late")),
                                               "delay-ms": (int, 50, None)})
fail_wakeup = DECLARE_FAULT_ATTR("fail_wakeup", {})
fail_trylock = DECLARE_FAULT_ATTR("fail_trylock", {})
fail_softirq = DECLARE_FAULT_ATTR("fail_softirq", {"delay-ms": (int, 10, None)})


def timer_fault(expires: int) -> int:
    """A timer armed for `expires` fires delay-ms early or late."""
    if not should_fail(fail_timer, 1):
        return expires
    d = msecs_to_jiffies(fail_timer.params["delay-ms"])
    if fail_timer.params["error"] == "early":
        return max(jiffies(), expires - d)
    return expires + d


def work_fault(wq: Any, work: Any, queue: Callable[[Any, Any], bool]) -> bool:
    """Delay a queue_work by delay-ms: True if it was put off. The item is
    pending meanwhile; a cancel in the delay drops it, as it would a queued
    one. `queue` (queue_work) runs later with the point disarmed."""
    if not should_fail(fail_queue_work, 1):
        return False
    work.pending = True
    work.wq = wq

    def late(_arg: Any) -> None:
        if not work.pending:
            return                          # cancelled during the delay
        work.pending = False
        fail_queue_work.armed = False
        try:
            queue(wq, work)
        finally:
            fault_rearm()
    fault_call_later(fail_queue_work.params["delay-ms"], late, None)
    return True


def softirq_fault(fn: Callable[[Any], None], arg: Any) -> bool:
    """Delay a raised softirq fn(arg) by delay-ms: True if it was put off
    (it then runs from a timer, in softirq context as before)."""
    if not should_fail(fail_softirq, 1):
        return False
    fault_call_later(fail_softirq.params["delay-ms"], fn, arg)
    return True


def trylock_fault() -> bool:
    """Should this mutex_trylock/spin_trylock fail although the lock is free?"""
    return should_fail(fail_trylock, 1)


def wakeup_fault(task: sched.task_struct) -> None:
    """Maybe wake a task about to sleep, with nothing for it (a spurious
    wake-up): its wait loop must test its condition again."""
    if should_fail(fail_wakeup, 1):
        from kshim.softirq import raise_softirq   # softirq imports this module for its hook
        raise_softirq(sched.wake_up_process, task)  # type: ignore[arg-type]  # its bool is unused
