"""REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT
FUNCTIONS for the vdisk handlers: what each command's CDB may use, and
the timeouts we recommend.

Twin of the vdisk_exec_report_supported_opcodes /
vdisk_exec_report_supported_tm_fns parts of
scst/src/dev_handlers/scst_vdisk.c (its vdisk_opcode_descriptor tables),
split out of vdisk.py per STYLE.md.

Contexts: any; nothing here sleeps.

Differs from SCST: one usage table per device type (disk, cdrom) built
from the opcodes the handler's exec table really dispatches, so a command
cannot be reported without being implemented. Timeouts are advisory
numbers, not measured ones.
"""
from __future__ import annotations

from scst_core.lib import scst_set_invalid_field_in_cdb
from scst_core.scst import scst_cmd

# Design notes:
# - CDB usage data (SPC-4 6.35.3): byte 0 is the opcode; every other byte
#   has a 1 for each bit the device server looks at. A field we only
#   accept as zero (RDPROTECT, group number, ...) is reported as unused,
#   and parse() rejects it when set.

_FF8 = (0xFF,) * 8
_FF4 = (0xFF,) * 4

# (opcode, service action or -1) -> (CDB usage data, long-running command)
_DISK_USAGE: dict[tuple[int, int], tuple[bytes, bool]] = {}


def _u(op: int, sa: int, usage: tuple, long: bool = False) -> None:
    _DISK_USAGE[(op, sa)] = (bytes((op,) + tuple(usage)), long)


_u(0x00, -1, (0, 0, 0, 0, 0))                                         # TEST UNIT READY
_u(0x03, -1, (0x01, 0, 0, 0xFF, 0))                                   # REQUEST SENSE
_u(0x04, -1, (0x3F, 0, 0, 0, 0), True)                                # FORMAT UNIT
_u(0x08, -1, (0x1F, 0xFF, 0xFF, 0xFF, 0))                             # READ(6)
_u(0x0A, -1, (0x1F, 0xFF, 0xFF, 0xFF, 0))                             # WRITE(6)
_u(0x12, -1, (0x01, 0xFF, 0xFF, 0xFF, 0))                             # INQUIRY
_u(0x15, -1, (0x11, 0, 0, 0xFF, 0))                                   # MODE SELECT(6)
_u(0x16, -1, (0, 0, 0, 0, 0))                                         # RESERVE(6)
_u(0x17, -1, (0, 0, 0, 0, 0))                                         # RELEASE(6)
_u(0x1A, -1, (0x08, 0xFF, 0xFF, 0xFF, 0))                             # MODE SENSE(6)
_u(0x1B, -1, (0x01, 0, 0x0F, 0xF7, 0), True)                          # START STOP UNIT
_u(0x1E, -1, (0, 0, 0, 0x03, 0))                                      # PREVENT ALLOW
_u(0x25, -1, (0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0))              # READ CAPACITY(10)
_u(0x28, -1, (0x18,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # READ(10)
_u(0x2A, -1, (0x18,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # WRITE(10)
_u(0x2E, -1, (0x12,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # WRITE AND VERIFY(10)
_u(0x2F, -1, (0x16,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # VERIFY(10)
_u(0x34, -1, (0x02,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # PRE-FETCH(10)
_u(0x35, -1, (0x06,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # SYNCHRONIZE CACHE(10)
_u(0x37, -1, (0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0))                    # READ DEFECT DATA(10)
_u(0x41, -1, (0x18,) + _FF4 + (0, 0xFF, 0xFF, 0))                     # WRITE SAME(10)
_u(0x42, -1, (0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0))                       # UNMAP
for _sa in (0x01, 0x02, 0x03, 0x1F):                                  # SANITIZE
    _u(0x48, _sa, (0x9F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0), True)
_u(0x43, -1, (0x02, 0x0F, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0))              # READ TOC (cdrom)
_u(0x46, -1, (0x03, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0))              # GET CONFIGURATION (cdrom)
_u(0x4A, -1, (0x01, 0, 0, 0x10, 0, 0, 0xFF, 0xFF, 0))                 # GET EVENT STATUS (cdrom)
_u(0x55, -1, (0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0))                    # MODE SELECT(10)
_u(0x56, -1, (0, 0, 0, 0, 0, 0, 0, 0, 0))                             # RESERVE(10)
_u(0x57, -1, (0, 0, 0, 0, 0, 0, 0, 0, 0))                             # RELEASE(10)
_u(0x5A, -1, (0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0))              # MODE SENSE(10)
_u(0x5E, -1, (0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0))                    # PERSISTENT RESERVE IN
_u(0x5F, -1, (0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0))           # PERSISTENT RESERVE OUT
_u(0x83, 0x00, (0x1F,) + (0,) * 8 + _FF4 + (0, 0), True)              # EXTENDED COPY(LID1)
for _sa in (0x00, 0x04):                                              # RECEIVE COPY RESULTS:
    _u(0x84, _sa, (0x1F, 0xFF) + (0,) * 7 + _FF4 + (0, 0))            # COPY STATUS, FAILED SEGMENT
_u(0x84, 0x03, (0x1F,) + (0,) * 8 + _FF4 + (0, 0))                    # RECEIVE COPY RESULTS: OP. PARAMS
_u(0x88, -1, (0x18,) + _FF8 + _FF4 + (0, 0))                          # READ(16)
_u(0x89, -1, (0x18,) + _FF8 + (0, 0, 0, 0xFF, 0, 0))                  # COMPARE AND WRITE
_u(0x8A, -1, (0x18,) + _FF8 + _FF4 + (0, 0))                          # WRITE(16)
_u(0x8B, -1, (0x18,) + _FF8 + _FF4 + (0, 0))                          # ORWRITE(16)
_u(0x8E, -1, (0x12,) + _FF8 + _FF4 + (0, 0))                          # WRITE AND VERIFY(16)
_u(0x8F, -1, (0x16,) + _FF8 + _FF4 + (0, 0))                          # VERIFY(16)
_u(0x90, -1, (0x02,) + _FF8 + _FF4 + (0, 0))                          # PRE-FETCH(16)
_u(0x91, -1, (0x06,) + _FF8 + _FF4 + (0, 0))                          # SYNCHRONIZE CACHE(16)
_u(0x93, -1, (0x19,) + _FF8 + _FF4 + (0, 0))                          # WRITE SAME(16)
_u(0x9C, -1, (0x18,) + _FF8 + (0, 0, 0xFF, 0xFF, 0, 0))               # WRITE ATOMIC(16)
_u(0x9E, 0x10, (0x1F,) + (0,) * 8 + _FF4 + (0, 0))                    # READ CAPACITY(16)
_u(0x9E, 0x12, (0x1F,) + _FF8 + _FF4 + (0, 0))                        # GET LBA STATUS
_u(0xA0, -1, (0, 0xFF, 0, 0, 0) + _FF4 + (0, 0))                      # REPORT LUNS
_u(0xA3, 0x0A, (0xFF, 0, 0, 0, 0) + _FF4 + (0, 0))                    # REPORT TARGET PORT GROUPS
_u(0xA3, 0x0C, (0x1F, 0x87, 0xFF, 0xFF, 0xFF) + _FF4 + (0, 0))        # REPORT SUPPORTED OPCODES
_u(0xA3, 0x0D, (0x1F, 0x80, 0, 0, 0) + _FF4 + (0, 0))                 # REPORT SUPPORTED TMFS
_u(0xA4, 0x0A, (0x1F, 0, 0, 0, 0) + _FF4 + (0, 0))                    # SET TARGET PORT GROUPS
_u(0xA8, -1, (0x18,) + _FF4 + _FF4 + (0, 0))                          # READ(12)
_u(0xAA, -1, (0x18,) + _FF4 + _FF4 + (0, 0))                          # WRITE(12)
_u(0xAE, -1, (0x12,) + _FF4 + _FF4 + (0, 0))                          # WRITE AND VERIFY(12)
_u(0xAF, -1, (0x16,) + _FF4 + _FF4 + (0, 0))                          # VERIFY(12)
_u(0xB7, -1, (0x1F, 0, 0, 0, 0) + _FF4 + (0, 0))                      # READ DEFECT DATA(12)

# Opcodes whose service actions (byte 1, bits 4:0) are reported one by one
_SA_LISTED = frozenset((0x48, 0x83, 0x84, 0x9E, 0xA3, 0xA4))

NOMINAL_TIMEOUT_S = 30
LONG_TIMEOUT_S = 3600


def vdisk_usage_table(exec_table: dict, extra: tuple = ((0xA0, -1),)) -> dict:
    """The usage rows for the commands exec_table dispatches (plus the
    core's own REPORT LUNS)."""
    out = {}
    for (op, sa), row in _DISK_USAGE.items():
        if op in exec_table or (op, sa) in extra:
            out[(op, sa)] = row
    return out


def _timeout_desc(long: bool) -> bytes:
    rec = LONG_TIMEOUT_S if long else NOMINAL_TIMEOUT_S
    return (10).to_bytes(2, "big") + bytes(2) + (0).to_bytes(4, "big") + rec.to_bytes(4, "big")


def vdisk_report_supported_opcodes(cmd: scst_cmd, usage: dict) -> bytes | None:
    """The REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35),
    or None after setting the sense."""
    cdb = cmd.cdb
    rctd = bool(cdb[2] & 0x80)
    opts = cdb[2] & 0x07
    req_op = cdb[3]
    req_sa = int.from_bytes(cdb[4:6], "big")
    if opts == 0:
        out = bytearray()
        for (op, sa), (u, long) in sorted(usage.items()):
            servactv = sa >= 0
            d = bytearray(8)
            d[0] = op
            d[2:4] = (sa if servactv else 0).to_bytes(2, "big")
            d[5] = (0x02 if rctd else 0) | (0x01 if servactv else 0)
            d[6:8] = len(u).to_bytes(2, "big")
            out += d
            if rctd:
                out += _timeout_desc(long)
        return len(out).to_bytes(4, "big") + bytes(out)
    if opts == 1:
        if req_op in _SA_LISTED:
            scst_set_invalid_field_in_cdb(cmd, 2, 2)
            return None
        row = usage.get((req_op, -1))
    elif opts == 2:
        if req_op not in _SA_LISTED:
            scst_set_invalid_field_in_cdb(cmd, 2, 2)
            return None
        row = usage.get((req_op, req_sa))
    elif opts == 3:
        row = usage.get((req_op, req_sa)) if req_op in _SA_LISTED else \
            (usage.get((req_op, -1)) if req_sa == 0 else None)
    else:
        scst_set_invalid_field_in_cdb(cmd, 2, 2)
        return None
    if row is None:
        return bytes((0, 0x01, 0, 0))                # SUPPORT 001b: not supported
    u, long = row
    hdr = bytes((0, (0x80 if rctd else 0) | 0x03)) + len(u).to_bytes(2, "big")
    return hdr + u + (_timeout_desc(long) if rctd else b"")


def vdisk_report_supported_tm_fns(cmd: scst_cmd) -> bytes:
    """SPC-4 6.36: ABORT TASK, ABORT TASK SET, CLEAR TASK SET and LOGICAL
    UNIT RESET; no QUERY functions, no I_T NEXUS RESET. REPD asks for the
    16-byte extended format."""
    repd = bool(cmd.cdb[2] & 0x80)
    buf = bytearray(16 if repd else 4)
    buf[0] = 0x80 | 0x40 | 0x10 | 0x08            # ATS ATSS CTSS LURS
    if repd:
        buf[3] = 0x0C                             # additional data length
    return bytes(buf)
