"""Mutexes, semaphores and read-write semaphores: sleeping locks.

Twin of kernel/locking/mutex.c, semaphore.c, rwsem.c and their headers.

Contexts: lock calls may sleep, so task context only; mutex_unlock only by
the owner; up() from any context.

Differs from the kernel: no optimistic spinning (one CPU); waiters are
handed the lock in FIFO order on unlock, which is what the kernel's
handoff path does under contention.

Debug aids: might_sleep() on entry; unlock by a non-owner, unlock of an
unlocked mutex and recursive locking are reported (CONFIG_DEBUG_MUTEXES).
"""
from __future__ import annotations

from collections import deque

from kshim import sched
from kshim.bug import KernelBug, report_bug
from kshim.err import EINTR
from kshim.sched import TASK_INTERRUPTIBLE, TASK_UNINTERRUPTIBLE, might_sleep


class mutex:
    __slots__ = ("name", "owner", "waiters", "contended")

    def __init__(self, name: str = "mutex") -> None:
        self.name = name
        self.owner: sched.task_struct | None = None
        self.waiters: deque[sched.task_struct] = deque()
        self.contended = 0


def mutex_init(m: mutex) -> None:
    m.owner = None
    m.waiters.clear()


def _mutex_lock_common(m: mutex, state: int) -> int:
    might_sleep()
    me = sched.current()
    if m.owner is None:
        m.owner = me
        me.held_locks.append(m)
        return 0
    if m.owner is me:
        report_bug("possible recursive locking detected", lock=m.name, task=me.comm)
        raise KernelBug(f"mutex {m.name} locked twice by {me.comm}")
    m.contended += 1
    m.waiters.append(me)
    while m.owner is not me:
        if state == TASK_INTERRUPTIBLE and me.sigpending:
            m.waiters.remove(me)
            return -EINTR
        sched.set_current_state(state)
        sched.schedule()
    me.held_locks.append(m)
    return 0


def mutex_lock(m: mutex) -> None:
    _mutex_lock_common(m, TASK_UNINTERRUPTIBLE)


def mutex_lock_interruptible(m: mutex) -> int:
    return _mutex_lock_common(m, TASK_INTERRUPTIBLE)


def mutex_lock_killable(m: mutex) -> int:
    return _mutex_lock_common(m, TASK_INTERRUPTIBLE)


def mutex_trylock(m: mutex) -> bool:
    if m.owner is not None:
        return False
    m.owner = sched.current()
    m.owner.held_locks.append(m)
    return True


def mutex_unlock(m: mutex) -> None:
    me = sched.current()
    if m.owner is not me:
        report_bug("mutex_unlock by non-owner" if m.owner else "mutex_unlock of unlocked mutex",
                   lock=m.name, task=me.comm, owner=m.owner.comm if m.owner else None)
        return
    try:
        me.held_locks.remove(m)
    except ValueError:
        pass
    if m.waiters:
        nxt = m.waiters.popleft()
        m.owner = nxt
        sched.wake_up_process(nxt)
    else:
        m.owner = None


def mutex_is_locked(m: mutex) -> bool:
    return m.owner is not None


def lockdep_assert_held_mutex(m: mutex) -> None:
    if m.owner is not sched.current():
        report_bug("lockdep_assert_held failed", lock=m.name, task=sched.current().comm)


class semaphore:
    __slots__ = ("name", "count", "waiters")

    def __init__(self, count: int = 1, name: str = "semaphore") -> None:
        self.name = name
        self.count = count
        self.waiters: deque[list] = deque()    # [task, granted]


def sema_init(sem: semaphore, val: int) -> None:
    sem.count = val


def _down_common(sem: semaphore, state: int) -> int:
    might_sleep()
    if sem.count > 0:
        sem.count -= 1
        return 0
    me = sched.current()
    w = [me, False]
    sem.waiters.append(w)
    while not w[1]:
        if state == TASK_INTERRUPTIBLE and me.sigpending:
            sem.waiters.remove(w)
            return -EINTR
        sched.set_current_state(state)
        sched.schedule()
    return 0


def down(sem: semaphore) -> None:
    _down_common(sem, TASK_UNINTERRUPTIBLE)


def down_interruptible(sem: semaphore) -> int:
    return _down_common(sem, TASK_INTERRUPTIBLE)


def down_trylock(sem: semaphore) -> int:
    """0 if acquired, 1 if not (the kernel's inverted convention)."""
    if sem.count > 0:
        sem.count -= 1
        return 0
    return 1


def up(sem: semaphore) -> None:
    if sem.waiters:
        w = sem.waiters.popleft()
        w[1] = True
        sched.wake_up_process(w[0])
    else:
        sem.count += 1


class rw_semaphore:
    __slots__ = ("name", "readers", "writer", "waiters")

    def __init__(self, name: str = "rwsem") -> None:
        self.name = name
        self.readers = 0
        self.writer: sched.task_struct | None = None
        self.waiters: deque[list] = deque()    # [task, is_writer, granted]


def init_rwsem(sem: rw_semaphore) -> None:
    sem.readers = 0
    sem.writer = None


def _rwsem_wait(sem: rw_semaphore, writer: bool) -> None:
    me = sched.current()
    w = [me, writer, False]
    sem.waiters.append(w)
    while not w[2]:
        sched.set_current_state(TASK_UNINTERRUPTIBLE)
        sched.schedule()


def down_read(sem: rw_semaphore) -> None:
    might_sleep()
    if sem.writer is None and not sem.waiters:
        sem.readers += 1
        return
    _rwsem_wait(sem, False)


def down_write(sem: rw_semaphore) -> None:
    might_sleep()
    if sem.writer is None and not sem.readers and not sem.waiters:
        sem.writer = sched.current()
        return
    _rwsem_wait(sem, True)


def down_read_trylock(sem: rw_semaphore) -> bool:
    if sem.writer is None and not sem.waiters:
        sem.readers += 1
        return True
    return False


def down_write_trylock(sem: rw_semaphore) -> bool:
    if sem.writer is None and not sem.readers:
        sem.writer = sched.current()
        return True
    return False


def _rwsem_grant(sem: rw_semaphore) -> None:
    q = sem.waiters
    if q and q[0][1]:
        if not sem.readers and sem.writer is None:
            w = q.popleft()
            sem.writer = w[0]
            w[2] = True
            sched.wake_up_process(w[0])
        return
    while q and not q[0][1] and sem.writer is None:
        w = q.popleft()
        sem.readers += 1
        w[2] = True
        sched.wake_up_process(w[0])


def up_read(sem: rw_semaphore) -> None:
    sem.readers -= 1
    if not sem.readers:
        _rwsem_grant(sem)


def up_write(sem: rw_semaphore) -> None:
    sem.writer = None
    _rwsem_grant(sem)


def downgrade_write(sem: rw_semaphore) -> None:
    sem.writer = None
    sem.readers += 1
    _rwsem_grant(sem)
