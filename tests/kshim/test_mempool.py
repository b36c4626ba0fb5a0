"""kshim.mempool: a reserve that keeps allocations going when the allocator fails."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import sched
from kshim.gfp import GFP_ATOMIC, GFP_KERNEL
from kshim.kthread import kthread_run, kthread_stop
from kshim.mempool import (mempool_alloc, mempool_create, mempool_create_kmalloc_pool,
                           mempool_create_slab_pool, mempool_destroy, mempool_free, statistics)
from kshim.slab import kmem_cache_create, kmem_cache_destroy


class t_io:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def test_the_reserve_serves_when_the_allocator_fails(kernel):
    def body():
        c = kmem_cache_create("t_io", t_io)
        pool = mempool_create_slab_pool(2, c)
        c.limit = c.active               # the cache is "out of memory" from now on
        a = mempool_alloc(pool, GFP_ATOMIC)
        b = mempool_alloc(pool, GFP_ATOMIC)
        none = mempool_alloc(pool, GFP_ATOMIC)
        st = statistics(pool)
        mempool_free(a, pool)
        mempool_free(b, pool)
        c.limit = 0
        mempool_destroy(pool)
        kmem_cache_destroy(c)
        return a is not None, b is not None, none, st.reserve_hits, st.reserve
    assert kernel(body) == (True, True, None, 2, 0)
    assert titles() == []


def test_a_blocking_alloc_waits_for_an_element_to_come_back(kernel):
    log = []
    st = {"fail": False}

    def alloc(gfp, data):
        return None if st["fail"] else object()

    def body():
        pool = mempool_create(1, alloc, lambda e, d: None, None)
        st["fail"] = True
        held = mempool_alloc(pool, GFP_KERNEL)

        def needy(_):
            log.append("waiting")
            mempool_alloc(pool, GFP_KERNEL)
            log.append("got one")
        t = kthread_run(needy, None, "needy")
        sched.yield_()
        log.append("free")
        mempool_free(held, pool)
        kthread_stop(t)
        return statistics(pool).waits
    assert kernel(body) == 1
    assert log == ["waiting", "free", "got one"]


def test_destroying_a_pool_with_elements_out_is_reported(kernel):
    def body():
        pool = mempool_create_kmalloc_pool(1, 64)
        buf = mempool_alloc(pool, GFP_KERNEL)
        mempool_destroy(pool)
        return len(buf)
    assert kernel(body) == 64
    assert report("mempool_destroy() with elements still out").details["out"] == 1
