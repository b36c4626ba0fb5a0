"""kshim.kthread: creation, start on wake-up, stop, park, and oops isolation."""
from __future__ import annotations

from kshim_support import report

from kshim import sched
from kshim.bug import BUG_ON
from kshim.err import EINTR
from kshim.kthread import (kthread_create, kthread_data, kthread_park, kthread_parkme,
                           kthread_run, kthread_should_park, kthread_should_stop, kthread_stop,
                           kthread_unpark)
from kshim.wait import wait_event_interruptible, wait_queue_head


def test_a_created_kthread_runs_only_once_woken(kernel):
    log = []

    def fn(data):
        log.append(f"run {data}")
        return 7

    def body():
        t = kthread_create(fn, "x", "t/%d-%s", 3, "y")
        sched.yield_()
        log.append(f"created {t.comm} state={sched.task_state_to_char(t)}")
        sched.wake_up_process(t)
        sched.yield_()
        return kthread_stop(t), kthread_data(t), t.flags & sched.PF_KTHREAD != 0
    assert kernel(body) == (7, "x", True)
    assert log == ["created t/3-y state=D", "run x"]


def test_kthread_stop_wakes_the_thread_and_returns_its_result(kernel):
    log = []

    def loop(wq):
        n = 0
        while not kthread_should_stop():
            wait_event_interruptible(wq, kthread_should_stop)
            n += 1
        log.append("stopping")
        return n

    def body():
        wq = wait_queue_head("t.loop")
        t = kthread_run(loop, wq, "looper")
        sched.yield_()
        log.append("stop")
        return kthread_stop(t)
    assert kernel(body) == 1
    assert log == ["stop", "stopping"]


def test_kthread_stop_before_it_ever_ran_returns_eintr(kernel):
    ran = []

    def body():
        t = kthread_run(lambda _: ran.append(1), None, "never")
        return kthread_stop(t)
    assert kernel(body) == -EINTR
    assert ran == []


def test_park_and_unpark(kernel):
    log = []

    def worker(_):
        while not kthread_should_stop():
            if kthread_should_park():
                log.append("parking")
                kthread_parkme()
                log.append("unparked")
            else:
                sched.yield_()
        return 0

    def body():
        t = kthread_run(worker, None, "parky")
        sched.yield_()
        kthread_park(t)
        log.append(f"parked state={sched.task_state_to_char(t)}")
        kthread_unpark(t)
        sched.yield_()
        return kthread_stop(t)
    assert kernel(body) == 0
    assert log == ["parking", "parked state=P", "unparked"]


def test_bug_on_kills_only_the_offending_kthread_with_an_oops(kernel):
    log = []

    def bad(_):
        BUG_ON(1 + 1 == 2, "arithmetic works")
        log.append("not reached")

    def good(_):
        log.append("good ran")
        return 1

    def body():
        t1 = kthread_run(bad, None, "bad")
        t2 = kthread_run(good, None, "good")
        sched.yield_()
        return kthread_stop(t1), kthread_stop(t2)
    assert kernel(body) == (None, 1)
    assert log == ["good ran"]
    rep = report("oops")
    assert rep.details["task"] == "bad" and "arithmetic works" in rep.details["error"]
    assert "test_kthread.py" in rep.details["error"]      # BUG_ON names its site


def test_kthread_stop_of_itself_is_reported(kernel):
    def body():
        return kthread_stop(sched.current())
    assert kernel(body) == -EINTR
    assert report("kthread_stop() of the calling thread").details["task"] == "insmod"
