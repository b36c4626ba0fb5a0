"""kshim.wait: wait queues, the wait_event family and wake-ups."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched
from kshim.err import ERESTARTSYS
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.sched import SIGINT, SIGKILL, TASK_INTERRUPTIBLE, allow_signal, send_sig
from kshim.softirq import raise_softirq
from kshim.spinlock import spin_lock, spin_lock_irq, spin_unlock, spin_unlock_irq, spinlock_t
from kshim.wait import (DEFINE_WAIT, finish_wait, prepare_to_wait, wait_event,
                        wait_event_interruptible, wait_event_interruptible_exclusive,
                        wait_event_interruptible_timeout, wait_event_killable,
                        wait_event_lock_irq, wait_event_locked, wait_event_timeout,
                        wait_queue_head, wait_var_event, waitqueue_active, wake_up,
                        wake_up_all, wake_up_interruptible, wake_up_nr, wake_up_var)


def test_wait_event_returns_at_once_when_condition_already_true(kernel):
    def body():
        wq = wait_queue_head("t.true")
        before = sched.current().nvcsw
        wait_event(wq, lambda: True)
        return sched.current().nvcsw - before, waitqueue_active(wq)
    assert kernel(body) == (0, False)


def test_wake_up_wakes_every_plain_waiter_and_one_exclusive_one(kernel):
    log = []
    st = {"go": False}

    def plain(arg):
        wq, n = arg
        wait_event(wq, lambda: st["go"])
        log.append(f"plain {n}")

    def excl(arg):
        wq, n = arg
        wait_event_interruptible_exclusive(wq, lambda: st["go"] or kthread_should_stop())
        log.append(f"excl {n}")

    def body():
        wq = wait_queue_head("t.mix")
        ts = [kthread_run(excl, (wq, 1), "x1"), kthread_run(plain, (wq, 1), "p1"),
              kthread_run(excl, (wq, 2), "x2"), kthread_run(plain, (wq, 2), "p2")]
        sched.yield_()
        st["go"] = True
        wake_up(wq)
        sched.yield_()
        log.append(f"left {len(wq.head)}")
        wake_up_all(wq)
        for t in ts:
            kthread_stop(t)
    kernel(body)
    assert set(log[:3]) == {"plain 1", "plain 2", "excl 1"}
    assert log[3:] == ["left 1", "excl 2"]


def test_wake_up_nr_wakes_that_many_exclusive_waiters(kernel):
    log = []
    st = {"go": 0}

    def excl(arg):
        wq, n = arg
        wait_event_interruptible_exclusive(wq, lambda: st["go"] or kthread_should_stop())
        log.append(n)

    def body():
        wq = wait_queue_head("t.nr")
        ts = [kthread_run(excl, (wq, n), f"x{n}") for n in range(4)]
        sched.yield_()
        st["go"] = 1
        wake_up_nr(wq, 2)
        sched.yield_()
        woken = sorted(log)
        for t in ts:
            kthread_stop(t)
        return woken
    assert kernel(body) == [0, 1]


def test_wait_event_timeout_returns_zero_when_the_time_runs_out(kernel):
    def body():
        wq = wait_queue_head("t.to")
        return wait_event_timeout(wq, lambda: False, 3), waitqueue_active(wq)
    assert kernel(body) == (0, False)


def test_wait_event_timeout_returns_the_jiffies_left_when_woken(kernel):
    st = {"go": False}

    def waker(wq):
        st["go"] = True
        wake_up(wq)

    def body():
        wq = wait_queue_head("t.left")
        t = kthread_run(waker, wq, "waker")
        left = wait_event_timeout(wq, lambda: st["go"], 10_000)
        kthread_stop(t)
        return left
    assert 9_000 < kernel(body) <= 10_000


def test_wait_event_interruptible_returns_erestartsys_on_a_signal(kernel):
    log = []

    def sleeper(wq):
        allow_signal(SIGINT)
        log.append(wait_event_interruptible(wq, lambda: False))
        log.append(wait_event_interruptible_timeout(wq, lambda: False, 5))

    def body():
        wq = wait_queue_head("t.sig")
        t = kthread_run(sleeper, wq, "sleeper")
        sched.yield_()
        send_sig(SIGINT, t)
        kthread_stop(t)
        return waitqueue_active(wq)
    assert kernel(body) is False
    assert log == [-ERESTARTSYS, -ERESTARTSYS]      # the signal stays pending


def test_wait_event_killable_sleeps_through_signals_other_than_sigkill(kernel):
    log = []

    def sleeper(wq):
        allow_signal(SIGINT)
        allow_signal(SIGKILL)
        log.append(wait_event_killable(wq, lambda: False))

    def body():
        wq = wait_queue_head("t.killable")
        t = kthread_run(sleeper, wq, "sleeper")
        sched.yield_()
        send_sig(SIGINT, t)
        sched.yield_()
        log.append("sigint ignored")
        send_sig(SIGKILL, t)
        kthread_stop(t)
    kernel(body)
    assert log == ["sigint ignored", -ERESTARTSYS]


def test_wait_event_lock_irq_drops_the_lock_while_asleep(kernel):
    log = []
    st = {"go": False}

    def waker(arg):
        wq, lk = arg
        spin_lock_irq(lk)            # would be recursion if the sleeper still held it
        st["go"] = True
        spin_unlock_irq(lk)
        wake_up(wq)
        log.append("woke")

    def body():
        wq, lk = wait_queue_head("t.lockirq"), spinlock_t("t.lockirq")
        t = kthread_run(waker, (wq, lk), "waker")
        spin_lock_irq(lk)
        wait_event_lock_irq(wq, lambda: st["go"], lk)
        log.append(f"back holding it: {lk.owner is sched.current()}")
        spin_unlock_irq(lk)
        kthread_stop(t)
    kernel(body)
    assert log == ["woke", "back holding it: True"]
    assert titles() == []


def test_wait_event_locked_uses_the_queue_lock_by_default(kernel):
    st = {"go": False}

    def waker(wq):
        spin_lock(wq.lock)
        st["go"] = True
        wake_up(wq)
        spin_unlock(wq.lock)

    def body():
        wq = wait_queue_head("t.locked")
        t = kthread_run(waker, wq, "waker")
        spin_lock(wq.lock)
        wait_event_locked(wq, lambda: st["go"])
        held = wq.lock.owner is sched.current()
        spin_unlock(wq.lock)
        kthread_stop(t)
        return held
    assert kernel(body) is True
    assert titles() == []


def test_prepare_to_wait_and_finish_wait_open_coded_loop(kernel):
    log = []
    st = {"n": 0}

    def waker(wq):
        for _ in range(3):
            st["n"] += 1
            wake_up(wq)
            sched.yield_()

    def body():
        wq = wait_queue_head("t.open")
        entry = DEFINE_WAIT()
        t = kthread_run(waker, wq, "waker")
        while True:
            prepare_to_wait(wq, entry, TASK_INTERRUPTIBLE)
            if st["n"] >= 3:
                break
            sched.schedule()
            log.append(st["n"])
        finish_wait(wq, entry)
        kthread_stop(t)
        return waitqueue_active(wq), sched.current().state
    assert kernel(body) == (False, sched.TASK_RUNNING)
    assert log == [1, 2, 3]


def test_wake_up_interruptible_leaves_uninterruptible_sleepers_alone(kernel):
    log = []
    st = {"go": False}

    def unint(wq):
        wait_event(wq, lambda: st["go"])
        log.append("unint")

    def body():
        wq = wait_queue_head("t.modes")
        t = kthread_run(unint, wq, "unint")
        sched.yield_()
        st["go"] = True
        wake_up_interruptible(wq)
        sched.yield_()
        log.append("after interruptible wake")
        wake_up(wq)
        kthread_stop(t)
    kernel(body)
    assert log == ["after interruptible wake", "unint"]


def test_wait_var_event_is_woken_by_wake_up_var(kernel):
    log = []

    class obj:
        count = 2

    def body():
        o = obj()

        def dropper(_):
            for _ in range(2):
                o.count -= 1
                wake_up_var(o)
                log.append(f"dropped to {o.count}")
                sched.yield_()
        t = kthread_run(dropper, None, "dropper")
        wait_var_event(o, lambda: o.count == 0)
        log.append("all dropped")
        kthread_stop(t)
    kernel(body)
    assert log == ["dropped to 1", "dropped to 0", "all dropped"]


def test_wait_event_in_softirq_context_is_reported(kernel):
    def body():
        wq = wait_queue_head("t.sirq")
        raise_softirq(lambda _: wait_event(wq, lambda: False))
        sched.yield_()
    kernel(body)
    rep = report("sleeping function called from invalid context")
    assert rep.details["task"] == "swapper/0" and rep.details["in_softirq"] == 1
    assert "oops in softirq" in titles()      # schedule() outside a task is refused
