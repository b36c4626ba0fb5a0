"""Self-test of tests/initiator.py: its codec against RFC 7143 vectors and
layouts, and its protocol engine against a real, independent target
(Debian's tgtd), so that the initiator can be trusted when it tests ours.

The tgtd fixture starts one tgtd per module on a free loopback port with a
control port of its own (others may run tgtd for benchmarks at the same
time), one target with a 64 MiB file LUN, and kills the process group at
the end. Tests skip with a reason when tgtd/tgtadm are not installed.

Known tgtd 1.0.85 deviation: the SCSI Response's ExpDataSN is 0 even after
Data-In or R2T PDUs (RFC 7143 11.4.8 wants their count), so sessions here
run with check_exp_data_sn=False; every other strict check stays on.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from initiator import (
    DATAIN_FLAG_STATUS,
    LOGIN_FLAG_CONTINUE,
    TEXT_FLAG_CONTINUE,
    OP_DATA_OUT,
    OP_NOP_IN,
    OP_SCSI_CMD,
    RESERVED_TAG,
    SAM_STAT_GOOD,
    TMF_ABORT_TASK,
    TMF_RSP_NO_TASK,
    ConnectionClosed,
    Initiator,
    LoginError,
    Pdu,
    ahs_extended_cdb,
    build_pdu,
    decode_keys,
    digest_bytes,
    encode_keys,
    encode_lun,
    pack_data_out,
    pack_login_req,
    pack_nop_out,
    pack_scsi_cmd,
    parse_read_capacity16,
    parse_report_luns,
    sn_add,
    sn_le,
    sn_lt,
)
from uscstd_support import free_port

TARGET = "iqn.2026-11.org.uscst:selftest"
EXTRA_TARGETS = [f"iqn.2026-11.org.uscst:selftest-extra-{n:02d}-padding-to-make-text-long"
                 for n in range(2, 10)]
LUN = 1
BACKING_SIZE = 64 << 20
BLOCK = 512


# --- codec: no target needed ------------------------------------------------------

def test_crc32c_digest_matches_rfc_appendix_vectors() -> None:
    # RFC 7143 Appendix B.4 (from RFC 3720): 32-byte patterns and their CRCs
    # in wire byte order.
    assert digest_bytes(bytes(32)).hex() == "aa36918a"
    assert digest_bytes(b"\xff" * 32).hex() == "43aba862"
    assert digest_bytes(bytes(range(32))).hex() == "4e79dd46"
    assert digest_bytes(bytes(range(31, -1, -1))).hex() == "5cdb3f11"


def test_pack_scsi_cmd_places_fields_at_rfc_offsets() -> None:
    cdb = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    bhs = pack_scsi_cmd(itt=0x11223344, cmd_sn=0xFFFFFFFE, exp_stat_sn=7, cdb=cdb,
                        edtl=4096, lun=3, read=True, immediate=True)
    assert len(bhs) == 48
    assert bhs[0] == 0x40 | OP_SCSI_CMD
    assert bhs[1] == 0x80 | 0x40 | 1                   # F, R, SIMPLE
    assert bhs[4] == 0 and bhs[5:8] == b"\0\0\0"
    assert bhs[8:16] == encode_lun(3) == bytes([0, 3, 0, 0, 0, 0, 0, 0])
    assert struct.unpack(">IIII", bhs[16:32]) == (0x11223344, 4096, 0xFFFFFFFE, 7)
    assert bhs[32:48] == cdb.ljust(16, b"\0")
    pdu = Pdu(bhs)
    assert (pdu.opcode, pdu.immediate, pdu.final, pdu.itt, pdu.lun) == (
        OP_SCSI_CMD, True, True, 0x11223344, 3)


def test_pack_login_req_carries_isid_tsih_stages_and_continue_bit() -> None:
    isid = bytes.fromhex("80aabbccddee")
    bhs = pack_login_req(isid=isid, tsih=0x1234, itt=9, cid=2, cmd_sn=5, exp_stat_sn=6,
                         csg=1, nsg=3, transit=True, cont=False, dsl=17)
    assert bhs[0] == 0x43 and bhs[1] == 0x80 | (1 << 2) | 3
    assert bhs[8:14] == isid and bhs[14:16] == b"\x12\x34"
    assert int.from_bytes(bhs[5:8], "big") == 17
    assert struct.unpack(">IHHII", bhs[16:32]) == (9, 2, 0, 5, 6)
    cont = pack_login_req(isid=isid, itt=9, cmd_sn=5, exp_stat_sn=6, csg=0, nsg=1,
                          transit=False, cont=True)
    assert cont[1] == LOGIN_FLAG_CONTINUE | 1


def test_build_pdu_pads_data_and_appends_digests_that_parse_back() -> None:
    bhs = pack_data_out(itt=1, ttt=2, exp_stat_sn=3, data_sn=4, offset=8, dsl=5)
    raw = build_pdu(bhs, b"hello", header_digest=True, data_digest=True)
    assert len(raw) == 48 + 4 + 8 + 4
    assert raw[48:52] == digest_bytes(bhs)
    assert raw[52:60] == b"hello\0\0\0"
    assert raw[60:64] == digest_bytes(b"hello\0\0\0")
    bad = build_pdu(bhs, b"hello", header_digest=True, bad_header_digest=True)
    assert bad[48:52] != digest_bytes(bhs)
    pdu = Pdu.parse(build_pdu(bhs, b"hello"))
    assert (pdu.opcode, pdu.ttt, pdu.data_sn, pdu.buffer_offset, pdu.data) == (
        OP_DATA_OUT, 2, 4, 8, b"hello")


def test_extended_cdb_ahs_length_counts_type_byte_and_pads_to_four() -> None:
    ahs = ahs_extended_cdb(bytes(range(32)))
    assert struct.unpack(">HBB", ahs[:4]) == (17, 1, 0)
    assert ahs[4:20] == bytes(range(16, 32)) and len(ahs) % 4 == 0


def test_text_keys_roundtrip_keeps_order_and_repeats() -> None:
    pairs = [("TargetName", "a"), ("TargetAddress", "127.0.0.1:1,1"),
             ("TargetAddress", "[::1]:2,1"), ("Empty", "")]
    assert decode_keys(encode_keys(pairs)) == pairs
    assert encode_keys({"A": "1"}) == b"A=1\0"


def test_serial_number_comparison_wraps_at_32_bits() -> None:
    assert sn_lt(0xFFFFFFFF, 0) and not sn_lt(0, 0xFFFFFFFF)
    assert sn_le(5, 5) and sn_add(0xFFFFFFFF, 2) == 1


# --- tgtd fixture ------------------------------------------------------------------

@dataclass
class Tgtd:
    port: int
    control_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def adm(self, *args: str) -> str:
        out = subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def initiator(self, **kw: object) -> Initiator:
        kw.setdefault("check_exp_data_sn", False)
        kw.setdefault("timeout", 5.0)
        ini = Initiator(port=self.port, **kw)  # type: ignore[arg-type]
        ini.connect()
        return ini


def _socket_files(control_port: int) -> list[Path]:
    base = Path("/var/run/tgtd") / f"socket.{control_port}"
    return [base, Path(str(base) + ".lock")]


def _start_tgtd(tmp: Path) -> Tgtd:
    """Start tgtd on a free portal and an unused control port (tgtadm
    accepts 0..32767); retry a few ports in case another tgtd holds one."""
    rng = random.Random()
    last_log = ""
    for attempt in range(4):
        cport = rng.randrange(10000, 32768)
        if any(p.exists() for p in _socket_files(cport)):
            continue
        port = free_port()
        log = tmp / f"tgtd-{attempt}.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                ["tgtd", "-f", "-C", str(cport), "--iscsi", f"portal=127.0.0.1:{port}"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        t = Tgtd(port, cport, proc, log)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                t.adm("--op", "show", "--mode", "target")
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                return t
            except (RuntimeError, OSError):
                time.sleep(0.05)
        last_log = log.read_text(errors="replace")
        _stop_tgtd(t)
    raise RuntimeError(f"tgtd did not start; last log:\n{last_log}")


def _stop_tgtd(t: Tgtd) -> None:
    # tgtd -f ignores SIGTERM; kill its whole process group, ours alone.
    if t.proc.poll() is None:
        try:
            os.killpg(t.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        t.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for p in _socket_files(t.control_port):
        p.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def tgtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tgtd]:
    if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
        pytest.skip("tgtd/tgtadm not installed (Debian package 'tgt'); "
                    "the initiator self-test needs a real target")
    tmp = tmp_path_factory.mktemp("tgtd")
    backing = tmp / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(BACKING_SIZE)
    t = _start_tgtd(tmp)
    try:
        t.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", TARGET)
        t.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(LUN),
              "-b", str(backing))
        t.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        # Let initiators choose digests and InitialR2T=No (tgtd's defaults
        # are None only and Yes); our default offers leave both as before.
        for name, value in (("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C,None"),
                            ("InitialR2T", "No")):
            t.adm("--op", "update", "--mode", "target", "--tid", "1", "-n", name, "-v", value)
        for tid, name in enumerate(EXTRA_TARGETS, start=2):
            t.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", name)
            t.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        yield t
    finally:
        _stop_tgtd(t)


def _normal_session(t: Tgtd, **login_kw: object) -> Initiator:
    """Logged-in session with LUN 1's unit attention (power on / reset)
    consumed, so the next command sees GOOD."""
    ini = t.initiator()
    ini.login(TARGET, **login_kw)  # type: ignore[arg-type]
    for _ in range(4):
        if ini.test_unit_ready(LUN).status == SAM_STAT_GOOD:
            return ini
    raise AssertionError("LUN 1 keeps reporting CHECK CONDITION")


# --- against tgtd -------------------------------------------------------------------

def test_discovery_session_lists_target_with_loopback_portal(tgtd: Tgtd) -> None:
    ini = tgtd.initiator()
    keys = ini.login(discovery=True)
    assert keys["AuthMethod"] == "None"
    targets = dict(ini.send_targets())
    assert targets[TARGET] == [f"127.0.0.1:{tgtd.port},1"]
    assert set(EXTRA_TARGETS) <= set(targets)
    assert ini.logout() == 0


def test_send_targets_follows_text_continuation_under_small_mrdsl(tgtd: Tgtd) -> None:
    ini = tgtd.initiator()
    ini.login(discovery=True, keys={"MaxRecvDataSegmentLength": "512"})
    targets = dict(ini.send_targets())
    assert len(targets) == 1 + len(EXTRA_TARGETS)
    pdus = ini.last_text_pdus
    assert len(pdus) >= 2 and all(p.dsl <= 512 for p in pdus)
    # More to come: F=0 (whole keys) or C=1 (a split key), with a TTT to echo.
    assert (not pdus[0].final or pdus[0].flags & TEXT_FLAG_CONTINUE)
    assert pdus[0].ttt != RESERVED_TAG
    assert pdus[-1].final and pdus[-1].ttt == RESERVED_TAG
    ini.close()


def test_login_to_unknown_target_raises_login_error_not_found(tgtd: Tgtd) -> None:
    ini = tgtd.initiator()
    with pytest.raises(LoginError) as e:
        ini.login("iqn.2026-11.org.uscst:no-such-target")
    assert (e.value.status_class, e.value.status_detail) == (0x02, 0x03)
    ini.close()


def test_login_without_security_stage_reaches_full_feature(tgtd: Tgtd) -> None:
    ini = tgtd.initiator()
    keys = ini.login(TARGET, security_stage=False)
    assert ini.full_feature and ini.tsih != 0
    assert keys["MaxBurstLength"] == "262144"
    assert ini.inquiry(LUN).data[8:16] == b"IET     "
    assert ini.logout() == 0


def test_scsi_basics_inquiry_capacity_report_luns(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    inq = ini.inquiry(LUN).check()
    assert inq.data[0] & 0x1F == 0 and inq.underflow and inq.residual_count == 255 - len(inq.data)
    last_lba, bs = parse_read_capacity16(ini.read_capacity16(LUN).check().data)
    assert (last_lba + 1) * bs == BACKING_SIZE and bs == BLOCK
    assert LUN in parse_report_luns(ini.report_luns().check().data)
    assert ini.logout() == 0


def test_write_read_back_1mib_with_immediate_data_and_r2t(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    assert ini.params["ImmediateData"] == "Yes" and ini.params["InitialR2T"] == "Yes"
    data = random.Random(1).randbytes(1 << 20)
    w = ini.write10(0, data, lun=LUN).check()
    imm = min(ini.target_mrdsl, 65536)          # immediate data in the command PDU
    mbl = int(ini.params["MaxBurstLength"])
    assert w.r2ts == -(-(len(data) - imm) // mbl)
    assert w.r2t_ranges[0][0] == imm and all(n <= mbl for _, n in w.r2t_ranges)
    assert sum(n for _, n in w.r2t_ranges) == len(data) - imm
    assert w.data_out_pdus == -(-(len(data) - imm) // ini.target_mrdsl)
    r = ini.read10(0, len(data) // BLOCK, lun=LUN).check()
    assert r.data == data and r.data_in_pdus >= 1 and r.residual_count == 0
    assert ini.logout() == 0


def test_write_with_initial_r2t_no_sends_unsolicited_data_then_r2t(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd, keys={"InitialR2T": "No"})
    assert ini.params["InitialR2T"] == "No"
    fbl = int(ini.params["FirstBurstLength"])
    data = random.Random(2).randbytes(256 << 10)
    w = ini.write10(4096, data, lun=LUN, immediate=False).check()
    assert w.r2t_ranges and w.r2t_ranges[0][0] == fbl
    assert ini.read10(4096, len(data) // BLOCK, lun=LUN).check().data == data
    assert ini.logout() == 0


def test_header_and_data_digests_protect_a_write_and_read(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd, header_digest=True, data_digest=True)
    assert ini.header_digest and ini.data_digest
    data = random.Random(3).randbytes(96 << 10)
    ini.write10(8192, data, lun=LUN).check()
    assert ini.read10(8192, len(data) // BLOCK, lun=LUN).check().data == data
    assert ini.nop_out(b"digest!").data == b"digest!"
    assert ini.logout() == 0


def test_pipelined_32_reads_all_in_flight_complete_with_right_data(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    data = random.Random(4).randbytes(32 * 4096)
    ini.write10(16384, data, lun=LUN).check()
    itts = []
    for k in range(32):
        cdb = struct.pack(">BBIBHB", 0x28, 0, 16384 + k * 8, 0, 8, 0)
        itts.append(ini.submit(cdb, lun=LUN, read_len=4096))
    assert len(ini.tasks) == 32 and len(set(itts)) == 32
    for k, itt in reversed(list(enumerate(itts))):      # wait out of order
        assert ini.wait(itt).check().data == data[k * 4096:(k + 1) * 4096]
    assert not ini.tasks
    assert ini.logout() == 0


def test_nop_out_ping_echoes_data_and_advances_stat_sn(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    before = ini.exp_stat_sn
    nop = ini.nop_out(b"ping-data-123")
    assert nop.opcode == OP_NOP_IN and nop.data == b"ping-data-123"
    assert nop.stat_sn == before and ini.exp_stat_sn == sn_add(before, 1)
    assert ini.logout() == 0


def test_abort_of_unknown_task_answers_task_does_not_exist(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    assert ini.task_mgmt(TMF_ABORT_TASK, ref_itt=0x7777, lun=LUN) == TMF_RSP_NO_TASK
    assert ini.logout() == 0


def test_logout_response_then_target_closes(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    sock = ini.sock
    assert ini.logout() == 0
    assert ini.sock is None and sock is not None and sock.fileno() == -1


def test_raw_scsi_command_before_login_makes_target_close(tgtd: Tgtd) -> None:
    ini = tgtd.initiator()
    ini.send_raw(build_pdu(pack_scsi_cmd(itt=1, cmd_sn=1, exp_stat_sn=0, cdb=bytes(6))))
    assert ini.expect_closed(3.0)
    ini.close()


def test_raw_bad_header_digest_makes_target_close(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd, header_digest=True)
    bhs = pack_nop_out(itt=0x55, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn)
    ini.send_raw(build_pdu(bhs, header_digest=True, bad_header_digest=True))
    assert ini.expect_closed(3.0)
    with pytest.raises(ConnectionClosed):
        ini.recv_pdu(1.0)
    ini.close()


def test_raw_send_and_recv_pdu_roundtrip_a_well_formed_read(tgtd: Tgtd) -> None:
    ini = _normal_session(tgtd)
    cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
    ini.send_pdu(pack_scsi_cmd(itt=0x4242, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                               cdb=cdb, edtl=BLOCK, lun=LUN, read=True))
    ini.cmd_sn = sn_add(ini.cmd_sn, 1)
    pdu = ini.recv_pdu()
    assert pdu.itt == 0x4242 and pdu.dsl == BLOCK and pdu.flags & DATAIN_FLAG_STATUS
    assert not ini.expect_closed(0.2)                   # still open
    assert ini.logout() == 0


def test_recv_pdu_on_idle_session_times_out_not_early_and_loses_nothing(tgtd: Tgtd) -> None:
    # Only the lower bound is checked: a timeout cannot end early, while how
    # late it ends depends on the machine's load (no upper wall-clock bound).
    ini = _normal_session(tgtd)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ini.recv_pdu(0.3)
    assert time.monotonic() - t0 >= 0.25
    assert ini.nop_out().opcode == OP_NOP_IN          # nothing half-read was lost
    assert ini.logout() == 0
