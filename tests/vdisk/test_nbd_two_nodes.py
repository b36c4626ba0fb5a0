"""End to end: two uscstd processes ("nodes", two portals on loopback)
export one NBD export (nbdkit's file plugin) as one logical unit in two
ALUA target port groups: node A's port active/optimized, node B's
active/non-optimized, each node naming the other's port as a peer, the
device in cluster_mode with a cluster link between the nodes
(docs/scale-out.md, scst_core/cluster.py).

What it checks: both nodes report the same device identity (VPD page
0x83 NAA designator, unit serial number) and both groups in REPORT
TARGET PORT GROUPS; without cluster_mode reservations are refused with
INVALID COMMAND OPERATION CODE on a shared LU; with it, unit attentions
cross the link (LUN RESET, TARGET RESET, MODE SELECT through A: B's
nexus reports them) and so do persistent reservations (made through A,
enforced by B; refused while B is down; B takes them when it returns),
and libiscsi's PR families pass through either node; libiscsi's whole
MultipathIO family passes with one URL per node; with the peer killed a
node alone keeps serving, its LUN reset does not hang, and the restarted
peer's link comes back; and a failover: node A killed while writes are
in flight, the initiator goes on through node B, and every block either
node acknowledged is intact.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.initiator import TMF_LUN_RESET, TMF_RSP_COMPLETE, TMF_TARGET_WARM_RESET, Initiator
from tests.scsi_support import naa_designator
from tests.vdisk.nbd_support import NbdFactory, need
from uscstd_support import free_port, uscstadmin_ok

NODE_A = "iqn.2026-11.org.uscst:node-a"
NODE_B = "iqn.2026-11.org.uscst:node-b"
ILLEGAL_REQUEST, CHECK_CONDITION = 0x5, 0x02
CU_TIMEOUT_S = 600.0
UNIT_ATTENTION = 0x6
ABORTED_COMMAND = 0x0B
DATA_PROTECT = 0x07
RESERVATION_CONFLICT = 0x18
PR_REGISTER, PR_RESERVE, PR_RELEASE = 0, 1, 2
PR_WRITE_EXCLUSIVE = 1
# fixed: a registration is an I_T nexus, the ISID part of it (SPC-4 5.7.1)
ISID_X, ISID_Y = bytes.fromhex("400001370001"), bytes.fromhex("400001370002")
LINK_TIMEOUT_S = 30.0       # bound on waiting for a cluster link to come up


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[NbdFactory]:
    f = NbdFactory(tmp_path)
    yield f
    f.close()


def node_config(uri: str, me: str, my_id: int, peer: str, peer_id: int, port: int,
                cluster: int, peer_cluster: int, cluster_mode: int = 1) -> str:
    """One node's scst.conf: the cluster link (its own address, its
    peer's), the NBD device (in cluster_mode unless told), its own target,
    and a device group with its own port's group and the peer's
    (rel_tgt_id given)."""
    states = {1: "active", 2: "nonoptimized"}
    return f"""cluster_listen 127.0.0.1:{cluster}
cluster_peers 127.0.0.1:{peer_cluster}

HANDLER vdisk_nbd {{
    DEVICE shared0 {{
        uri {uri}
        cluster_mode {cluster_mode}
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


def _start_node(uscstd, conf: Path, port: int):
    return uscstd("--config", str(conf), "--control", str(conf.with_suffix(".sock")),
                  port=port, disk=None, size=None)


def _nodes(uscstd, nbd_server, tmp_path: Path, cluster_mode: int = 1):
    """Both nodes, started, their cluster links up: (disk, [a, b], [conf a, conf b])."""
    disk = tmp_path / "shared.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    nbd = nbd_server("nbdkit", "file", str(disk))
    ports, clusters = [free_port(), free_port()], [free_port(), free_port()]
    nodes, confs = [], []
    for i, (me, my_id, peer, peer_id) in enumerate(((NODE_A, 1, NODE_B, 2),
                                                    (NODE_B, 2, NODE_A, 1))):
        conf = tmp_path / f"{me.rsplit(':', 1)[1]}.conf"
        conf.write_text(node_config(nbd.uri, me, my_id, peer, peer_id, ports[i], clusters[i],
                                    clusters[1 - i], cluster_mode))
        nodes.append(_start_node(uscstd, conf, ports[i]))
        confs.append(conf)
    for conf in confs:
        _wait_link_up(conf)
    return disk, nodes, confs


def _cluster_state(conf: Path) -> str:
    return uscstadmin_ok(conf.with_suffix(".sock"), "get", "cluster_state")


def _wait_link_up(conf: Path) -> None:
    """Until the node's link to its peer is up (bounded)."""
    deadline = time.monotonic() + LINK_TIMEOUT_S
    # Bounded by the deadline; polls every 50 ms.
    while " up " not in _cluster_state(conf):
        assert time.monotonic() < deadline, _cluster_state(conf)
        time.sleep(0.05)


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


def test_two_nodes_report_one_lu_in_two_target_port_groups_and_without_cluster_mode_refuse_reservations(
        uscstd, nbd_server, tmp_path: Path) -> None:
    _, (a, b), _ = _nodes(uscstd, nbd_server, tmp_path, cluster_mode=0)
    with _session(a, NODE_A) as ia, _session(b, NODE_B) as ib:
        assert naa_designator(ia, 0) == naa_designator(ib, 0)
        usn = [i.inquiry(0, evpd=True, page=0x80).check().data for i in (ia, ib)]
        assert usn[0] == usn[1]
        want = {1: (0, [1]), 2: (1, [2])}      # A active/optimized, B active/non-optimized
        assert _report_tpgs(ia) == want
        assert _report_tpgs(ib) == want
        r = _prout(ia, PR_REGISTER, 0, 0x1234)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, (0x20, 0))
        r = ib.scsi(bytes((0x16, 0, 0, 0, 0, 0)))                  # RESERVE(6)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ILLEGAL_REQUEST, (0x20, 0))
    assert f"shared with {NODE_B}, which would not enforce them" in a.stderr_text()
    a.assert_healthy()
    b.assert_healthy()


def test_libiscsi_multipath_family_passes_whole_with_one_url_per_node(uscstd, nbd_server,
                                                                tmp_path: Path) -> None:
    exe = need("iscsi-test-cu")
    _, (a, b), _ = _nodes(uscstd, nbd_server, tmp_path)
    p = subprocess.run([exe, "-d", "-t", "SCSI.MultipathIO", "-v",
                        "-i", "iqn.2026-11.org.uscst.test:mp-1",
                        "-I", "iqn.2026-11.org.uscst.test:mp-2", a.url, b.url],
                       capture_output=True, text=True, errors="replace", timeout=CU_TIMEOUT_S,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    (tmp_path / "multipath.log").write_text(out)
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    failed = set(re.findall(r"^\s+Test: (\S+) \.\.\.FAILED", out, re.M))
    # Reset included: the LUN reset's unit attention crosses the cluster link
    assert m and int(m.group(2)) >= 4 and int(m.group(4)) == 0 and not failed, out[-6000:]
    skipped = [ln.strip() for ln in out.splitlines() if "[SKIPPED]" in ln]
    assert not skipped, "\n".join(skipped)
    a.assert_healthy()
    b.assert_healthy()


def test_failover_node_a_killed_mid_write_the_initiator_goes_on_through_b(
        uscstd, nbd_server, tmp_path: Path) -> None:
    disk, (a, b), _ = _nodes(uscstd, nbd_server, tmp_path)
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


def _swp(ini: Initiator) -> bool:
    """The SWP bit of the current control mode page."""
    d = ini.scsi(bytes((0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0x01, 0x00, 0)), read_len=256).check().data
    return bool(d[8 + 4] & 0x08)


def _mode_select_swp(ini: Initiator, swp: bool) -> None:
    """MODE SELECT(10) of the control mode page with SWP set or cleared."""
    sense = ini.scsi(bytes((0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0x01, 0x00, 0)), read_len=256).check()
    page = bytearray(sense.data[8:8 + 12])
    assert page[0] & 0x3F == 0x0A, sense.data.hex()
    page[0] &= 0x3F                   # PS is reserved in MODE SELECT
    page[4] = (page[4] & ~0x08) | (0x08 if swp else 0)
    plist = bytes(8) + bytes(page)
    r = ini.scsi(struct.pack(">BBxxxxxHx", 0x55, 0x10, len(plist)), data_out=plist)
    assert r.ok, (r.status, r.sense_key, r.asc_ascq)


def _next_ua(ini: Initiator) -> "tuple[int, int] | None":
    """The ASC/ASCQ of the unit attention TEST UNIT READY reports, or None."""
    r = ini.test_unit_ready()
    if r.ok:
        return None
    assert r.sense_key == UNIT_ATTENTION, (r.status, r.sense_key, r.asc_ascq)
    return r.asc_ascq


def _drain_uas(ini: Initiator) -> list[tuple[int, int]]:
    out = []
    for _ in range(16):               # a nexus keeps at most 16 (SCST_MAX_UA)
        ua = _next_ua(ini)
        if ua is None:
            return out
        out.append(ua)
    raise AssertionError(f"unit attentions keep coming: {out}")


def test_unit_attentions_of_lun_reset_target_reset_and_mode_select_cross_to_the_other_node(
        uscstd, nbd_server, tmp_path: Path) -> None:
    _, (a, b), (ca, cb) = _nodes(uscstd, nbd_server, tmp_path)
    with _session(a, NODE_A) as ia, _session(b, NODE_B) as ib:
        _drain_uas(ia)
        _drain_uas(ib)
        assert ia.task_mgmt(TMF_LUN_RESET) == TMF_RSP_COMPLETE
        # the TMF response came after B applied it: B's nexus has it at once
        assert _drain_uas(ib) == [(0x29, 0x03)]          # LOGICAL UNIT RESET OCCURRED
        assert _drain_uas(ia) == [(0x29, 0x03)]
        _mode_select_swp(ia, True)
        assert _drain_uas(ib) == [(0x2A, 0x01)]          # MODE PARAMETERS CHANGED
        assert _drain_uas(ia) == []                      # not on the nexus that changed it
        # B took A's page: software write protect holds through B too
        assert _swp(ib)
        r = ib.write10(0, bytes(512))
        assert (r.sense_key, r.asc_ascq[0]) == (DATA_PROTECT, 0x27), (r.status, r.sense)
        assert ib.task_mgmt(TMF_LUN_RESET) == TMF_RSP_COMPLETE
        assert _drain_uas(ia) == [(0x29, 0x03)]          # and the other way round
        assert _drain_uas(ib) == [(0x29, 0x03)]
        _mode_select_swp(ib, False)
        assert _drain_uas(ia) == [(0x2A, 0x01)]
        assert not _swp(ia) and ia.write10(0, bytes(512)).ok
        assert ia.task_mgmt(TMF_TARGET_WARM_RESET) == TMF_RSP_COMPLETE
        assert _drain_uas(ib) == [(0x29, 0x00)]          # POWER ON, RESET, OR BUS DEVICE RESET
    # A sent three events (two resets, a mode change), B two; each applied the other's
    for conf, sent, got in ((ca, 3, 2), (cb, 2, 3)):
        state = _cluster_state(conf)
        assert f"sent={sent} failed=0" in state and f"events={got}" in state, state
    a.assert_healthy()
    b.assert_healthy()


def test_node_alone_keeps_serving_when_its_peer_dies_and_relinks_when_it_returns(
        uscstd, nbd_server, tmp_path: Path) -> None:
    _, (a, b), (ca, cb) = _nodes(uscstd, nbd_server, tmp_path)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    b.stopped, b.returncode = True, 0         # killed on purpose: no teardown check
    with _session(a, NODE_A) as ia:
        _drain_uas(ia)
        data = os.urandom(4096)
        assert ia.write10(0, data).ok
        # B is gone: the reset completes (the event is not delivered), no hang
        assert ia.task_mgmt(TMF_LUN_RESET, timeout=20) == TMF_RSP_COMPLETE
        assert _drain_uas(ia) == [(0x29, 0x03)]
        _mode_select_swp(ia, False)
        assert ia.read10(0, 8).data == data
    err = a.stderr_text()
    assert re.search(r"scst_cluster: (link to peer \S+ lost|peer \S+ unreachable)", err), err
    assert "down" in _cluster_state(ca)
    b2 = _start_node(uscstd, cb, b.port)
    _wait_link_up(ca)
    _wait_link_up(cb)
    assert "reconnects=1" in _cluster_state(ca), _cluster_state(ca)
    with _session(a, NODE_A) as ia, _session(b2, NODE_B) as ib:
        _drain_uas(ia)
        _drain_uas(ib)
        assert ia.task_mgmt(TMF_LUN_RESET) == TMF_RSP_COMPLETE
        assert _drain_uas(ib) == [(0x29, 0x03)]
        assert ib.read10(0, 8).data == data
    a.assert_healthy()
    b2.assert_healthy()


def _prout(ini: Initiator, sa: int, key: int, sa_key: int = 0, type_: int = 0):
    """PERSISTENT RESERVE OUT with a basic 24-byte parameter list."""
    cdb = bytes((0x5F, sa, type_, 0, 0)) + (24).to_bytes(4, "big") + b"\0"
    return ini.scsi(cdb, data_out=key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(8))


def _pr_keys(ini: Initiator) -> list[int]:
    d = ini.scsi(bytes((0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0)), read_len=256).check().data
    n = int.from_bytes(d[4:8], "big")
    return [int.from_bytes(d[8 + i:16 + i], "big") for i in range(0, n, 8)]


def _pr_holder(ini: Initiator) -> "tuple[int, int] | None":
    """(key, type) of the persistent reservation, or None."""
    d = ini.scsi(bytes((0x5E, 1, 0, 0, 0, 0, 0, 1, 0, 0)), read_len=256).check().data
    if not int.from_bytes(d[4:8], "big"):
        return None
    return int.from_bytes(d[8:16], "big"), d[21] & 0x0F


def test_persistent_reservation_through_a_is_enforced_by_b_refused_while_b_is_down_and_synced_when_b_returns(
        uscstd, nbd_server, tmp_path: Path) -> None:
    _, (a, b), (ca, cb) = _nodes(uscstd, nbd_server, tmp_path)
    x = Initiator(port=a.port, initiator_name="iqn.2026-11.org.uscst.test:x", isid=ISID_X)
    y = Initiator(port=b.port, initiator_name="iqn.2026-11.org.uscst.test:y", isid=ISID_Y)
    with x as ix, y as iy:
        for ini, tgt in ((ix, NODE_A), (iy, NODE_B)):
            ini.connect()
            ini.login(tgt)
            _drain_uas(ini)
        assert _prout(ix, PR_REGISTER, 0, 0x1234).ok
        assert _prout(ix, PR_RESERVE, 0x1234, type_=PR_WRITE_EXCLUSIVE).ok
        # node B knew before A answered GOOD: it enforces A's reservation
        assert _pr_keys(iy) == [0x1234]
        assert _pr_holder(iy) == (0x1234, PR_WRITE_EXCLUSIVE)
        assert iy.write10(0, bytes(4096)).status == RESERVATION_CONFLICT
        assert iy.read10(0, 8).ok
        assert _prout(iy, PR_REGISTER, 0, 0x99).ok            # and A learns of B's
        assert _pr_keys(ix) == [0x1234, 0x99]
        r = iy.scsi(bytes((0x16, 0, 0, 0, 0, 0)))            # RESERVE(6): still per node
        assert (r.sense_key, r.asc_ascq) == (ILLEGAL_REQUEST, (0x20, 0))
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    b.stopped, b.returncode = True, 0         # killed on purpose: no teardown check
    x = Initiator(port=a.port, initiator_name="iqn.2026-11.org.uscst.test:x", isid=ISID_X)
    with x as ix:
        ix.connect()
        ix.login(NODE_A)
        _drain_uas(ix)
        # B is gone: a change B would not enforce is refused, nothing changes
        r = _prout(ix, PR_RELEASE, 0x1234, type_=PR_WRITE_EXCLUSIVE)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, ABORTED_COMMAND, (8, 0))
        assert _pr_holder(ix) == (0x1234, PR_WRITE_EXCLUSIVE)
        assert ix.write10(0, b"\1" * 4096).ok               # the holder writes on
    assert "PERSISTENT RESERVE OUT refused: peer 127.0.0.1:" in a.stderr_text()
    b2 = _start_node(uscstd, cb, b.port)
    _wait_link_up(ca)
    _wait_link_up(cb)
    x = Initiator(port=a.port, initiator_name="iqn.2026-11.org.uscst.test:x", isid=ISID_X)
    y = Initiator(port=b2.port, initiator_name="iqn.2026-11.org.uscst.test:y", isid=ISID_Y)
    with x as ix, y as iy:
        for ini, tgt in ((ix, NODE_A), (iy, NODE_B)):
            ini.connect()
            ini.login(tgt)
            _drain_uas(ini)
        # the restarted node took A's state when the link came back
        deadline = time.monotonic() + LINK_TIMEOUT_S
        # Bounded by the deadline; polls every 50 ms.
        while _pr_keys(iy) != [0x1234, 0x99]:
            assert time.monotonic() < deadline, _pr_keys(iy)
            time.sleep(0.05)
        assert iy.write10(0, bytes(4096)).status == RESERVATION_CONFLICT
        assert _prout(ix, PR_RELEASE, 0x1234, type_=PR_WRITE_EXCLUSIVE).ok
        assert _pr_holder(iy) is None
        assert iy.write10(0, bytes(4096)).ok
    a.assert_healthy()
    b2.assert_healthy()


PR_FAMILIES = ("SCSI.PrinReadKeys", "SCSI.PrinServiceactionRange", "SCSI.PrinReportCapabilities",
               "SCSI.ProutRegister", "SCSI.ProutReserve", "SCSI.ProutClear", "SCSI.ProutPreempt")


@pytest.mark.parametrize("node", [0, 1])
def test_libiscsi_persistent_reservation_families_pass_on_either_node_of_a_cluster_pair(
        uscstd, nbd_server, tmp_path: Path, node: int) -> None:
    """Each PR OUT is agreed with the other node before it completes, and
    the suite sees one coherent device server."""
    exe = need("iscsi-test-cu")
    _, nodes, confs = _nodes(uscstd, nbd_server, tmp_path)
    summary = []
    for fam in PR_FAMILIES:
        p = subprocess.run([exe, "-d", "-t", fam, "-v",
                            "-i", "iqn.2026-11.org.uscst.test:pr-1",
                            "-I", "iqn.2026-11.org.uscst.test:pr-2", nodes[node].url],
                           capture_output=True, text=True, errors="replace",
                           timeout=CU_TIMEOUT_S, stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        (tmp_path / f"{fam}.log").write_text(out)
        m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
        assert m and int(m.group(2)) >= 1 and int(m.group(4)) == 0, out[-6000:]
        skipped = [ln.strip() for ln in out.splitlines() if "[SKIPPED]" in ln]
        assert not skipped, "\n".join(skipped)
        summary.append(f"{fam}: {m.group(0).strip()}")
    (tmp_path / "pr-summary.txt").write_text("\n".join(summary) + "\n")
    # the other node applied the changes
    other = _cluster_state(confs[1 - node])
    assert re.search(r"from \S+ link=\d+ events=[1-9]", other), other
    for n in nodes:
        n.assert_healthy()
