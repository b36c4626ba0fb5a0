"""Scatterlists and sg tables.

Twin of lib/scatterlist.c and include/linux/scatterlist.h.

Contexts: any; sg_alloc_table with a blocking GFP flag from task context.

Differs from the kernel: an sg table is a Python list of scatterlist
entries, so sg_next() is list indexing and chaining is not needed; sg_virt()
returns a memoryview of exactly the entry's bytes, ready for preadv/sendmsg.
"""
from __future__ import annotations

from typing import Iterator

from kshim.page_alloc import page


class scatterlist:
    __slots__ = ("page", "offset", "length")

    def __init__(self) -> None:
        self.page: page | None = None
        self.offset = 0
        self.length = 0


class sg_table:
    __slots__ = ("sgl", "nents", "orig_nents")

    def __init__(self) -> None:
        self.sgl: list[scatterlist] = []
        self.nents = 0
        self.orig_nents = 0


def sg_init_table(nents: int) -> list[scatterlist]:
    return [scatterlist() for _ in range(nents)]


def sg_init_one(p: page, offset: int, length: int) -> list[scatterlist]:
    sg = scatterlist()
    sg_set_page(sg, p, length, offset)
    return [sg]


def sg_set_page(sg: scatterlist, p: page, length: int, offset: int) -> None:
    sg.page = p
    sg.length = length
    sg.offset = offset


def sg_page(sg: scatterlist) -> page | None:
    return sg.page


def sg_virt(sg: scatterlist) -> memoryview:
    return sg.page.mv[sg.offset:sg.offset + sg.length]


def sg_next(sgl: list[scatterlist], i: int) -> int | None:
    """Index of the entry after sgl[i], or None at the end."""
    return i + 1 if i + 1 < len(sgl) else None


def for_each_sg(sgl: list[scatterlist], nents: int) -> Iterator[tuple[int, scatterlist]]:
    for i in range(min(nents, len(sgl))):
        yield i, sgl[i]


def sg_alloc_table(table: sg_table, nents: int, gfp: int) -> int:
    table.sgl = sg_init_table(nents)
    table.nents = table.orig_nents = nents
    return 0


def sg_free_table(table: sg_table) -> None:
    table.sgl = []
    table.nents = table.orig_nents = 0


def sg_nents(sgl: list[scatterlist]) -> int:
    return len(sgl)


def sg_copy_from_buffer(sgl: list[scatterlist], nents: int, buf: "bytes | memoryview",
                        skip: int = 0) -> int:
    """Copy buf into the entries starting `skip` bytes in; return bytes copied."""
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=True)


def sg_copy_to_buffer(sgl: list[scatterlist], nents: int, buf: "bytearray | memoryview",
                      skip: int = 0) -> int:
    return _copy(sgl, nents, memoryview(buf), skip, to_sg=False)


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
