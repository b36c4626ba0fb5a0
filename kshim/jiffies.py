"""jiffies, HZ, time comparisons and ktime.

Twin of kernel/time/jiffies.c, include/linux/jiffies.h, include/linux/ktime.h
and the getters of kernel/time/timekeeping.c.

Contexts: any.

Differs from the kernel: jiffies is a function, jiffies(), since Python has
no variable that changes by itself; it is derived from the host-ops clock
(kshim.host.ops: the host's monotonic clock under the trio engine, virtual
time under the sim), counted from boot, so it never needs a tick. HZ is 1000. Python integers do not wrap,
but time_after() and friends keep the kernel's shape for readers. ktime_t is
a plain int of nanoseconds (as the kernel's s64); the boot-time clock is the
monotonic one (nothing suspends).
"""
from __future__ import annotations

import attrs

from kshim import host
from kshim.host import ops

HZ = 1000
USER_HZ = 100
MSEC_PER_SEC = 1000
USEC_PER_SEC = 1_000_000
NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000
NSEC_PER_USEC = 1000
USEC_PER_MSEC = 1000
MAX_JIFFY_OFFSET = ((1 << 63) - 1) // 2 - 1
_NS_PER_JIFFY = NSEC_PER_SEC // HZ
_boot_ns = 0          # ops.monotonic_ns() at boot: jiffies and ktime count from it


def _clock_base() -> None:
    global _boot_ns
    _boot_ns = ops.monotonic_ns()


host.on_clock_base(_clock_base)
_clock_base()


def jiffies() -> int:
    return (ops.monotonic_ns() - _boot_ns) // _NS_PER_JIFFY


def get_jiffies_64() -> int:
    return jiffies()


jiffies_64 = get_jiffies_64


def time_after(a: int, b: int) -> bool:
    """a is later than b."""
    return b - a < 0


def time_before(a: int, b: int) -> bool:
    return a - b < 0


def time_after_eq(a: int, b: int) -> bool:
    return a - b >= 0


def time_before_eq(a: int, b: int) -> bool:
    return b - a >= 0


time_after64 = time_after
time_before64 = time_before
time_after_eq64 = time_after_eq
time_before_eq64 = time_before_eq


def time_in_range(a: int, b: int, c: int) -> bool:
    """b <= a <= c."""
    return time_after_eq(a, b) and time_before_eq(a, c)


def time_in_range_open(a: int, b: int, c: int) -> bool:
    """b <= a < c."""
    return time_after_eq(a, b) and time_before(a, c)


def time_is_before_jiffies(a: int) -> bool:
    """a is in the past."""
    return time_after(jiffies(), a)


def time_is_after_jiffies(a: int) -> bool:
    """a is in the future."""
    return time_before(jiffies(), a)


def time_is_before_eq_jiffies(a: int) -> bool:
    return time_after_eq(jiffies(), a)


def time_is_after_eq_jiffies(a: int) -> bool:
    return time_before_eq(jiffies(), a)


def msecs_to_jiffies(ms: int) -> int:
    """Rounded up, as the kernel does."""
    return -(-ms * HZ // MSEC_PER_SEC)


def jiffies_to_msecs(j: int) -> int:
    return j * MSEC_PER_SEC // HZ


def usecs_to_jiffies(us: int) -> int:
    return -(-us * HZ // USEC_PER_SEC)


def jiffies_to_usecs(j: int) -> int:
    return j * USEC_PER_SEC // HZ


def nsecs_to_jiffies(ns: int) -> int:
    return ns // _NS_PER_JIFFY


def jiffies_to_nsecs(j: int) -> int:
    return j * _NS_PER_JIFFY


def round_jiffies(j: int) -> int:
    """Round an absolute time to a whole second (batches wake-ups)."""
    return -(-j // HZ) * HZ


def round_jiffies_relative(j: int) -> int:
    now = jiffies()
    return round_jiffies(now + j) - now


def round_jiffies_up(j: int) -> int:
    return round_jiffies(j)


def jiffies_to_host_seconds(j: int) -> float:
    """The ops.monotonic() time at which jiffies() reaches j (engine use)."""
    return (_boot_ns + j * _NS_PER_JIFFY) / NSEC_PER_SEC


def jiffies_to_clock_ns(j: int) -> int:
    """The ops.monotonic_ns() time at which jiffies() reaches j (engine use)."""
    return _boot_ns + j * _NS_PER_JIFFY


# -- ktime -----------------------------------------------------------------------

def ktime_get() -> int:
    """Monotonic nanoseconds since boot."""
    return ops.monotonic_ns() - _boot_ns


def ktime_get_ns() -> int:
    return ops.monotonic_ns() - _boot_ns


ktime_get_boottime = ktime_get
ktime_get_boottime_ns = ktime_get_ns
ktime_get_raw = ktime_get
ktime_get_mono_fast_ns = ktime_get_ns
local_clock = ktime_get_ns
sched_clock = ktime_get_ns


def ktime_get_real() -> int:
    """Wall-clock nanoseconds since the epoch."""
    return ops.time_ns()


ktime_get_real_ns = ktime_get_real


def ktime_get_seconds() -> int:
    return ktime_get() // NSEC_PER_SEC


def ktime_get_real_seconds() -> int:
    return ops.time_ns() // NSEC_PER_SEC


@attrs.frozen
class timespec64:
    tv_sec: int
    tv_nsec: int


def ns_to_timespec64(ns: int) -> timespec64:
    return timespec64(ns // NSEC_PER_SEC, ns % NSEC_PER_SEC)


def timespec64_to_ns(ts: timespec64) -> int:
    return ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec


def ktime_get_ts64() -> timespec64:
    return ns_to_timespec64(ktime_get())


def ktime_get_real_ts64() -> timespec64:
    return ns_to_timespec64(ops.time_ns())


def ktime_set(secs: int, nsecs: int) -> int:
    return secs * NSEC_PER_SEC + nsecs


def ktime_add(a: int, b: int) -> int:
    return a + b


def ktime_sub(a: int, b: int) -> int:
    return a - b


def ktime_add_ns(kt: int, ns: int) -> int:
    return kt + ns


def ktime_add_us(kt: int, us: int) -> int:
    return kt + us * NSEC_PER_USEC


def ktime_add_ms(kt: int, ms: int) -> int:
    return kt + ms * NSEC_PER_MSEC


def ktime_compare(a: int, b: int) -> int:
    return (a > b) - (a < b)


def ktime_after(a: int, b: int) -> bool:
    return a > b


def ktime_before(a: int, b: int) -> bool:
    return a < b


def ktime_to_ns(kt: int) -> int:
    return kt


def ktime_to_us(kt: int) -> int:
    return kt // NSEC_PER_USEC


def ktime_to_ms(kt: int) -> int:
    return kt // NSEC_PER_MSEC


def ns_to_ktime(ns: int) -> int:
    return ns


def ms_to_ktime(ms: int) -> int:
    return ms * NSEC_PER_MSEC


def us_to_ktime(us: int) -> int:
    return us * NSEC_PER_USEC


def ktime_us_delta(later: int, earlier: int) -> int:
    return (later - earlier) // NSEC_PER_USEC


def ktime_ms_delta(later: int, earlier: int) -> int:
    return (later - earlier) // NSEC_PER_MSEC
