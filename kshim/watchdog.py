"""The soft-lockup detector's knobs.

Twin of kernel/watchdog.c (watchdog_thresh, touch_softlockup_watchdog) and
the "soft lockup" half of Documentation/admin-guide/lockup-watchdogs.rst.

Contexts: any.

Differs from the kernel: there is no watchdog hrtimer to interrupt a task
that loops, since nothing can preempt the one CPU. Instead the check runs at
each switch (kshim.sched.run_queue) and after each softirq
(kshim.softirq.softirq_run): a kthread or softirq that ran longer than
2 * watchdog_thresh seconds without calling schedule() or cond_resched() is
reported when it finally stops, naming it and where it stopped. A loop that
never ends is never reported: the host thread is stuck; use py-spy.

Debug aids: this is one; it is on with kshim.sched.debug_sched.
"""
from __future__ import annotations

from kshim import sched

watchdog_thresh: float = 1   # seconds; a soft lockup is 2 * watchdog_thresh, as in the kernel


def set_watchdog_thresh(seconds: float) -> None:
    """Set the threshold (the kernel's /proc/sys/kernel/watchdog_thresh)."""
    global watchdog_thresh
    watchdog_thresh = seconds
    sched.softlockup_thresh_ns = int(2 * seconds * 1_000_000_000)


def get_softlockup_thresh() -> float:
    """Seconds a task or softirq may run without scheduling."""
    return sched.softlockup_thresh_ns / 1e9


touch_softlockup_watchdog = sched.touch_softlockup_watchdog


def touch_all_softlockup_watchdogs() -> None:
    sched.touch_softlockup_watchdog()


def lockup_detector_enable(on: bool) -> None:
    """Switch the check on or off (it costs two clock reads per switch)."""
    sched.debug_sched = on
