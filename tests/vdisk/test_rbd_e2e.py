"""End to end: vdisk_rbd (vdisk/rbd.py over kshim/libceph.py and
kshim/engine_rbd.py) behind a real uscstd, its blocks in RBD images of a
real Ceph cluster on loopback (the throw-away one of tools/ceph_cluster.py,
started once for this module, or the cluster USCST_CEPH_CONF names),
driven by qemu-img, libiscsi's iscsi-test-cu, uscstadmin and the
project's initiator (tests/initiator.py).

What it checks: a 64 MiB qemu-img round trip through the LUN is
bit-identical; libiscsi's conformance suite passes on the LUN (skips only
for what an RBD LUN is configured without); an image shrunk behind the
LUN's back gives MEDIUM ERROR naming the LBA; a blocklisted client gives
NOT READY (02/04/00), then the image is reopened as a new client; an OSD that stops answering
gives NOT READY after op_timeout and no acknowledged write is lost; FUA
and SYNCHRONIZE CACHE flush the image only when librbd caches; two nodes
export one image as one LU and pass it between them; a device
is created, used and removed through uscstadmin, and a missing image or
pool is refused with one clear log line. Skipped, with the reason,
without a cluster or librbd.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.initiator import Initiator
from tests.scsi_support import naa_designator
from tests.vdisk.ceph_support import RBD_TARGET, CephTestCluster, rbd_config, start_test_cluster
from tests.vdisk.nbd_support import need, sense_info
from tests.vdisk.test_nbd_e2e import THIN_FAMILIES, _ALLOWED_SKIPS, _cu, _cu_problems
from tests.vdisk.test_nbd_two_nodes import NODE_A, NODE_B
from uscstd_support import free_port, uscstadmin_ok

CHECK_CONDITION = 0x02
MEDIUM_ERROR, NOT_READY, ILLEGAL_REQUEST = 0x3, 0x2, 0x5
RECOVER_TIMEOUT_S = 60.0      # bound on waiting for a thawed OSD to serve again


@pytest.fixture(scope="module")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephTestCluster]:
    cl = start_test_cluster(tmp_path_factory.mktemp("ceph"))
    yield cl
    cl.cleanup()
    if cl.local is not None:
        cl.local.stop()


def _start(uscstd, tmp_path: Path, attrs: list[str], name: str = "rbd"):
    """A uscstd exporting the RBD LUN; its control socket is tmp_path/NAME.sock."""
    conf = tmp_path / f"{name}.conf"
    conf.write_text(rbd_config(attrs))
    return uscstd("--config", str(conf), "--control", str(tmp_path / f"{name}.sock"),
                  disk=None, size=None)


def _login(srv) -> Initiator:
    ini = Initiator(port=srv.port)
    ini.connect()
    ini.login(RBD_TARGET)
    return ini


def _admin(ctl: Path) -> list[str]:
    return [sys.executable, "-m", "tools.uscstadmin", "--socket", str(ctl)]


def test_qemu_img_round_trip_through_an_rbd_lun_is_bit_identical(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    need("qemu-img")
    srv = _start(uscstd, tmp_path, ceph.device_attrs(ceph.image("64M")))
    src, back = tmp_path / "src.img", tmp_path / "back.img"
    src.write_bytes(os.urandom(64 << 20))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.url],
                   check=True, timeout=300, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.url, str(back)],
                   check=True, timeout=300, capture_output=True)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), str(back)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Images are identical." in r.stdout, r.stdout + r.stderr
    srv.assert_healthy()


def test_libiscsi_conformance_suite_passes_on_rbd_luns(uscstd, ceph: CephTestCluster,
                                                       tmp_path: Path) -> None:
    """Every test on a default (thin) RBD LUN, and the UNMAP, WRITE SAME
    and GET LBA STATUS families again on a write-back one
    (write_through 0: librbd's cache on, FUA and SYNCHRONIZE CACHE flush)."""
    exe = need("iscsi-test-cu")
    lun = _start(uscstd, tmp_path, ceph.device_attrs(ceph.image("16M")))
    wb = _start(uscstd, tmp_path, [*ceph.device_attrs(ceph.image("16M")), "write_through 0"],
                name="wb")
    problems = _cu_problems(_cu(exe, tmp_path, lun.url, "ALL", "cu-all.log"), 230,
                            _ALLOWED_SKIPS)
    for fam in (*THIN_FAMILIES, "SCSI.Write10", "SCSI.Write16", "SCSI.WriteVerify10"):
        problems += _cu_problems(_cu(exe, tmp_path, wb.url, fam, f"cu-wb-{fam}.log"), 3,
                                 re.compile("LBPPB < 2"))
    assert not problems, "\n".join(problems)
    lun.assert_healthy()
    wb.assert_healthy()


def test_an_image_shrunk_behind_the_lun_gives_medium_errors_naming_the_lba(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """The LUN still says 16 MiB; librbd refuses I/O past the image's new
    8 MiB end: READ is 03/11/00, WRITE 03/0C/00, INFORMATION the first
    LBA of the command; blocks inside the image still work."""
    img = ceph.image("16M")
    srv = _start(uscstd, tmp_path, ceph.device_attrs(img))
    with _login(srv) as ini:
        assert ini.write10(100, b"\x5a" * 4096).ok
        ceph.rbd("resize", "--allow-shrink", "--size", "8M", f"{ceph.pool}/{img}")
        beyond = (12 << 20) // 512
        r = ini.read10(beyond, 8)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, MEDIUM_ERROR, (0x11, 0))
        assert sense_info(r.sense) == beyond
        r = ini.write10(beyond + 8, b"\xa5" * 1024)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, MEDIUM_ERROR, (0x0C, 0))
        assert sense_info(r.sense) == beyond + 8
        assert ini.read10(100, 8).data == b"\x5a" * 4096
    srv.assert_healthy()


def _watcher(ceph: CephTestCluster, img: str) -> str:
    """The address of the client watching img (our uscstd's librbd)."""
    m = re.search(r"watcher=(\S+)", ceph.rbd("status", f"{ceph.pool}/{img}"))
    assert m, "no watcher on the image"
    return m.group(1)


def test_a_blocklisted_client_gives_not_ready_then_reopens_the_image_as_a_new_client(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """The cluster fences our client (ceph osd blocklist add, what another
    node does when it breaks a dead owner's lock): the command that meets
    it gets NOT READY, LOGICAL UNIT NOT READY (02/04/00), which an
    initiator retries; the device then opens the image again as a new
    client and serves, and nothing acknowledged earlier is lost."""
    img = ceph.image("16M")
    srv = _start(uscstd, tmp_path, ceph.device_attrs(img))
    ctl = tmp_path / "rbd.sock"
    data = os.urandom(64 << 10)
    with _login(srv) as ini:
        assert ini.write10(0, data).ok
        addr = _watcher(ceph, img)
        ceph.ceph("osd", "blocklist", "add", addr)
        try:
            r = ini.write10(1024, b"\x11" * 512)
            assert (r.status, r.sense_key, r.asc_ascq) == \
                (CHECK_CONDITION, NOT_READY, (0x04, 0))
            deadline = time.monotonic() + RECOVER_TIMEOUT_S
            # Bounded by the deadline; reopening takes well under a second here.
            while not (r := ini.test_unit_ready()).ok:
                assert (r.sense_key, r.asc_ascq) == (NOT_READY, (0x04, 0))
                assert time.monotonic() < deadline, "the image was not reopened"
                time.sleep(0.1)
            assert uscstadmin_ok(ctl, "get", "devices/rd0/rbd_state").strip() == \
                "open reopens=1"
            assert _watcher(ceph, img) != addr
            assert ini.write10(1024, b"\x11" * 512).ok
            assert ini.read10(0, len(data) // 512).data == data
        finally:
            ceph.ceph("osd", "blocklist", "rm", addr)
    text = srv.stderr_text()
    assert "the cluster blocklisted this client" in text
    assert "reopened as a new client (reopens=1)" in text
    srv.assert_healthy()


def test_open_dev_add_lun_and_close_dev_through_uscstadmin(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """A device made at run time on the control socket serves I/O, shows
    its parameters, and goes away again; a missing image, a missing pool,
    a bad op_timeout and an unreachable cluster (after op_timeout) are
    refused with one clear log line each, and the server carries on."""
    ctl = tmp_path / "ctl.sock"
    srv = uscstd("--nullio", "--control", str(ctl), disk=None, size="1M")
    img = ceph.image("8M")
    dead = tmp_path / "dead-ceph.conf"        # a monitor address nobody listens on
    dead.write_text(f"[global]\nmon host = 127.0.0.1:{free_port()}\nauth client required = "
                    f"none\nauth cluster required = none\nauth service required = none\n")
    base = [f"conf={ceph.conf}", f"user={ceph.user}"]
    bad = [([*base, f"pool={ceph.pool}", "image=no-such-image"],
            f"opening image {ceph.pool}/no-such-image failed: -ENOENT"),
           ([*base, "pool=no-such-pool", f"image={img}"],
            "opening pool no-such-pool failed: -ENOENT"),
           ([*base, f"pool={ceph.pool}", f"image={img}", "op_timeout=1000"],
            "bad op_timeout '1000' (seconds, 1..100)"),
           ([f"conf={dead}", f"pool={ceph.pool}", f"image={img}", "op_timeout=1"],
            "connecting to the cluster failed: -ETIMEDOUT")]
    for params, line in bad:
        r = subprocess.run([*_admin(ctl), "open-dev", "bad", "-H", "vdisk_rbd",
                            *(a for p in params for a in ("-p", p))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert line in srv.stderr_text()
    uscstadmin_ok(ctl, "open-dev", "r1", "-H", "vdisk_rbd",
                  *(a for p in [*base, f"pool={ceph.pool}", f"image={img}"] for a in ("-p", p)))
    uscstadmin_ok(ctl, "add-lun", srv.iqn, "1", "r1")
    assert uscstadmin_ok(ctl, "get", "devices/r1/image").split()[0] == img
    assert uscstadmin_ok(ctl, "get", "devices/r1/rbd_state").strip() == "open reopens=0"
    assert uscstadmin_ok(ctl, "get", "devices/r1/size").split()[0] == str(8 << 20)
    with Initiator(port=srv.port) as ini:
        ini.connect()
        ini.login(srv.iqn)
        assert ini.write10(5, b"\x77" * 1024, lun=1).ok
        assert ini.read10(5, 2, lun=1).data == b"\x77" * 1024
        unmap = struct.pack(">HHxxxx", 22, 16) + struct.pack(">QIxxxx", 5, 2)
        assert ini.scsi(struct.pack(">BBxxxxxHx", 0x42, 0, len(unmap)), data_out=unmap,
                        lun=1).ok
        assert ini.read10(5, 2, lun=1).data == bytes(1024)
    uscstadmin_ok(ctl, "rem-lun", srv.iqn, "1")
    uscstadmin_ok(ctl, "close-dev", "r1")
    assert "watcher=" not in ceph.rbd("status", f"{ceph.pool}/{img}")
    srv.assert_healthy()


def test_an_osd_that_stops_answering_gives_not_ready_and_loses_no_acknowledged_write(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """The OSD frozen (SIGSTOP: the cluster is there but answers nothing)
    past op_timeout: WRITE and READ get NOT READY (02/04/00), retryable;
    once it answers again (SIGCONT) the LUN serves again and every write
    acknowledged before holds its data."""
    if ceph.local is None:
        pytest.skip("needs the throw-away cluster (it freezes the OSD): unset USCST_CEPH_CONF")
    img = ceph.image("16M")
    srv = _start(uscstd, tmp_path, [*ceph.device_attrs(img), "op_timeout 2"])
    osd = ceph.local.pid("osd.0")
    data = os.urandom(128 << 10)
    with _login(srv) as ini:
        ini.timeout = 60.0
        assert ini.write10(0, data).ok
        os.kill(osd, signal.SIGSTOP)
        try:
            r = ini.write10(2048, b"\x22" * 4096)
            assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, NOT_READY, (0x04, 0))
            r = ini.read10(0, 8)
            assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, NOT_READY, (0x04, 0))
        finally:
            os.kill(osd, signal.SIGCONT)
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        # Bounded by the deadline; each attempt takes at most op_timeout.
        while not (r := ini.read10(0, len(data) // 512)).ok:
            assert time.monotonic() < deadline, f"the LUN did not recover: {r.sense.hex()}"
            time.sleep(0.2)
        assert r.data == data
        assert ini.write10(2048, b"\x22" * 4096).ok
    assert "failed: -ETIMEDOUT" in srv.stderr_text()
    srv.assert_healthy()


def _write10(lba: int, nblocks: int, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, nblocks, 0)


def _rbd_requests(ctl: Path) -> list[tuple[str, str]]:
    """(op, byte offset) of each rbd_rq_issue event the trace recorded."""
    text = uscstadmin_ok(ctl, "trace", "dump", "--format", "text")
    return re.findall(r"rbd_rq_issue:? .*?op=(\d+) off=(\d+)", text)


@pytest.mark.parametrize("write_through", [0, 1])
def test_fua_and_synchronize_cache_flush_the_image_only_when_librbd_caches(
        uscstd, ceph: CephTestCluster, tmp_path: Path, write_through: int) -> None:
    """Write-back (librbd's cache on): a plain WRITE is one write request,
    a WRITE with FUA a write then a flush, SYNCHRONIZE CACHE a flush.
    Write-through (cache off: a completed write is stable): FUA adds no
    flush. Seen through the rbd_rq_issue tracepoint (op 1 write, 2 flush)."""
    srv = _start(uscstd, tmp_path, [*ceph.device_attrs(ceph.image("8M")),
                                    f"write_through {write_through}"])
    ctl = tmp_path / "rbd.sock"
    uscstadmin_ok(ctl, "trace", "start", "--events", "rbd_*")
    with _login(srv) as ini:
        assert ini.scsi(_write10(10, 1), data_out=b"a" * 512).ok
        assert ini.scsi(_write10(20, 1, fua=True), data_out=b"b" * 512).ok
        assert ini.scsi(struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)).ok
    uscstadmin_ok(ctl, "trace", "stop")
    want = [("1", "5120"), ("1", "10240")] + ([("2", "10240")] if not write_through else []) \
        + [("2", "0")]
    assert _rbd_requests(ctl) == want
    srv.assert_healthy()


def _rbd_node_config(attrs: str, me: str, my_id: int, peer: str, peer_id: int,
                     port: int) -> str:
    """One node's scst.conf (no cluster link): the RBD device, its own
    target, and a device group with its own port's group and the peer's."""
    states = {1: "active", 2: "nonoptimized"}
    groups = "".join(
        f"    TARGET_GROUP {t.rsplit(':', 1)[1]} {{\n        group_id {g}\n"
        f"        state {states[g]}\n        TARGET {t}"
        + (f" {{\n            rel_tgt_id {g}\n        }}\n" if t != me else "\n") + "    }\n"
        for t, g in ((me, my_id), (peer, peer_id)))
    return (f"HANDLER vdisk_rbd {{\n    DEVICE shared0 {{\n{attrs}    }}\n}}\n"
            f"TARGET_DRIVER iscsi {{\n    enabled 1\n    portal 127.0.0.1:{port}\n"
            f"    TARGET {me} {{\n        rel_tgt_id {my_id}\n        LUN 0 shared0\n"
            f"        enabled 1\n    }}\n}}\n"
            f"DEVICE_GROUP shared {{\n    DEVICE shared0\n{groups}}}\n")


def test_two_nodes_export_one_rbd_image_as_one_lu_and_pass_the_image_between_them(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """Two uscstd processes, the same image under the same device name, in
    two ALUA target port groups (docs/scale-out.md, "Two nodes"): one
    identity on both, writes through either node seen through the other
    (librbd passes the exclusive lock between the two clients), and
    reservations refused on both, since neither would enforce the other's."""
    attrs = "".join(f"        {a}\n" for a in ceph.device_attrs(ceph.image("16M")))
    nodes = []
    for me, my_id, peer, peer_id in ((NODE_A, 1, NODE_B, 2), (NODE_B, 2, NODE_A, 1)):
        port = free_port()
        text = _rbd_node_config(attrs, me, my_id, peer, peer_id, port)
        conf = tmp_path / f"{me.rsplit(':', 1)[1]}.conf"
        conf.write_text(text)
        nodes.append(uscstd("--config", str(conf), "--control", str(conf.with_suffix(".sock")),
                            port=port, disk=None, size=None))
    a, b = nodes
    with Initiator(port=a.port) as ia, Initiator(port=b.port) as ib:
        ia.connect()
        ia.login(NODE_A)
        ib.connect()
        ib.login(NODE_B)
        assert naa_designator(ia, 0) == naa_designator(ib, 0)
        for rnd in range(3):
            da, db = os.urandom(8192), os.urandom(8192)
            assert ia.write10(rnd * 64, da).ok
            assert ib.read10(rnd * 64, 16).data == da
            assert ib.write10(rnd * 64 + 32, db).ok
            assert ia.read10(rnd * 64 + 32, 16).data == db
        r = ib.scsi(bytes((0x16, 0, 0, 0, 0, 0)))                  # RESERVE(6)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, (0x20, 0))
    assert f"vdisk_rbd: shared0: reservations refused: the device is shared with {NODE_A}" \
        in b.stderr_text()
    a.assert_healthy()
    b.assert_healthy()


def _lba_status(ini: Initiator, lba: int) -> tuple[int, int, int]:
    """(first LBA, blocks, provisioning status) of GET LBA STATUS's first
    descriptor."""
    d = ini.scsi(struct.pack(">BBQIBB", 0x9E, 0x12, lba, 32, 0, 0), read_len=32).check().data
    return int.from_bytes(d[8:16], "big"), int.from_bytes(d[16:20], "big"), d[20] & 0x0F


def test_get_lba_status_reports_the_images_allocated_extents(
        uscstd, ceph: CephTestCluster, tmp_path: Path) -> None:
    """A fresh image is deallocated (1) throughout; one block written in
    its third 4 MiB object makes that object's bytes up to the block's
    end mapped (0: a RADOS object grows from its start), the rest stays
    deallocated; an UNMAP of the whole object deallocates it again, and
    it reads back zeros."""
    srv = _start(uscstd, tmp_path, ceph.device_attrs(ceph.image("32M")))
    obj, nblocks = 8192, 65536
    with _login(srv) as ini:
        assert _lba_status(ini, 0) == (0, nblocks, 1)
        assert ini.write10(2 * obj + 5, b"\x33" * 512).ok
        assert _lba_status(ini, 0) == (0, 2 * obj, 1)
        assert _lba_status(ini, 2 * obj) == (2 * obj, 6, 0)
        assert _lba_status(ini, 2 * obj + 6) == (2 * obj + 6, nblocks - 2 * obj - 6, 1)
        unmap = struct.pack(">HHxxxx", 22, 16) + struct.pack(">QIxxxx", 2 * obj, obj)
        assert ini.scsi(struct.pack(">BBxxxxxHx", 0x42, 0, len(unmap)), data_out=unmap).ok
        assert _lba_status(ini, 0) == (0, nblocks, 1)
        assert ini.read10(2 * obj + 5, 1).data == bytes(512)
    srv.assert_healthy()
