"""Completions: one-shot or counted "this is done" events.

Twin of kernel/sched/completion.c and include/linux/completion.h.

Contexts: wait_for_completion* sleep, so task context only; complete() and
complete_all() from any context, softirq included (I/O completions use it).

Differs from the kernel: none in behaviour; the wait list is a
wait_queue_head with exclusive waiters, so complete() wakes exactly one.

Debug aids: reinit_completion() with waiters is reported, as is freeing one
with waiters through debug_completion_free().
"""
from __future__ import annotations

from kshim.bug import report_bug
from kshim.sched import MAX_SCHEDULE_TIMEOUT, TASK_INTERRUPTIBLE, TASK_UNINTERRUPTIBLE
from kshim.wait import _wait_event_common, wait_queue_head, wake_up, wake_up_all

UINT_MAX = (1 << 32) - 1


class completion:
    __slots__ = ("done", "wait", "name")

    def __init__(self, name: str = "completion") -> None:
        self.done = 0
        self.wait = wait_queue_head(name)
        self.name = name


def init_completion(x: completion) -> None:
    x.done = 0


def reinit_completion(x: completion) -> None:
    if x.wait.head:
        report_bug("reinit_completion() with waiters", completion=x.name)
    x.done = 0


def complete(x: completion) -> None:
    if x.done != UINT_MAX:
        x.done += 1
    wake_up(x.wait)


def complete_all(x: completion) -> None:
    x.done = UINT_MAX
    wake_up_all(x.wait)


def _take(x: completion) -> bool:
    if x.done:
        if x.done != UINT_MAX:
            x.done -= 1
        return True
    return False


def _do_wait(x: completion, state: int, timeout: int) -> int:
    return _wait_event_common(x.wait, lambda: _take(x), state, timeout, exclusive=True)


def wait_for_completion(x: completion) -> None:
    _do_wait(x, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


def wait_for_completion_timeout(x: completion, timeout: int) -> int:
    """Remaining jiffies (>= 1) if completed, 0 on timeout."""
    return _do_wait(x, TASK_UNINTERRUPTIBLE, timeout)


def wait_for_completion_interruptible(x: completion) -> int:
    """0 if completed, -ERESTARTSYS if interrupted."""
    ret = _do_wait(x, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_for_completion_interruptible_timeout(x: completion, timeout: int) -> int:
    return _do_wait(x, TASK_INTERRUPTIBLE, timeout)


def try_wait_for_completion(x: completion) -> bool:
    return _take(x)


def completion_done(x: completion) -> bool:
    return x.done != 0


def debug_completion_free(x: completion) -> None:
    if x.wait.head:
        report_bug("ODEBUG: free completion with waiters", completion=x.name)
