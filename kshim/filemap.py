"""Page-cache ranges of a file: is a range cached, and a range as a value a
transmit vector can carry.

Twin of the parts of mm/filemap.c that a splice read relies on: a read with
IOCB_NOWAIT (filemap_get_pages) gives up with -EAGAIN rather than wait for
a page that is not in the page cache; filemap_range_cached answers the same
question for a whole range before any byte moves. file_extent plays the
part of the page-cache pages a splice hands to the socket (struct
pipe_buffer / bio_vec of page cache folios): kshim.net's kernel_sendfile
sends one.

Contexts: any; nothing here sleeps.

Differs from the kernel: the page cache is the host's, so a range is
"cached" when the host's cachestat(2) counts every page of it
(host.ops.file_cached); the answer may be stale a moment later (a page
evicted before the send is read from the disk by the host's sendfile,
on the CPU thread: correct, but slow). A file_extent is (file, pos, count),
not pages: it pins nothing, so a WRITE or a truncate between the answer and
the send changes what is sent, as it would change the pages a kernel
splice holds (see docs/decisions/0067).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kshim.err import EOPNOTSUPP
from kshim.fault_file import fail_file_read
from kshim.host import ops

if TYPE_CHECKING:
    from kshim.fs import file


class file_extent:
    """count bytes of a file at pos, as one element of a transmit vector:
    len() and slicing (ext[n:], ext[:n]) work as on a memoryview, so the
    vector helpers that advance and cut buffers need no special case."""

    __slots__ = ("file", "pos", "count")

    def __init__(self, f: "file", pos: int, count: int) -> None:
        self.file = f
        self.pos = pos
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, s: slice) -> "file_extent":
        start, stop, _ = s.indices(self.count)
        return file_extent(self.file, self.pos + start, max(stop - start, 0))

    def __repr__(self) -> str:
        return f"file_extent({self.file.f_path!r}, pos={self.pos}, count={self.count})"


def filemap_range_cached(f: "file", pos: int, count: int) -> int:
    """Is every page of [pos, pos+count) of f in the page cache, so that a
    send of it from the page cache will not wait for the disk? 1 if so, 0
    if not, -EOPNOTSUPP when it cannot be told here: an O_DIRECT file, a
    host without cachestat(2), or fail_file_read armed (its faults are
    decided on the read path, vfs_readv). Never sleeps; any context."""
    if not f.nowait_read or fail_file_read.armed:
        return -EOPNOTSUPP
    r = ops.file_cached(f.fd, pos, count)
    return r if r >= 0 else -EOPNOTSUPP
