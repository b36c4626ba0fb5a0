"""kshim.mutex: mutexes, semaphores and rw_semaphores really block, FIFO."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched
from kshim.err import EINTR, ETIME
from kshim.kthread import kthread_run, kthread_stop
from kshim.mutex import (down, down_interruptible, down_read, down_timeout, down_trylock,
                         down_write, downgrade_write, mutex, mutex_destroy, mutex_is_locked,
                         mutex_lock, mutex_lock_interruptible, mutex_lock_killable, mutex_trylock,
                         mutex_unlock, rw_semaphore, rwsem_is_locked, semaphore, up, up_read,
                         up_write)
from kshim.sched import SIGINT, SIGKILL, allow_signal, send_sig


def test_a_held_mutex_is_handed_to_waiters_in_fifo_order(kernel):
    log = []

    def waiter(arg):
        m, n = arg
        log.append(f"wait {n}")
        mutex_lock(m)
        log.append(f"got {n}")
        mutex_unlock(m)

    def body():
        m = mutex("t.fifo")
        mutex_lock(m)
        ts = [kthread_run(waiter, (m, n), f"w{n}") for n in (1, 2, 3)]
        sched.yield_()
        log.append("unlock")
        mutex_unlock(m)
        for t in ts:
            kthread_stop(t)
        return mutex_is_locked(m)
    assert kernel(body) is False
    assert log == ["wait 1", "wait 2", "wait 3", "unlock", "got 1", "got 2", "got 3"]
    assert titles() == []


def test_mutex_trylock_never_sleeps(kernel):
    def body():
        m = mutex("t.try")
        first = mutex_trylock(m)
        second = mutex_trylock(m)
        mutex_unlock(m)
        return first, second, mutex_is_locked(m)
    assert kernel(body) == (True, False, False)


def test_mutex_lock_interruptible_returns_eintr_on_a_signal(kernel):
    log = []

    def waiter(m):
        allow_signal(SIGINT)
        log.append(mutex_lock_interruptible(m))

    def body():
        m = mutex("t.intr")
        mutex_lock(m)
        t = kthread_run(waiter, m, "waiter")
        sched.yield_()
        send_sig(SIGINT, t)
        sched.yield_()
        mutex_unlock(m)
        kthread_stop(t)
        return m.waiters
    assert list(kernel(body)) == []
    assert log == [-EINTR]


def test_mutex_lock_killable_ignores_ordinary_signals_but_not_sigkill(kernel):
    log = []

    def waiter(m):
        allow_signal(SIGINT)
        allow_signal(SIGKILL)
        log.append(mutex_lock_killable(m))

    def body():
        m = mutex("t.kill")
        mutex_lock(m)
        t = kthread_run(waiter, m, "waiter")
        sched.yield_()
        send_sig(SIGINT, t)
        sched.yield_()
        log.append(f"still waiting: {t.state != sched.TASK_DEAD}")
        send_sig(SIGKILL, t)
        sched.yield_()
        mutex_unlock(m)
        kthread_stop(t)
    kernel(body)
    assert log == ["still waiting: True", -EINTR]


def test_mutex_unlock_by_a_non_owner_is_reported_and_refused(kernel):
    def owner(m):
        mutex_lock(m)

    def body():
        m = mutex("t.owned")
        t = kthread_run(owner, m, "owner")
        sched.yield_()
        mutex_unlock(m)
        return m.owner is t
    assert kernel(body) is True
    rep = report("mutex_unlock by non-owner")
    assert rep.details["owner"] == "owner" and rep.details["task"] == "insmod"


def test_recursive_mutex_lock_is_reported(kernel):
    def offender(m):
        mutex_lock(m)
        mutex_lock(m)

    def body():
        t = kthread_run(offender, mutex("t.twice"), "offender")
        sched.yield_()
        kthread_stop(t)
    kernel(body)
    assert report("possible recursive locking detected").details["lock"] == "t.twice"


def test_mutex_destroy_of_a_locked_mutex_is_reported(kernel):
    def body():
        m = mutex("t.destroy")
        mutex_lock(m)
        mutex_destroy(m)
        mutex_unlock(m)
    kernel(body)
    assert report("mutex_destroy() of a locked mutex").details["lock"] == "t.destroy"


def test_semaphore_counts_and_wakes_waiters_in_order(kernel):
    log = []

    def waiter(arg):
        sem, n = arg
        down(sem)
        log.append(f"down {n}")

    def body():
        sem = semaphore(2)
        down(sem)
        down(sem)
        busy = down_trylock(sem)
        ts = [kthread_run(waiter, (sem, n), f"w{n}") for n in (1, 2)]
        sched.yield_()
        log.append("up")
        up(sem)
        up(sem)
        for t in ts:
            kthread_stop(t)
        up(sem)
        return busy, sem.count
    assert kernel(body) == (1, 1)
    assert log == ["up", "down 1", "down 2"]


def test_down_timeout_gives_up_with_etime(kernel):
    def body():
        sem = semaphore(0)
        return down_timeout(sem, 2), list(sem.waiters)
    assert kernel(body) == (-ETIME, [])


def test_down_interruptible_returns_eintr_on_a_signal(kernel):
    log = []

    def waiter(sem):
        allow_signal(SIGINT)
        log.append(down_interruptible(sem))

    def body():
        sem = semaphore(0)
        t = kthread_run(waiter, sem, "waiter")
        sched.yield_()
        send_sig(SIGINT, t)
        kthread_stop(t)
    kernel(body)
    assert log == [-EINTR]


def test_rwsem_readers_share_and_a_writer_waits_for_them(kernel):
    from kshim.completion import complete_all, completion, wait_for_completion
    log = []

    def reader(arg):
        sem, go, n = arg
        down_read(sem)
        log.append(f"read {n}")
        wait_for_completion(go)
        up_read(sem)

    def writer(sem):
        down_write(sem)
        log.append("write")
        up_write(sem)

    def body():
        sem, go = rw_semaphore("t.rw"), completion()
        r = [kthread_run(reader, (sem, go, n), f"r{n}") for n in (1, 2)]
        sched.yield_()
        w = kthread_run(writer, sem, "w")
        sched.yield_()
        log.append(f"readers {sem.readers}")
        complete_all(go)
        kthread_stop(w)
        for t in r:
            kthread_stop(t)
        return rwsem_is_locked(sem)
    assert kernel(body) is False
    assert log == ["read 1", "read 2", "readers 2", "write"]
    assert titles() == []


def test_a_waiting_writer_blocks_new_readers_and_downgrade_lets_them_in(kernel):
    log = []

    def reader(sem):
        down_read(sem)
        log.append("reader in")
        up_read(sem)

    def body():
        sem = rw_semaphore("t.down")
        down_write(sem)
        t = kthread_run(reader, sem, "reader")
        sched.yield_()
        log.append("downgrade")
        downgrade_write(sem)
        sched.yield_()
        up_read(sem)
        kthread_stop(t)
    kernel(body)
    assert log == ["downgrade", "reader in"]


def test_up_write_by_a_non_owner_is_reported(kernel):
    def owner(sem):
        down_write(sem)
        up_write(sem)

    def body():
        sem = rw_semaphore("t.rwown")
        down_write(sem)
        t = kthread_run(owner, sem, "other")
        sched.yield_()
        up_write(sem)
        kthread_stop(t)

    kernel(body)
    assert titles() == []

    def bad():
        sem = rw_semaphore("t.rwown2")
        t = kthread_run(lambda s: down_write(s), sem, "writer")
        sched.yield_()
        up_write(sem)
        kthread_stop(t)
    kernel(bad)
    assert report("up_write by non-owner").details["owner"] == "writer"
