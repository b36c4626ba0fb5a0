"""jiffies, HZ and time conversions.

Twin of kernel/time/jiffies.c, include/linux/jiffies.h and the ktime
getters of kernel/time/timekeeping.c.

Contexts: any.

Differs from the kernel: jiffies is a function, jiffies(), since Python has
no variable that changes by itself; it is derived from the host's monotonic
clock, so it never needs a tick. Python integers do not wrap, but
time_after() and friends keep the kernel's shape for readers.
"""
from __future__ import annotations

from kshim import host

HZ = 1000
MSEC_PER_SEC = 1000
NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000
NSEC_PER_USEC = 1000
_boot_ns = host.monotonic_ns()


def jiffies() -> int:
    return (host.monotonic_ns() - _boot_ns) // (NSEC_PER_SEC // HZ)


def get_jiffies_64() -> int:
    return jiffies()


def time_after(a: int, b: int) -> bool:
    return b - a < 0


def time_before(a: int, b: int) -> bool:
    return a - b < 0


def time_after_eq(a: int, b: int) -> bool:
    return a - b >= 0


def time_before_eq(a: int, b: int) -> bool:
    return b - a >= 0


def msecs_to_jiffies(ms: int) -> int:
    return -(-ms * HZ // MSEC_PER_SEC)


def jiffies_to_msecs(j: int) -> int:
    return j * MSEC_PER_SEC // HZ


def usecs_to_jiffies(us: int) -> int:
    return -(-us * HZ // 1_000_000)


def jiffies_to_host_seconds(j: int) -> float:
    """The host monotonic time at which jiffies() reaches j (engine use)."""
    return (_boot_ns + j * (NSEC_PER_SEC // HZ)) / NSEC_PER_SEC


def ktime_get() -> int:
    """Monotonic nanoseconds since boot."""
    return host.monotonic_ns() - _boot_ns


def ktime_get_ns() -> int:
    return ktime_get()


def ktime_get_real() -> int:
    """Wall-clock nanoseconds since the epoch."""
    return host.time_ns()


def ktime_to_ms(kt: int) -> int:
    return kt // NSEC_PER_MSEC


def ktime_to_us(kt: int) -> int:
    return kt // NSEC_PER_USEC
