"""Workqueues and delayed work.

Twin of kernel/workqueue.c and include/linux/workqueue.h.

Contexts: queue_work, queue_delayed_work, mod_delayed_work and
schedule_work from any context; flush_*, cancel_*_sync and
destroy_workqueue sleep, so task context only. Work functions run in task
context on the workqueue's worker kthreads and may sleep.

Differs from the kernel: each workqueue has its own pool of min(max_active,
4) worker kthreads ("kworker/<wq>:<n>") rather than shared per-CPU pools; a
work item never runs on two workers at once (the kernel's non-reentrancy).
WQ_* flags are accepted and recorded; ordered/singlethread queues get one
worker.

Debug aids: queueing a work item whose function is unset is reported;
destroy_workqueue with work still queued flushes it first and says so.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from kshim import sched
from kshim.bug import report_bug
from kshim.jiffies import jiffies
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.timer import del_timer, mod_timer, timer_list
from kshim.wait import wait_event, wait_queue_head, wake_up, wake_up_all

WQ_UNBOUND = 1 << 1
WQ_FREEZABLE = 1 << 2
WQ_MEM_RECLAIM = 1 << 3
WQ_HIGHPRI = 1 << 4
WQ_CPU_INTENSIVE = 1 << 5
__WQ_ORDERED = 1 << 17


class work_struct:
    __slots__ = ("func", "pending", "running", "wq", "data")

    def __init__(self, func: "Callable[[work_struct], None] | None" = None) -> None:
        self.func = func
        self.pending = False
        self.running = False
        self.wq: workqueue_struct | None = None
        self.data: Any = None


class delayed_work(work_struct):
    __slots__ = ("timer",)

    def __init__(self, func: "Callable[[work_struct], None] | None" = None) -> None:
        super().__init__(func)
        self.timer = timer_list(_delayed_work_timer_fn, name="delayed_work")
        self.timer.data = self


def INIT_WORK(work: work_struct, func: Callable[[work_struct], None]) -> None:
    work.func = func
    work.pending = False


def INIT_DELAYED_WORK(dwork: delayed_work, func: Callable[[work_struct], None]) -> None:
    INIT_WORK(dwork, func)


class workqueue_struct:
    __slots__ = ("name", "flags", "max_active", "worklist", "waitq", "done_waitq",
                 "workers", "dying", "nr_running", "executed")

    def __init__(self, name: str, flags: int, max_active: int) -> None:
        self.name = name
        self.flags = flags
        self.max_active = max_active
        self.worklist: deque[work_struct] = deque()
        self.waitq = wait_queue_head(f"wq {name}")
        self.done_waitq = wait_queue_head(f"wq {name} done")
        self.workers: list[sched.task_struct] = []
        self.dying = False
        self.nr_running = 0
        self.executed = 0


def _worker_thread(wq: workqueue_struct) -> int:
    while True:
        wait_event(wq.waitq, lambda: bool(wq.worklist) or kthread_should_stop())
        if not wq.worklist and kthread_should_stop():
            return 0
        work = _take_work(wq)
        if work is None:
            continue
        work.pending = False
        work.running = True
        wq.nr_running += 1
        try:
            work.func(work)
        finally:
            work.running = False
            wq.nr_running -= 1
            wq.executed += 1
            wake_up_all(wq.done_waitq)
            if wq.worklist:
                wake_up(wq.waitq)


def _take_work(wq: workqueue_struct) -> work_struct | None:
    # A work item already running elsewhere waits (non-reentrancy).
    for i, w in enumerate(wq.worklist):
        if not w.running:
            del wq.worklist[i]
            return w
    return None


def alloc_workqueue(name: str, flags: int = 0, max_active: int = 0) -> workqueue_struct:
    if max_active <= 0:
        max_active = 256
    wq = workqueue_struct(name, flags, max_active)
    nworkers = 1 if flags & __WQ_ORDERED else min(max_active, 4)
    for i in range(nworkers):
        wq.workers.append(kthread_run(_worker_thread, wq, f"kworker/{name}:{i}"))
    return wq


def alloc_ordered_workqueue(name: str, flags: int = 0) -> workqueue_struct:
    return alloc_workqueue(name, flags | WQ_UNBOUND | __WQ_ORDERED, 1)


def create_workqueue(name: str) -> workqueue_struct:
    return alloc_workqueue(name, WQ_MEM_RECLAIM, 1)


def create_singlethread_workqueue(name: str) -> workqueue_struct:
    return alloc_ordered_workqueue(name, WQ_MEM_RECLAIM)


def queue_work(wq: workqueue_struct, work: work_struct) -> bool:
    """Queue work unless already pending; return True if queued."""
    if work.pending:
        return False
    if work.func is None:
        report_bug("queue_work() of a work item without a function", wq=wq.name)
        return False
    if wq.dying:
        report_bug("queue_work() on a dying workqueue", wq=wq.name)
        return False
    work.pending = True
    work.wq = wq
    wq.worklist.append(work)
    wake_up(wq.waitq)
    return True


def _delayed_work_timer_fn(timer: timer_list) -> None:
    dwork = timer.data
    wq = dwork.wq
    dwork.pending = False
    queue_work(wq, dwork)


def queue_delayed_work(wq: workqueue_struct, dwork: delayed_work, delay: int) -> bool:
    if dwork.pending:
        return False
    if delay <= 0:
        return queue_work(wq, dwork)
    dwork.pending = True
    dwork.wq = wq
    mod_timer(dwork.timer, jiffies() + delay)
    return True


def mod_delayed_work(wq: workqueue_struct, dwork: delayed_work, delay: int) -> bool:
    """(Re)arm dwork for `delay`; return True if it was pending before."""
    was = _cancel(dwork)
    queue_delayed_work(wq, dwork, delay)
    return was


def _cancel(work: work_struct) -> bool:
    was = work.pending
    if isinstance(work, delayed_work):
        del_timer(work.timer)
    if work.pending and work.wq is not None:
        try:
            work.wq.worklist.remove(work)
        except ValueError:
            pass
    work.pending = False
    return was


def cancel_work(work: work_struct) -> bool:
    return _cancel(work)


def cancel_delayed_work(dwork: delayed_work) -> bool:
    return _cancel(dwork)


def flush_work(work: work_struct) -> bool:
    """Wait until work has finished its last queued run; True if it waited."""
    wq = work.wq
    if wq is None or not (work.pending or work.running):
        return False
    wait_event(wq.done_waitq, lambda: not (work.pending or work.running))
    return True


def cancel_work_sync(work: work_struct) -> bool:
    was = _cancel(work)
    if work.running and work.wq is not None:
        wait_event(work.wq.done_waitq, lambda: not work.running)
    return was


def cancel_delayed_work_sync(dwork: delayed_work) -> bool:
    return cancel_work_sync(dwork)


def flush_delayed_work(dwork: delayed_work) -> bool:
    if del_timer(dwork.timer):
        dwork.pending = False
        queue_work(dwork.wq, dwork)
    return flush_work(dwork)


def flush_workqueue(wq: workqueue_struct) -> None:
    wait_event(wq.done_waitq, lambda: not wq.worklist and not wq.nr_running)


def drain_workqueue(wq: workqueue_struct) -> None:
    flush_workqueue(wq)


def destroy_workqueue(wq: workqueue_struct) -> None:
    if wq.worklist:
        report_bug("destroy_workqueue() with work queued: flushing", wq=wq.name)
    flush_workqueue(wq)
    wq.dying = True
    for t in wq.workers:
        kthread_stop(t)
    wq.workers.clear()


system_wq: workqueue_struct | None = None


def workqueue_init() -> None:
    """Create system_wq (engine start-up, from the init task)."""
    global system_wq
    system_wq = alloc_workqueue("events", 0, 4)


def schedule_work(work: work_struct) -> bool:
    return queue_work(system_wq, work)


def schedule_delayed_work(dwork: delayed_work, delay: int) -> bool:
    return queue_delayed_work(system_wq, dwork, delay)


def flush_scheduled_work() -> None:
    flush_workqueue(system_wq)
