"""iSCSI protocol behaviour of a running uscstd, seen through the independent
test initiator (tests/initiator.py): login and discovery, negotiation
results, Data-Out with R2T and with immediate/unsolicited data, pipelining,
Data-In splitting, residuals, SCSI errors as sense data, NOP, logout,
CRC32C digests.

Each test starts its own uscstd (--debug) through the `uscstd` fixture, whose
teardown also proves the server stopped cleanly with a clean log.

Sections cited are RFC 7143 unless another document is named; sense codes
are SPC-4 (ASC/ASCQ in hex).

ExpDataSN: every session runs with the initiator's default check on (the
SCSI Response's ExpDataSN must equal the R2T + Data-In PDUs seen, as RFC 3720
10.4.8 words it).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from initiator import (
    DATAIN_FLAG_STATUS,
    OP_DATA_IN,
    OP_SCSI_RSP,
    SAM_STAT_CHECK_CONDITION,
    Initiator,
    ScsiResult,
    parse_read_capacity16,
    parse_report_luns,
)

BS = 512
DISK_SIZE = 64 << 20
MIB = 1 << 20

ILLEGAL_REQUEST = 0x05


def _login(srv, **kw) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=15.0)
    ini.connect()
    ini.login(srv.iqn, **kw)
    return ini


def _read10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def _write10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def _write(ini: Initiator, lba: int, data: bytes, immediate: bool = True) -> ScsiResult:
    """WRITE(10), checked GOOD; ExpDataSN is checked by the initiator."""
    assert ini.check_exp_data_sn
    res = ini.scsi(_write10_cdb(lba, len(data) // BS), data_out=data, immediate=immediate)
    res.check()
    assert res.final_pdu is not None and res.final_pdu.opcode == OP_SCSI_RSP
    return res


def _pattern(n: int, seed: int) -> bytes:
    """Deterministic, non-repeating-at-block-scale bytes."""
    out = bytearray()
    ctr = 0
    # Bounded: n // 32 + 1 passes.
    while len(out) < n:
        out += struct.pack(">QQQQ", seed, ctr, seed ^ ctr, (seed * 2654435761 + ctr) & (2**64 - 1))
        ctr += 1
    return bytes(out[:n])


def _disk_bytes(srv, offset: int, n: int) -> bytes:
    """Read the backing file directly: an independent view of what landed."""
    disk = Path(srv.argv[srv.argv.index("--disk") + 1])
    with open(disk, "rb") as f:
        f.seek(offset)
        return f.read(n)


# --- login, discovery, negotiation ----------------------------------------------

def test_login_normal_session_reaches_full_feature_and_serves_tur(uscstd_server) -> None:
    ini = _login(uscstd_server)
    assert ini.full_feature and ini.tsih != 0
    keys = ini.target_keys
    assert keys.get("TargetPortalGroupTag") == "1"
    res = ini.test_unit_ready()
    assert res.ok, res
    assert ini.logout() == 0


def test_sendtargets_discovery_lists_our_target_with_its_portal(uscstd_server) -> None:
    srv = uscstd_server
    ini = Initiator(host=srv.host, port=srv.port, timeout=15.0)
    ini.connect()
    ini.login(discovery=True)
    targets = ini.send_targets("All")
    names = [t for t, _ in targets]
    assert names == [srv.iqn], targets
    addrs = targets[0][1]
    assert f"{srv.host}:{srv.port},1" in addrs, addrs
    assert ini.logout() == 0


def test_sendtargets_with_a_name_lists_only_that_target(uscstd_server) -> None:
    srv = uscstd_server
    ini = Initiator(host=srv.host, port=srv.port, timeout=15.0)
    ini.connect()
    ini.login(discovery=True)
    assert ini.send_targets("iqn.2026-11.org.uscst:no-such-target") == []
    assert [t for t, _ in ini.send_targets(srv.iqn)] == [srv.iqn]


def test_negotiated_keys_follow_rfc7143_result_functions(uscstd_server) -> None:
    # Offer values the target must lower, keep or combine by the RFC's rules.
    offered = {
        "MaxBurstLength": "131072",          # 13.13 numerical min
        "FirstBurstLength": "16384",         # 13.14 min, <= MaxBurstLength
        "DefaultTime2Wait": "0",             # 13.15 max
        "DefaultTime2Retain": "0",           # 13.16 min
        "MaxOutstandingR2T": "1",            # 13.17 min
        "ErrorRecoveryLevel": "0",           # 13.20 min
        "MaxConnections": "1",               # 13.2 min
        "InitialR2T": "No",                  # 13.10 OR
        "ImmediateData": "Yes",              # 13.11 AND
    }
    ini = _login(uscstd_server, keys=offered)
    neg = ini.negotiated
    tk = ini.target_keys
    assert 512 <= int(neg["MaxBurstLength"]) <= 131072
    assert 512 <= int(neg["FirstBurstLength"]) <= min(16384, int(neg["MaxBurstLength"]))
    assert int(neg["DefaultTime2Wait"]) >= 0
    assert int(neg["DefaultTime2Retain"]) == 0
    assert neg["MaxOutstandingR2T"] == "1"
    assert neg["ErrorRecoveryLevel"] == "0"
    assert neg["MaxConnections"] == "1"
    assert neg["InitialR2T"] in ("Yes", "No")
    assert neg["ImmediateData"] in ("Yes", "No")
    assert neg["HeaderDigest"] == "None" and neg["DataDigest"] == "None"
    assert neg["DataPDUInOrder"] == "Yes" and neg["DataSequenceInOrder"] == "Yes"
    # Declarative (13.12): the target states its own limit, 512..2^24-1.
    mrdsl = int(tk["MaxRecvDataSegmentLength"])
    assert 512 <= mrdsl <= (1 << 24) - 1
    # No key twice, no answer the RFC does not allow for these keys.
    assert "NotUnderstood" not in tk.values() and "Reject" not in tk.values()
    assert ini.test_unit_ready().ok


def test_read_capacity16_reports_the_disk_size(uscstd_server) -> None:
    ini = _login(uscstd_server)
    res = ini.read_capacity16().check()
    last_lba, blen = parse_read_capacity16(res.data)
    assert blen == BS
    assert (last_lba + 1) * blen == DISK_SIZE


# --- data transfer ---------------------------------------------------------------

def test_write_read_1mib_driven_by_r2t(uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv, keys={"InitialR2T": "Yes", "ImmediateData": "No"})
    assert ini.negotiated["InitialR2T"] == "Yes" and ini.negotiated["ImmediateData"] == "No"
    data = _pattern(MIB, 1)
    res = _write(ini, 2048, data)
    burst = int(ini.negotiated["MaxBurstLength"])
    # All of it came by R2T: the ranges tile [0, 1 MiB) in order, each <= MaxBurstLength.
    assert res.r2ts == len(res.r2t_ranges) >= MIB // burst
    pos = 0
    for off, length in res.r2t_ranges:
        assert off == pos and 0 < length <= burst, res.r2t_ranges
        pos += length
    assert pos == MIB
    rd = ini.read10(2048, MIB // BS).check()
    assert rd.data == data
    assert rd.data_in_pdus >= MIB // int(ini.params["MaxRecvDataSegmentLength"])
    assert _disk_bytes(srv, 2048 * BS, MIB) == data


def test_write_read_1mib_with_immediate_and_unsolicited_data(uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv, keys={"InitialR2T": "No", "ImmediateData": "Yes",
                            "FirstBurstLength": "65536"})
    neg = ini.negotiated
    assert neg["InitialR2T"] == "No", "target refused InitialR2T=No"
    assert neg["ImmediateData"] == "Yes"
    first_burst = int(neg["FirstBurstLength"])
    data = _pattern(MIB, 2)
    res = _write(ini, 0, data)
    # Immediate data plus unsolicited Data-Out cover [0, FirstBurstLength);
    # the R2Ts ask for exactly the rest, in order.
    assert res.data_out_pdus >= 1
    assert res.r2t_ranges and res.r2t_ranges[0][0] == first_burst, res.r2t_ranges
    pos = first_burst
    for off, length in res.r2t_ranges:
        assert off == pos, res.r2t_ranges
        pos += length
    assert pos == MIB
    assert ini.read10(0, MIB // BS).check().data == data
    assert _disk_bytes(srv, 0, MIB) == data


def test_write_that_fits_in_first_burst_needs_no_r2t(uscstd_server) -> None:
    ini = _login(uscstd_server, keys={"InitialR2T": "No", "ImmediateData": "Yes"})
    data = _pattern(32768, 3)
    res = _write(ini, 100, data)
    assert res.r2ts == 0
    assert ini.read10(100, len(data) // BS).check().data == data


def test_32_pipelined_reads_complete_with_their_own_data(uscstd_server) -> None:
    ini = _login(uscstd_server)
    blocks = 16
    chunk = blocks * BS
    data = _pattern(32 * chunk, 4)
    _write(ini, 0, data)
    itts = [ini.submit(_read10_cdb(i * blocks, blocks), read_len=chunk) for i in range(32)]
    assert len(ini.tasks) == 32
    # Wait in reverse order: completions arriving for others are kept.
    results = {itt: ini.wait(itt) for itt in reversed(itts)}
    for i, itt in enumerate(itts):
        r = results[itt].check()
        assert r.data == data[i * chunk:(i + 1) * chunk], f"read {i} got wrong data"


def test_reads_split_at_small_mrdsl_have_ordered_datasn_and_offsets(uscstd_server) -> None:
    ini = _login(uscstd_server, keys={"MaxRecvDataSegmentLength": "4096"})
    assert ini.our_mrdsl == 4096
    n = 64 * 1024
    data = _pattern(n, 5)
    _write(ini, 512, data)
    # Drive the Data-In sequence by hand to see every PDU.
    itt = ini.submit(_read10_cdb(512, n // BS), read_len=n)
    got = bytearray(n)
    pdus = []
    for _ in range(n // 4096 + 2):           # bounded: 16 Data-In + a response at most
        pdu = ini.recv_pdu()
        assert pdu.itt == itt, pdu
        pdus.append(pdu)
        if pdu.opcode == OP_DATA_IN:
            assert len(pdu.data) <= 4096
            got[pdu.buffer_offset:pdu.buffer_offset + len(pdu.data)] = pdu.data
            if pdu.flags & DATAIN_FLAG_STATUS:
                break
        else:
            assert pdu.opcode == OP_SCSI_RSP
            break
    data_ins = [p for p in pdus if p.opcode == OP_DATA_IN]
    assert len(data_ins) == n // 4096
    for k, p in enumerate(data_ins):
        assert p.data_sn == k, (k, p.data_sn)
        assert p.buffer_offset == k * 4096, (k, p.buffer_offset)
        assert len(p.data) == 4096
    last = pdus[-1]
    if last.opcode == OP_SCSI_RSP:
        assert last.status == 0 and last.exp_data_sn == len(data_ins)
    else:
        assert last.final and last.status == 0
    assert bytes(got) == data
    del ini.tasks[itt]
    # The session is still in step: a normal command works after.
    assert ini.test_unit_ready().ok


def test_read_with_edtl_above_cdb_length_reports_underflow(uscstd_server) -> None:
    ini = _login(uscstd_server)
    data = _pattern(4096, 6)
    _write(ini, 8, data)
    res = ini.scsi(_read10_cdb(8, 8), read_len=8192)   # CDB asks 4096, EDTL 8192
    res.check()
    assert res.underflow and not res.overflow
    assert res.residual_count == 4096
    assert res.data == data


def test_read_with_edtl_below_cdb_length_reports_overflow(uscstd_server) -> None:
    ini = _login(uscstd_server)
    data = _pattern(4096, 7)
    _write(ini, 16, data)
    res = ini.scsi(_read10_cdb(16, 8), read_len=2048)   # CDB asks 4096, EDTL 2048
    res.check()
    assert res.overflow and not res.underflow
    assert res.residual_count == 2048
    assert res.data == data[:2048]


# --- SCSI errors through iSCSI ----------------------------------------------------

def test_report_luns_lists_lun_0(uscstd_server) -> None:
    ini = _login(uscstd_server)
    res = ini.report_luns().check()
    assert parse_report_luns(res.data) == [0]
    assert struct.unpack_from(">I", res.data, 0)[0] == 8


def _assert_check_condition(res: ScsiResult, key: int, asc: int, ascq: int) -> None:
    assert res.response == 0, res
    assert res.status == SAM_STAT_CHECK_CONDITION, res
    assert res.sense_key == key, (res.sense_key, res.asc_ascq)
    assert res.asc_ascq == (asc, ascq), res.asc_ascq


def test_command_to_unmapped_lun_gets_logical_unit_not_supported(uscstd_server) -> None:
    ini = _login(uscstd_server)
    _assert_check_condition(ini.scsi(_read10_cdb(0, 1), lun=5, read_len=BS),
                            ILLEGAL_REQUEST, 0x25, 0x00)
    _assert_check_condition(ini.scsi(bytes(6), lun=3), ILLEGAL_REQUEST, 0x25, 0x00)
    assert ini.test_unit_ready(lun=0).ok


def test_unknown_opcode_gets_invalid_command_operation_code(uscstd_server) -> None:
    ini = _login(uscstd_server)
    _assert_check_condition(ini.scsi(bytes([0xD5]) + bytes(9)), ILLEGAL_REQUEST, 0x20, 0x00)
    assert ini.test_unit_ready().ok


def test_read_beyond_end_gets_lba_out_of_range(uscstd_server) -> None:
    ini = _login(uscstd_server)
    last = DISK_SIZE // BS - 1
    _assert_check_condition(ini.scsi(_read10_cdb(last, 2), read_len=2 * BS),
                            ILLEGAL_REQUEST, 0x21, 0x00)
    _assert_check_condition(ini.scsi(_read10_cdb(last + 1, 1), read_len=BS),
                            ILLEGAL_REQUEST, 0x21, 0x00)
    assert ini.read10(last, 1).check().data is not None


# --- NOP, logout, digests -----------------------------------------------------------

def test_nop_out_ping_is_echoed(uscstd_server) -> None:
    ini = _login(uscstd_server)
    for payload in (b"", b"hello", os.urandom(1001)):
        pdu = ini.nop_out(payload)
        assert pdu.data == payload
        assert pdu.ttt == 0xFFFFFFFF
    assert ini.test_unit_ready().ok


def test_logout_ends_session_and_a_new_session_works(uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv)
    assert ini.test_unit_ready().ok
    assert ini.logout() == 0
    assert ini.last_logout_rsp.final
    again = _login(srv)
    assert again.test_unit_ready().ok
    assert again.logout() == 0


def test_logout_response_is_followed_by_target_closing_the_connection(uscstd_server) -> None:
    from initiator import OP_LOGOUT_RSP, pack_logout_req
    ini = _login(uscstd_server)
    itt = 0x4242
    ini.send_pdu(pack_logout_req(itt=itt, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                                 reason=0))
    pdu = ini.recv_pdu()
    assert pdu.opcode == OP_LOGOUT_RSP and pdu.itt == itt and pdu.response == 0
    assert ini.expect_closed(timeout=5.0), "target kept the connection open after Logout"


def test_header_and_data_digests_crc32c_negotiated_and_working(uscstd_server) -> None:
    # Offered the way open-iscsi does when digests are wanted: CRC32C
    # preferred, None allowed. A target that supports CRC32C must pick it.
    ini = _login(uscstd_server, keys={"HeaderDigest": "CRC32C,None",
                                      "DataDigest": "CRC32C,None"})
    assert ini.negotiated["HeaderDigest"] == "CRC32C"
    assert ini.negotiated["DataDigest"] == "CRC32C"
    assert ini.header_digest and ini.data_digest
    data = _pattern(256 * 1024 + 512, 8)
    _write(ini, 4000, data)
    assert ini.read10(4000, len(data) // BS).check().data == data
    assert ini.nop_out(b"abc").data == b"abc"        # 3 bytes: padding inside the digest
    assert ini.logout() == 0


def test_header_digest_only(uscstd_server) -> None:
    ini = _login(uscstd_server, keys={"HeaderDigest": "CRC32C,None", "DataDigest": "None"})
    assert ini.negotiated["HeaderDigest"] == "CRC32C"
    assert ini.header_digest and not ini.data_digest
    assert ini.negotiated["DataDigest"] == "None"
    data = _pattern(8192, 9)
    _write(ini, 0, data)
    assert ini.read10(0, 16).check().data == data


def test_read_expdatasn_counts_data_in_pdus(uscstd_server) -> None:
    # The initiator's default check_exp_data_sn is on; read explicitly anyway.
    ini = _login(uscstd_server, keys={"MaxRecvDataSegmentLength": "8192"})
    assert ini.check_exp_data_sn
    data = _pattern(65536, 10)
    _write(ini, 0, data)
    res = ini.read10(0, 128).check()
    assert res.data == data
    assert res.data_in_pdus == 8
    if res.final_pdu.opcode == OP_SCSI_RSP:
        assert res.final_pdu.exp_data_sn == 8
