"""Commands the core answers itself: REPORT LUNS, and INQUIRY and REQUEST
SENSE addressed to a LUN that is not mapped.

Twin of scst/src/scst_local_cmd.c (scst_report_luns_local and the
no-LUN paths of scst_targ.c).

Contexts: called from scst_core.targ's exec state in any context; never
sleeps.

Differs from SCST: none known for these commands.
"""
from __future__ import annotations

from scst_core.const import (INQUIRY, REPORT_LUNS, REQUEST_SENSE, TYPE_NO_LUN,
                             scst_sense_invalid_field_in_cdb, scst_sense_invalid_opcode,
                             scst_sense_lun_not_supported)
from scst_core.lib import (scst_build_sense, scst_get_buf_full, scst_pack_lun,
                           scst_set_cmd_error, scst_set_invalid_field_in_cdb,
                           scst_set_resp_data_len)
from scst_core.scst import scst_cmd


def _copy_out(cmd: scst_cmd, data: bytes) -> None:
    n = min(len(data), cmd.bufflen)
    if n:
        scst_get_buf_full(cmd)[:n] = data[:n]
    scst_set_resp_data_len(cmd, n)


def scst_report_luns_local(cmd: scst_cmd) -> None:
    cdb = cmd.cdb
    select = cdb[2]
    if select not in (0x00, 0x01, 0x02, 0x10, 0x11, 0x12):
        scst_set_invalid_field_in_cdb(cmd, 2)
        return
    alloc_len = int.from_bytes(cdb[6:10], "big")
    if alloc_len < 4:
        scst_set_invalid_field_in_cdb(cmd, 6)
        return
    # No well-known or administrative LUNs exist, so only 00h/02h list any.
    luns = sorted(cmd.sess.sess_tgt_dev_list) if select in (0x00, 0x02) else []
    body = b"".join(scst_pack_lun(lun) for lun in luns)
    _copy_out(cmd, len(body).to_bytes(4, "big") + bytes(4) + body)


def _inquiry_no_lun(cmd: scst_cmd) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0x01 or cdb[2]:
        scst_set_cmd_error(cmd, scst_sense_invalid_field_in_cdb)
        return
    data = bytearray(36)
    data[0] = 0x60 | TYPE_NO_LUN & 0x1F     # qualifier 011b: no device at this LUN
    data[2] = 0x06
    data[3] = 0x02
    data[4] = 31
    _copy_out(cmd, bytes(data))


def _request_sense_no_lun(cmd: scst_cmd) -> None:
    buf = bytearray(96)
    desc = bool(cmd.cdb[1] & 0x01)
    n = scst_build_sense(buf, desc, *scst_sense_lun_not_supported)
    _copy_out(cmd, bytes(buf[:n]))


def scst_local_exec(cmd: scst_cmd) -> None:
    op = cmd.cdb[0]
    if op == REPORT_LUNS:
        scst_report_luns_local(cmd)
    elif op == INQUIRY:
        _inquiry_no_lun(cmd)
    elif op == REQUEST_SENSE:
        _request_sense_no_lun(cmd)
    else:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
