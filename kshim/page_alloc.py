"""Pages: alloc_pages, __free_pages, page_address and kmap.

Twin of mm/page_alloc.c, mm/page_owner.c and include/linux/mm.h, gfp.h,
highmem.h.

Contexts: as kmalloc: blocking GFP flags from task context only; frees from
any context.

Differs from the kernel: a page of order n is one bytearray of PAGE_SIZE << n
bytes with a memoryview over it, kept on a per-order free list when freed so
the hot path reuses buffers instead of allocating. page_address() and kmap()
return that memoryview, which preadv and sendmsg take without a copy.
__get_free_pages() returns the memoryview as the "address"; free_pages()
and virt_to_page() map it back. `totalram_pages_limit` bounds what may be
allocated; past it alloc_pages returns None as the kernel does under memory
pressure. There are no zones, no highmem (kmap is page_address) and no
compound-page heads: a page of order n is one object.

Debug aids (debug_pagealloc): freeing a free page ("Bad page state") is
reported with debug off too; with it on, a freed page is filled with
PAGE_POISON (0xaa) and checked when handed out again (a write after free is
reported as "page poison overwritten"), and each live page keeps its
allocation stack (page_owner()).
"""
from __future__ import annotations

import attrs

from kshim import sched
from kshim.bug import format_entries, report_bug, stack_capture
from kshim.fail_page_alloc import fail_page_alloc, should_fail_alloc_page
from kshim.gfp import __GFP_DIRECT_RECLAIM, __GFP_ZERO

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)
MAX_ORDER = 10
PAGE_POISON = 0xAA

debug_pagealloc = True
totalram_pages_limit = (4 << 30) >> PAGE_SHIFT    # 4 GiB by default
nr_pages_allocated = 0
alloc_failures = 0
_might_sleep = sched.__dict__["__might_sleep"]


class page:
    __slots__ = ("order", "buf", "mv", "private", "refcount", "owner_stack", "poisoned")

    def __init__(self, order: int) -> None:
        self.order = order
        self.buf = bytearray(PAGE_SIZE << order)
        self.mv = memoryview(self.buf)
        self.private = None
        self.refcount = 0
        self.owner_stack: tuple = ()
        self.poisoned = False

    def __repr__(self) -> str:
        return f"<page order={self.order} refcount={self.refcount}>"


_free: list[list[page]] = [[] for _ in range(MAX_ORDER + 1)]
_free_limit = 256     # pages of each order kept for reuse
_live: dict[int, page] = {}          # debug: id -> page, for page_owner
# debug: order -> a freed page's bytes, made once: the fill is one copy and
# the check one compare, not a new pattern or a byte-by-byte count each time
_poison_bytes: dict[int, bytes] = {}
_by_addr: dict[int, page] = {}       # __get_free_pages: id(memoryview) -> page


def get_order(size: int) -> int:
    """The smallest order whose pages hold `size` bytes (0 for 0), as the
    kernel's, from the highest bit set (fls), not a loop."""
    return ((size - 1) >> PAGE_SHIFT).bit_length() if size > 0 else 0


def PAGE_ALIGN(n: int) -> int:
    return (n + PAGE_SIZE - 1) & PAGE_MASK


def alloc_pages(gfp: int, order: int) -> page | None:
    """One page of 2**order * PAGE_SIZE bytes (refcount 1), or None."""
    global nr_pages_allocated, alloc_failures
    if debug_pagealloc and gfp & __GFP_DIRECT_RECLAIM:
        _might_sleep()
    if order > MAX_ORDER or (fail_page_alloc.armed and should_fail_alloc_page(gfp, order)) \
            or nr_pages_allocated + (1 << order) > totalram_pages_limit:
        alloc_failures += 1
        return None
    fl = _free[order]
    if fl:
        p = fl.pop()
        if p.poisoned:
            _check_poison(p)
        if gfp & __GFP_ZERO:
            p.mv[:] = bytes(len(p.buf))
    else:
        p = page(order)
    p.refcount = 1
    nr_pages_allocated += 1 << order
    if debug_pagealloc:
        p.owner_stack = stack_capture(1, 8)
        _live[id(p)] = p
    return p


def _check_poison(p: page) -> None:
    p.poisoned = False
    if p.buf != _poison_of(p.order, len(p.buf)):
        first = next(i for i, b in enumerate(p.buf) if b != PAGE_POISON)
        report_bug("page poison overwritten (write after __free_pages)", order=p.order,
                   offset=first, allocated_by=format_entries(p.owner_stack[:4], "    "))


def _poison_of(order: int, n: int) -> bytes:
    pat = _poison_bytes.get(order)
    if pat is None or len(pat) != n:
        pat = _poison_bytes[order] = bytes((PAGE_POISON,)) * n
    return pat


def alloc_page(gfp: int) -> page | None:
    return alloc_pages(gfp, 0)


def __free_pages(p: page, order: int) -> None:
    """Drop a reference; the last one frees the page."""
    global nr_pages_allocated
    if p.refcount <= 0:
        report_bug("Bad page state: freeing a free page", order=order,
                   allocated_by=format_entries(p.owner_stack[:4], "    "))
        return
    p.refcount -= 1
    if p.refcount:
        return
    nr_pages_allocated -= 1 << p.order
    if debug_pagealloc:
        _live.pop(id(p), None)
        try:
            p.mv[:] = _poison_of(p.order, len(p.buf))
            p.poisoned = True
        except (BufferError, TypeError):
            pass
    fl = _free[p.order]
    if len(fl) < _free_limit:
        fl.append(p)


def __free_page(p: page) -> None:
    __free_pages(p, 0)


def get_page(p: page) -> None:
    p.refcount += 1


def put_page(p: page) -> None:
    __free_pages(p, p.order)


def page_count(p: page) -> int:
    return p.refcount


page_ref_count = page_count


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


kmap_local_page = kmap_atomic
kunmap_local = kunmap_atomic


def __get_free_pages(gfp: int, order: int) -> memoryview | None:
    """The memoryview of a new page, or None; free it with free_pages()."""
    p = alloc_pages(gfp, order)
    if p is None:
        return None
    _by_addr[id(p.mv)] = p
    return p.mv


def __get_free_page(gfp: int) -> memoryview | None:
    return __get_free_pages(gfp, 0)


def get_zeroed_page(gfp: int) -> memoryview | None:
    return __get_free_pages(gfp | __GFP_ZERO, 0)


def virt_to_page(addr: memoryview) -> page | None:
    """The page of an address from __get_free_pages (only those)."""
    return _by_addr.get(id(addr))


def free_pages(addr: memoryview | None, order: int) -> None:
    if addr is None:
        return
    p = _by_addr.get(id(addr))
    if p is None:
        report_bug("free_pages() of an address not from __get_free_pages", order=order)
        return
    if p.refcount == 1:
        del _by_addr[id(addr)]
    __free_pages(p, order)


def free_page(addr: memoryview | None) -> None:
    free_pages(addr, 0)


@attrs.frozen
class page_alloc_stats:
    """Page allocator counters."""

    pages_allocated: int
    limit: int
    failures: int
    free_kept: tuple[int, ...]


def statistics() -> page_alloc_stats:
    """Pages allocated, the limit, failures, free pages kept per order."""
    return page_alloc_stats(nr_pages_allocated, totalram_pages_limit, alloc_failures,
                            tuple(len(fl) for fl in _free))


def page_owner() -> str:
    """Live pages grouped by allocation stack (debug_pagealloc), as
    /sys/kernel/debug/page_owner with page_owner_sort would show them."""
    groups: dict[tuple, list[int]] = {}
    for p in _live.values():
        g = groups.setdefault(p.owner_stack, [0, 0])
        g[0] += 1
        g[1] += 1 << p.order
    out = []
    for st, (n, pages) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        out.append(f"{n} times, {pages} pages, allocated at:\n{format_entries(st, '  ')}")
    return "\n".join(out)
