from kshim import bug, sched
from kshim.completion import complete, completion, wait_for_completion
from kshim.kthread import kthread_run, kthread_stop
from kshim.jiffies import jiffies, msecs_to_jiffies
from kshim.timer import msleep, mod_timer, timer_list
from kshim.wait import wait_event, wait_queue_head, wake_up


def test_kthreads_interleave_only_at_schedule(kernel):
    log = []

    def body():
        wq = wait_queue_head()
        state = {"go": False}

        def worker(n):
            log.append(f"start {n}")
            wait_event(wq, lambda: state["go"])
            log.append(f"woken {n}")
            return n * 10
        t1 = kthread_run(worker, 1, "w1")
        t2 = kthread_run(worker, 2, "w2")
        log.append("parent before")
        msleep(1)
        state["go"] = True
        wake_up(wq)
        log.append("parent woke")
        return kthread_stop(t1), kthread_stop(t2)
    assert kernel(body) == (10, 20)
    assert log[:3] == ["parent before", "start 1", "start 2"]
    assert set(log[3:]) == {"parent woke", "woken 1", "woken 2"}
    assert log[3] == "parent woke"


def test_timer_callback_runs_in_softirq_and_completes(kernel):
    def body():
        done = completion()
        seen = {}

        def cb(t):
            seen["softirq"] = sched.in_softirq()
            complete(done)
        t = timer_list(cb)
        start = jiffies()
        mod_timer(t, jiffies() + msecs_to_jiffies(20))
        wait_for_completion(done)
        return seen["softirq"], jiffies() - start
    in_softirq, elapsed = kernel(body)
    assert in_softirq is True
    assert elapsed >= 20


def test_sleeping_in_timer_callback_is_reported(kernel):
    def body():
        done = completion()

        def cb(t):
            msleep(1)
            complete(done)
        mod_timer(timer_list(cb), jiffies() + 1)
        from kshim.completion import wait_for_completion_timeout
        wait_for_completion_timeout(done, msecs_to_jiffies(200))
    kernel(body)
    titles = [r.title for r in bug.reports]
    assert "sleeping function called from invalid context" in titles
    rep = next(r for r in bug.reports if r.title.startswith("sleeping"))
    assert rep.details["in_softirq"] >= 1
    assert rep.details["callback"].endswith("body.<locals>.cb")
