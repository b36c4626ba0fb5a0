"""kshim.workqueue: work items on worker kthreads, delayed work, flush, cancel."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched, workqueue
from kshim.completion import complete, completion, wait_for_completion
from kshim.timer import msleep
from kshim.workqueue import (INIT_WORK, alloc_ordered_workqueue, alloc_workqueue,
                             cancel_delayed_work_sync, cancel_work_sync, current_work,
                             delayed_work, destroy_workqueue, flush_delayed_work, flush_work,
                             flush_workqueue, mod_delayed_work, queue_delayed_work, queue_work,
                             schedule_work, work_pending, work_struct)


def test_work_runs_in_task_context_on_a_worker_and_may_sleep(sim_kernel):
    seen = {}

    def fn(w):
        seen["ctx"] = (sched.in_task(), sched.in_softirq(), sched.current().comm,
                       current_work() is w)
        msleep(1)
        seen["slept"] = True

    def body():
        wq = alloc_workqueue("t_ctx", 0, 1)
        w = work_struct(fn)
        queued = queue_work(wq, w)
        flush_work(w)
        destroy_workqueue(wq)
        return queued
    assert sim_kernel(body) is True
    assert seen["ctx"] == (True, False, "kworker/t_ctx:0", True) and seen["slept"]
    assert titles() == []


def test_queueing_a_pending_item_again_does_nothing(sim_kernel):
    runs = []

    def body():
        wq = alloc_workqueue("t_twice", 0, 1)
        w = work_struct(lambda _: runs.append(1))
        first, second = queue_work(wq, w), queue_work(wq, w)
        pending = work_pending(w)
        flush_workqueue(wq)
        destroy_workqueue(wq)
        return first, second, pending
    assert sim_kernel(body) == (True, False, True)
    assert runs == [1]


def test_an_ordered_workqueue_runs_items_one_at_a_time_in_order(sim_kernel):
    log = []

    def make(n):
        def fn(_):
            log.append(f"start {n}")
            msleep(1)
            log.append(f"end {n}")
        return work_struct(fn)

    def body():
        wq = alloc_ordered_workqueue("t_ordered")
        for n in range(3):
            queue_work(wq, make(n))
        flush_workqueue(wq)
        destroy_workqueue(wq)
    sim_kernel(body)
    assert log == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]


def test_a_work_item_never_runs_on_two_workers_at_once(sim_kernel):
    log = []
    st = {"runs": 0}

    def fn(w):
        st["runs"] += 1
        n = st["runs"]
        log.append(f"start {n}")
        if n == 1:
            queue_work(w.wq, w)          # requeued while running
            msleep(2)
        log.append(f"end {n}")

    def body():
        wq = alloc_workqueue("t_reent", 0, 4)
        w = work_struct(fn)
        queue_work(wq, w)
        msleep(1)
        flush_workqueue(wq)
        destroy_workqueue(wq)
    sim_kernel(body)
    assert log == ["start 1", "end 1", "start 2", "end 2"]


def test_delayed_work_runs_after_its_delay_and_can_be_pulled_in_or_cancelled(sim_kernel):
    log = []

    def body():
        wq = alloc_workqueue("t_delayed", 0, 1)
        d1 = delayed_work(lambda _: log.append("d1"))
        d2 = delayed_work(lambda _: log.append("d2"))
        queue_delayed_work(wq, d1, 100_000)
        queue_delayed_work(wq, d2, 100_000)
        flush_delayed_work(d1)                   # runs it now
        was = cancel_delayed_work_sync(d2)
        d3 = delayed_work(lambda _: log.append("d3"))
        queue_delayed_work(wq, d3, 100_000)
        moved = mod_delayed_work(wq, d3, 1)
        flush_workqueue(wq)
        msleep(3)
        flush_workqueue(wq)
        destroy_workqueue(wq)
        return was, moved
    assert sim_kernel(body) == (True, True)
    assert log == ["d1", "d3"]


def test_cancel_work_sync_waits_for_a_running_instance(sim_kernel):
    log = []

    def fn(_):
        log.append("running")
        msleep(2)
        log.append("finished")

    def body():
        wq = alloc_workqueue("t_cancel", 0, 1)
        w = work_struct(fn)
        queue_work(wq, w)
        while not log:                      # until the worker runs it (any order of picks)
            sched.yield_()
        cancel_work_sync(w)
        log.append("cancel returned")
        destroy_workqueue(wq)
    sim_kernel(body)
    assert log == ["running", "finished", "cancel returned"]


def test_system_workqueue_runs_schedule_work(sim_kernel):
    def body():
        done = completion()
        w = work_struct(lambda _: complete(done))
        schedule_work(w)
        wait_for_completion(done)
        return workqueue.system_wq.name, {s.name: s.executed for s in workqueue.statistics()}
    name, executed = sim_kernel(body)
    assert name == "events" and executed["events"] >= 1


def test_init_work_on_a_pending_item_and_flushing_from_inside_are_reported(sim_kernel):
    def selfflush(w):
        flush_work(w)

    def body():
        wq = alloc_workqueue("t_bad", 0, 1)
        w = work_struct(lambda _: None)
        queue_work(wq, w)
        INIT_WORK(w, lambda _: None)
        w2 = work_struct(selfflush)
        queue_work(wq, w2)
        flush_workqueue(wq)
        destroy_workqueue(wq)
    sim_kernel(body)
    assert report("ODEBUG: init active").details["object_type"] == "work_struct"
    assert report("flush_work() of the work item running it")


def test_queue_work_on_a_destroyed_workqueue_is_reported(sim_kernel):
    def body():
        wq = alloc_workqueue("t_dead", 0, 1)
        destroy_workqueue(wq)
        return queue_work(wq, work_struct(lambda _: None))
    assert sim_kernel(body) is False
    assert report("queue_work() on a dying workqueue").details["wq"] == "t_dead"


def test_idle_workers_are_not_hung_tasks(sim_kernel):
    from kshim.hung_task import check_hung_uninterruptible_tasks
    from kshim import host

    def body():
        wq = alloc_workqueue("t_idle", 0, 2)
        sched.yield_()
        now = host.ops.monotonic()
        check_hung_uninterruptible_tasks(1.0, now)
        found = check_hung_uninterruptible_tasks(1.0, now + 1000)
        destroy_workqueue(wq)
        return [t.comm for t in found]
    assert sim_kernel(body) == []
