"""Memory pools: allocations that cannot fail for lack of memory.

Twin of mm/mempool.c and include/linux/mempool.h.

Contexts: mempool_alloc with a blocking GFP flag from task context only (it
may wait for an element to come back); with GFP_ATOMIC from any context
(it returns None when the reserve is empty). mempool_free from any context.

Differs from the kernel: none in behaviour. The reserve is a Python list;
alloc_fn(gfp, pool_data) and free_fn(element, pool_data) are the kernel's
mempool_alloc_t and mempool_free_t. As in the kernel, mempool_alloc first
tries alloc_fn without sleeping, then the reserve, then (if allowed) sleeps
until mempool_free returns an element.

Debug aids: mempool_destroy() of a pool whose elements are not all back is
reported; statistics() counts allocations served by the reserve and waits.
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim.bug import report_bug
from kshim.err import ENOMEM
from kshim.fail_mempool import fail_mempool, should_fail_mempool
from kshim.gfp import (GFP_KERNEL, __GFP_DIRECT_RECLAIM, __GFP_IO, __GFP_NORETRY, __GFP_NOWARN,
                       __GFP_ZERO)
from kshim.page_alloc import __free_pages, alloc_pages
from kshim.sched import might_sleep
from kshim.slab import kfree, kmalloc, kmem_cache, kmem_cache_alloc, kmem_cache_free
from kshim.wait import wait_event, wait_queue_head, wake_up

mempool_alloc_t = Callable[[int, Any], Any]
mempool_free_t = Callable[[Any, Any], None]


class mempool_t:
    __slots__ = ("min_nr", "elements", "pool_data", "alloc", "free", "wait", "out",
                 "reserve_hits", "waits")

    def __init__(self, min_nr: int, alloc_fn: mempool_alloc_t, free_fn: mempool_free_t,
                 pool_data: Any) -> None:
        self.min_nr = min_nr
        self.elements: list[Any] = []
        self.pool_data = pool_data
        self.alloc = alloc_fn
        self.free = free_fn
        self.wait = wait_queue_head("mempool")
        self.out = 0             # elements handed out and not yet freed
        self.reserve_hits = 0
        self.waits = 0


def mempool_init(pool: mempool_t, min_nr: int, alloc_fn: mempool_alloc_t,
                 free_fn: mempool_free_t, pool_data: Any, gfp: int = 0) -> int:
    """Fill the reserve with min_nr elements; 0, or -ENOMEM (reserve freed)."""
    mempool_t.__init__(pool, min_nr, alloc_fn, free_fn, pool_data)
    for _ in range(min_nr):
        e = alloc_fn(gfp or GFP_KERNEL, pool_data)
        if e is None:
            mempool_exit(pool)
            return -ENOMEM
        pool.elements.append(e)
    return 0


def mempool_create(min_nr: int, alloc_fn: mempool_alloc_t, free_fn: mempool_free_t,
                   pool_data: Any, gfp: int = 0) -> mempool_t | None:
    """A pool with min_nr elements in reserve, or None."""
    pool = mempool_t(min_nr, alloc_fn, free_fn, pool_data)
    return pool if mempool_init(pool, min_nr, alloc_fn, free_fn, pool_data, gfp) == 0 else None


def mempool_exit(pool: mempool_t) -> None:
    while pool.elements:
        pool.free(pool.elements.pop(), pool.pool_data)


def mempool_destroy(pool: mempool_t | None) -> None:
    if pool is None:
        return
    if pool.out:
        report_bug("mempool_destroy() with elements still out", out=pool.out)
    mempool_exit(pool)


def mempool_alloc(pool: mempool_t, gfp: int) -> Any:
    """An element, or None (only when gfp does not allow sleeping)."""
    can_sleep = bool(gfp & __GFP_DIRECT_RECLAIM)
    if can_sleep:
        might_sleep()
    gfp_try = (gfp & ~(__GFP_DIRECT_RECLAIM | __GFP_IO | __GFP_ZERO)) | __GFP_NORETRY | __GFP_NOWARN
    while True:
        if fail_mempool.armed and should_fail_mempool(pool, gfp):
            if not can_sleep:
                return None
            pool.waits += 1
            wait_event(pool.wait, lambda: bool(pool.elements))
            continue
        e = pool.alloc(gfp_try, pool.pool_data)
        if e is not None:
            pool.out += 1
            return e
        if pool.elements:
            pool.reserve_hits += 1
            pool.out += 1
            return pool.elements.pop()
        if not can_sleep:
            return None
        pool.waits += 1
        wait_event(pool.wait, lambda: bool(pool.elements))


def mempool_free(element: Any, pool: mempool_t) -> None:
    """Return element: to the reserve if it is short, else to free_fn."""
    if element is None:
        return
    pool.out -= 1
    if len(pool.elements) < pool.min_nr:
        pool.elements.append(element)
        wake_up(pool.wait)
        return
    pool.free(element, pool.pool_data)


def mempool_resize(pool: mempool_t, new_min_nr: int) -> int:
    while len(pool.elements) > new_min_nr:
        pool.free(pool.elements.pop(), pool.pool_data)
    pool.min_nr = new_min_nr
    while len(pool.elements) < new_min_nr:
        e = pool.alloc(GFP_KERNEL, pool.pool_data)
        if e is None:
            break
        pool.elements.append(e)
    return 0


# -- the standard allocators ----------------------------------------------------

def mempool_alloc_slab(gfp: int, cache: kmem_cache) -> Any:
    return kmem_cache_alloc(cache, gfp)


def mempool_free_slab(element: Any, cache: kmem_cache) -> None:
    kmem_cache_free(cache, element)


def mempool_kmalloc(gfp: int, size: int) -> bytearray | None:
    return kmalloc(size, gfp)


def mempool_kfree(element: Any, size: int) -> None:
    kfree(element)


def mempool_alloc_pages(gfp: int, order: int) -> Any:
    return alloc_pages(gfp, order)


def mempool_free_pages(element: Any, order: int) -> None:
    __free_pages(element, order)


def mempool_create_slab_pool(min_nr: int, cache: kmem_cache) -> mempool_t | None:
    return mempool_create(min_nr, mempool_alloc_slab, mempool_free_slab, cache)


def mempool_create_kmalloc_pool(min_nr: int, size: int) -> mempool_t | None:
    return mempool_create(min_nr, mempool_kmalloc, mempool_kfree, size)


def mempool_create_page_pool(min_nr: int, order: int) -> mempool_t | None:
    return mempool_create(min_nr, mempool_alloc_pages, mempool_free_pages, order)


@attrs.frozen
class mempool_stats:
    """One pool's counters."""

    min_nr: int
    reserve: int
    out: int
    reserve_hits: int
    waits: int


def statistics(pool: mempool_t) -> mempool_stats:
    """Reserve size, elements out, reserve hits and waits of one pool."""
    return mempool_stats(pool.min_nr, len(pool.elements), pool.out, pool.reserve_hits,
                         pool.waits)
