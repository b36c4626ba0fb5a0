"""Pages: alloc_pages, __free_pages, page_address and kmap.

Twin of mm/page_alloc.c and include/linux/mm.h, highmem.h.

Contexts: as kmalloc: blocking GFP flags from task context only.

Differs from the kernel: a page of order n is one bytearray of PAGE_SIZE << n
bytes with a memoryview over it, kept on a per-order free list when freed so
the hot path reuses buffers instead of allocating. page_address() and kmap()
return that memoryview, which preadv and sendmsg take without a copy.
`totalram_pages_limit` bounds what may be allocated; past it alloc_pages
returns None as the kernel does under memory pressure.
"""
from __future__ import annotations

from typing import Callable

from kshim.bug import report_bug
from kshim.gfp import __GFP_ZERO, gfpflags_allow_blocking
from kshim.sched import might_sleep

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_ORDER = 10

totalram_pages_limit = (4 << 30) >> PAGE_SHIFT    # 4 GiB by default
nr_pages_allocated = 0
fault_hook: Callable[[int, int], bool] | None = None   # kshim.fault_inject


class page:
    __slots__ = ("order", "buf", "mv", "private", "refcount")

    def __init__(self, order: int) -> None:
        self.order = order
        self.buf = bytearray(PAGE_SIZE << order)
        self.mv = memoryview(self.buf)
        self.private = None
        self.refcount = 0


_free: list[list[page]] = [[] for _ in range(MAX_ORDER + 1)]
_free_limit = 256     # pages of each order kept for reuse


def get_order(size: int) -> int:
    order = 0
    size = (size - 1) >> PAGE_SHIFT
    while size:
        order += 1
        size >>= 1
    return order


def alloc_pages(gfp: int, order: int) -> page | None:
    global nr_pages_allocated
    if gfpflags_allow_blocking(gfp):
        might_sleep()
    if order > MAX_ORDER:
        return None
    if fault_hook is not None and fault_hook(order, gfp):
        return None
    if nr_pages_allocated + (1 << order) > totalram_pages_limit:
        return None
    fl = _free[order]
    if fl:
        p = fl.pop()
        if gfp & __GFP_ZERO:
            p.mv[:] = bytes(len(p.buf))
    else:
        p = page(order)
    p.refcount = 1
    nr_pages_allocated += 1 << order
    return p


def alloc_page(gfp: int) -> page | None:
    return alloc_pages(gfp, 0)


def __free_pages(p: page, order: int) -> None:
    global nr_pages_allocated
    if p.refcount <= 0:
        report_bug("Bad page state: freeing a free page", order=order)
        return
    p.refcount -= 1
    if p.refcount:
        return
    nr_pages_allocated -= 1 << p.order
    fl = _free[p.order]
    if len(fl) < _free_limit:
        fl.append(p)


def __free_page(p: page) -> None:
    __free_pages(p, 0)


def get_page(p: page) -> None:
    p.refcount += 1


def put_page(p: page) -> None:
    __free_pages(p, p.order)


def page_address(p: page) -> memoryview:
    return p.mv


def kmap(p: page) -> memoryview:
    return p.mv


def kunmap(p: page) -> None:
    pass


def kmap_atomic(p: page) -> memoryview:
    return p.mv


def kunmap_atomic(addr: memoryview) -> None:
    pass
