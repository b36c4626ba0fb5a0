"""kshim.dmapool: aligned blocks, reuse, limits, misuse reports; and the
kshim.fs side of direct I/O (vfs_getattr STATX_DIOALIGN, O_DIRECT reads
into a pool block where a page is refused)."""
from __future__ import annotations

import ctypes
import os

from kshim_support import report, titles

from kshim import dmapool, fs, page_alloc
from kshim.dmapool import dma_pool_alloc, dma_pool_create, dma_pool_destroy, dma_pool_free
from kshim.err import EINVAL
from kshim.gfp import GFP_KERNEL
from kshim.page_alloc import PAGE_SIZE, __free_pages, alloc_pages, page_address


def address(mv: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))


def test_blocks_are_page_aligned_writable_and_reused_after_free(kernel):
    def body():
        pool = dma_pool_create("t", None, 3 * PAGE_SIZE + 100, 512, 0)
        a = dma_pool_alloc(pool, GFP_KERNEL)
        b = dma_pool_alloc(pool, GFP_KERNEL)
        aligned = address(a) % PAGE_SIZE == 0 and address(b) % PAGE_SIZE == 0
        a[:4] = b"abcd"
        dma_pool_free(pool, a)
        c = dma_pool_alloc(pool, GFP_KERNEL)
        st = dmapool.statistics(pool)
        out = (len(a), aligned, c is a, bytes(c[:4]), st.blocks, st.out, st.allocs)
        dma_pool_free(pool, b)
        dma_pool_free(pool, c)
        dma_pool_destroy(pool)
        return out
    assert kernel(body) == (3 * PAGE_SIZE + 100, True, True, b"abcd", 2, 2, 3)
    assert titles() == []


def test_pool_pages_count_against_the_page_limit_and_go_back_at_destroy(kernel):
    def body():
        before = page_alloc.nr_pages_allocated
        pool = dma_pool_create("lim", None, 2 * PAGE_SIZE, PAGE_SIZE, 0)
        a = dma_pool_alloc(pool, GFP_KERNEL)
        held = page_alloc.nr_pages_allocated - before
        limit = page_alloc.totalram_pages_limit
        page_alloc.totalram_pages_limit = page_alloc.nr_pages_allocated + 1
        try:
            refused = dma_pool_alloc(pool, GFP_KERNEL)
            dma_pool_free(pool, a)
            reused = dma_pool_alloc(pool, GFP_KERNEL)     # a free block needs no new page
        finally:
            page_alloc.totalram_pages_limit = limit
        failures = dmapool.statistics(pool).failures
        dma_pool_free(pool, reused)
        dma_pool_destroy(pool)
        return held, refused, reused is a, failures, page_alloc.nr_pages_allocated - before
    assert kernel(body) == (2, None, True, 1, 0)


def test_bad_alignment_or_boundary_gives_no_pool():
    assert dma_pool_create("a", None, 512, 3, 0) is None
    assert dma_pool_create("b", None, 512, 2 * PAGE_SIZE, 0) is None
    assert dma_pool_create("c", None, 8192, 512, 4096) is None
    assert dma_pool_create("d", None, 4096, 512, 8192) is not None


def test_double_free_and_destroy_of_a_busy_pool_are_reported(kernel):
    def body():
        pool = dma_pool_create("busy", None, 4096, 512, 0)
        a = dma_pool_alloc(pool, GFP_KERNEL)
        b = dma_pool_alloc(pool, GFP_KERNEL)
        dma_pool_free(pool, a)
        dma_pool_free(pool, a)
        dma_pool_destroy(pool)
        return dmapool.statistics(pool).out, len(b)
    assert kernel(body) == (1, 4096)
    assert "freed twice" in report("dma_pool_free busy").title
    r = report("dma_pool_destroy busy, busy")
    assert "test_dmapool" in str(r.details.get("allocated_by", ""))


def test_destroy_while_a_view_still_maps_a_block_is_reported(kernel):
    def body():
        pool = dma_pool_create("mapped", None, 4096, 512, 0)
        a = dma_pool_alloc(pool, GFP_KERNEL)
        view = a[100:200]
        dma_pool_free(pool, a)
        dma_pool_destroy(pool)
        return len(view)
    assert kernel(body) == 100
    report("still mapped by another view")


def test_getattr_dioalign_and_o_direct_read_into_a_pool_block_not_a_page(kernel, tmp_path):
    path = tmp_path / "direct.img"
    path.write_bytes(bytes(range(256)) * 64)

    def body():
        f = fs.filp_open(str(path), fs.O_RDONLY | fs.O_DIRECT)
        st = fs.kstat()
        ret = fs.vfs_getattr(f, st, fs.STATX_DIOALIGN)
        pool = dma_pool_create("dio", None, 4096, PAGE_SIZE, 0)
        blk = dma_pool_alloc(pool, GFP_KERNEL)
        n_pool = fs.vfs_readv(f, [blk], 0)
        first = bytes(blk[:4])
        # A page buffer one byte in: misaligned whatever address the host
        # allocator gave the page (a bare page is aligned only by chance).
        pg = alloc_pages(GFP_KERNEL, 1)
        n_page = fs.vfs_readv(f, [page_address(pg)[1:1 + PAGE_SIZE]], 0)
        __free_pages(pg, 1)
        dma_pool_free(pool, blk)
        dma_pool_destroy(pool)
        fs.filp_close(f)
        return ret, st, n_pool, first, n_page
    ret, st, n_pool, first, n_page = kernel(body)
    assert ret == 0 and st.result_mask & fs.STATX_DIOALIGN
    assert st.dio_offset_align in (512, 1024, 2048, 4096)
    assert 0 < st.dio_mem_align <= PAGE_SIZE
    assert (n_pool, first) == (4096, b"\x00\x01\x02\x03")
    assert n_page == -EINVAL            # O_DIRECT refuses a misaligned buffer
    assert titles() == []
    assert os.path.getsize(path) == 16384
