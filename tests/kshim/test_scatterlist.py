"""kshim.scatterlist: sg lists over pages and buffers, all as memoryviews."""
from __future__ import annotations

from kshim.gfp import GFP_KERNEL
from kshim.page_alloc import PAGE_SIZE, alloc_page
from kshim.scatterlist import (for_each_sg, sg_alloc_table, sg_copy_from_buffer,
                               sg_copy_to_buffer, sg_init_buf, sg_init_table, sg_is_last,
                               sg_mark_end, sg_nents, sg_nents_for_len, sg_next, sg_set_buf,
                               sg_set_page, sg_table, sg_virt, sg_zero_buffer, sgl_alloc,
                               sgl_free)


def test_sg_virt_is_a_memoryview_of_exactly_the_entry(kernel):
    def body():
        p = alloc_page(GFP_KERNEL)
        sgl = sg_init_table(2)
        sg_set_page(sgl[0], p, 10, 100)
        buf = bytearray(b"0123456789")
        sg_set_buf(sgl[1], buf, 4)
        v0, v1 = sg_virt(sgl[0]), sg_virt(sgl[1])
        v0[:] = b"x" * 10
        return len(v0), bytes(p.buf[100:110]), bytes(v1), isinstance(v1, memoryview)
    assert kernel(body) == (10, b"x" * 10, b"0123", True)


def test_copying_across_entries_with_a_skip(kernel):
    def body():
        bufs = [bytearray(4), bytearray(4), bytearray(4)]
        sgl = sg_init_table(3)
        for sg, b in zip(sgl, bufs, strict=True):
            sg_set_buf(sg, b, 4)
        n = sg_copy_from_buffer(sgl, 3, b"abcdefgh", skip=2)
        out = bytearray(6)
        m = sg_copy_to_buffer(sgl, 3, out, skip=3)
        z = sg_zero_buffer(sgl, 3, 2, skip=4)
        return n, [bytes(b) for b in bufs], m, bytes(out), z
    n, bufs, m, out, z = kernel(body)
    assert n == 8 and bufs == [b"\0\0ab", b"\0\0ef", b"gh\0\0"]
    assert m == 6 and out == b"bcdefg" and z == 2


def test_end_marks_bound_iteration(kernel):
    def body():
        sgl = sg_init_table(4)
        first_end = [sg_is_last(sg) for sg in sgl]
        sg_mark_end(sgl[1])
        return first_end, sg_nents(sgl), sg_next(sgl, 0), sg_next(sgl, 1)
    assert kernel(body) == ([False, False, False, True], 2, 1, None)


def test_sg_table_and_sgl_alloc_cover_a_length_with_pages(kernel):
    def body():
        t = sg_table()
        sg_alloc_table(t, 3, GFP_KERNEL)
        sgl, nents = sgl_alloc(2 * PAGE_SIZE + 1, GFP_KERNEL)
        lens = [sg.length for _, sg in for_each_sg(sgl, nents)]
        need = sg_nents_for_len(sgl, PAGE_SIZE + 1)
        sgl_free(sgl)
        one = sg_init_buf(bytearray(8), 8)
        return t.nents, nents, lens, need, sg_nents(one)
    assert kernel(body) == (3, 3, [PAGE_SIZE, PAGE_SIZE, 1], 2, 1)
