"""End to end: the cluster link (scst_core/cluster.py) between two real
uscstd processes sharing one file through vdisk_fileio in cluster_mode
(SCST's classic cluster_mode setup: one shared disk, two nodes), and what
the link does with bad input.

The NBD two-node tests (tests/vdisk/test_nbd_two_nodes.py) cover resets,
MODE SELECT, libiscsi's MultipathIO family, a dead and a restarted peer.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from tests.initiator import Initiator
from uscstd_support import free_port, uscstadmin_ok, uscstadmin_run

TARGETS = ("iqn.2026-11.org.uscst:cl-a", "iqn.2026-11.org.uscst:cl-b")
LINK_TIMEOUT_S = 30.0
UNIT_ATTENTION = 0x6


def _conf(disk: Path, tgt: str, port: int, cluster: int, peer: int) -> str:
    return f"""cluster_listen 127.0.0.1:{cluster}
cluster_peers 127.0.0.1:{peer}

HANDLER vdisk_fileio {{
    DEVICE disk0 {{
        filename {disk}
        cluster_mode 1
    }}
}}
TARGET_DRIVER iscsi {{
    enabled 1
    portal 127.0.0.1:{port}
    TARGET {tgt} {{
        LUN 0 disk0
        enabled 1
    }}
}}
"""


def _two_nodes(uscstd, tmp_path: Path, disk: Path):
    ports, clusters = [free_port(), free_port()], [free_port(), free_port()]
    nodes, socks = [], []
    for i in range(2):
        conf = tmp_path / f"n{i}.conf"
        conf.write_text(_conf(disk, TARGETS[i], ports[i], clusters[i], clusters[1 - i]))
        sock = tmp_path / f"n{i}.sock"
        nodes.append(uscstd("--config", str(conf), "--control", str(sock), port=ports[i],
                            disk=None, size=None))
        socks.append(sock)
    deadline = time.monotonic() + LINK_TIMEOUT_S
    # Bounded by the deadline; polls every 50 ms.
    while not all(" up " in uscstadmin_ok(s, "get", "cluster_state") for s in socks):
        assert time.monotonic() < deadline, [uscstadmin_ok(s, "get", "cluster_state")
                                             for s in socks]
        time.sleep(0.05)
    return nodes, socks, clusters


def _capacity_blocks(ini: Initiator) -> int:
    d = ini.read_capacity16().check().data
    return struct.unpack(">Q", d[:8])[0] + 1


def _drain(ini: Initiator) -> list[tuple[int, int]]:
    out = []
    for _ in range(16):              # a nexus keeps at most 16 unit attentions
        r = ini.test_unit_ready()
        if r.ok:
            return out
        assert r.sense_key == UNIT_ATTENTION, (r.status, r.sense_key, r.asc_ascq)
        out.append(r.asc_ascq)
    raise AssertionError(out)


def test_resync_size_through_one_node_resizes_and_announces_on_the_other(
        uscstd, tmp_path: Path) -> None:
    disk = tmp_path / "shared.img"
    disk.write_bytes(bytes(8 << 20))
    (a, b), (sa, sb), _ = _two_nodes(uscstd, tmp_path, disk)
    with Initiator(port=a.port) as ia, Initiator(port=b.port) as ib:
        for ini, tgt in ((ia, TARGETS[0]), (ib, TARGETS[1])):
            ini.connect()
            ini.login(tgt)
            _drain(ini)
            assert _capacity_blocks(ini) == (8 << 20) // 512
        with open(disk, "r+b") as f:
            f.truncate(16 << 20)
        uscstadmin_ok(sa, "set", "devices/disk0/resync_size", "1")
        # node B re-read the size and its nexus has the UA before the write returned
        assert _drain(ib) == [(0x2A, 0x09)]          # CAPACITY DATA HAS CHANGED
        assert _capacity_blocks(ib) == (16 << 20) // 512
        assert _drain(ia) == [(0x2A, 0x09)]
    assert "events=1" in uscstadmin_ok(sb, "get", "cluster_state")
    a.assert_healthy()
    b.assert_healthy()


def test_cluster_link_closes_a_peer_that_speaks_garbage_and_keeps_serving(
        uscstd, tmp_path: Path) -> None:
    disk = tmp_path / "shared.img"
    disk.write_bytes(bytes(1 << 20))
    (a, b), (sa, sb), clusters = _two_nodes(uscstd, tmp_path, disk)
    with socket.create_connection(("127.0.0.1", clusters[0]), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\nxxxxxxxxxxxxxxxxxxxx")
        s.settimeout(10)
        assert s.recv(100) == b""                    # closed, nothing answered
    assert "scst_cluster: link 2 from peer ?: bad magic" in a.stderr_text()
    assert " up " in uscstadmin_ok(sa, "get", "cluster_state")
    with Initiator(port=a.port) as ia:
        ia.connect()
        ia.login(TARGETS[0])
        _drain(ia)
        assert ia.write10(0, bytes(512)).ok
    a.assert_healthy()
    b.assert_healthy()


def test_bad_cluster_addresses_are_refused_with_one_line_each(uscstd, tmp_path: Path) -> None:
    srv = uscstd("--control", str(tmp_path / "c.sock"))
    for attr, value in (("cluster_peers", "127.0.0.1"), ("cluster_listen", "nohost:99999"),
                        ("cluster_peers", "127.0.0.1:1 127.0.0.1:1")):
        r = uscstadmin_run(tmp_path / "c.sock", "set", attr, value)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    err = srv.stderr_text()
    assert "cluster_peers: bad address '127.0.0.1'" in err
    assert "cluster_listen: bad address 'nohost:99999' (a host and a port 1..65535)" in err
    assert "cluster_peers names a peer twice" in err
    assert uscstadmin_ok(tmp_path / "c.sock", "get", "cluster_state").startswith("listen -")
    srv.assert_healthy()
