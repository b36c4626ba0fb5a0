"""One switch for every debugging aid, like booting a debug or a production
kernel config.

Twin of nothing single in the kernel: it flips what CONFIG_DEBUG_ATOMIC_SLEEP,
CONFIG_PROVE_LOCKING + LOCK_STAT (kshim.lockdep), CONFIG_DEBUG_SPINLOCK,
CONFIG_DEBUG_MUTEXES, CONFIG_SLUB_DEBUG (kshim.slab), CONFIG_DEBUG_PAGEALLOC,
CONFIG_DEBUG_OBJECTS (kshim.debugobjects), CONFIG_DETECT_HUNG_TASK
(kshim.hung_task), CONFIG_SOFTLOCKUP_DETECTOR (kshim.watchdog) and
schedstats would turn on.

Contexts: any; meant for start-up, tests and the live tree. Switching while
locks are held is safe for spinlocks (none can be held across the switch
point); mutexes held across a switch are unknown to lockdep until released.

Differs from the kernel: the aids can be switched at run time, together or
one by one (set_debug_aid). With everything off, the data path pays one
flag test per primitive (tools/kbench measures both ways).
"""
from __future__ import annotations

from kshim import (debugobjects, hung_task, lockdep, mutex, page_alloc, sched, slab, softirq,
                   spinlock, wait)

AIDS = ("atomic_sleep", "lockdep", "spinlock", "mutexes", "slab", "pagealloc", "objects",
        "hung_task", "softlockup", "softirq", "wait")


def set_debug_aid(name: str, on: bool) -> None:
    """Switch one aid (a name from AIDS) on or off."""
    if name == "atomic_sleep":
        sched.debug_atomic_sleep = on
    elif name == "lockdep":
        lockdep.debug_locks = on
    elif name == "spinlock":
        spinlock.debug_spinlock = on
    elif name == "mutexes":
        mutex.debug_mutexes = on
    elif name == "slab":
        slab.set_debug_slab(on)
    elif name == "pagealloc":
        page_alloc.debug_pagealloc = on
    elif name == "objects":
        debugobjects.debug_objects = on
    elif name == "hung_task":
        hung_task.hung_task_enable(on)
    elif name == "softlockup":
        sched.debug_sched = on
    elif name == "softirq":
        softirq.debug_softirq = on
    elif name == "wait":
        wait.debug_wait = on
    else:
        raise ValueError(f"unknown debug aid {name!r} (one of {', '.join(AIDS)})")


def set_debug(on: bool, clock_stats: bool | None = None) -> None:
    """Turn all debugging aids on or off; per-task/softirq CPU time
    accounting follows `on` unless clock_stats says otherwise."""
    for name in AIDS:
        set_debug_aid(name, on)
    sched.sched_clock_stats = on if clock_stats is None else clock_stats


def debug_enabled() -> bool:
    """True when the aids are on (the atomic-sleep check stands for all)."""
    return sched.debug_atomic_sleep


def debug_state() -> dict[str, bool]:
    """Which aids are on."""
    return {"atomic_sleep": sched.debug_atomic_sleep, "lockdep": lockdep.debug_locks,
            "spinlock": spinlock.debug_spinlock, "mutexes": mutex.debug_mutexes,
            "slab": slab.debug_slab, "pagealloc": page_alloc.debug_pagealloc,
            "objects": debugobjects.debug_objects, "hung_task": hung_task.hung_task_enabled,
            "softlockup": sched.debug_sched, "softirq": softirq.debug_softirq,
            "wait": wait.debug_wait, "clock_stats": sched.sched_clock_stats}
