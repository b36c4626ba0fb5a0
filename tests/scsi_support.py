"""SCSI CDBs and parameter lists the e2e tests build by hand from the
standards (not with the target's own encoders, so an encoding mistake in
uscst cannot cancel out): EXTENDED COPY (LID1) pieces and the NAA
designator lookup they need."""
from __future__ import annotations

import struct

from initiator import Initiator


def naa_designator(ini: Initiator, lun: int) -> bytes:
    """The LU's NAA designator from VPD page 0x83."""
    d = ini.inquiry(lun, evpd=True, page=0x83).check().data
    off = 4
    while off + 4 <= len(d):                 # bounded by the page length
        n = d[off + 3]
        if d[off + 1] & 0x3F == 0x03:        # association LU, type NAA
            return bytes(d[off + 4:off + 4 + n])
        off += 4 + n
    raise AssertionError(f"no NAA designator in {d.hex()}")


def xcopy_cscd(naa: bytes, bs: int = 512) -> bytes:
    """Identification descriptor CSCD (SPC-4 6.4.5.6) naming an LU by NAA."""
    d = bytearray(32)
    d[0] = 0xE4
    d[4] = 0x01                              # code set binary
    d[5] = 0x03                              # association LU, designator type NAA
    d[7] = len(naa)
    d[8:8 + len(naa)] = naa
    d[29:32] = bs.to_bytes(3, "big")
    return bytes(d)


def xcopy_b2b(src: int, dst: int, nblocks: int, src_lba: int, dst_lba: int) -> bytes:
    """Block device to block device segment descriptor (SPC-4 6.4.6.5)."""
    return struct.pack(">BBHHHHHQQ", 0x02, 0, 0x18, src, dst, 0, nblocks, src_lba, dst_lba)


def xcopy_plist(cscds: list[bytes], segs: list[bytes], lid: int = 0, usage: int = 3) -> bytes:
    """An EXTENDED COPY (LID1) parameter list (SPC-4 6.4.3)."""
    c, s = b"".join(cscds), b"".join(segs)
    return struct.pack(">BBHIII", lid, usage << 3, len(c), 0, len(s), 0) + c + s


def xcopy_cdb(plist_len: int) -> bytes:
    return struct.pack(">BB8sIBB", 0x83, 0x00, bytes(8), plist_len, 0, 0)
