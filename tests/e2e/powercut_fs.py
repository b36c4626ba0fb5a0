"""A FUSE filesystem holding one file, disk.img, whose writes stay in a
volatile cache until fsync: the stand-in for a disk with a write cache, so
a test can cut the power and see what an acknowledged write left on
"stable storage".

    python tests/e2e/powercut_fs.py MOUNTPOINT SIZE_BYTES DURABLE_OUT

Reads and writes see the cache. fsync/fdatasync copies every range written
since the last one into the durable image; close (flush, release) does
not. On SIGTERM the power goes: the durable image, and nothing else, is
written to DURABLE_OUT, then the filesystem unmounts and the process exits
0. Counts of writes and fsyncs go to stderr then, for the test's log.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
FILE_NAME = b"disk.img"


class PowerCutFS(pyfuse3.Operations):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.cache = bytearray(size)     # what the file holds while powered
        self.durable = bytearray(size)   # what survives a power cut
        self.dirty: list[tuple[int, int]] = []
        self.writes = 0
        self.fsyncs = 0

    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o755, 2, 0
        elif inode == FILE_INODE:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFREG | 0o600, 1, self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e.st_blksize = 4096
        e.st_blocks = (e.st_size + 511) // 512
        return e

    async def lookup(self, parent: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def opendir(self, inode: int, ctx) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, await self.getattr(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.cache[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if off + len(buf) > self.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        self.cache[off:off + len(buf)] = buf
        self.dirty.append((off, len(buf)))
        self.writes += 1
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        for off, n in self.dirty:
            self.durable[off:off + n] = self.cache[off:off + n]
        self.dirty.clear()
        self.fsyncs += 1

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass


async def _serve(fs: PowerCutFS, out: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                with open(out, "wb") as f:
                    f.write(fs.durable)
                print(f"powercut_fs: {fs.writes} writes, {fs.fsyncs} fsyncs, "
                      f"{len(fs.dirty)} ranges lost", file=sys.stderr)
                pyfuse3.terminate()
                return


def main() -> int:
    mountpoint, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fs = PowerCutFS(size)
    pyfuse3.init(fs, mountpoint, set(pyfuse3.default_options) | {"fsname=powercut"})
    try:
        trio.run(_serve, fs, out)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
