"""WRITEs whose data comes immediate (ImmediateData=Yes, all of it in the
command PDU, no R2T; what qemu and open-iscsi send for small writes). The
rd thread copies such a segment straight from its receive buffer when the
whole of it is there (iscsi.py, _rx_immediate_in_place), and routes it
through the receive loop's data and tail states otherwise: the segment
split across receives, a data digest to check, more data than the CDB
asks for. Each case through a real uscstd over TCP, checked on the backing
file and by reading the blocks back.
"""
from __future__ import annotations

import struct
import time

from test_protocol import BS, _disk_bytes, _login, _pattern

from initiator import Initiator

CHUNK = 4096


def _write10_cdb(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


class _SplitSender(Initiator):
    """Sends each full-feature PDU that carries data in two pieces: the
    header with the first 64 bytes of data, then, after a pause (so the
    target most likely receives them apart), the rest."""

    def send_raw(self, data: bytes, timeout: float | None = None) -> None:
        head = 48 + 64
        if self.full_feature and len(data) > head:
            super().send_raw(data[:head], timeout)
            time.sleep(0.05)
            data = data[head:]
        super().send_raw(data, timeout)


def _pipelined_writes(ini: Initiator, first_lba: int, n: int, seed: int) -> bytes:
    """n 4 KiB WRITE(10)s with immediate data, all submitted before any is
    waited for; each must be GOOD without an R2T. The data written."""
    assert ini.negotiated.get("ImmediateData", "Yes") == "Yes"
    data = _pattern(n * CHUNK, seed)
    blocks = CHUNK // BS
    itts = [ini.submit(_write10_cdb(first_lba + i * blocks, blocks),
                       data_out=data[i * CHUNK:(i + 1) * CHUNK]) for i in range(n)]
    for itt in itts:
        r = ini.wait(itt).check()
        assert r.r2ts == 0 and r.data_out_pdus == 0, "the data was not all immediate"
        assert not r.overflow and not r.underflow
    return data


def test_32_pipelined_4k_writes_with_immediate_data_land_whole(uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv)
    data = _pipelined_writes(ini, 64, 32, 41)
    assert _disk_bytes(srv, 64 * BS, len(data)) == data
    assert ini.read10(64, len(data) // BS).check().data == data


def test_immediate_data_split_across_receives_lands_whole(uscstd_server) -> None:
    srv = uscstd_server
    ini = _SplitSender(host=srv.host, port=srv.port, timeout=15.0)
    ini.connect()
    ini.login(srv.iqn)
    data = _pipelined_writes(ini, 512, 4, 42)
    assert _disk_bytes(srv, 512 * BS, len(data)) == data
    assert ini.read10(512, len(data) // BS).check().data == data


def test_immediate_data_under_a_data_digest_lands_whole(uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv, data_digest=True)
    assert ini.data_digest
    data = _pipelined_writes(ini, 1024, 8, 43)
    assert _disk_bytes(srv, 1024 * BS, len(data)) == data
    assert ini.read10(1024, len(data) // BS).check().data == data


def test_immediate_data_beyond_the_cdb_writes_only_the_cdb_blocks_with_underflow(
        uscstd_server) -> None:
    srv = uscstd_server
    ini = _login(srv)
    before = _disk_bytes(srv, 2048 * BS + CHUNK, CHUNK)
    data = _pattern(2 * CHUNK, 44)
    # EDTL and the immediate data say 8 KiB, the CDB 4 KiB (RFC 7143 11.4.5.1)
    r = ini.scsi(_write10_cdb(2048, CHUNK // BS), data_out=data).check()
    assert r.r2ts == 0
    assert r.underflow and r.residual_count == CHUNK, r
    assert _disk_bytes(srv, 2048 * BS, CHUNK) == data[:CHUNK]
    assert _disk_bytes(srv, 2048 * BS + CHUNK, CHUNK) == before
