"""DMA pools: fixed-size blocks of aligned memory a device transfers to directly.

Twin of mm/dmapool.c and include/linux/dmapool.h.

Contexts: dma_pool_create and dma_pool_destroy from task context.
dma_pool_alloc and dma_pool_free from any context: the memory comes from
the host without blocking, so no GFP flag makes them sleep.

Differs from the kernel: the "device" is the host kernel's direct I/O
(O_DIRECT files), which wants buffers at host addresses aligned to the
backing store's block size. page_alloc's pages are bytearrays at whatever
address malloc chose; a block here is memory from kshim.host.ops.alloc_aligned
(an anonymous mmap), aligned to the host page. Each block is its own host
allocation of the block size rounded up to PAGE_SIZE (the kernel carves
small blocks out of shared pages), so `align` may be at most PAGE_SIZE and
a block never crosses a `boundary` that is at least its size. There is no
dma_addr_t: dma_pool_alloc returns the memoryview (the "vaddr") and
dma_pool_free takes that same object back. Freed blocks stay on the pool's
free list for the next dma_pool_alloc; their memory goes back to the host
at dma_pool_destroy. A pool's pages count against page_alloc's
totalram_pages_limit, as the kernel's pool pages come from the page
allocator; past it dma_pool_alloc returns None.

Debug aids: dma_pool_free of a block that is not out of this pool
(freed twice, or another pool's) is reported; dma_pool_destroy of a pool
with blocks still out is reported ("dma_pool_destroy <name>, busy") with
the allocation stacks, and so is a block some view still maps when its
memory should go back to the host. statistics() counts blocks, free
blocks, blocks out, allocations and failures.
"""
from __future__ import annotations

import attrs

from kshim import page_alloc
from kshim.bug import format_entries, report_bug, stack_capture
from kshim.host import ops
from kshim.page_alloc import PAGE_ALIGN, PAGE_SHIFT, PAGE_SIZE


class dma_pool:
    __slots__ = ("name", "dev", "size", "allocation", "free", "out", "nr_blocks",
                 "nr_allocs", "nr_failures")

    def __init__(self, name: str, dev: object, size: int) -> None:
        self.name = name
        self.dev = dev                      # named in reports only
        self.size = size
        self.allocation = PAGE_ALIGN(size)  # bytes each block takes from the host
        self.free: list[memoryview] = []    # blocks ready for dma_pool_alloc
        self.out: dict[int, tuple[memoryview, tuple]] = {}  # id(vaddr) -> (vaddr, stack)
        self.nr_blocks = 0
        self.nr_allocs = 0
        self.nr_failures = 0

    def __repr__(self) -> str:
        return f"<dma_pool {self.name} size={self.size} blocks={self.nr_blocks}>"


def dma_pool_create(name: str, dev: object, size: int, align: int,
                    boundary: int) -> dma_pool | None:
    """A pool of `size`-byte blocks aligned to `align` (0 or a power of two
    up to PAGE_SIZE) that never cross a multiple of `boundary` (0 for no
    limit, else a power of two at least `size`); None for bad arguments."""
    if size <= 0 or align < 0 or align & (align - 1) or align > PAGE_SIZE:
        return None
    if boundary and (boundary < size or boundary & (boundary - 1)):
        return None
    return dma_pool(name, dev, size)


def dma_pool_alloc(pool: dma_pool, gfp: int) -> memoryview | None:
    """A block of pool.size bytes (a memoryview at an aligned host address),
    or None when the page limit or the host refuses. Never sleeps."""
    if pool.free:
        vaddr = pool.free.pop()
    else:
        pages = pool.allocation >> PAGE_SHIFT
        if page_alloc.nr_pages_allocated + pages > page_alloc.totalram_pages_limit:
            pool.nr_failures += 1
            return None
        mem = ops.alloc_aligned(pool.size)
        if isinstance(mem, int):
            pool.nr_failures += 1
            return None
        page_alloc.nr_pages_allocated += pages
        vaddr = mem
        pool.nr_blocks += 1
    pool.out[id(vaddr)] = (vaddr, stack_capture(1, 8) if page_alloc.debug_pagealloc else ())
    pool.nr_allocs += 1
    return vaddr


def dma_pool_free(pool: dma_pool, vaddr: memoryview) -> None:
    """Give a block back to its pool."""
    if pool.out.pop(id(vaddr), None) is None:
        report_bug(f"dma_pool_free {pool.name}, a block not out of this pool (freed twice?)",
                   size=pool.size)
        return
    pool.free.append(vaddr)


def _release(pool: dma_pool, vaddr: memoryview) -> None:
    if ops.free_aligned(vaddr) != 0:
        report_bug(f"dma_pool_destroy {pool.name}: a block is still mapped by another view",
                   size=pool.size)
    page_alloc.nr_pages_allocated -= pool.allocation >> PAGE_SHIFT
    pool.nr_blocks -= 1


def dma_pool_destroy(pool: dma_pool | None) -> None:
    """Give every block's memory back to the host. Blocks still out are
    reported and stay with their users."""
    if pool is None:
        return
    if pool.out:
        stacks = [st for _, st in pool.out.values()]
        report_bug(f"dma_pool_destroy {pool.name}, busy", blocks_out=len(pool.out),
                   dev=pool.dev, allocated_by=format_entries(stacks[0][:4], "    "))
    while pool.free:                # bounded: the pool's free blocks
        _release(pool, pool.free.pop())


@attrs.frozen
class dma_pool_stats:
    """One pool's counters."""

    size: int
    blocks: int
    free: int
    out: int
    allocs: int
    failures: int


def statistics(pool: dma_pool) -> dma_pool_stats:
    """Block size, blocks the pool holds, free ones, ones out, allocations
    served and refused."""
    return dma_pool_stats(pool.size, pool.nr_blocks, len(pool.free), len(pool.out),
                          pool.nr_allocs, pool.nr_failures)
