"""vdisk_fileio against real files, on the real engine (vfs calls sleep)."""
from __future__ import annotations

import os
import struct

from kshim import fs
from tests.vdisk.conftest import make_dev, run_cmd
from vdisk import vdisk as vd
from vdisk.fileio import fileio_devtype

GOOD = 0
MISCOMPARE = (0xE, 0x1D, 0)
WRITE_PROTECTED = (7, 0x27, 0)


def rw10(op, lba, n, flags=0):
    return [op, flags] + list(struct.pack(">I", lba)) + [0] + list(struct.pack(">H", n)) + [0]


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def test_write_then_read_back_hits_the_file_at_the_right_offset(kernel, tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))

    def body():
        dev = make_dev(fileio_devtype, "f0", {"filename": str(path)})
        assert dev.dh_priv.nblocks == 2048
        data = pattern(3 * 512, 1)
        w = run_cmd(dev, rw10(0x2A, 10, 3), data)
        r = run_cmd(dev, rw10(0x28, 10, 3))
        r6 = run_cmd(dev, [0x08, 0, 0, 11, 1, 0])
        w16 = run_cmd(dev, [0x8A, 0] + list(struct.pack(">Q", 2047)) + [0, 0, 0, 1, 0, 0],
                      pattern(512, 9))
        dev.handler.detach(dev)
        return w.status, r.status, r.data == data, r6.data == data[512:1024], w16.status
    assert kernel(body) == (GOOD, GOOD, True, True, GOOD)
    disk = path.read_bytes()
    assert disk[10 * 512:13 * 512] == pattern(3 * 512, 1)
    assert disk[2047 * 512:] == pattern(512, 9)
    assert disk[:10 * 512] == bytes(10 * 512)


def test_write_back_flushes_only_fua_writes_and_synchronize_cache_unless_nv_cache(kernel, tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        out = {}
        dev = make_dev(fileio_devtype, "f1", {"filename": str(path), "write_through": "0"})
        base = fs.stats["fsync"]
        run_cmd(dev, rw10(0x2A, 0, 1), bytes(512))
        out["plain"] = fs.stats["fsync"] - base
        run_cmd(dev, rw10(0x2A, 0, 1, flags=0x08), bytes(512))
        out["fua"] = fs.stats["fsync"] - base
        assert run_cmd(dev, [0x35] + [0] * 9).status == GOOD
        out["sync"] = fs.stats["fsync"] - base
        dev.handler.detach(dev)
        nv = make_dev(fileio_devtype, "f2", {"filename": str(path), "nv_cache": "1"})
        base = fs.stats["fsync"]
        run_cmd(nv, rw10(0x2A, 0, 1, flags=0x08), bytes(512))
        assert run_cmd(nv, [0x35] + [0] * 9).status == GOOD
        out["nv"] = fs.stats["fsync"] - base
        nv.handler.detach(nv)
        return out
    assert kernel(body) == {"plain": 0, "fua": 1, "sync": 2, "nv": 0}


def test_write_through_is_the_default_each_write_flushes_and_wce_is_off(kernel, tmp_path):
    path = tmp_path / "wt.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        dev = make_dev(fileio_devtype, "wt", {"filename": str(path)})
        ms = run_cmd(dev, [0x1A, 0x08, 0x08, 0, 255, 0]).data
        base = fs.stats["fsync"]
        w = run_cmd(dev, rw10(0x2A, 3, 2), pattern(1024, 4))
        flushes = fs.stats["fsync"] - base
        flags = dev.dh_priv.file.f_flags
        dev.handler.detach(dev)
        return w.status, ms[4 + 2] & 0x04, flushes, bool(flags & fs.O_DSYNC)
    assert kernel(body) == (GOOD, 0, 1, False)
    assert path.read_bytes()[3 * 512:5 * 512] == pattern(1024, 4)


def test_o_dsync_opens_the_file_o_dsync_and_needs_no_flush(kernel, tmp_path):
    path = tmp_path / "ds.img"
    path.write_bytes(bytes(64 << 10))

    def body():
        dev = make_dev(fileio_devtype, "ds", {"filename": str(path), "o_dsync": "1"})
        base = fs.stats["fsync"]
        w = run_cmd(dev, rw10(0x2A, 0, 1), bytes(512))
        flushes = fs.stats["fsync"] - base
        flags = dev.dh_priv.file.f_flags
        dev.handler.detach(dev)
        return w.status, flushes, bool(flags & fs.O_DSYNC)
    assert kernel(body) == (GOOD, 0, True)


def test_missing_file_with_size_is_created_sparse(kernel, tmp_path):
    path = tmp_path / "new.img"

    def body():
        dev = make_dev(fileio_devtype, "sp", {"filename": str(path), "size": "8M"})
        rc = run_cmd(dev, [0x25] + [0] * 9).data
        dev.handler.detach(dev)
        return rc
    rc = kernel(body)
    assert struct.unpack(">II", rc) == ((8 << 20) // 512 - 1, 512)
    st = os.stat(path)
    assert st.st_size == 8 << 20 and st.st_blocks * 512 < (1 << 20)


def test_missing_file_without_size_fails_attach(kernel, tmp_path):
    def body():
        r = vd.vdisk_alloc_dev("vdisk_fileio", "nf", {"filename": str(tmp_path / "none")})
        from scst_core.scst import scst_device
        dev = scst_device(0, fileio_devtype, "nf", dh_priv=r[0])
        return fileio_devtype.attach(dev)
    assert kernel(body) == -2


def test_read_only_device_opens_read_only_and_refuses_writes(kernel, tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(pattern(4096, 3))
    os.chmod(path, 0o444)

    def body():
        dev = make_dev(fileio_devtype, "ro", {"filename": str(path), "read_only": "1"})
        w = run_cmd(dev, rw10(0x2A, 0, 1), bytes(512))
        r = run_cmd(dev, rw10(0x28, 0, 8))
        dev.handler.detach(dev)
        return w.key_asc_ascq, r.data
    key, data = kernel(body)
    assert key == WRITE_PROTECTED and data == pattern(4096, 3)


def test_verify_compares_against_file_contents(kernel, tmp_path):
    path = tmp_path / "v.img"
    content = pattern(8192, 5)
    path.write_bytes(content)

    def body():
        dev = make_dev(fileio_devtype, "v", {"filename": str(path)})
        ok = run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 2, 0, 0, 3, 0], content[1024:2560])
        bad = bytearray(content[1024:2560])
        bad[1000] ^= 0xFF
        mis = run_cmd(dev, [0x2F, 0x02, 0, 0, 0, 2, 0, 0, 3, 0], bytes(bad))
        v16 = run_cmd(dev, [0x8F, 0x02] + list(struct.pack(">Q", 2)) + [0, 0, 0, 3, 0, 0],
                      content[1024:2560])
        dev.handler.detach(dev)
        return ok.status, mis.key_asc_ascq, int.from_bytes(mis.sense[3:7], "big"), v16.status
    assert kernel(body) == (GOOD, MISCOMPARE, 1000, GOOD)


def test_unmap_punches_a_hole_that_reads_zero_and_get_lba_status_sees(kernel, tmp_path):
    path = tmp_path / "thin.img"
    path.write_bytes(pattern(1 << 20, 2))

    def body():
        dev = make_dev(fileio_devtype, "t", {"filename": str(path), "thin_provisioned": "1"})
        plist = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 256, 256)   # 128 KiB at 128 KiB
        u = run_cmd(dev, [0x42, 0, 0, 0, 0, 0, 0, 0, len(plist), 0], plist)
        r = run_cmd(dev, rw10(0x28, 256, 256))
        keep = run_cmd(dev, rw10(0x28, 0, 1))
        st_hole = run_cmd(dev, [0x9E, 0x12] + list(struct.pack(">Q", 256)) + [0, 0, 0, 32, 0, 0])
        st_data = run_cmd(dev, [0x9E, 0x12] + list(struct.pack(">Q", 0)) + [0, 0, 0, 32, 0, 0])
        dev.handler.detach(dev)
        return u.status, r.data == bytes(256 * 512), keep.data == pattern(512, 2), \
            st_hole.data, st_data.data
    ustat, zeros, kept, hole, data = kernel(body)
    assert (ustat, zeros, kept) == (GOOD, True, True)
    assert struct.unpack(">Q", hole[8:16])[0] == 256 and hole[20] & 0x0F == 1
    assert struct.unpack(">I", hole[16:20])[0] >= 1
    assert data[20] & 0x0F == 0 and struct.unpack(">I", data[16:20])[0] == 256


def test_vdisk_add_device_registers_with_the_core_and_del_removes(kernel, tmp_path):
    path = tmp_path / "m.img"

    def body():
        from scst_core.main import scst_find_device
        assert vd.vdisk_init() == 0
        try:
            r1 = vd.vdisk_add_device("vdisk_fileio", "m0", {"filename": str(path), "size": "2M"})
            found = scst_find_device("m0")
            nblocks = found.dh_priv.nblocks if found is not None else None
            r2 = vd.vdisk_add_device("vdisk_fileio", "m0", {"filename": str(path)})
            r3 = vd.vdisk_add_device("vdisk_nullio", "n0", {"size": "1G", "oops": "1"})
            r4 = vd.vdisk_add_device("vdisk_nope", "z", {})
            r5 = vd.vdisk_del_device("m0")
            gone = scst_find_device("m0") is None
        finally:
            vd.vdisk_exit()
        return r1, nblocks, r2, r3, r4, r5, gone
    assert kernel(body) == (0, 4096, -17, -22, -19, 0, True)
