"""The engine's io_uring (kshim/engine_uring.py) driven directly on real
files: the write-sync jobs (OP_WRITE_SYNC) of one flush are one chain of
writes linked to one fdatasync of their range (decisions 0064, 0066); each
completes once with the bytes written, and a write that fails or comes up
short ends its own job with the write's result, never with the cancelled
sync's -ECANCELED, while the rest of its chain goes out again."""
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
    # the nine writes in chains of at most URING_CHAIN_MAX, each linked to one
    # fdatasync, which alone posts a CQE
    chains = -(-9 // engine_uring.URING_CHAIN_MAX)
    assert ring.stats["completions"] == chains < 9
    assert ring.stats["sync_chains"] == chains and ring.stats["chained_writes"] == 9
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


def test_write_sync_chain_is_at_most_chain_max_writes_per_fdatasync(ring, tmp_path: Path):
    path = tmp_path / "long"
    count = engine_uring.URING_CHAIN_MAX + 3
    path.write_bytes(bytes(count * BS))
    fd = os.open(path, os.O_RDWR)
    try:
        jobs = [_job() for _ in range(count)]
        for i, j in enumerate(jobs):
            ring.submit(j, OP_WRITE_SYNC, fd, [bytes([i + 1]) * BS], i * BS)
        done = _run(ring, count)
    finally:
        os.close(fd)
    assert len(done) == count and all(j.result == BS for j in jobs)
    assert ring.stats["sync_chains"] == 2 and ring.stats["completions"] == 2
    assert path.read_bytes() == b"".join(bytes([i + 1]) * BS for i in range(count))


def test_write_sync_chain_ends_with_the_write_that_reaches_chain_bytes(ring, tmp_path: Path):
    """Large writes keep a sync each: half, half | whole | small, small, small."""
    big = engine_uring.URING_CHAIN_BYTES
    sizes = [big // 2, big // 2, big, BS, BS, BS]
    path = tmp_path / "big"
    path.write_bytes(bytes(sum(sizes)))
    fd = os.open(path, os.O_RDWR)
    try:
        jobs = [_job() for _ in sizes]
        pos = 0
        for i, (j, n) in enumerate(zip(jobs, sizes, strict=True)):
            ring.submit(j, OP_WRITE_SYNC, fd, [bytes([i + 1]) * n], pos)
            pos += n
        done = _run(ring, len(sizes))
    finally:
        os.close(fd)
    assert len(done) == len(sizes) and [j.result for j in jobs] == sizes
    assert ring.stats["sync_chains"] == 3
    assert path.read_bytes() == b"".join(bytes([i + 1]) * n for i, n in enumerate(sizes))


def test_failed_write_in_a_chain_fails_only_its_job_and_the_others_go_out_again(
        ring, tmp_path: Path):
    """One chain A, B, C, D under RLIMIT_FSIZE: B lies beyond the limit
    (EFBIG), D crosses it (short, then EFBIG for its rest). A, C and D's
    rest were cancelled or left unsynced each time: they are chained again
    until each ends once, A and C with all their bytes."""
    path = tmp_path / "chain"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_lim = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * BS + BS // 2, old_lim[1]))
    try:
        a, b, c, d = (_job() for _ in range(4))
        ring.submit(a, OP_WRITE_SYNC, fd, [b"\xaa" * BS], 0)
        ring.submit(b, OP_WRITE_SYNC, fd, [b"\xbb" * BS], 10 * BS)
        ring.submit(c, OP_WRITE_SYNC, fd, [b"\xcc" * BS], BS)
        ring.submit(d, OP_WRITE_SYNC, fd, [b"\xdd" * BS], 4 * BS)
        done = _run(ring, 4)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_lim)
        signal.signal(signal.SIGXFSZ, old_sig)
        os.close(fd)
    assert sorted(id(j) for j in done) == sorted(id(j) for j in (a, b, c, d))
    assert (a.result, b.result, c.result, d.result) == (BS, -errno.EFBIG, BS, -errno.EFBIG)
    # chains: A B C D (B fails), A C D (D short), A C D' (D's rest fails), A C.
    # A and C ran in the first chain but end only with the last one's sync:
    # a write left unsynced by a broken chain never completes on its own.
    assert ring.stats["sync_chains"] == 4 and ring.stats["chained_writes"] == 4 + 3 + 3 + 2
    assert ring.stats["rechained"] == 3 + 2 + 2 and ring.stats["resubmits"] == 1
    assert path.read_bytes() == (b"\xaa" * BS + b"\xcc" * BS + bytes(2 * BS)
                                 + b"\xdd" * (BS // 2))
    assert not ring.per_file and not ring.pending


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


def test_a_full_submission_queue_is_submitted_and_the_op_goes_in_after_it(
        ring, tmp_path: Path):
    """More single-buffer reads in one pass than the SQ has entries (two
    files, each under its own limit): the op that finds the SQ full makes
    it submit and takes a free entry; every read completes with its bytes."""
    per = engine_uring.URING_ENTRIES // 2 + 20
    fds, jobs, bufs = [], [], []
    try:
        for name in ("x", "y"):
            path = tmp_path / name
            path.write_bytes(b"".join(bytes([(i + len(fds)) % 251]) * 512 for i in range(per)))
            fds.append(os.open(path, os.O_RDONLY))
        for i in range(per):
            for fd in fds:
                jobs.append(_job())
                bufs.append(bytearray(512))
                ring.submit(jobs[-1], OP_READ, fd, [bufs[-1]], i * 512)
        assert ring.stats["submits"] == 1 and ring.stats["ops_submitted"] == \
            engine_uring.URING_ENTRIES
        done = _run(ring, 2 * per)
    finally:
        for fd in fds:
            os.close(fd)
    assert len(done) == 2 * per and all(j.result == 512 for j in jobs)
    assert all(b == bytes([(k // 2 + k % 2) % 251]) * 512 for k, b in enumerate(bufs))
    assert ring.stats["high_water"] == 2 * per       # all in flight at the second flush


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
