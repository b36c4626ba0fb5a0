"""kshim.page_alloc: pages as memoryviews, reuse, limits, page debugging."""
from __future__ import annotations

from kshim_support import report, titles

from kshim import page_alloc
from kshim.gfp import GFP_KERNEL, __GFP_ZERO
from kshim.page_alloc import (PAGE_SIZE, __free_pages, __get_free_pages, alloc_page,
                              alloc_pages, free_pages, get_order, get_page, kmap,
                              page_address, page_count, put_page, virt_to_page)


def test_get_order_gives_the_smallest_fitting_order():
    assert [get_order(n) for n in (1, 4096, 4097, 8192, 65536)] == [0, 0, 1, 1, 4]


def test_pages_are_memoryviews_reused_after_free(kernel):
    def body():
        p = alloc_pages(GFP_KERNEL, 1)
        mv = page_address(p)
        mv[:4] = b"abcd"
        same_view = kmap(p) is mv
        __free_pages(p, 1)
        q = alloc_pages(GFP_KERNEL | __GFP_ZERO, 1)
        out = (len(mv), same_view, q is p, bytes(page_address(q)[:4]))
        __free_pages(q, 1)
        return out
    assert kernel(body) == (2 * PAGE_SIZE, True, True, b"\0\0\0\0")
    assert titles() == []


def test_references_keep_a_page_until_the_last_put(kernel):
    def body():
        p = alloc_page(GFP_KERNEL)
        get_page(p)
        put_page(p)
        alive = page_count(p)
        put_page(p)
        return alive, page_count(p)
    assert kernel(body) == (1, 0)


def test_freeing_a_free_page_is_reported(kernel):
    def body():
        p = alloc_page(GFP_KERNEL)
        __free_pages(p, 0)
        __free_pages(p, 0)
    kernel(body)
    assert "test_page_alloc.py" in report("Bad page state").details["allocated_by"]


def test_a_write_after_free_is_caught_when_the_page_is_reused(kernel):
    def body():
        p = alloc_page(GFP_KERNEL)
        mv = page_address(p)
        __free_pages(p, 0)
        mv[100] = 1
        q = alloc_page(GFP_KERNEL)
        __free_pages(q, 0)
        return q is p
    assert kernel(body) is True
    assert report("page poison overwritten").details["offset"] == 100


def test_the_ram_limit_makes_allocation_fail(kernel):
    def body():
        old = page_alloc.totalram_pages_limit
        page_alloc.totalram_pages_limit = page_alloc.nr_pages_allocated + 2
        a = alloc_pages(GFP_KERNEL, 1)
        b = alloc_page(GFP_KERNEL)
        page_alloc.totalram_pages_limit = old
        __free_pages(a, 1)
        return a is not None, b, alloc_pages(GFP_KERNEL, page_alloc.MAX_ORDER + 1)
    assert kernel(body) == (True, None, None)


def test_get_free_pages_addresses_map_back_to_their_page(kernel):
    def body():
        addr = __get_free_pages(GFP_KERNEL, 0)
        p = virt_to_page(addr)
        free_pages(addr, 0)
        return p is not None and page_address(p) is addr, page_count(p)
    assert kernel(body) == (True, 0)


def test_page_owner_groups_live_pages_by_allocation_stack(kernel):
    def body():
        ps = [alloc_page(GFP_KERNEL) for _ in range(3)]
        text = page_alloc.page_owner()
        for p in ps:
            __free_pages(p, 0)
        return text
    assert "3 times, 3 pages" in kernel(body)
