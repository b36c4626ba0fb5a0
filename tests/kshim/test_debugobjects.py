"""kshim.debugobjects: freeing or re-initialising objects that are still active."""
from __future__ import annotations

import attrs
from kshim_support import report, titles

from kshim import sched
from kshim.completion import complete_all, completion, wait_for_completion
from kshim.gfp import GFP_KERNEL
from kshim.jiffies import jiffies
from kshim.kthread import kthread_run, kthread_stop
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.slab import KMEM_CACHE, kmem_cache_alloc, kmem_cache_destroy, kmem_cache_free
from kshim.timer import mod_timer, timer_list, timer_pending
from kshim.workqueue import alloc_workqueue, destroy_workqueue, queue_work, work_struct


def _on_timer(t: timer_list) -> None:
    pass


@attrs.define(slots=True, eq=False)
class t_conn:
    timer: timer_list = attrs.field(factory=lambda: timer_list(_on_timer))
    work: work_struct = attrs.field(factory=lambda: work_struct(lambda _: None))
    done: completion = attrs.field(factory=completion)
    lock: mutex = attrs.field(factory=lambda: mutex("t_conn.lock"))


def test_freeing_an_object_with_an_active_timer_is_reported_and_the_timer_deleted(kernel):
    def body():
        c = KMEM_CACHE(t_conn)
        conn = kmem_cache_alloc(c, GFP_KERNEL)
        timer = conn.timer
        mod_timer(timer, jiffies() + 100_000)
        kmem_cache_free(c, conn)
        kmem_cache_destroy(c)
        return timer_pending(timer)
    assert kernel(body) is False
    rep = report("ODEBUG: free active")
    assert rep.details["object_type"] == "timer_list" and rep.details["hint"].endswith("_on_timer")
    assert rep.details["freed_with"] == "t_conn"


def test_freeing_an_object_with_queued_work_or_waiters_is_reported(kernel):
    def waiter(x):
        wait_for_completion(x)

    def body():
        c = KMEM_CACHE(t_conn)
        conn = kmem_cache_alloc(c, GFP_KERNEL)
        wq = alloc_workqueue("t_odebug", 0, 1)
        t = kthread_run(waiter, conn.done, "waiter")
        sched.yield_()
        queue_work(wq, conn.work)
        done = conn.done
        kmem_cache_free(c, conn)          # work still queued, a task still waits
        complete_all(done)
        kthread_stop(t)
        destroy_workqueue(wq)
        kmem_cache_destroy(c)
    kernel(body)
    types = sorted(r.details["object_type"] for r in __import__("kshim").bug.reports
                   if r.title.startswith("ODEBUG: free active"))
    assert types == ["completion", "work_struct"]


def test_freeing_an_object_whose_mutex_is_held_is_reported(kernel):
    def body():
        c = KMEM_CACHE(t_conn)
        conn = kmem_cache_alloc(c, GFP_KERNEL)
        lock = conn.lock
        mutex_lock(lock)
        kmem_cache_free(c, conn)
        mutex_unlock(lock)
        kmem_cache_destroy(c)
    kernel(body)
    assert report("ODEBUG: free active").details["object_type"] == "mutex"


def test_freeing_idle_objects_is_quiet(kernel):
    def body():
        c = KMEM_CACHE(t_conn)
        conn = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, conn)
        kmem_cache_destroy(c)
    kernel(body)
    assert titles() == []


class t_plain:
    """No slots: fields in __dict__."""

    def __init__(self) -> None:
        self.name = "plain"
        self.refs = 1
        self.timer = timer_list(_on_timer)


@attrs.define(slots=True, eq=False)
class t_sparse:
    timer: timer_list = attrs.field(factory=lambda: timer_list(_on_timer))
    name: str = "sparse"
    peer: object = None


def test_an_active_timer_in_a_dict_field_or_beside_an_unset_slot_is_reported(kernel):
    def body():
        caches = [KMEM_CACHE(t_plain), KMEM_CACHE(t_sparse)]
        for c in caches:
            obj = kmem_cache_alloc(c, GFP_KERNEL)
            if isinstance(obj, t_sparse):
                del obj.peer                 # a slot never set (the fast path gives up)
            mod_timer(obj.timer, jiffies() + 100_000)
            kmem_cache_free(c, obj)
            kmem_cache_destroy(c)
    kernel(body)
    freed = sorted(r.details["freed_with"] for r in __import__("kshim").bug.reports
                   if r.title.startswith("ODEBUG: free active"))
    assert freed == ["t_plain", "t_sparse"]
