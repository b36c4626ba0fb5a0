"""kshim.barrier: barriers are no-ops; the accessors read and write fields."""
from __future__ import annotations

from kshim.barrier import (READ_ONCE, WRITE_ONCE, barrier, smp_load_acquire, smp_mb,
                           smp_mb__after_atomic, smp_rmb, smp_store_release, smp_wmb)


def test_barriers_do_nothing_and_accessors_go_through_the_field():
    class flag:
        v = 0
    f = flag()
    for b in (barrier, smp_mb, smp_rmb, smp_wmb, smp_mb__after_atomic):
        assert b() is None
    WRITE_ONCE(f, "v", 3)
    assert READ_ONCE(f.v) == 3
    smp_store_release(f, "v", 4)
    assert smp_load_acquire(f, "v") == 4
