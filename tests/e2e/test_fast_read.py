"""READ prediction (scst_core.fastpath, decision 0072) against a real
uscstd: real TCP on 127.0.0.1, a real backing file of random bytes, the
project's initiator (tests/initiator.py) for exact CDBs, task attributes
and expected lengths. /sys/kernel/scst_tgt/fast_reads counts the READs
the fast path answered; /sys/kernel/scst_tgt/fast_read switches it.

The fast path must answer exactly what the full path answers: the
differential test sends one seeded set of READ CDBs, valid and not, with
the switch on and then off, and compares every answer field by field,
and the data with the file. The other tests pin the conditions that send
a READ to the full path (unit attentions, reservations, tracing, a
second connection, digests) by an answer only the full path gives.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from pathlib import Path

from tools.uscstadmin import Ctl
from initiator import (ATTR_ACA, ATTR_HEAD_OF_QUEUE, ATTR_ORDERED, ATTR_SIMPLE, ATTR_UNTAGGED,
                       TMF_LUN_RESET, Initiator, ScsiResult)
from pr_support import READ_RESERVATION, REGISTER, RESERVE, prin, prout
from fastpath_support import fast_count, login, wait_control
from uscstd_support import uscstadmin_ok, uscstadmin_run

BS = 512
SIZE = 16 << 20
NBLOCKS = SIZE // BS
FAST_READ_MAX = 262144
CHECK_CONDITION = 0x02
RESERVATION_CONFLICT = 0x18
TIMEOUT = 10.0


def _start(uscstd, tmp_path: Path) -> tuple:
    """uscstd on a 16 MiB file of random bytes: (server, control socket, bytes)."""
    data = os.urandom(SIZE)
    disk = tmp_path / "fr.img"
    disk.write_bytes(data)
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), disk=disk, size="16M")
    wait_control(srv)
    return srv, sock, data


def fast_reads(sock: Path) -> int:
    return fast_count(sock, "reads")


def _read(ini: Initiator, op: int, lba: int, blocks: int, flags: int = 0, control: int = 0,
          edtl: int | None = None, attr: int = ATTR_SIMPLE) -> ScsiResult:
    if op == 0x28:
        cdb = struct.pack(">BBIBHB", op, flags, lba, 0, blocks, control)
    else:
        cdb = struct.pack(">BBQIBB", op, flags, lba, blocks, 0, control)
    return ini.scsi(cdb, read_len=blocks * BS if edtl is None else edtl, attr=attr)


def _answer(r: ScsiResult) -> tuple:
    return (r.response, r.status, r.sense, r.data, r.residual_count, r.overflow, r.underflow)


def _predicted(op: int, lba: int, blocks: int, flags: int, control: int, edtl: int,
               attr: int) -> bool:
    """Whether the design (scst_core.fastpath's docstring) predicts this
    READ on an idle LUN with nothing traced, no fault and no reservation."""
    n = blocks * BS
    return (op in (0x28, 0x88) and not flags & 0xE8 and not control & 1 and 0 < n == edtl
            and n <= FAST_READ_MAX and lba + blocks <= NBLOCKS
            and attr in (ATTR_SIMPLE, ATTR_UNTAGGED))


def _cases(seed: int, count: int) -> list[tuple]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        op = rnd.choice((0x28, 0x28, 0x88, 0x88))
        # up to 40K, and around 128K and FAST_READ_MAX (buffers of pages)
        blocks = rnd.choice((1, 1, 8, 8, 16, 63, 64, 65, 0, rnd.randrange(1, 80), 256, 512, 513))
        lba = rnd.choice((rnd.randrange(0, NBLOCKS - 520), NBLOCKS - rnd.randrange(1, 520), 0))
        flags = rnd.choice((0, 0, 0, 0, 0x08, 0x10, 0x04, 0x02, 0x20, 0xE0))
        control = rnd.choice((0, 0, 0, 0, 0, 1, 0x04))
        edtl = blocks * BS + rnd.choice((0, 0, 0, 0, -BS, BS))
        attr = rnd.choice((ATTR_SIMPLE, ATTR_SIMPLE, ATTR_SIMPLE, ATTR_UNTAGGED, ATTR_ORDERED,
                           ATTR_HEAD_OF_QUEUE, ATTR_ACA))
        out.append((op, lba, blocks, flags, control, max(edtl, 0), attr))
    return out


def test_fast_and_full_path_answer_every_read_alike_and_the_data_is_the_files(uscstd,
                                                                              tmp_path):
    srv, sock, data = _start(uscstd, tmp_path)
    # The file grows behind the target's back (as before a resize): the
    # LUN keeps its size, and a READ past its end must not find the new
    # bytes through either path.
    with open(tmp_path / "fr.img", "ab") as f:
        f.write(os.urandom(1 << 20))
    ini = login(srv, "iqn.2026-12.test:fr-diff")
    cases = _cases(seed=72, count=300)
    answers = {}
    counted = {}
    for on in ("1", "0"):
        uscstadmin_ok(sock, "set", "fast_read", on)
        before = fast_reads(sock)
        answers[on] = [_answer(_read(ini, op, lba, b, fl, c, e, a))
                       for op, lba, b, fl, c, e, a in cases]
        counted[on] = fast_reads(sock) - before
    predicted = sum(_predicted(*c) for c in cases)
    assert 30 < predicted < len(cases) - 30      # the seed mixes both kinds
    assert counted == {"1": predicted, "0": 0}
    for case, fast, full in zip(cases, answers["1"], answers["0"], strict=True):
        assert fast == full, case
        op, lba, blocks, *_ = case
        if fast[1] == 0 and blocks:
            n = len(fast[3])
            assert fast[3] == data[lba * BS:lba * BS + n], case
    ini.logout()
    ini.close()


def test_a_unit_attention_is_reported_before_any_read_is_predicted(uscstd, tmp_path):
    srv, sock, data = _start(uscstd, tmp_path)
    a = login(srv, "iqn.2026-12.test:fr-ua-a")
    b = login(srv, "iqn.2026-12.test:fr-ua-b")
    assert _read(b, 0x28, 8, 8).ok
    assert a.task_mgmt(TMF_LUN_RESET) == 0
    before = fast_reads(sock)
    for ini in (a, b):
        r = _read(ini, 0x28, 8, 8)
        assert (r.status, r.sense_key, r.asc_ascq) == (CHECK_CONDITION, 0x06, (0x29, 0x03))
        r = _read(ini, 0x88, 8, 8)
        assert r.ok and r.data == data[8 * BS:16 * BS]
    assert fast_reads(sock) - before == 2          # the second READ of each, UA gone
    for ini in (a, b):
        ini.logout()
        ini.close()


def test_a_persistent_reservation_sends_reads_the_full_way(uscstd, tmp_path):
    srv, sock, data = _start(uscstd, tmp_path)
    holder = login(srv, "iqn.2026-12.test:fr-pr-holder")
    other = login(srv, "iqn.2026-12.test:fr-pr-other")
    assert prout(holder, REGISTER, 0, 0xAB).ok
    assert prout(holder, RESERVE, 0xAB, 0, ptype=3).ok          # Exclusive Access
    assert prin(holder, READ_RESERVATION)[8:16] == struct.pack(">Q", 0xAB)
    before = fast_reads(sock)
    r = _read(other, 0x28, 0, 8)
    assert r.status == RESERVATION_CONFLICT and not r.data
    r = _read(holder, 0x28, 0, 8)
    assert r.ok and r.data == data[:8 * BS]
    assert fast_reads(sock) == before
    for ini in (holder, other):
        ini.logout()
        ini.close()


def test_tracing_latency_and_the_switch_each_send_reads_the_full_way(uscstd, tmp_path):
    srv, sock, data = _start(uscstd, tmp_path)
    ini = login(srv, "iqn.2026-12.test:fr-watch")

    def counted(n: int = 4) -> int:
        before = fast_reads(sock)
        for i in range(n):
            r = _read(ini, 0x28, 64 * i, 8)
            assert r.ok and r.data == data[64 * i * BS:(64 * i + 8) * BS]
        return fast_reads(sock) - before

    assert counted() == 4
    uscstadmin_ok(sock, "trace", "start", "--events", "scst_cmd_state")
    assert counted() == 0
    uscstadmin_ok(sock, "trace", "stop")
    raw = uscstadmin_ok(sock, "trace", "dump", "--format", "raw")
    assert raw.count("REAL_EXEC") >= 4               # each READ traced through its states
    assert counted() == 4
    uscstadmin_ok(sock, "set", "measure_latency", "1")
    assert counted() == 0
    uscstadmin_ok(sock, "set", "measure_latency", "0")
    uscstadmin_ok(sock, "set", "fast_read", "0")
    assert counted() == 0
    assert uscstadmin_ok(sock, "get", "fast_read") == "0\n"
    uscstadmin_ok(sock, "set", "fast_read", "1")
    assert counted() == 4
    r = uscstadmin_run(sock, "set", "fast_read", "2")
    assert r.returncode != 0 and uscstadmin_ok(sock, "get", "fast_read") == "1\n"
    ini.logout()
    ini.close()


def test_digests_send_reads_the_full_way(uscstd, tmp_path):
    srv, sock, data = _start(uscstd, tmp_path)
    dig = login(srv, "iqn.2026-12.test:fr-digest", header_digest=True, data_digest=True)
    before = fast_reads(sock)
    r = _read(dig, 0x28, 16, 8)
    assert r.ok and r.data == data[16 * BS:24 * BS]
    assert fast_reads(sock) == before
    dig.logout()
    dig.close()


MCS_IQN = "iqn.2026-12.org.uscst:fr-mcs"
MCS_ONLY_LEADING = ("MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
                    "FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder",
                    "DataSequenceInOrder", "ErrorRecoveryLevel", "DefaultTime2Wait",
                    "DefaultTime2Retain")


def test_a_session_of_two_connections_sends_reads_the_full_way(uscstd, tmp_path):
    """A task management function on one connection must not be answered
    before a READ response still queued on another: only a session of one
    connection is predicted."""
    disk = tmp_path / "mcs.img"
    data = os.urandom(1 << 20)
    disk.write_bytes(data)
    cfg = tmp_path / "mcs.conf"
    cfg.write_text(f"""HANDLER vdisk_fileio {{
\tDEVICE d0 {{
\t\tfilename {disk}
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {MCS_IQN} {{
\t\tMaxConnections 8
\t\tLUN 0 d0
\t\tenabled 1
\t}}
}}
""")
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--config", str(cfg), "--control", str(sock), disk=None, size=None, iqn=MCS_IQN)
    lead = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, cid=0,
                     initiator_name="iqn.2026-12.test:fr-mcs")
    lead.connect()
    lead.login(MCS_IQN, keys={"MaxConnections": "8"})
    for _ in range(8):
        if lead.test_unit_ready().ok:
            break
    before = fast_reads(sock)
    assert _read(lead, 0x28, 16, 8).ok
    assert fast_reads(sock) == before + 1
    second = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, isid=lead.isid, cid=1,
                       initiator_name=lead.initiator_name)
    second.connect()
    second.tsih = lead.tsih
    second.cmd_sn = lead.cmd_sn
    second.login(MCS_IQN, keys={k: None for k in MCS_ONLY_LEADING})
    r = _read(lead, 0x28, 24, 8)
    assert r.ok and r.data == data[24 * BS:32 * BS]
    assert fast_reads(sock) == before + 1
    second.close()
    lead.close()


def _predict_32_and_cut(ini: Initiator, sock: Path, blocks: int) -> None:
    """32 READ(10)s of `blocks` blocks sent without reading their answers;
    once the fast path has answered all of them, the connection is reset."""
    before = fast_reads(sock)
    for i in range(32):
        ini.submit(struct.pack(">BBIBHB", 0x28, 0, blocks * i, 0, blocks, 0),
                   read_len=blocks * BS)
    deadline = time.monotonic() + TIMEOUT
    while fast_reads(sock) - before < 32:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ini.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ini.sock.close()


def test_a_connection_dropped_with_predicted_reads_queued_frees_them(uscstd, tmp_path):
    """READs answered by the fast path whose responses were never read: the
    connection is cut; the server frees them (its teardown checks the slab
    caches for leaks) and serves the next session."""
    srv, sock, data = _start(uscstd, tmp_path)
    _predict_32_and_cut(login(srv, "iqn.2026-12.test:fr-drop"), sock, 64)
    again = login(srv, "iqn.2026-12.test:fr-drop-2")
    r = _read(again, 0x88, 100, 64)
    assert r.ok and r.data == data[100 * BS:164 * BS]
    again.logout()
    again.close()


def mem_free_kb(sock: Path) -> int:
    """MemFree of the emulated kernel's /proc/meminfo (the page allocator)."""
    text = Ctl(str(sock)).call("proc", name="meminfo")["value"]
    return int(text.split("MemFree:")[1].split()[0])


def test_large_reads_take_pages_of_their_own_and_give_them_back(uscstd, tmp_path):
    """READs above the 32 KiB an iscsi_cmnd keeps are predicted into pages
    of the page allocator; answered or dropped unanswered (the connection
    cut with 32 queued), every page goes back: MemFree returns to where it
    was, where a leak would keep 4 MiB."""
    srv, sock, data = _start(uscstd, tmp_path)
    ini = login(srv, "iqn.2026-12.test:fr-pages")
    before = fast_reads(sock)
    for lba in (0, 4096, NBLOCKS - 512):
        r = _read(ini, 0x88, lba, 256 if lba != NBLOCKS - 512 else 512)
        assert r.ok and r.data == data[lba * BS:lba * BS + len(r.data)]
    assert fast_reads(sock) == before + 3
    free = mem_free_kb(sock)
    _predict_32_and_cut(ini, sock, 256)
    again = login(srv, "iqn.2026-12.test:fr-pages-2")
    r = _read(again, 0x28, 1000, 256)
    assert r.ok and r.data == data[1000 * BS:1256 * BS]
    assert mem_free_kb(sock) >= free - 512
    again.logout()
    again.close()
