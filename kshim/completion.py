"""Completions: one-shot or counted "this is done" events.

Twin of kernel/sched/completion.c and include/linux/completion.h.

Contexts: wait_for_completion* sleep, so task context only; complete() and
complete_all() from any context, softirq included (I/O completions use it);
try_wait_for_completion() and completion_done() from any context.

Differs from the kernel: none in behaviour; the wait list is a
wait_queue_head with exclusive waiters, so complete() wakes exactly one.
The _io variants are the plain ones (there is no iowait accounting).

Debug aids (debug_objects): init_completion() or reinit_completion() with
waiters, and freeing an object that holds a completion with waiters
(through kshim.slab, or debug_completion_free()), are reported.
"""
from __future__ import annotations

from kshim import debugobjects
from kshim.bug import report_bug
from kshim.sched import MAX_SCHEDULE_TIMEOUT, TASK_INTERRUPTIBLE, TASK_KILLABLE, TASK_UNINTERRUPTIBLE
from kshim.wait import _wait_event_common, wait_queue_head, wake_up, wake_up_all

UINT_MAX = (1 << 32) - 1


class completion:
    __slots__ = ("done", "wait", "name")

    def __init__(self, name: str = "completion") -> None:
        self.done = 0
        self.wait = wait_queue_head(name)
        self.name = name

    def __repr__(self) -> str:
        return f"<completion {self.name} done={self.done} waiters={len(self.wait.head)}>"


def DECLARE_COMPLETION(name: str = "completion") -> completion:
    return completion(name)


DECLARE_COMPLETION_ONSTACK = DECLARE_COMPLETION


def init_completion(x: completion) -> None:
    if x.wait.head and debugobjects.debug_objects:
        debugobjects.debug_object_init(x, "init_completion")
    x.done = 0


def reinit_completion(x: completion) -> None:
    """Reset done for reuse; the caller makes sure nobody waits."""
    if x.wait.head and debugobjects.debug_objects:
        report_bug("reinit_completion() with waiters", completion=x.name)
    x.done = 0


def complete(x: completion) -> None:
    """Wake one waiter (or let the next wait pass)."""
    if x.done != UINT_MAX:
        x.done += 1
    wake_up(x.wait)


def complete_all(x: completion) -> None:
    """Wake every waiter and every later one, until reinit_completion()."""
    x.done = UINT_MAX
    wake_up_all(x.wait)


def _take(x: completion) -> bool:
    if x.done:
        if x.done != UINT_MAX:
            x.done -= 1
        return True
    return False


def _do_wait(x: completion, state: int, timeout: int) -> int:
    if x.done:
        if x.done != UINT_MAX:
            x.done -= 1
        return timeout if timeout > 0 else 1
    return _wait_event_common(x.wait, lambda: _take(x), state, timeout, exclusive=True)


def wait_for_completion(x: completion) -> None:
    _do_wait(x, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


wait_for_completion_io = wait_for_completion


def wait_for_completion_timeout(x: completion, timeout: int) -> int:
    """Remaining jiffies (>= 1) if completed, 0 on timeout."""
    return _do_wait(x, TASK_UNINTERRUPTIBLE, timeout)


wait_for_completion_io_timeout = wait_for_completion_timeout


def wait_for_completion_interruptible(x: completion) -> int:
    """0 if completed, -ERESTARTSYS if interrupted."""
    ret = _do_wait(x, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_for_completion_interruptible_timeout(x: completion, timeout: int) -> int:
    """Remaining jiffies (>= 1), 0 on timeout, -ERESTARTSYS if interrupted."""
    return _do_wait(x, TASK_INTERRUPTIBLE, timeout)


def wait_for_completion_killable(x: completion) -> int:
    """0 if completed, -ERESTARTSYS on SIGKILL."""
    ret = _do_wait(x, TASK_KILLABLE, MAX_SCHEDULE_TIMEOUT)
    return ret if ret < 0 else 0


def wait_for_completion_killable_timeout(x: completion, timeout: int) -> int:
    return _do_wait(x, TASK_KILLABLE, timeout)


def try_wait_for_completion(x: completion) -> bool:
    """Take a completion without sleeping; True if there was one."""
    return _take(x)


def completion_done(x: completion) -> bool:
    """True if a wait would not sleep."""
    return x.done != 0


def debug_completion_free(x: completion) -> None:
    if x.wait.head:
        report_bug("ODEBUG: free active (active state 0) object type: completion hint: "
                   f"{x.name}", object_type="completion", hint=x.name)


def _completion_hint(x: completion) -> str | None:
    return f"{x.name} ({len(x.wait.head)} waiters)" if x.wait.head else None


debugobjects.debug_object_register(completion, "completion", _completion_hint)
