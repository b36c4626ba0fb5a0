"""One switch for every debugging aid, like booting a debug or a production
kernel config.

Twin of nothing single in the kernel: it flips what CONFIG_DEBUG_ATOMIC_SLEEP,
CONFIG_DEBUG_SPINLOCK, CONFIG_SLUB_DEBUG and schedstats would turn on.

Contexts: any; meant for start-up, tests and the live tree.

Differs from the kernel: the aids can be switched at run time.
"""
from __future__ import annotations

from kshim import sched, slab, spinlock


def set_debug(on: bool, clock_stats: bool | None = None) -> None:
    """Turn all debugging aids on or off; per-task/softirq CPU time
    accounting follows `on` unless clock_stats says otherwise."""
    sched.debug_atomic_sleep = on
    spinlock.debug_spinlock = on
    slab.debug_slab = on
    sched.sched_clock_stats = on if clock_stats is None else clock_stats


def debug_enabled() -> bool:
    return sched.debug_atomic_sleep
