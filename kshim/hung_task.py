"""The hung-task detector: a kthread blocked uninterruptibly for too long.

Twin of kernel/hung_task.c (khungtaskd, check_hung_uninterruptible_tasks,
the hung_task_* sysctls).

Contexts: the periodic check runs as a timer callback (softirq context);
check_hung_uninterruptible_tasks() may be called from any context.

Differs from the kernel: the check runs from a self re-arming timer, not a
"khungtaskd" kthread, so it adds no task to top(). As in the kernel, a task
counts as hung when it sleeps in TASK_UNINTERRUPTIBLE (not TASK_IDLE, not
killable) and has not been switched in since the previous check, for more
than hung_task_timeout_secs; it is found between one and two check
intervals after it blocked. Tasks that never ran are skipped. Each hang is
reported once (until the task runs again), up to hung_task_warnings
reports per boot. The report carries the task's stack, from its greenlet's
suspended frame.

Debug aids: this is one (hung_task_enabled, flipped by kshim.debug).
"""
from __future__ import annotations

from kshim import sched
from kshim.bug import frame_stack, report_bug
from kshim.host import ops
from kshim.jiffies import jiffies, msecs_to_jiffies
from kshim.sched import TASK_NOLOAD, TASK_UNINTERRUPTIBLE, TASK_WAKEKILL
from kshim.timer import del_timer, mod_timer, timer_list

hung_task_enabled = True
sysctl_hung_task_timeout_secs = 120.0
sysctl_hung_task_check_interval_secs = 0.0     # 0: the timeout
sysctl_hung_task_warnings = 10
_warnings_left = sysctl_hung_task_warnings
_timer = timer_list(name="khungtaskd")
checks = 0


def check_hung_uninterruptible_tasks(timeout: float | None = None,
                                     now: float | None = None) -> list[sched.task_struct]:
    """One pass of the detector; return the tasks reported now. `now` (ops.monotonic()
    seconds) may be given to check as if that time had come."""
    global _warnings_left, checks
    checks += 1
    timeout = sysctl_hung_task_timeout_secs if timeout is None else timeout
    now = ops.monotonic() if now is None else now
    found = []
    for t in list(sched.all_tasks.values()):
        st = t.state
        if not (st & TASK_UNINTERRUPTIBLE) or st & (TASK_NOLOAD | TASK_WAKEKILL):
            continue
        if st & (sched.TASK_NEW | sched.TASK_DEAD):
            continue
        switches = t.nvcsw + t.nivcsw
        if not switches:
            continue                        # never ran: not hung, just not started
        if switches != t.last_switch_count or not t.last_switch_time:
            t.last_switch_count = switches
            t.last_switch_time = now
            continue
        if now - t.last_switch_time < timeout or t.hung_reported == switches:
            continue
        t.hung_reported = switches
        if _warnings_left <= 0:
            continue
        _warnings_left -= 1
        found.append(t)
        blocked = now - t.last_switch_time
        report_bug(f"task {t.comm}:{t.pid} blocked for more than {int(blocked)} seconds.",
                   task=t.comm, pid=t.pid, blocked_s=round(blocked, 3),
                   state=sched.task_state_to_char(t),
                   stack=frame_stack(t.gr.gr_frame if t.gr is not None else None),
                   hint="echo 0 > /proc/sys/kernel/hung_task_timeout_secs disables this "
                        "message (kshim.hung_task.set_hung_task_timeout(0))")
    return found


def _interval_secs() -> float:
    return sysctl_hung_task_check_interval_secs or sysctl_hung_task_timeout_secs


def _watchdog(_t: timer_list) -> None:
    if hung_task_enabled and sysctl_hung_task_timeout_secs > 0:
        check_hung_uninterruptible_tasks()
    _arm()


def _arm() -> None:
    if hung_task_enabled and sysctl_hung_task_timeout_secs > 0:
        mod_timer(_timer, jiffies() + max(1, msecs_to_jiffies(int(_interval_secs() * 1000))))


def set_hung_task_timeout(secs: float, check_interval: float = 0.0) -> None:
    """Set hung_task_timeout_secs (0 disables) and the check interval
    (0: the timeout), and re-arm the check."""
    global sysctl_hung_task_timeout_secs, sysctl_hung_task_check_interval_secs
    sysctl_hung_task_timeout_secs = secs
    sysctl_hung_task_check_interval_secs = check_interval
    del_timer(_timer)
    _arm()


def hung_task_enable(on: bool) -> None:
    global hung_task_enabled
    hung_task_enabled = on
    if on:
        if not _timer._pending and sched._sched_gr is not None:
            _arm()
    else:
        del_timer(_timer)


def _boot() -> None:
    global _warnings_left
    _warnings_left = sysctl_hung_task_warnings
    _arm()


_timer.function = _watchdog
sched.boot_hooks.append(_boot)
