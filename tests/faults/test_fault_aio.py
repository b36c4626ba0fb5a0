"""File faults on the asynchronous write path (issue 16; decisions 0029, 0064).

A plain WRITE goes out as one asynchronous write on a kiocb
(vfs_iocb_iter_write: io_uring under the trio engine), a durable one
linked to an fdatasync of its range. The file fault points are decided
there, in kshim.fs, not by falling back to the synchronous path: the
e2e tests restrict the fault to that path with require-start (a stack
filter), so with the old fallback nothing would fail and they would.

Two parts: real uscstd over real TCP with io_uring (a WRITE with injected
EIO gets 03/0C/00 naming its first bad LBA; a failed fdatasync fails the
WRITE it covers and not the next), and DSYNC writes in flight together
under the sim engine: the one whose fdatasync failed gets the error (its
bytes were written, not made stable), every other one completes.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_fault_e2e import (BS, SAM_STAT_CHECK_CONDITION, _login, _start, assert_medium_error,
                            wait_commands_freed)

from kshim import fault_inject as fi
from kshim import fs
from kshim.engine_sim import Simulation
from kshim.err import EIO
from kshim.fault_file import fail_file_fsync
from kshim.fs import IOCB_DSYNC, O_RDWR, filp_close, filp_open, kiocb, vfs_iocb_iter_write
from kshim.timer import msleep

WRITES = 8                  # DSYNC writes in flight at once in the sim test


def _need_uring(ctl) -> None:
    backend = ctl.read("kernel/io/stats").splitlines()[0]
    if "io_uring" not in backend.split()[1]:
        pytest.skip(f"io_uring refused on this host: {backend}")


def test_write_through_io_uring_with_injected_eio_gets_03_0c_00_at_its_first_bad_lba_seed_16011(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, f"fail_file_write:start={203 * BS},end={204 * BS},"
                      "probability=100,times=-1,require-start=vfs_iocb_iter_write,"
                      "seed=16011,verbose=0")
    _need_uring(ctl)
    ini = _login(srv)
    try:
        r = ini.write10(200, b"\x5a" * (8 * BS))       # LBA 200..207: 203 is bad
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x0C, 203)
        r = ini.write10(203, b"\x5a" * BS)              # starts at the bad LBA
        assert_medium_error(r.sense, 0x0C, 203)
        assert ini.write10(300, b"\x5a" * BS).ok
        assert ini.read10(300, 1).data == b"\x5a" * BS
    finally:
        ini.logout()
        ini.close()
    assert int(ctl.read("debug/fail_file_write/injected")) == 2
    wait_commands_freed(ctl)


def test_failed_linked_fdatasync_fails_the_write_it_covers_not_the_next_seed_16012(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, "fail_file_fsync:probability=100,times=1,"
                      "require-start=vfs_iocb_iter_write,seed=16012,verbose=0")
    _need_uring(ctl)
    ini = _login(srv)
    try:
        r = ini.write10(40, b"\x11" * BS)               # write-through: its flush fails
        assert r.status == SAM_STAT_CHECK_CONDITION, r
        assert_medium_error(r.sense, 0x0C, 40)
        assert ini.write10(41, b"\x22" * BS).ok, "a later WRITE saw the old fsync error"
    finally:
        ini.logout()
        ini.close()
    assert ctl.read("debug/fail_file_fsync/injected").strip() == "1"
    wait_commands_freed(ctl)


PIPELINED = 16              # 4 KiB WRITEs submitted before any is waited for
CHUNK = 8 * BS


def _pipelined_writes(ini, first_lba: int, fill: int) -> list:
    """PIPELINED 4 KiB WRITE(10)s of `fill` bytes at first_lba, 8 blocks
    apart, all sent before any answer is read (one receive batch, one
    io_uring submission and reap pass at most): their results in order."""
    cdbs = [bytes([0x2A, 0]) + (first_lba + 8 * i).to_bytes(4, "big") + bytes([0, 0, 8, 0])
            for i in range(PIPELINED)]
    itts = [ini.submit(cdb, data_out=bytes([fill]) * CHUNK) for cdb in cdbs]
    return [ini.wait(itt) for itt in itts]


def test_one_failing_write_in_a_pipelined_batch_alone_gets_03_0c_00_seed_16014(
        uscstd, tmp_path: Path) -> None:
    bad = 600 + 8 * 5 + 3                 # inside the 6th WRITE (LBA 640..647)
    srv, ctl = _start(uscstd, tmp_path, f"fail_file_write:start={bad * BS},"
                      f"end={(bad + 1) * BS},probability=100,times=-1,"
                      "require-start=vfs_iocb_iter_write,seed=16014,verbose=0")
    _need_uring(ctl)
    ini = _login(srv)
    try:
        results = _pipelined_writes(ini, 600, 0x3C)
        for i, r in enumerate(results):
            if i == 5:
                assert r.status == SAM_STAT_CHECK_CONDITION, r
                assert_medium_error(r.sense, 0x0C, bad)
            else:
                assert r.ok and not r.sense, f"WRITE {i} of the batch: {r}"
                assert ini.read10(600 + 8 * i, 8).data == b"\x3c" * CHUNK
    finally:
        ini.logout()
        ini.close()
    assert ctl.read("debug/fail_file_write/injected").strip() == "1"
    wait_commands_freed(ctl)


def test_pipelined_write_through_over_a_failed_fdatasync_acknowledges_no_lost_write_seed_16015(
        uscstd, tmp_path: Path) -> None:
    srv, ctl = _start(uscstd, tmp_path, "fail_file_fsync:probability=100,times=1,"
                      "require-start=vfs_iocb_iter_write,seed=16015,verbose=0")
    _need_uring(ctl)
    ini = _login(srv)
    try:
        results = _pipelined_writes(ini, 800, 0x5D)
        failed = [i for i, r in enumerate(results) if not r.ok]
        # Each WRITE has its own fdatasync: the one that failed fails its
        # WRITE only, naming its first block; the others are stable.
        assert len(failed) == 1, f"one WRITE should see the failed fdatasync: {failed}"
        for i, r in enumerate(results):
            if i in failed:
                assert r.status == SAM_STAT_CHECK_CONDITION, r
                assert_medium_error(r.sense, 0x0C, 800 + 8 * i)
            else:
                assert ini.read10(800 + 8 * i, 8).data == b"\x5d" * CHUNK
        assert ini.write10(900, b"\x5e" * CHUNK).ok, "a later WRITE saw the old fsync error"
    finally:
        ini.logout()
        ini.close()
    assert ctl.read("debug/fail_file_fsync/injected").strip() == "1"
    wait_commands_freed(ctl)


@pytest.fixture
def clean_points():
    fi.fault_reset()
    yield
    fi.fault_reset()


def _dsync_run(seed: int) -> tuple[list[tuple[int, int]], bytes]:
    """WRITES DSYNC writes at once on a sim disk, the second one's
    fdatasync failing: ((write index, result) per completion, the disk)."""
    sim = Simulation(seed)
    sim.disks["/sim/g"] = bytearray(WRITES * BS)
    got: list[tuple[int, int]] = []

    def done(iocb: kiocb, n: int) -> None:
        got.append((iocb.private, n))

    def init() -> int:
        f = filp_open("/sim/g", O_RDWR)
        assert not isinstance(f, int), f
        for i in range(WRITES):
            assert vfs_iocb_iter_write(f, kiocb(f, i * BS, done, i, IOCB_DSYNC),
                                       [bytes([i + 1]) * BS]) == -fs.EIOCBQUEUED
        for _ in range(1000):           # bounded: each write completes in virtual ms
            if len(got) == WRITES:
                break
            msleep(1)
        filp_close(f)
        return 0
    assert sim.boot(init) == 0
    disk = bytes(sim.disks["/sim/g"])
    sim.shutdown(None)
    return got, disk


def test_failed_fdatasync_fails_only_the_dsync_write_it_was_linked_to_seed_16013(
        clean_points) -> None:
    fi.apply_fault_specs(["fail_file_fsync:interval=2,probability=100,times=1,seed=16013,"
                          "verbose=0"])
    got, disk = _dsync_run(16013)
    assert sorted(i for i, _ in got) == list(range(WRITES)), got
    assert [n for i, n in got if i == 1] == [-EIO], got
    assert all(n == BS for i, n in got if i != 1), got
    assert fail_file_fsync.injected == 1
    # The failed sync's write still ran: its bytes reached the (unstable) file.
    assert disk == b"".join(bytes([i + 1]) * BS for i in range(WRITES))
