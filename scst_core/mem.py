"""Data buffers for commands: the SG vector pool.

Twin of scst/src/scst_mem.c (the sgv pool), reduced to what uscst needs.

Contexts: scst_alloc_space with GFP_KERNEL from task context, with
GFP_ATOMIC from any; scst_release_space from any.

Differs from SCST: one buffer of up to 4 MiB is a single high-order page
allocation (one sg entry), since each sg entry costs Python work per I/O;
kshim.page_alloc keeps freed pages per order, so the hot path reuses them
as the sgv pool's per-size caches do. Only the one-page size class has a
cache of its own here (_sgv_one, bounded, no shrinker): a 4K command's
buffer goes to the next 4K command without the page allocator's two
calls. It is bypassed while the page allocator's debugging aids or its
fault point (fail_page_alloc) are on, so those see every buffer.
"""
from __future__ import annotations

from kshim import page_alloc
from kshim.err import ENOMEM
from kshim.fail_page_alloc import fail_page_alloc
from kshim.page_alloc import (MAX_ORDER, PAGE_SHIFT, PAGE_SIZE, __free_pages, alloc_pages,
                              get_order, page)
from kshim.scatterlist import scatterlist
from scst_core.scst import scst_cmd

_CHUNK = 1 << (MAX_ORDER + PAGE_SHIFT)
_NO_PAGES: list = []       # shared empty vector: never appended to

# The one-page buffers the pool keeps (pages still allocated, as an sgv
# pool's are); the CPU is the only one, so no lock.
SGV_ONE_MAX = 256
_sgv_one: list[page] = []


def scst_alloc_space(cmd: scst_cmd, size: int, gfp: int) -> int:
    """Give cmd a buffer of `size` bytes in cmd.sg; 0 or -ENOMEM."""
    if size <= _CHUNK:
        # The common case: one entry, reusing the command's own sg vector.
        if (size <= PAGE_SIZE and _sgv_one and not fail_page_alloc.armed
                and not page_alloc.debug_pagealloc):
            p = _sgv_one.pop()
        else:
            p = alloc_pages(gfp, 0 if size <= PAGE_SIZE else get_order(size))
            if p is None:
                return -ENOMEM
        sg = cmd.sg_one
        if not sg:
            sg.append(scatterlist())
        s = sg[0]
        s.page = p
        s.offset = 0
        s.length = size
        cmd.sg = sg
        cmd.sg_cnt = 1
        cmd.sg_pages = [p]
        cmd.data_buf_alloced = True
        return 0
    sg = []
    pages: list[page] = []
    left = size
    while left > 0:
        n = left if left < _CHUNK else _CHUNK
        order = get_order(n)
        p = alloc_pages(gfp, order)
        if p is None:
            for q in pages:
                __free_pages(q, q.order)
            return -ENOMEM
        s = scatterlist()
        s.page = p
        s.length = n
        sg.append(s)
        pages.append(p)
        left -= n
    cmd.sg = sg
    cmd.sg_cnt = len(sg)
    cmd.sg_pages = pages
    cmd.data_buf_alloced = True
    return 0


def scst_release_space(cmd: scst_cmd) -> None:
    for p in cmd.sg_pages:
        # Only a page nobody else holds (a sender may still have it) is kept.
        if (p.order == 0 and p.refcount == 1 and len(_sgv_one) < SGV_ONE_MAX
                and not page_alloc.debug_pagealloc):
            _sgv_one.append(p)
        else:
            __free_pages(p, p.order)
    cmd.sg_pages = _NO_PAGES
    cmd.sg = _NO_PAGES
    cmd.sg_cnt = 0
    cmd.data_buf_alloced = False
