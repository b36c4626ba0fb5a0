"""kshim.completion: one-shot and counted completions."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched
from kshim.completion import (complete, complete_all, completion, completion_done,
                              init_completion, reinit_completion, try_wait_for_completion,
                              wait_for_completion, wait_for_completion_interruptible,
                              wait_for_completion_killable, wait_for_completion_timeout)
from kshim.err import ERESTARTSYS
from kshim.kthread import kthread_run, kthread_stop
from kshim.sched import SIGINT, SIGKILL, allow_signal, send_sig


def _waiters(x, log, n):
    def waiter(i):
        wait_for_completion(x)
        log.append(f"done {i}")
    return [kthread_run(waiter, i, f"w{i}") for i in range(n)]


def test_complete_wakes_exactly_one_waiter_in_order(kernel):
    log = []

    def body():
        x = completion("t.one")
        ts = _waiters(x, log, 3)
        sched.yield_()
        complete(x)
        sched.yield_()
        log.append("one completed")
        complete(x)
        complete(x)
        for t in ts:
            kthread_stop(t)
        return x.done
    assert kernel(body) == 0
    assert log == ["done 0", "one completed", "done 1", "done 2"]


def test_complete_all_wakes_everyone_and_later_waits_pass(kernel):
    log = []

    def body():
        x = completion("t.all")
        ts = _waiters(x, log, 3)
        sched.yield_()
        complete_all(x)
        for t in ts:
            kthread_stop(t)
        wait_for_completion(x)          # still done
        log.append(f"done={completion_done(x)}")
        reinit_completion(x)
        log.append(f"after reinit={completion_done(x)}")
    kernel(body)
    assert set(log[:3]) == {"done 0", "done 1", "done 2"}
    assert log[3:] == ["done=True", "after reinit=False"]


def test_completions_count_when_nobody_waits(kernel):
    def body():
        x = completion("t.count")
        complete(x)
        complete(x)
        return try_wait_for_completion(x), try_wait_for_completion(x), \
            try_wait_for_completion(x)
    assert kernel(body) == (True, True, False)


def test_wait_for_completion_timeout_returns_zero_then_the_jiffies_left(kernel):
    def body():
        x = completion("t.to")
        timed_out = wait_for_completion_timeout(x, 2)
        complete(x)
        left = wait_for_completion_timeout(x, 50)
        return timed_out, left, x.wait.head
    assert kernel(body) == (0, 50, [])


def test_interruptible_and_killable_waits_give_up_on_their_signals(kernel):
    log = []

    def sleeper(x):
        allow_signal(SIGINT)
        allow_signal(SIGKILL)
        log.append(("intr", wait_for_completion_interruptible(x)))
        log.append(("kill", wait_for_completion_killable(x)))

    def body():
        x = completion("t.sig")
        t = kthread_run(sleeper, x, "sleeper")
        sched.yield_()
        send_sig(SIGINT, t)             # ends the interruptible wait; the killable one ignores it
        sched.yield_()
        log.append("between")
        send_sig(SIGKILL, t)
        kthread_stop(t)
    kernel(body)
    assert log == [("intr", -ERESTARTSYS), "between", ("kill", -ERESTARTSYS)]


def test_complete_from_softirq_wakes_a_task(kernel):
    from kshim.softirq import raise_softirq

    def body():
        x = completion("t.sirq")
        raise_softirq(lambda _: complete(x))
        wait_for_completion(x)
        return True
    assert kernel(body) is True
    assert titles() == []


def test_reinitialising_a_completion_with_waiters_is_reported(kernel):
    log = []

    def body():
        x = completion("t.busy")
        ts = _waiters(x, log, 1)
        sched.yield_()
        init_completion(x)
        reinit_completion(x)
        complete_all(x)
        kthread_stop(ts[0])
    kernel(body)
    assert report("ODEBUG: init active").details["object_type"] == "completion"
    assert report("reinit_completion() with waiters").details["completion"] == "t.busy"
