"""The engine's io_uring (kshim/engine_uring.py) driven directly on real
files: a write linked to an fdatasync of its range (OP_WRITE_SYNC,
decision 0064) completes once with the bytes written, and a write that
fails or comes up short ends the op with the write's own result, never
with the cancelled sync's -ECANCELED."""
from __future__ import annotations

import errno
import os
import resource
import select
import signal
from pathlib import Path

import pytest

from kshim import engine_uring
from kshim.engine_uring import OP_READ, OP_WRITE, OP_WRITE_SYNC

BS = 4096


class _job:
    """What the ring hands back: the engine's io_job has these two fields."""
    __slots__ = ("result", "args")

    def __init__(self) -> None:
        self.result = 0
        self.args: tuple = ()


@pytest.fixture
def ring():
    r = engine_uring.uring.open()
    if isinstance(r, str):
        pytest.skip(f"io_uring is not usable here: {r}")
    yield r
    r.close()


def _run(ring: engine_uring.uring, jobs: int) -> list:
    """Submit what is queued and reap until `jobs` jobs finished."""
    ring.flush()
    done: list = []
    for _ in range(100):                # bounded: 100 waits of at most 1 s
        if len(done) >= jobs:
            break
        select.select([ring.efd], [], [], 1.0)
        ring.eventfd_clear()
        done += ring.reap()
        ring.flush()                    # resubmissions of short transfers
    assert not ring.ops, "an op is still in flight"
    return done


def test_write_sync_ops_complete_once_with_their_bytes_and_reach_the_file(ring, tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(bytes(8 * BS))
    fd = os.open(path, os.O_RDWR)
    try:
        one = [_job() for _ in range(8)]
        for i, j in enumerate(one):
            ring.submit(j, OP_WRITE_SYNC, fd, [bytes([i + 1]) * BS], i * BS)
        two = _job()                    # several buffers: a writev linked to its sync
        ring.submit(two, OP_WRITE_SYNC, fd, [b"\xee" * BS, b"\xff" * BS], 8 * BS)
        done = _run(ring, 9)
    finally:
        os.close(fd)
    assert sorted(id(j) for j in done) == sorted(id(j) for j in (*one, two))
    assert [j.result for j in one] == [BS] * 8 and two.result == 2 * BS
    assert ring.stats["completions"] == 9            # the writes posted no CQE of their own
    assert path.read_bytes() == (b"".join(bytes([i + 1]) * BS for i in range(8))
                                 + b"\xee" * BS + b"\xff" * BS)


def test_failed_write_ends_its_write_sync_op_with_the_write_error_not_ecanceled(
        ring, tmp_path: Path):
    path = tmp_path / "ro"
    path.write_bytes(bytes(BS))
    fd = os.open(path, os.O_RDONLY)
    try:
        bad, good = _job(), _job()
        ring.submit(bad, OP_WRITE_SYNC, fd, [b"\x01" * BS], 0)
        ring.submit(good, OP_READ, fd, [bytearray(BS)], 0)
        done = _run(ring, 2)
    finally:
        os.close(fd)
    assert len(done) == 2
    assert bad.result == -errno.EBADF and good.result == BS


def test_short_write_sync_repeats_the_rest_then_ends_with_its_error(ring, tmp_path: Path):
    """RLIMIT_FSIZE makes a write crossing it short, the rest EFBIG."""
    path = tmp_path / "lim"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_lim = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (BS + BS // 2, old_lim[1]))
    try:
        j = _job()
        ring.submit(j, OP_WRITE_SYNC, fd, [b"\x42" * (2 * BS)], 0)
        _run(ring, 1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_lim)
        signal.signal(signal.SIGXFSZ, old_sig)
        os.close(fd)
    assert ring.stats["resubmits"] == 1
    assert j.result == -errno.EFBIG
    assert path.read_bytes() == b"\x42" * (BS + BS // 2)


def test_ops_over_the_per_file_limit_wait_in_its_backlog_and_all_complete(ring, tmp_path: Path):
    path = tmp_path / "many"
    extra = 40
    count = engine_uring.URING_FILE_MAX + extra
    path.write_bytes(b"".join(bytes([i % 251]) * 512 for i in range(count)))
    fd = os.open(path, os.O_RDONLY)
    try:
        jobs = [_job() for _ in range(count)]
        bufs = [bytearray(512) for _ in range(count)]
        for i, (j, b) in enumerate(zip(jobs, bufs, strict=True)):
            ring.submit(j, OP_READ, fd, [b], i * 512)
        assert ring.stats["backlogged"] == extra
        done = _run(ring, count)
    finally:
        os.close(fd)
    assert len(done) == count and all(j.result == 512 for j in jobs)
    assert all(b == bytes([i % 251]) * 512 for i, b in enumerate(bufs))
    assert ring.stats["high_water"] == engine_uring.URING_FILE_MAX
    assert not ring.per_file and not ring.backlog       # the file is forgotten


def test_submit_flushes_every_submit_batch_reads_without_waiting_for_the_pass(
        ring, tmp_path: Path):
    """Decision 0063: with submit_batch 8, a pass's reads go to the kernel 8
    at a time as they are queued; only the rest waits for the pass's
    flush(). Writes wait for it all."""
    batch = ring.submit_batch = 8
    count = 2 * batch + 3
    path = tmp_path / "b"
    path.write_bytes(b"".join(bytes([i + 1]) * 512 for i in range(count)))
    fd = os.open(path, os.O_RDWR)
    try:
        writes = [_job() for _ in range(count)]
        for i, j in enumerate(writes):
            ring.submit(j, OP_WRITE, fd, [bytes([i + 1]) * 512], i * 512)
        assert ring.stats["submits"] == 0 and ring.queued == count
        _run(ring, count)
        assert all(j.result == 512 for j in writes)
        ring.stats["submits"] = ring.stats["ops_submitted"] = 0
        jobs = [_job() for _ in range(count)]
        bufs = [bytearray(512) for _ in range(count)]
        for i, (j, b) in enumerate(zip(jobs, bufs, strict=True)):
            ring.submit(j, OP_READ, fd, [b], i * 512)
        assert (ring.stats["submits"], ring.stats["ops_submitted"]) == (2, 2 * batch)
        assert ring.queued == 3
        done = _run(ring, count)
    finally:
        os.close(fd)
    assert len(done) == count and all(j.result == 512 for j in jobs)
    assert all(b == bytes([i + 1]) * 512 for i, b in enumerate(bufs))
    assert (ring.stats["submits"], ring.stats["ops_submitted"]) == (3, count)


def test_by_default_every_read_waits_for_the_pass_flush(ring, tmp_path: Path):
    path = tmp_path / "z"
    count = 24
    path.write_bytes(bytes(count * 512))
    assert ring.submit_batch == 0        # the default (decision 0063)
    fd = os.open(path, os.O_RDONLY)
    try:
        jobs = [_job() for _ in range(count)]
        for i, j in enumerate(jobs):
            ring.submit(j, OP_READ, fd, [bytearray(512)], i * 512)
        assert ring.stats["submits"] == 0 and ring.queued == count
        done = _run(ring, count)
    finally:
        os.close(fd)
    assert len(done) == count and ring.stats["submits"] == 1
