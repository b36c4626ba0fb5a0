"""kshim.jiffies: jiffies, comparisons that keep the kernel's shape, ktime."""
from __future__ import annotations

from kshim import jiffies as J


def test_time_after_and_before_compare_like_the_kernel():
    assert J.time_after(11, 10) and not J.time_after(10, 10) and not J.time_after(9, 10)
    assert J.time_before(9, 10) and not J.time_before(10, 10)
    assert J.time_after_eq(10, 10) and J.time_before_eq(10, 10)
    assert J.time_in_range(5, 5, 7) and J.time_in_range(7, 5, 7) and not J.time_in_range(8, 5, 7)
    assert J.time_in_range_open(5, 5, 7) and not J.time_in_range_open(7, 5, 7)


def test_jiffies_follow_the_clock_and_relative_checks_work():
    now = J.jiffies()
    assert J.time_is_before_jiffies(now - 5) and J.time_is_after_jiffies(now + 1000)
    assert J.get_jiffies_64() >= now


def test_conversions_round_up_to_whole_jiffies_as_the_kernel_does():
    assert J.HZ == 1000
    assert J.msecs_to_jiffies(1) == 1 and J.msecs_to_jiffies(0) == 0
    assert J.usecs_to_jiffies(1) == 1 and J.usecs_to_jiffies(1500) == 2
    assert J.jiffies_to_msecs(250) == 250 and J.jiffies_to_usecs(3) == 3000
    assert J.nsecs_to_jiffies(2_500_000) == 2
    assert J.round_jiffies(1001) == 2000


def test_ktime_arithmetic_is_in_nanoseconds():
    a = J.ktime_get()
    b = J.ktime_add_ms(a, 3)
    assert J.ktime_ms_delta(b, a) == 3 and J.ktime_us_delta(b, a) == 3000
    assert J.ktime_after(b, a) and J.ktime_compare(a, b) == -1
    assert J.ktime_to_ns(J.ktime_set(2, 5)) == 2_000_000_005
    ts = J.ns_to_timespec64(J.ktime_set(3, 7))
    assert (ts.tv_sec, ts.tv_nsec) == (3, 7) and J.timespec64_to_ns(ts) == 3_000_000_007
    assert J.ktime_get_real() > 1_500_000_000 * J.NSEC_PER_SEC
    assert J.ktime_get_real_seconds() > 1_500_000_000
