"""Scatterlists and sg tables.

Twin of lib/scatterlist.c and include/linux/scatterlist.h.

Contexts: any; sg_alloc_table and sgl_alloc with a blocking GFP flag from
task context.

Differs from the kernel: an sg table is a Python list of scatterlist
entries, so sg_next() is list indexing and chaining is not needed (sg_chain
is not provided); sg_mark_end() sets an entry's `end` flag, which sg_next()
and sg_nents() honour (sg_init_table marks the last entry). sg_virt() returns a
memoryview of exactly the entry's bytes, ready for preadv/sendmsg.
sg_set_buf() takes any writable buffer (bytearray, memoryview): the entry
then points into a stand-in page that wraps that buffer, so sg_virt() and
the copy helpers work the same on both kinds of entry.
"""
from __future__ import annotations

from typing import Iterator

from kshim.err import EINVAL
from kshim.page_alloc import PAGE_SIZE, __free_pages, alloc_pages, page


class scatterlist:
    __slots__ = ("page", "offset", "length", "end")

    def __init__(self) -> None:
        self.page: page | None = None
        self.offset = 0
        self.length = 0
        self.end = False          # sg_mark_end

    def __repr__(self) -> str:
        return f"<scatterlist off={self.offset} len={self.length}>"


class sg_table:
    __slots__ = ("sgl", "nents", "orig_nents")

    def __init__(self) -> None:
        self.sgl: list[scatterlist] = []
        self.nents = 0
        self.orig_nents = 0


def sg_init_table(nents: int) -> list[scatterlist]:
    sgl = [scatterlist() for _ in range(nents)]
    if sgl:
        sgl[-1].end = True
    return sgl


def sg_init_one(p: page, offset: int, length: int) -> list[scatterlist]:
    sg = scatterlist()
    sg_set_page(sg, p, length, offset)
    sg.end = True
    return [sg]


def sg_set_page(sg: scatterlist, p: page, length: int, offset: int) -> None:
    sg.page = p
    sg.length = length
    sg.offset = offset


def _buf_page(buf: "bytearray | memoryview") -> page:
    """A stand-in page over a caller's buffer (not from the page allocator)."""
    p = page.__new__(page)
    mv = memoryview(buf).cast("B")
    p.order = -1
    p.buf = buf  # type: ignore[assignment]  # a caller's buffer: the allocator never frees it
    p.mv = mv
    p.private = None
    p.refcount = 1
    p.owner_stack = ()
    p.poisoned = False
    return p


def sg_set_buf(sg: scatterlist, buf: "bytearray | memoryview", buflen: int) -> None:
    """Point sg at the first buflen bytes of buf."""
    sg.page = _buf_page(buf)
    sg.offset = 0
    sg.length = buflen


def sg_init_buf(buf: "bytearray | memoryview", buflen: int) -> list[scatterlist]:
    """sg_init_one for a buffer (the kernel's sg_init_one takes a buffer too)."""
    sg = scatterlist()
    sg_set_buf(sg, buf, buflen)
    sg.end = True
    return [sg]


def sg_page(sg: scatterlist) -> page | None:
    return sg.page


def sg_virt(sg: scatterlist) -> memoryview:
    return sg.page.mv[sg.offset:sg.offset + sg.length]


def sg_mark_end(sg: scatterlist) -> None:
    sg.end = True


def sg_unmark_end(sg: scatterlist) -> None:
    sg.end = False


def sg_is_last(sg: scatterlist) -> bool:
    return sg.end


def sg_next(sgl: list[scatterlist], i: int) -> int | None:
    """Index of the entry after sgl[i], or None at the end."""
    if sgl[i].end:
        return None
    return i + 1 if i + 1 < len(sgl) else None


def for_each_sg(sgl: list[scatterlist], nents: int) -> Iterator[tuple[int, scatterlist]]:
    for i in range(min(nents, len(sgl))):
        yield i, sgl[i]


def sg_alloc_table(table: sg_table, nents: int, gfp: int) -> int:
    """0 (the entries are Python objects: no failure short of faults)."""
    table.sgl = sg_init_table(nents)
    table.nents = table.orig_nents = nents
    return 0


def sg_free_table(table: sg_table) -> None:
    table.sgl = []
    table.nents = table.orig_nents = 0


def sg_alloc_table_from_pages(table: sg_table, pages: list[page], n_pages: int, offset: int,
                              size: int, gfp: int) -> int:
    """One entry per page (no merging: pages are separate buffers here)."""
    sg_alloc_table(table, n_pages, gfp)
    left = size
    for i in range(n_pages):
        plen = min(len(pages[i].buf) - offset, left)
        sg_set_page(table.sgl[i], pages[i], plen, offset)
        left -= plen
        offset = 0
    return 0


def sg_nents(sgl: list[scatterlist]) -> int:
    n = 0
    for sg in sgl:
        n += 1
        if sg.end:
            break
    return n


def sg_nents_for_len(sgl: list[scatterlist], length: int) -> int:
    """Entries needed to cover `length` bytes, or -EINVAL if too few."""
    if not length:
        return 0
    total = 0
    for i, sg in enumerate(sgl):
        total += sg.length
        if total >= length:
            return i + 1
    return -EINVAL


def sgl_alloc_order(length: int, order: int, chainable: bool,
                    gfp: int) -> tuple[list[scatterlist] | None, int]:
    """(sgl, nents) covering `length` bytes with pages of `order`, or (None, 0)."""
    chunk = PAGE_SIZE << order
    nents = max(1, -(-length // chunk))
    sgl = sg_init_table(nents)
    left = length
    for i, sg in enumerate(sgl):
        p = alloc_pages(gfp, order)
        if p is None:
            sgl_free_n_order(sgl, i, order)
            return None, 0
        sg_set_page(sg, p, min(chunk, left), 0)
        left -= chunk
    return sgl, nents


def sgl_alloc(length: int, gfp: int) -> tuple[list[scatterlist] | None, int]:
    return sgl_alloc_order(length, 0, False, gfp)


def sgl_free_n_order(sgl: list[scatterlist], nents: int, order: int) -> None:
    for sg in sgl[:nents]:
        if sg.page is not None and sg.page.order >= 0:
            __free_pages(sg.page, order)
        sg.page = None


def sgl_free_order(sgl: list[scatterlist], order: int) -> None:
    sgl_free_n_order(sgl, len(sgl), order)


def sgl_free(sgl: list[scatterlist]) -> None:
    sgl_free_order(sgl, 0)


def sg_copy_from_buffer(sgl: list[scatterlist], nents: int, buf: "bytes | memoryview",
                        skip: int = 0) -> int:
    """Copy buf into the entries starting `skip` bytes in; return bytes copied."""
    n = len(buf)
    if not skip and nents and sgl[0].length >= n:
        sg = sgl[0]                 # the common case, one entry holds it: no walk
        sg.page.mv[sg.offset:sg.offset + n] = buf
        return n
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=True)


def sg_copy_to_buffer(sgl: list[scatterlist], nents: int, buf: "bytearray | memoryview",
                      skip: int = 0) -> int:
    """Copy from the entries (starting `skip` bytes in) into buf; return bytes copied."""
    n = len(buf)
    if not skip and nents and sgl[0].length >= n:
        sg = sgl[0]                 # the common case, one entry holds it: no walk
        buf[:] = sg.page.mv[sg.offset:sg.offset + n]
        return n
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=False)


def sg_pcopy_from_buffer(sgl: list[scatterlist], nents: int, buf: "bytes | memoryview",
                         skip: int) -> int:
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=True)


def sg_pcopy_to_buffer(sgl: list[scatterlist], nents: int, buf: "bytearray | memoryview",
                       skip: int) -> int:
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=False)


def sg_zero_buffer(sgl: list[scatterlist], nents: int, buflen: int, skip: int = 0) -> int:
    """Zero buflen bytes of the entries from `skip`; return bytes zeroed."""
    return _copy(sgl, nents, memoryview(bytes(buflen)), skip, to_sg=True)


def _copy(sgl: list[scatterlist], nents: int, buf: memoryview, skip: int, to_sg: bool) -> int:
    done = 0
    want = len(buf)
    for i in range(min(nents, len(sgl))):
        if done >= want:
            break
        sg = sgl[i]
        if skip >= sg.length:
            skip -= sg.length
            continue
        v = sg.page.mv[sg.offset + skip:sg.offset + sg.length]
        skip = 0
        n = min(len(v), want - done)
        if to_sg:
            v[:n] = buf[done:done + n]
        else:
            buf[done:done + n] = v[:n]
        done += n
    return done
