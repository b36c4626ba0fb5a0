"""End to end: two uscstd processes ("nodes", two portals on loopback)
export one NBD export (nbdkit's file plugin) as one logical unit in two
ALUA target port groups: node A's port active/optimized, node B's
active/non-optimized, each node naming the other's port as a peer
(docs/scale-out.md).

What it checks: both nodes report the same device identity (VPD page
0x83 NAA designator, unit serial number) and both groups in REPORT
TARGET PORT GROUPS; reservations are refused with INVALID COMMAND
OPERATION CODE on a shared LU (neither node would enforce the other's);
libiscsi's MultipathIO family passes with one URL per node, but for
MultipathIO.Reset (a LUN reset's unit attention does not cross nodes); and a
failover: node A killed while writes are in flight, the initiator goes on
through node B, and every block either node acknowledged is intact.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.initiator import Initiator
from tests.scsi_support import naa_designator
from tests.vdisk.nbd_support import NbdFactory, need
from uscstd_support import free_port

NODE_A = "iqn.2026-11.org.uscst:node-a"
NODE_B = "iqn.2026-11.org.uscst:node-b"
ILLEGAL_REQUEST, CHECK_CONDITION = 0x5, 0x02
CU_TIMEOUT_S = 600.0
# MultipathIO tests that fail across two nodes, by design (docs/scale-out.md):
# a LUN RESET through node A raises its unit attention on A's nexuses only,
# node B never hears of it
EXPECTED_MULTIPATH_FAILURES = {"Reset"}


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[NbdFactory]:
    f = NbdFactory(tmp_path)
    yield f
    f.close()


def node_config(uri: str, me: str, my_id: int, peer: str, peer_id: int, port: int) -> str:
    """One node's scst.conf: the NBD device, its own target, and a device
    group with its own port's group and the peer's (rel_tgt_id given)."""
    states = {1: "active", 2: "nonoptimized"}
    return f"""HANDLER vdisk_nbd {{
    DEVICE shared0 {{
        uri {uri}
    }}
}}
TARGET_DRIVER iscsi {{
    enabled 1
    portal 127.0.0.1:{port}
    TARGET {me} {{
        rel_tgt_id {my_id}
        LUN 0 shared0
        enabled 1
    }}
}}
DEVICE_GROUP shared {{
    DEVICE shared0
    TARGET_GROUP {me.rsplit(':', 1)[1]} {{
        group_id {my_id}
        state {states[my_id]}
        TARGET {me}
    }}
    TARGET_GROUP {peer.rsplit(':', 1)[1]} {{
        group_id {peer_id}
        state {states[peer_id]}
        TARGET {peer} {{
            rel_tgt_id {peer_id}
        }}
    }}
}}
"""


def _nodes(uscstd, nbd_server, tmp_path: Path):
    disk = tmp_path / "shared.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    nbd = nbd_server("nbdkit", "file", str(disk))
    nodes = []
    for me, my_id, peer, peer_id in ((NODE_A, 1, NODE_B, 2), (NODE_B, 2, NODE_A, 1)):
        port = free_port()
        conf = tmp_path / f"{me.rsplit(':', 1)[1]}.conf"
        conf.write_text(node_config(nbd.uri, me, my_id, peer, peer_id, port))
        nodes.append(uscstd("--config", str(conf), "--control", str(conf.with_suffix(".sock")),
                            port=port, disk=None, size=None))
    return disk, nodes


def _session(srv, target: str) -> Initiator:
    ini = Initiator(port=srv.port)
    ini.connect()
    ini.login(target)
    return ini


def _report_tpgs(ini: Initiator) -> dict[int, tuple[int, list[int]]]:
    """group id -> (asymmetric access state, relative target port ids)."""
    d = ini.scsi(struct.pack(">BBxxxxIxx", 0xA3, 0x0A, 1024), read_len=1024).check().data
    n = int.from_bytes(d[:4], "big")
    out, off = {}, 4
    while off < 4 + n:                   # bounded by the returned length
        count = d[off + 7]
        ports = [int.from_bytes(d[off + 8 + 4 * i + 2:off + 8 + 4 * i + 4], "big")
                 for i in range(count)]
        out[int.from_bytes(d[off + 2:off + 4], "big")] = (d[off] & 0x0F, ports)
        off += 8 + 4 * count
    return out


def test_two_nodes_report_one_lu_in_two_target_port_groups_and_refuse_reservations(
        uscstd, nbd_server, tmp_path: Path) -> None:
    _, (a, b) = _nodes(uscstd, nbd_server, tmp_path)
    with _session(a, NODE_A) as ia, _session(b, NODE_B) as ib:
        assert naa_designator(ia, 0) == naa_designator(ib, 0)
        usn = [i.inquiry(0, evpd=True, page=0x80).check().data for i in (ia, ib)]
        assert usn[0] == usn[1]
        want = {1: (0, [1]), 2: (1, [2])}      # A active/optimized, B active/non-optimized
        assert _report_tpgs(ia) == want
        assert _report_tpgs(ib) == want
        register = struct.pack(">BBxxxxxIx", 0x5F, 0x00, 24)
        r = ia.scsi(register, data_out=bytes(8) + (0x1234).to_bytes(8, "big") + bytes(8))
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, (0x20, 0))
        r = ib.scsi(bytes((0x16, 0, 0, 0, 0, 0)))                  # RESERVE(6)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, (0x20, 0))
    assert f"shared with {NODE_B}, which would not enforce them" in a.stderr_text()
    a.assert_healthy()
    b.assert_healthy()


def test_libiscsi_multipath_family_passes_with_one_url_per_node(uscstd, nbd_server,
                                                                tmp_path: Path) -> None:
    exe = need("iscsi-test-cu")
    _, (a, b) = _nodes(uscstd, nbd_server, tmp_path)
    p = subprocess.run([exe, "-d", "-t", "SCSI.MultipathIO", "-v",
                        "-i", "iqn.2026-11.org.uscst.test:mp-1",
                        "-I", "iqn.2026-11.org.uscst.test:mp-2", a.url, b.url],
                       capture_output=True, text=True, errors="replace", timeout=CU_TIMEOUT_S,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    (tmp_path / "multipath.log").write_text(out)
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    failed = set(re.findall(r"^\s+Test: (\S+) \.\.\.FAILED", out, re.M))
    assert m and int(m.group(2)) >= 4 and failed == EXPECTED_MULTIPATH_FAILURES, out[-6000:]
    skipped = [ln.strip() for ln in out.splitlines() if "[SKIPPED]" in ln]
    assert not skipped, "\n".join(skipped)
    a.assert_healthy()
    b.assert_healthy()


def test_failover_node_a_killed_mid_write_the_initiator_goes_on_through_b(
        uscstd, nbd_server, tmp_path: Path) -> None:
    disk, (a, b) = _nodes(uscstd, nbd_server, tmp_path)
    written: dict[int, bytes] = {}
    with _session(a, NODE_A) as ia:
        for lba in range(0, 256, 8):
            data = os.urandom(4096)
            assert ia.write10(lba, data).ok
            written[lba] = data
        # in flight when node A dies: each is retried on B, as multipath would
        in_flight = {}
        for lba in range(256, 512, 8):
            data = os.urandom(4096)
            ia.submit(struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 8, 0), data_out=data)
            in_flight[lba] = data
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        a.stopped, a.returncode = True, 0     # killed on purpose: no teardown check
    with _session(b, NODE_B) as ib:
        for lba, data in in_flight.items():
            assert ib.write10(lba, data).ok
            written[lba] = data
        for lba in range(512, 1024, 8):
            data = os.urandom(4096)
            assert ib.write10(lba, data).ok
            written[lba] = data
        for lba, data in written.items():
            assert ib.read10(lba, 8).data == data, f"block {lba} differs through node B"
    on_disk = disk.read_bytes()
    for lba, data in written.items():
        assert on_disk[lba * 512:lba * 512 + 4096] == data, f"block {lba} lost"
    b.assert_healthy()
