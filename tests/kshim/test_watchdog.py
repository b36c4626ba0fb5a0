"""kshim.watchdog: a kthread or softirq running too long without schedule() is reported."""
from __future__ import annotations

import pytest
from kshim_support import report, titles

from kshim import sched
from kshim.jiffies import ktime_get, ktime_ms_delta
from kshim.kthread import kthread_run, kthread_stop
from kshim.softirq import raise_softirq
from kshim.watchdog import get_softlockup_thresh, set_watchdog_thresh


@pytest.fixture
def short_watchdog():
    old = get_softlockup_thresh() / 2
    set_watchdog_thresh(0.01)              # a soft lockup after 20 ms
    yield
    set_watchdog_thresh(old)


def spin_for_ms(ms: int, resched: bool = False) -> None:
    t0 = ktime_get()
    while ktime_ms_delta(ktime_get(), t0) < ms:      # the bug under test: a busy loop
        if resched:
            sched.cond_resched()


def test_a_kthread_running_too_long_without_schedule_is_reported(kernel, short_watchdog):
    def hog(_):
        spin_for_ms(40)

    def body():
        t = kthread_run(hog, None, "cpu_hog")
        sched.yield_()
        kthread_stop(t)
    kernel(body)
    rep = report("soft lockup")
    assert rep.details["task"] == "cpu_hog" and rep.details["ran_ms"] >= 20
    assert "cpu_hog" in rep.title


def test_cond_resched_in_the_loop_keeps_the_watchdog_quiet(kernel, short_watchdog):
    def polite(_):
        spin_for_ms(40, resched=True)

    def body():
        t = kthread_run(polite, None, "polite")
        sched.yield_()
        kthread_stop(t)
    kernel(body)
    assert [x for x in titles() if "soft lockup" in x] == []


def test_a_softirq_running_too_long_is_reported(kernel, short_watchdog):
    def slow_softirq(_):
        spin_for_ms(40)

    def body():
        raise_softirq(slow_softirq)
        sched.yield_()
    kernel(body)
    rep = report("soft lockup")
    assert rep.details["callback"].endswith("slow_softirq")
