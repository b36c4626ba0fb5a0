"""Mutexes, semaphores and read-write semaphores: sleeping locks.

Twin of kernel/locking/mutex.c, semaphore.c, rwsem.c, mutex-debug.c and
include/linux/mutex.h, semaphore.h, rwsem.h.

Contexts: lock calls may sleep, so task context only; mutex_unlock and
up_write only by the owner; up() from any context, softirq included.

Differs from the kernel: no optimistic spinning (one CPU); waiters are
handed the lock in FIFO order on unlock, which is what the kernel's handoff
path does under contention. rw_semaphore readers queue behind a waiting
writer (no reader starvation of writers). The _killable calls give up on
SIGKILL only, the _interruptible ones on any signal (kshim.sched signals).

Debug aids (debug_mutexes, CONFIG_DEBUG_MUTEXES + PROVE_LOCKING):
might_sleep() on entry; unlock by a non-owner, unlock of an unlocked mutex,
recursive locking, mutex_destroy() of a held mutex are reported; mutexes and
rw_semaphores go through kshim.lockdep before they block (so an ABBA is
reported instead of deadlocking), and report contentions and wait times to
lock_stat. Semaphores, as in the kernel, are not lockdep-tracked. Owner
checks (mutex owner, rwsem writer) work with debug off too.
"""
from __future__ import annotations

from collections import deque

from kshim import debugobjects, lockdep, sched
from kshim.atomic import atomic_t
from kshim.bug import KernelBug, report_bug
from kshim.fault_sched import fail_trylock, trylock_fault
from kshim.err import EINTR, ETIME
from kshim.host import ops
from kshim.lockdep import lock_acquire, lock_acquired, lock_contended, lock_release, lock_site
from kshim.sched import (MAX_SCHEDULE_TIMEOUT, TASK_INTERRUPTIBLE, TASK_KILLABLE,
                         TASK_UNINTERRUPTIBLE, might_sleep, signal_pending_state)
from kshim.timer import schedule_timeout

debug_mutexes = True
_cpu = sched.cpu
lockdep.register_lock_file(__file__)


def _init_key(lock: mutex | rw_semaphore, default: str) -> None:
    if lockdep.debug_locks and lock.name == default:
        lock.key = f"{default}@{lock_site()}"


class mutex:
    __slots__ = ("name", "owner", "waiters", "contended", "key", "dep_map")

    def __init__(self, name: str = "mutex") -> None:
        self.name = name
        self.owner: sched.task_struct | None = None
        self.waiters: deque[sched.task_struct] = deque()
        self.contended = 0
        self.key: str | None = None
        self.dep_map = None
        _init_key(self, "mutex")

    def __repr__(self) -> str:
        return f"<mutex {self.name} owner={self.owner}>"


def DEFINE_MUTEX(name: str) -> mutex:
    return mutex(name)


def mutex_init(m: mutex) -> None:
    if debug_mutexes and m.owner is not None:
        report_bug("mutex_init() of a locked mutex", lock=m.name, owner=m.owner.comm)
    m.owner = None
    m.waiters.clear()


def mutex_destroy(m: mutex) -> None:
    if debug_mutexes and (m.owner is not None or m.waiters):
        report_bug("mutex_destroy() of a locked mutex", lock=m.name,
                   owner=m.owner.comm if m.owner else None, waiters=len(m.waiters))


def _mutex_slowpath(m: mutex, state: int, subclass: int) -> int:
    me = _cpu.curr
    if debug_mutexes:
        might_sleep()
        if m.owner is me:
            report_bug("possible recursive locking detected", lock=m.name, task=me.comm,
                       at=lock_site())
            raise KernelBug(f"mutex {m.name} locked twice by {me.comm}")
        lock_acquire(m, subclass, False, 0, False)
    if m.owner is None:
        m.owner = me
        return 0
    m.contended += 1
    if debug_mutexes:
        lock_contended(m)
        t0 = ops.monotonic_ns()
    m.waiters.append(me)
    while m.owner is not me:
        if signal_pending_state(state, me):
            m.waiters.remove(me)
            if debug_mutexes:
                lock_release(m)
            return -EINTR
        me.state = state
        sched.schedule()
    if debug_mutexes:
        lock_acquired(m, ops.monotonic_ns() - t0)
    return 0


def mutex_lock(m: mutex) -> None:
    if m.owner is None and not debug_mutexes:
        m.owner = _cpu.curr
        return
    _mutex_slowpath(m, TASK_UNINTERRUPTIBLE, 0)


def mutex_lock_nested(m: mutex, subclass: int) -> None:
    _mutex_slowpath(m, TASK_UNINTERRUPTIBLE, subclass)


def mutex_lock_interruptible(m: mutex) -> int:
    """0, or -EINTR if a signal arrived while waiting."""
    return _mutex_slowpath(m, TASK_INTERRUPTIBLE, 0)


def mutex_lock_interruptible_nested(m: mutex, subclass: int) -> int:
    return _mutex_slowpath(m, TASK_INTERRUPTIBLE, subclass)


def mutex_lock_killable(m: mutex) -> int:
    """0, or -EINTR if SIGKILL arrived while waiting."""
    return _mutex_slowpath(m, TASK_KILLABLE, 0)


mutex_lock_io = mutex_lock


def mutex_trylock(m: mutex) -> bool:
    """Take m if free; True if taken. Never sleeps."""
    if m.owner is not None or (fail_trylock.armed and trylock_fault()):
        return False
    m.owner = _cpu.curr
    if debug_mutexes:
        lock_acquire(m, 0, True, 0, False)
    return True


def mutex_unlock(m: mutex) -> None:
    me = _cpu.curr
    if m.owner is not me:
        report_bug("mutex_unlock by non-owner" if m.owner else "mutex_unlock of unlocked mutex",
                   lock=m.name, task=me.comm, owner=m.owner.comm if m.owner else None,
                   at=lock_site())
        return
    if debug_mutexes:
        lock_release(m)
    w = m.waiters
    if w:
        nxt = w.popleft()
        m.owner = nxt
        sched.wake_up_process(nxt)
    else:
        m.owner = None


def mutex_is_locked(m: mutex) -> bool:
    return m.owner is not None


def __mutex_owner(m: mutex) -> sched.task_struct | None:
    return m.owner


def mutex_trylock_recursive(m: mutex) -> int:
    """1 if taken now, 2 if the caller already owns it, 0 if owned by another."""
    if m.owner is _cpu.curr:
        return 2
    return 1 if mutex_trylock(m) else 0


def atomic_dec_and_mutex_lock(cnt: atomic_t, m: mutex) -> bool:
    """Decrement cnt (an atomic_t); if it reached 0 return True holding m."""
    if cnt.counter != 1:
        cnt.counter -= 1
        return False
    mutex_lock(m)
    cnt.counter -= 1
    if cnt.counter == 0:
        return True
    mutex_unlock(m)
    return False


def lockdep_assert_held_mutex(m: mutex) -> None:
    if m.owner is not _cpu.curr:
        report_bug("lockdep_assert_held failed", lock=m.name, task=_cpu.curr.comm)


# -- semaphores ---------------------------------------------------------------------

class semaphore:
    __slots__ = ("name", "count", "waiters")

    def __init__(self, count: int = 1, name: str = "semaphore") -> None:
        self.name = name
        self.count = count
        self.waiters: deque[list] = deque()    # [task, granted]


def sema_init(sem: semaphore, val: int) -> None:
    sem.count = val
    sem.waiters.clear()


def DEFINE_SEMAPHORE(name: str, count: int = 1) -> semaphore:
    return semaphore(count, name)


def _down_common(sem: semaphore, state: int, timeout: int) -> int:
    if debug_mutexes:
        might_sleep()
    if sem.count > 0:
        sem.count -= 1
        return 0
    me = _cpu.curr
    w = [me, False]
    sem.waiters.append(w)
    while not w[1]:
        if signal_pending_state(state, me):
            sem.waiters.remove(w)
            return -EINTR
        if timeout <= 0:
            sem.waiters.remove(w)
            return -ETIME
        me.state = state
        timeout = schedule_timeout(timeout)
    return 0


def down(sem: semaphore) -> None:
    _down_common(sem, TASK_UNINTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


def down_interruptible(sem: semaphore) -> int:
    """0, or -EINTR if a signal arrived while waiting."""
    return _down_common(sem, TASK_INTERRUPTIBLE, MAX_SCHEDULE_TIMEOUT)


def down_killable(sem: semaphore) -> int:
    return _down_common(sem, TASK_KILLABLE, MAX_SCHEDULE_TIMEOUT)


def down_timeout(sem: semaphore, timeout: int) -> int:
    """0, or -ETIME if not acquired within `timeout` jiffies."""
    return _down_common(sem, TASK_UNINTERRUPTIBLE, timeout)


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


# -- read-write semaphores ---------------------------------------------------------

class rw_semaphore:
    __slots__ = ("name", "readers", "writer", "waiters", "key", "dep_map")

    def __init__(self, name: str = "rwsem") -> None:
        self.name = name
        self.readers = 0
        self.writer: sched.task_struct | None = None
        self.waiters: deque[list] = deque()    # [task, is_writer, granted]
        self.key: str | None = None
        self.dep_map = None
        _init_key(self, "rwsem")

    def __repr__(self) -> str:
        return f"<rwsem {self.name} readers={self.readers} writer={self.writer}>"


def init_rwsem(sem: rw_semaphore) -> None:
    sem.readers = 0
    sem.writer = None
    sem.waiters.clear()


def DECLARE_RWSEM(name: str) -> rw_semaphore:
    return rw_semaphore(name)


def _rwsem_wait(sem: rw_semaphore, writer: bool, state: int) -> int:
    me = _cpu.curr
    w = [me, writer, False]
    sem.waiters.append(w)
    if debug_mutexes:
        lock_contended(sem)
        t0 = ops.monotonic_ns()
    while not w[2]:
        if signal_pending_state(state, me):
            sem.waiters.remove(w)
            _rwsem_grant(sem)           # a reader may be able to go now
            return -EINTR
        me.state = state
        sched.schedule()
    if debug_mutexes:
        lock_acquired(sem, ops.monotonic_ns() - t0)
    return 0


def _down_read_common(sem: rw_semaphore, state: int, subclass: int = 0) -> int:
    if debug_mutexes:
        might_sleep()
        lock_acquire(sem, subclass, False, 1, False)
    if sem.writer is None and not sem.waiters:
        sem.readers += 1
        return 0
    ret = _rwsem_wait(sem, False, state)
    if ret and debug_mutexes:
        lock_release(sem)
    return ret


def _down_write_common(sem: rw_semaphore, state: int, subclass: int = 0) -> int:
    me = _cpu.curr
    if debug_mutexes:
        might_sleep()
        if sem.writer is me:
            report_bug("possible recursive locking detected", lock=sem.name, task=me.comm,
                       at=lock_site())
            raise KernelBug(f"rwsem {sem.name} write-locked twice by {me.comm}")
        lock_acquire(sem, subclass, False, 0, False)
    if sem.writer is None and not sem.readers and not sem.waiters:
        sem.writer = me
        return 0
    ret = _rwsem_wait(sem, True, state)
    if ret and debug_mutexes:
        lock_release(sem)
    return ret


def down_read(sem: rw_semaphore) -> None:
    _down_read_common(sem, TASK_UNINTERRUPTIBLE)


def down_read_nested(sem: rw_semaphore, subclass: int) -> None:
    _down_read_common(sem, TASK_UNINTERRUPTIBLE, subclass)


def down_read_interruptible(sem: rw_semaphore) -> int:
    return _down_read_common(sem, TASK_INTERRUPTIBLE)


def down_read_killable(sem: rw_semaphore) -> int:
    return _down_read_common(sem, TASK_KILLABLE)


def down_write(sem: rw_semaphore) -> None:
    _down_write_common(sem, TASK_UNINTERRUPTIBLE)


def down_write_nested(sem: rw_semaphore, subclass: int) -> None:
    _down_write_common(sem, TASK_UNINTERRUPTIBLE, subclass)


def down_write_killable(sem: rw_semaphore) -> int:
    return _down_write_common(sem, TASK_KILLABLE)


def down_read_trylock(sem: rw_semaphore) -> bool:
    if sem.writer is None and not sem.waiters:
        sem.readers += 1
        if debug_mutexes:
            lock_acquire(sem, 0, True, 1, False)
        return True
    return False


def down_write_trylock(sem: rw_semaphore) -> bool:
    if sem.writer is None and not sem.readers:
        sem.writer = _cpu.curr
        if debug_mutexes:
            lock_acquire(sem, 0, True, 0, False)
        return True
    return False


def down_read_non_owner(sem: rw_semaphore) -> None:
    """down_read whose up_read may come from another task (not lockdep-tracked)."""
    might_sleep()
    if sem.writer is None and not sem.waiters:
        sem.readers += 1
        return
    _rwsem_wait(sem, False, TASK_UNINTERRUPTIBLE)


def up_read_non_owner(sem: rw_semaphore) -> None:
    sem.readers -= 1
    if not sem.readers:
        _rwsem_grant(sem)


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
    if sem.readers <= 0:
        report_bug("up_read of an rwsem not read-held", lock=sem.name, task=_cpu.curr.comm)
        return
    if debug_mutexes:
        lock_release(sem)
    sem.readers -= 1
    if not sem.readers:
        _rwsem_grant(sem)


def up_write(sem: rw_semaphore) -> None:
    if sem.writer is not _cpu.curr:
        report_bug("up_write by non-owner" if sem.writer else "up_write of an rwsem not "
                   "write-held", lock=sem.name, task=_cpu.curr.comm,
                   owner=sem.writer.comm if sem.writer else None)
        return
    if debug_mutexes:
        lock_release(sem)
    sem.writer = None
    _rwsem_grant(sem)


def downgrade_write(sem: rw_semaphore) -> None:
    if sem.writer is not _cpu.curr:
        report_bug("downgrade_write by non-owner", lock=sem.name, task=_cpu.curr.comm)
        return
    sem.writer = None
    sem.readers += 1
    _rwsem_grant(sem)


def rwsem_is_locked(sem: rw_semaphore) -> bool:
    return sem.writer is not None or sem.readers > 0


def _held_hint(lock: mutex | rw_semaphore) -> str | None:
    owner = getattr(lock, "owner", None) or getattr(lock, "writer", None)
    if owner is not None:
        return f"{lock.name} held by {owner.comm}"
    if getattr(lock, "readers", 0):
        return f"{lock.name} read-held"
    return None


debugobjects.debug_object_register(mutex, "mutex", _held_hint)
debugobjects.debug_object_register(rw_semaphore, "rw_semaphore", _held_hint)
