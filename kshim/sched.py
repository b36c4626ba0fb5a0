"""The scheduler: one CPU, greenlet tasks, switches only in schedule().

Twin of kernel/sched/core.c (schedule, wake_up_process, current, context
bookkeeping of include/linux/preempt.h) for a uniprocessor kernel built with
CONFIG_PREEMPT_NONE.

Contexts: schedule() only from a task (a kthread or a workqueue worker) that
holds no spinlock and is not in softirq context; wake_up_process() from any
context. run_queue() is called by the engine only, from the host thread's
main greenlet: it runs every runnable task until each one sleeps again.

Differs from the kernel: there is no preemption and no other CPU, so a task
runs until it calls schedule() (directly or through wait_event, mutex_lock,
wait_for_completion, msleep, cond_resched). The run queue is FIFO; nice
values are recorded but do not change the order. Code running on the engine
(softirq callbacks) has the idle task as current(), as the kernel's softirq
would have whatever task it interrupted.

Debug aids: schedule() while atomic or in softirq is reported as "scheduling
while atomic"; might_sleep() reports sleeping calls from invalid contexts;
per-task counters (switches, wakeups, CPU time when sched_clock_stats is on)
feed statistics() and the hung-task check.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import greenlet

from kshim import host
from kshim.bug import KernelBug, report_bug
from kshim.printk import KERN_EMERG, printk

TASK_RUNNING = 0x0000
TASK_INTERRUPTIBLE = 0x0001
TASK_UNINTERRUPTIBLE = 0x0002
TASK_DEAD = 0x0080
TASK_NEW = 0x0800
TASK_KILLABLE = TASK_UNINTERRUPTIBLE
TASK_NORMAL = TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE
MAX_SCHEDULE_TIMEOUT = (1 << 63) - 1

# Debug switches (kshim.debug flips them all at once).
debug_atomic_sleep = True
sched_clock_stats = False


class task_struct:
    """A schedulable task; a kthread's greenlet lives in `gr`."""

    __slots__ = ("comm", "pid", "state", "gr", "on_rq", "sigpending", "nice",
                 "kthread", "nvcsw", "wakeups", "cpu_ns", "sleep_start",
                 "held_locks", "result", "exit_hooks", "worker_sleeping", "__weakref__")

    def __init__(self, comm: str, pid: int) -> None:
        self.comm = comm
        self.pid = pid
        self.state = TASK_NEW
        self.gr: greenlet.greenlet | None = None
        self.on_rq = False
        self.sigpending = False
        self.nice = 0
        self.kthread: Any = None          # kshim.kthread's per-thread record
        self.nvcsw = 0                    # voluntary context switches
        self.wakeups = 0
        self.cpu_ns = 0
        self.sleep_start = 0.0            # host time it last went to sleep
        self.held_locks: list = []        # lockdep: locks held, in order
        self.result: Any = None
        self.exit_hooks: list[Callable[["task_struct"], None]] = []
        # called when the task blocks, as wq_worker_sleeping() for kworkers
        self.worker_sleeping: Callable[["task_struct"], None] | None = None

    def __repr__(self) -> str:
        return f"<task {self.comm}/{self.pid} state={self.state}>"


# The one CPU's state. Kept as module globals: they are read on every lock.
idle_task = task_struct("swapper/0", 0)
idle_task.state = TASK_RUNNING
_current: task_struct = idle_task
preempt_count = 0          # spinlocks and preempt_disable
softirq_serving = 0        # nesting of softirq handlers running now
bh_disable_count = 0       # local_bh_disable nesting
hardirq_count = 0
irqs_off = 0               # local_irq_disable / spin_lock_irq nesting

_runqueue: deque[task_struct] = deque()
_sched_gr: greenlet.greenlet | None = None
_next_pid = 1
all_tasks: dict[int, task_struct] = {}
softirq_hook: Callable[[], None] | None = None   # set by kshim.softirq
softirq_fn: Callable | None = None               # the softirq handler running now
_run_start = 0


def current() -> task_struct:
    return _current


def in_softirq() -> bool:
    return bool(softirq_serving or bh_disable_count)


def in_serving_softirq() -> bool:
    return bool(softirq_serving)


def in_interrupt() -> bool:
    return bool(softirq_serving or bh_disable_count or hardirq_count)


def in_irq() -> bool:
    return bool(hardirq_count)


def in_task() -> bool:
    return not (softirq_serving or hardirq_count)


def in_atomic() -> bool:
    return bool(preempt_count or softirq_serving or bh_disable_count or hardirq_count or irqs_off)


def irqs_disabled() -> bool:
    return bool(irqs_off)


def preempt_disable() -> None:
    global preempt_count
    preempt_count += 1


def preempt_enable() -> None:
    global preempt_count
    preempt_count -= 1
    if preempt_count < 0:
        preempt_count = 0
        report_bug("preempt_enable() without preempt_disable()")


def _softirq_name() -> str | None:
    fn = softirq_fn
    return getattr(fn, "__qualname__", repr(fn)) if softirq_serving and fn is not None else None


def might_sleep() -> None:
    """Report, as CONFIG_DEBUG_ATOMIC_SLEEP would, a sleep where none may be."""
    if debug_atomic_sleep and (in_atomic() or _current is idle_task):
        report_bug("sleeping function called from invalid context",
                   in_atomic=preempt_count, in_softirq=softirq_serving + bh_disable_count,
                   irqs_disabled=irqs_off, task=_current.comm, callback=_softirq_name())


def alloc_task(comm: str) -> task_struct:
    global _next_pid
    t = task_struct(comm, _next_pid)
    _next_pid += 1
    all_tasks[t.pid] = t
    return t


def task_start(t: task_struct, fn: Callable[[], Any]) -> None:
    """Give a new task its greenlet; it runs fn() once woken."""
    if _sched_gr is None:
        raise KernelBug("scheduler not initialised (kshim engine not running)")
    t.gr = greenlet.greenlet(run=lambda: _task_body(t, fn), parent=_sched_gr)
    t.state = TASK_UNINTERRUPTIBLE


def _task_body(t: task_struct, fn: Callable[[], Any]) -> None:
    try:
        t.result = fn()
    except KernelBug as e:
        _oops(t, f"kernel BUG: {e}")
    except greenlet.GreenletExit:
        raise
    except BaseException as e:   # an escaped exception is a kernel oops
        _oops(t, f"{type(e).__name__}: {e}")
    for hook in t.exit_hooks:
        hook(t)
    if t.held_locks and debug_atomic_sleep:
        report_bug("lock held when returning to user space / at task exit",
                   task=t.comm, locks=[getattr(lk, "name", lk) for lk in t.held_locks])
    t.state = TASK_DEAD
    all_tasks.pop(t.pid, None)


def _oops(t: task_struct, what: str) -> None:
    import traceback
    global preempt_count, irqs_off
    printk(KERN_EMERG + f"Oops: {what} in task {t.comm}/{t.pid}\n" + traceback.format_exc())
    report_bug("oops", task=t.comm, error=what)
    # The dying task's atomic sections end with it, as do_exit() would.
    preempt_count = 0
    irqs_off = 0


def wake_up_process(t: task_struct) -> bool:
    """Make t runnable. Return False if it already was."""
    if t.state == TASK_RUNNING or t.state == TASK_DEAD or t is idle_task:
        return False
    t.state = TASK_RUNNING
    t.wakeups += 1
    if not t.on_rq:
        t.on_rq = True
        _runqueue.append(t)
    return True


def wake_up_state(t: task_struct, state: int) -> bool:
    if not (t.state & state):
        return False
    return wake_up_process(t)


def set_current_state(state: int) -> None:
    _current.state = state


def __set_current_state(state: int) -> None:
    _current.state = state


def schedule() -> None:
    """Give up the CPU. The caller stays runnable only if its state is
    TASK_RUNNING (then this is a yield); otherwise it sleeps until woken."""
    prev = _current
    if debug_atomic_sleep and (preempt_count or softirq_serving or bh_disable_count or irqs_off):
        report_bug("scheduling while atomic", task=prev.comm, preempt_count=preempt_count,
                   in_softirq=softirq_serving + bh_disable_count, irqs_disabled=irqs_off,
                   callback=_softirq_name())
    if prev is idle_task:
        # Nothing to switch away from: abort the softirq instead of hanging it.
        prev.state = TASK_RUNNING
        raise KernelBug("schedule() called outside a task (softirq or engine context)")
    if prev.state == TASK_RUNNING:
        if not prev.on_rq:
            prev.on_rq = True
            _runqueue.append(prev)
    else:
        prev.sleep_start = host.monotonic()
        if prev.worker_sleeping is not None:
            prev.worker_sleeping(prev)
    prev.nvcsw += 1
    _sched_gr.switch()


def cond_resched() -> None:
    """Yield if anything else is runnable."""
    if _runqueue:
        _current.state = TASK_RUNNING
        schedule()


def yield_() -> None:
    _current.state = TASK_RUNNING
    schedule()


def signal_pending(t: task_struct) -> bool:
    return t.sigpending


def set_user_nice(t: task_struct, nice: int) -> None:
    t.nice = max(-20, min(19, nice))


def nr_running() -> int:
    return len(_runqueue)


def sched_init() -> None:
    """Called by the engine on the host thread that will run the CPU."""
    global _sched_gr
    _sched_gr = greenlet.getcurrent()


def run_queue() -> None:
    """Run every runnable task until the run queue is empty (engine only)."""
    global _current
    rq = _runqueue
    hook = softirq_hook
    if _current is not idle_task:
        raise KernelBug("run_queue() called from a task")
    while rq:
        t = rq.popleft()
        t.on_rq = False
        if t.state != TASK_RUNNING:
            continue
        _current = t
        if sched_clock_stats:
            t0 = host.thread_time_ns()
            t.gr.switch()
            t.cpu_ns += host.thread_time_ns() - t0
        else:
            t.gr.switch()
        _current = idle_task
        if hook is not None:
            hook()


def statistics() -> list[dict]:
    """One record per live task: comm, pid, state, switches, wakeups, cpu_ns."""
    return [dict(comm=t.comm, pid=t.pid, state=t.state, nvcsw=t.nvcsw,
                 wakeups=t.wakeups, cpu_ns=t.cpu_ns) for t in all_tasks.values()]
