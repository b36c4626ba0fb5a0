"""vdisk_blockio (vdisk/blockio.py): direct I/O through bounce blocks.

In-kernel tests build devices with make_dev on real files under pytest's
tmp_path (ext4 here, which does O_DIRECT) and run commands through parse
and exec on the real engine. The end-to-end tests start a real uscstd
with an scst.conf `HANDLER vdisk_blockio` section, drive it with the
project's initiator (tests/initiator.py) and look at the backing files
and at /proc/<pid>/fdinfo of the daemon.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator

import pytest

from initiator import Initiator
from kshim import bug, dmapool, fs, page_alloc
from kshim.gfp import GFP_ATOMIC
from kshim.scatterlist import sg_copy_from_buffer, sg_copy_to_buffer
from kshim.wait import wait_event, wait_queue_head, wake_up
from scst_core.cdbprobe import scst_get_cdb_info
from scst_core.mem import scst_alloc_space, scst_release_space
from scst_core.scst import SCST_DATA_WRITE, scst_cmd
from tests.mgmt.mgmt_support import Daemon, free_port
from tests.vdisk.conftest import make_dev, run_cmd
from uscstd_support import UNHEALTHY_RE
from vdisk import blockio
from vdisk.blockio import BLOCKIO_BOUNCE_SIZE, blockio_devtype

GOOD, CHECK_CONDITION = 0x00, 0x02
HARDWARE_ERROR = (0x4, 0x44, 0x00)
MISCOMPARE = (0xE, 0x1D, 0x00)
O_DIRECT_OCTAL = 0o40000        # the O_DIRECT bit as /proc/<pid>/fdinfo shows flags


def rw10(op: int, lba: int, n: int, flags: int = 0) -> list[int]:
    return [op, flags] + list(struct.pack(">I", lba)) + [0] + list(struct.pack(">H", n)) + [0]


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed + (i >> 9)) & 0xFF for i in range(n))


def run_short_write(dev, cdb: list[int], data_out: bytes):
    """A WRITE whose initiator sends fewer bytes than the CDB says, cut to
    what arrived as scst_core.targ._parse does (data_len = EDTL)."""
    cmd = scst_cmd(sess=None, tgt=None, tgtt=None, cdb=bytes(cdb).ljust(16, b"\0"))
    cmd.dev = dev
    cmd.expected_transfer_len = len(data_out)
    cmd.scst_cmd_done = lambda c, state, ctx: None
    assert scst_get_cdb_info(cmd) == 0
    dev.handler.parse(cmd)
    assert not cmd.status and cmd.bufflen > len(data_out)
    cmd.data_len = cmd.write_len = len(data_out)
    assert scst_alloc_space(cmd, cmd.bufflen, GFP_ATOMIC) == 0
    assert cmd.data_direction & SCST_DATA_WRITE
    sg_copy_from_buffer(cmd.sg, cmd.sg_cnt, data_out)
    dev.handler.exec(cmd)
    status = cmd.status
    scst_release_space(cmd)
    return status


# ---------------------------------------------------------------- in-kernel

@pytest.fixture
def kernel(kernel):
    """tests/vdisk's kernel runner, and no kernel bug reported while it ran
    (a bounce block left out or still mapped at the pool's destroy)."""
    def run(body):
        result = kernel(body)
        assert [r.title for r in bug.reports] == []
        return result
    return run


def test_write_then_read_back_hits_the_file_and_the_file_is_o_direct(kernel, tmp_path):
    path = tmp_path / "b.img"
    path.write_bytes(bytes(4 << 20))
    big = pattern(BLOCKIO_BOUNCE_SIZE * 2 + 3 * 512, 5)      # three bounce pieces

    def body():
        dev = make_dev(blockio_devtype, "b0", {"filename": str(path)})
        flags = dev.dh_priv.file.f_flags
        data = pattern(3 * 512, 1)
        w = run_cmd(dev, rw10(0x2A, 10, 3), data)
        r = run_cmd(dev, rw10(0x28, 10, 3))
        wb = run_cmd(dev, rw10(0x2A, 100, len(big) // 512), big)
        rb = run_cmd(dev, rw10(0x28, 100, len(big) // 512))
        stats = dmapool.statistics(blockio.blockio_bounce_pool)
        dev.handler.detach(dev)
        return (bool(flags & fs.O_DIRECT), w.status, r.data == data, wb.status, rb.data == big,
                stats.out, blockio.blockio_bounce_pool)
    assert kernel(body) == (True, GOOD, True, GOOD, True, 0, None)
    disk = path.read_bytes()
    assert disk[10 * 512:13 * 512] == pattern(3 * 512, 1)
    assert disk[100 * 512:100 * 512 + len(big)] == big
    assert disk[:10 * 512] == bytes(10 * 512)


def test_4096_byte_blocks(kernel, tmp_path):
    path = tmp_path / "b4k.img"
    path.write_bytes(bytes(1 << 20))

    def body():
        dev = make_dev(blockio_devtype, "b4k", {"filename": str(path), "blocksize": "4096"})
        rc = run_cmd(dev, [0x25] + [0] * 9).data
        data = pattern(2 * 4096, 3)
        w = run_cmd(dev, rw10(0x2A, 7, 2), data)
        r = run_cmd(dev, rw10(0x28, 7, 2))
        dev.handler.detach(dev)
        return struct.unpack(">II", rc), w.status, r.data == data
    assert kernel(body) == ((255, 4096), GOOD, True)
    assert path.read_bytes()[7 * 4096:9 * 4096] == pattern(2 * 4096, 3)


def test_partial_block_write_keeps_the_rest_of_its_last_block(kernel, tmp_path):
    path = tmp_path / "p.img"
    old = pattern(64 << 10, 9)
    path.write_bytes(old)

    def body():
        dev = make_dev(blockio_devtype, "p0", {"filename": str(path)})
        # WRITE(10) of 2 blocks at LBA 4; the initiator sends 700 bytes.
        status = run_short_write(dev, rw10(0x2A, 4, 2), b"\x5a" * 700)
        dev.handler.detach(dev)
        return status
    assert kernel(body) == GOOD
    disk = path.read_bytes()
    assert disk[4 * 512:4 * 512 + 700] == b"\x5a" * 700
    assert disk[4 * 512 + 700:] == old[4 * 512 + 700:]
    assert disk[:4 * 512] == old[:4 * 512]


def test_write_through_flushes_each_write_write_back_only_fua_and_sync_cache(kernel, tmp_path):
    path = tmp_path / "wt.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        out = {}
        dev = make_dev(blockio_devtype, "wt", {"filename": str(path)})
        base = fs.stats["fsync"]
        run_cmd(dev, rw10(0x2A, 0, 1), bytes(512))
        out["write_through"] = fs.stats["fsync"] - base
        dev.handler.detach(dev)
        wb = make_dev(blockio_devtype, "wb", {"filename": str(path), "write_through": "0"})
        base = fs.stats["fsync"]
        run_cmd(wb, rw10(0x2A, 0, 1), bytes(512))
        out["plain"] = fs.stats["fsync"] - base
        run_cmd(wb, rw10(0x2A, 0, 1, flags=0x08), bytes(512))
        out["fua"] = fs.stats["fsync"] - base
        assert run_cmd(wb, [0x35] + [0] * 9).status == GOOD
        out["sync"] = fs.stats["fsync"] - base
        wb.handler.detach(wb)
        nv = make_dev(blockio_devtype, "nv", {"filename": str(path), "nv_cache": "1"})
        base = fs.stats["fsync"]
        run_cmd(nv, rw10(0x2A, 0, 1, flags=0x08), bytes(512))
        out["nv"] = fs.stats["fsync"] - base
        nv.handler.detach(nv)
        return out
    assert kernel(body) == {"write_through": 1, "plain": 0, "fua": 1, "sync": 2, "nv": 0}


def test_verify_compare_and_write_write_same_and_unmap_go_through_the_bounce(kernel, tmp_path):
    path = tmp_path / "sbc.img"
    path.write_bytes(pattern(256 << 10, 2))

    def body():
        dev = make_dev(blockio_devtype, "sbc", {"filename": str(path)})
        old = pattern(256 << 10, 2)[8 * 512:9 * 512]
        vfy = run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 8, 0, 0, 1, 0], old)
        bad = run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 8, 0, 0, 1, 0], bytes(512))
        caw = run_cmd(dev, [0x89, 0] + list(struct.pack(">Q", 8)) + [0, 0, 0, 1, 0, 0],
                      old + b"\x11" * 512)
        ws = run_cmd(dev, [0x41, 0, 0, 0, 0, 20, 0, 0, 4, 0], b"\x22" * 512)
        unmap = run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
                        struct.pack(">HH4xQI4x", 22, 16, 40, 8))
        dev.handler.detach(dev)
        return vfy.status, bad.key_asc_ascq, caw.status, ws.status, unmap.status
    assert kernel(body) == (GOOD, MISCOMPARE, GOOD, GOOD, GOOD)
    disk = path.read_bytes()
    assert disk[8 * 512:9 * 512] == b"\x11" * 512
    assert disk[20 * 512:24 * 512] == b"\x22" * 2048
    assert disk[40 * 512:48 * 512] == bytes(8 * 512)


def test_no_memory_for_a_bounce_block_is_a_hardware_error(kernel, tmp_path):
    path = tmp_path / "nomem.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        dev = make_dev(blockio_devtype, "nm", {"filename": str(path)})
        limit = page_alloc.totalram_pages_limit
        page_alloc.totalram_pages_limit = page_alloc.nr_pages_allocated + 1
        try:
            r = run_cmd(dev, rw10(0x28, 0, 1))
        finally:
            page_alloc.totalram_pages_limit = limit
        ok = run_cmd(dev, rw10(0x28, 0, 1))
        dev.handler.detach(dev)
        return r.status, r.key_asc_ascq, ok.status
    assert kernel(body) == (CHECK_CONDITION, HARDWARE_ERROR, GOOD)


def test_missing_file_with_size_is_created_sparse_and_o_direct_is_no_parameter(kernel, tmp_path):
    path = tmp_path / "new.img"

    def body():
        dev = make_dev(blockio_devtype, "sp", {"filename": str(path), "size": "8M"})
        n = dev.dh_priv.nblocks
        dev.handler.detach(dev)
        return n
    assert kernel(body) == (8 << 20) // 512
    assert os.stat(path).st_size == 8 << 20
    assert "o_direct" not in blockio_devtype.add_device_parameters
    assert "filename" in blockio_devtype.add_device_parameters


# ---------------------------------------------------------------- end to end

TARGET = "iqn.2026-11.org.uscst:blockio"


def config(tmp: Path, port: int) -> str:
    return f"""HANDLER vdisk_blockio {{
\tDEVICE bio512 {{
\t\tfilename {tmp}/d512.img
\t}}
\tDEVICE bio4k {{
\t\tfilename {tmp}/d4k.img
\t\tblocksize 4096
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tportal 127.0.0.1:{port}
\tTARGET {TARGET} {{
\t\tLUN 0 bio512
\t\tLUN 1 bio4k
\t\tenabled 1
\t}}
}}
"""


@pytest.fixture
def bio(tmp_path: Path) -> Iterator[tuple[Daemon, Initiator]]:
    (tmp_path / "d512.img").write_bytes(pattern(1 << 20, 1))
    (tmp_path / "d4k.img").write_bytes(pattern(1 << 20, 2))
    port = free_port()
    d = Daemon(tmp_path, config(tmp_path, port), port=port,
               extra=["--debug", "--data-dir", str(tmp_path)])
    ini = None
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        ini = Initiator(port=port, initiator_name="iqn.1994-05.org.uscst.test:bio")
        ini.login(TARGET)
        for lun in (0, 1):
            for _ in range(5):              # the power-on UA; bounded
                if ini.test_unit_ready(lun).sense_key != 0x6:
                    break
        yield d, ini
    finally:
        if ini is not None:
            ini.close()
        assert d.stop() == 0, d.output()
        bad = [ln for ln in d.output().splitlines() if UNHEALTHY_RE.search(ln)]
        assert not bad, d.output()


def _fd_flags(pid: int, path: Path) -> list[int]:
    """The open flags of every fd of pid that points at path."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != str(path):
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        line = next(ln for ln in text.splitlines() if ln.startswith("flags:"))
        out.append(int(line.split()[1], 8))
    return out


def test_e2e_iscsi_writes_reach_the_files_of_both_luns_which_are_open_o_direct(bio, tmp_path):
    d, ini = bio
    data = pattern(8 * 512, 7)
    assert ini.scsi(bytes(rw10(0x2A, 33, 8)), 0, data_out=data).status == GOOD
    r = ini.scsi(bytes(rw10(0x28, 33, 8)), 0, read_len=len(data))
    assert r.status == GOOD and r.data == data
    data4k = pattern(3 * 4096, 8)
    assert ini.scsi(bytes(rw10(0x2A, 5, 3)), 1, data_out=data4k).status == GOOD
    r4 = ini.scsi(bytes(rw10(0x28, 5, 3)), 1, read_len=len(data4k))
    assert r4.status == GOOD and r4.data == data4k
    rc = ini.scsi(bytes([0x25] + [0] * 9), 1, read_len=8)
    assert struct.unpack(">II", rc.data) == (255, 4096)
    assert (tmp_path / "d512.img").read_bytes()[33 * 512:41 * 512] == data
    assert (tmp_path / "d4k.img").read_bytes()[5 * 4096:8 * 4096] == data4k
    for name in ("d512.img", "d4k.img"):
        flags = _fd_flags(d.proc.pid, tmp_path / name)
        assert flags and all(f & O_DIRECT_OCTAL for f in flags), (name, [oct(f) for f in flags])


def test_e2e_partial_block_write_keeps_the_rest_of_the_block(bio, tmp_path):
    d, ini = bio
    # WRITE(10) of one block whose Data-Out is 100 bytes (EDTL 100).
    r = ini.scsi(bytes(rw10(0x2A, 50, 1)), 0, data_out=b"\xa5" * 100)
    assert r.status == GOOD
    back = ini.scsi(bytes(rw10(0x28, 50, 1)), 0, read_len=512)
    old = pattern(1 << 20, 1)[50 * 512:51 * 512]
    assert back.data == b"\xa5" * 100 + old[100:]
    assert (tmp_path / "d512.img").read_bytes()[50 * 512:51 * 512] == back.data


def test_e2e_handler_and_devices_show_in_the_tree(bio):
    d, _ = bio
    out = d.admin("list", "handlers").stdout
    assert "vdisk_blockio" in out
    assert d.admin("get", "handlers/vdisk_blockio/bio4k/blocksize").stdout.split()[0] == "4096"
    cfg = d.admin("write-config", "-").stdout
    section = cfg.split("HANDLER vdisk_blockio")[1].split("\nHANDLER ")[0]
    assert "DEVICE bio4k" in section and "blocksize 4096" in section, cfg
    # fileio's attributes but o_direct (blockio is always direct)
    assert d.admin("get", "handlers/vdisk_blockio/bio4k/o_direct", check=False).returncode != 0
    assert d.admin("get", "handlers/vdisk_blockio/bio4k/read_only").returncode == 0


def _async_reads(dev, lbas: list[int]) -> list[bytes]:
    """One 4 KiB READ per lba, each started by exec_nowait and ended by its
    softirq completion before the next starts: the data each returned."""
    wq = wait_queue_head("blockio async reads")
    out: list[bytes] = []
    for lba in lbas:
        cmd = scst_cmd(sess=None, tgt=None, tgtt=None, cdb=bytes(rw10(0x28, lba, 8)).ljust(16, b"\0"))
        cmd.dev = dev
        done: list[int] = []

        def cmd_done(c, state, ctx, done=done) -> None:      # softirq: note it, wake the test
            done.append(state)
            wake_up(wq)
        cmd.scst_cmd_done = cmd_done
        assert scst_get_cdb_info(cmd) == 0
        dev.handler.parse(cmd)
        assert scst_alloc_space(cmd, cmd.bufflen, GFP_ATOMIC) == 0
        assert blockio.blockio_exec_nowait(cmd)
        wait_event(wq, lambda done=done: bool(done))
        assert cmd.status == GOOD
        buf = bytearray(cmd.resp_data_len)
        sg_copy_to_buffer(cmd.sg, cmd.sg_cnt, buf)
        out.append(bytes(buf))
        scst_release_space(cmd)
    return out


@pytest.mark.parametrize("debug", [False, True])
def test_async_reads_reuse_one_kiocb_and_bounce_block_unless_page_debugging_is_on(
        kernel, tmp_path, debug):
    """Decision 0065 (as amended): an ended asynchronous I/O keeps its
    kiocb and bounce block for the next command (no dma_pool_alloc per
    READ); with page debugging on every READ takes its block from the pool,
    so the pool's checks see each one. Either way the last detach gives
    every block back (the kernel fixture fails on a "busy" report)."""
    path = tmp_path / "a.img"
    data = pattern(64 * 4096, 9)
    path.write_bytes(data)
    lbas = [8 * i for i in (3, 0, 7, 3, 5)]

    def body():
        old = page_alloc.debug_pagealloc
        page_alloc.debug_pagealloc = debug
        try:
            dev = make_dev(blockio_devtype, "ac", {"filename": str(path)})
            got = _async_reads(dev, lbas)
            stats = dmapool.statistics(blockio.blockio_bounce_pool)
            cached = len(blockio.blockio_iocb_cache)
            dev.handler.detach(dev)
        finally:
            page_alloc.debug_pagealloc = old
        return got, stats.allocs, stats.out, cached, blockio.blockio_bounce_pool
    got, allocs, out, cached, pool = kernel(body)
    assert got == [data[lba * 512:lba * 512 + 4096] for lba in lbas]
    assert (allocs, out, cached) == ((5, 0, 0) if debug else (1, 1, 1))
    assert pool is None
