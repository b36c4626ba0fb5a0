"""Virtual disk dev handlers, common part: the device structure, parse, the
exec dispatch table and every SBC-3/SPC-4 command that does not touch the
backing store's data (INQUIRY and its VPD pages, READ CAPACITY, MODE
SENSE/SELECT, REQUEST SENSE, TEST UNIT READY, START STOP UNIT, PREVENT
ALLOW MEDIUM REMOVAL), plus the range and flag checks of the data commands
whose I/O the backends do (vdisk.fileio, vdisk.nullio). Also the
management entry points vdisk_add_device / vdisk_del_device and the module
init vdisk_init / vdisk_exit with the module parameter num_threads.

Twin of scst/src/dev_handlers/scst_vdisk.c, split per STYLE.md: this file
holds what scst_vdisk.c shares between its handlers; fileio.py,
blockio.py, nullio.py and cdrom.py hold the handlers' own parts.

Contexts: parse() from any context (never sleeps). exec() runs where the
core runs it: a device kthread for vdisk_fileio, vdisk_blockio, vcdrom
(they sleep in vfs calls) and vdisk_nbd (it sleeps until the server
answers), any context for vdisk_nullio (exec_atomic). vdisk_add_device,
vdisk_del_device, vdisk_init and vdisk_exit sleep: task context.

Differs from SCST: backends plug in through a vdisk_io_ops record instead
of per-handler function tables; only the commands listed above plus
READ/WRITE/VERIFY/WRITE AND VERIFY/SYNCHRONIZE CACHE/UNMAP/GET LBA STATUS
are implemented, anything else is answered INVALID COMMAND OPERATION CODE.
Mode parameters are not saveable. The target port designators of VPD
page 0x83, INQUIRY's TPGS field and REPORT/SET TARGET PORT GROUPS come
from the core's ALUA code (scst_core.tg), as SCST's scst_tg.c provides them.

cluster_mode (SCST's vdisk attribute): the device is shared with other
uscstd nodes; MODE SELECT's unit attention and PERSISTENT RESERVE OUT go
through scst_core.cluster, which agrees with the peers before the command
completes (so exec sleeps: not for vdisk_nullio's atomic exec).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

import attrs

from kshim.err import EEXIST, EINVAL, ENODEV, ENOENT, ENOSPC
from kshim.fs import IOCB_DSYNC
from kshim.module import (MODULE_DESCRIPTION, MODULE_LICENSE, MODULE_PARM_DESC, THIS_MODULE,
                          module_exit, module_init, module_param)
from kshim.mutex import mutex
from kshim.printk import pr_err, pr_info
from kshim.sched import task_struct
from kshim.scatterlist import sg_copy_from_buffer
from scst_core import cluster_dev
from scst_core.cluster import scst_cluster_dev_event_wait
from scst_core.cluster_dev import scst_cluster_pr_out
from scst_core.cluster_proto import CL_EV_MODE
from scst_core.const import (SCST_SENSE_BUFFERSIZE, ASSOCIATION_LU, CODE_SET_ASCII,
                             CODE_SET_BINARY, CODE_SET_UTF8,
                             DESIGNATOR_TYPE_NAA, DESIGNATOR_TYPE_SCSI_NAME_STRING,
                             DESIGNATOR_TYPE_T10_VENDOR, MODE_PAGE_ALL, MODE_PAGE_CACHING,
                             MODE_PAGE_CONTROL, MODE_PAGE_INFO_EXCEPTIONS,
                             MODE_PAGE_RW_ERROR_RECOVERY, MODE_SENSE_PC_CHANGEABLE,
                             MODE_SENSE_PC_CURRENT, MODE_SENSE_PC_DEFAULT, MODE_SENSE_PC_SAVED,
                             TYPE_DISK, VERSION_DESCRIPTOR_ISCSI, VERSION_DESCRIPTOR_SAM5,
                             VERSION_DESCRIPTOR_SBC3, VERSION_DESCRIPTOR_SPC4, VPD_BLOCK_LIMITS,
                             VPD_BLOCK_DEVICE_CHARACTERISTICS, VPD_DEVICE_IDENTIFICATION,
                             VPD_LOGICAL_BLOCK_PROVISIONING, VPD_SUPPORTED_PAGES,
                             VPD_EXTENDED_INQUIRY, VPD_UNIT_SERIAL_NUMBER,
                             scst_sense_block_out_range_error,
                             scst_sense_invalid_opcode,
                             scst_sense_medium_removal_prevented, scst_sense_miscompare_error,
                             scst_sense_no_medium, scst_sense_no_sense,
                             scst_sense_parameter_list_length_invalid,
                             scst_sense_mode_params_changed_UA, scst_sense_read_error,
                             scst_sense_saving_params_unsup,
                             scst_sense_space_allocation_failed, scst_sense_write_error,
                             scst_sense_write_protected)
from scst_core.lib import (scst_build_sense, scst_get_buf_full, scst_set_cmd_error,
                           scst_set_invalid_field_in_cdb,
                           scst_set_invalid_field_in_parm_list, scst_set_resp_data_len)
from scst_core.main import (scst_register_virtual_dev_driver, scst_register_virtual_device,
                            scst_unregister_virtual_dev_driver, scst_unregister_virtual_device)
from scst_core.pres import (scst_dev_reset_hooks, scst_pr_clear_dev, scst_pr_dev, scst_pr_exec_in,
                            scst_pr_exec_out, scst_pr_init_dev,
                            scst_pr_nexus_gone, scst_release_local, scst_reserve_local)
from scst_core.scst import (SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME, SCST_EXEC_COMPLETED,
                            SCST_WRITE_MEDIUM, scst_cmd, scst_dev_type, scst_device,
                            scst_tgt_dev)
from scst_core.tg import (scst_tg_exec_report_tpgs, scst_tg_port_designators,
                          scst_tg_set_group_info, scst_tg_tpgs)
from scst_core.ua import scst_queue_ua
from vdisk.opcodes import (vdisk_report_supported_opcodes, vdisk_report_supported_tm_fns,
                           vdisk_usage_table)

# Design notes:
# - parse() does every check that needs no I/O (write protection, PI
#   fields, LBA range), so a bad command is answered before the core
#   allocates a buffer or asks for Data-Out.
# - exec() dispatches on the opcode through vdisk_exec_table; a backend
#   supplies the data path as a vdisk_io_ops record, so one table serves
#   fileio and nullio.
# - Caching: write_through=1 is the default (SCST's is 0): WCE=0, and a
#   write's GOOD status waits for the flush of what it wrote (SBC-3 4.15),
#   so an acknowledged block survives a crash of the daemon or the host.
#   write_through=0 (or MODE SELECT WCE=1) is write-back: only FUA writes
#   and SYNCHRONIZE CACHE flush. o_dsync=1 opens the file O_DSYNC, so each
#   write is stable when the write call returns, whatever WCE says.
#   nv_cache=1 makes flushes no-ops (the cache is declared non-volatile).

VDISK_VENDOR = "USCST"
VDISK_PROD_REV_LVL = "0100"
VDISK_MAX_UNMAP_LBA_COUNT = 1 << 20          # per descriptor
VDISK_MAX_UNMAP_DESCRIPTORS = 256
VDISK_MAX_TRANSFER_BYTES = 8 << 20           # block limits MAXIMUM TRANSFER LENGTH
VDISK_OPT_TRANSFER_BYTES = 512 << 10
VDISK_MAX_CAW_BLOCKS = 255                   # block limits MAXIMUM COMPARE AND WRITE LENGTH
VDISK_MAX_WRITE_SAME_BYTES = 64 << 20        # block limits MAXIMUM WRITE SAME LENGTH
VDISK_MAX_ATOMIC_BYTES = 1 << 20             # block limits MAXIMUM ATOMIC TRANSFER LENGTH
VDISK_MAX_PREFETCH_BYTES = 64 << 20
# SANITIZE (vdisk.sbc): default pace of the erase in MiB/s (the sanitize_rate
# device attribute); vdisk.sbc's docstring says why 10.
VDISK_SANITIZE_RATE = 10
VDISK_SANITIZE_RATE_MAX = 1 << 20
# scst_vdisk_dev.sanitize_state (SBC-3 4.11)
VDISK_SANITIZE_NONE = 0
VDISK_SANITIZE_IN_PROGRESS = 1
VDISK_SANITIZE_FAILED = 2
# An exec function returns this when it will complete the command itself
# later (vdisk_cmd_done from another context); otherwise it returns None.
VDISK_EXEC_ASYNC = 1

# INQUIRY/VPD field positions used in field pointers
_EVPD_BYTE = 1
_PAGE_CODE_BYTE = 2


@attrs.define(slots=True, eq=False)
class vdisk_io_ops:
    """The data path a backend supplies. Each function returns 0 or sets
    the sense itself and returns a nonzero value (the negative errno)."""
    # read cmd.data_len bytes at cmd.lba into the command's buffer
    read: Callable[["scst_vdisk_dev", scst_cmd, int, int], int]
    # write cmd.bufflen bytes from the command's buffer at byte offset
    write: Callable[["scst_vdisk_dev", scst_cmd, int, int], int]
    # read length bytes at byte offset into a bytearray (for VERIFY compare)
    read_into: Callable[["scst_vdisk_dev", scst_cmd, int, bytearray], int]
    # make [offset, offset+length) stable; length 0: to the end
    sync: Callable[["scst_vdisk_dev", scst_cmd, int, int], int]
    # deallocate [offset, offset+length)
    unmap: Callable[["scst_vdisk_dev", scst_cmd, int, int], int]
    # (mapped, extent_blocks) for the run of blocks starting at lba
    lba_status: Callable[["scst_vdisk_dev", int], tuple[bool, int]] | None = None
    # write a buffer (not the command's) at a byte offset: WRITE SAME,
    # COMPARE AND WRITE, ORWRITE, SANITIZE
    write_buf: Callable[["scst_vdisk_dev", scst_cmd, int, "bytes | memoryview"], int] | None = None


@attrs.define(slots=True, eq=False)
class scst_vdisk_dev:
    """One virtual disk (scst_vdisk.c: struct scst_vdisk_dev)."""
    name: str
    # set at creation from the add_device parameters; fixed afterwards
    filename: str = ""
    nullio: bool = False
    block_size: int = 512
    block_shift: int = 9
    # log2(logical blocks per physical block): physical_blocksize parameter
    lbppbe: int = 0
    rd_only: bool = False
    nv_cache: bool = False
    o_direct: bool = False
    removable: bool = False
    cdrom: bool = False                 # vcdrom: MMC device, read-only, removable
    rotational: bool = True
    thin_provisioned: bool = False
    thin_provisioned_set: bool = False  # given as a parameter (else the backend decides)
    cluster_mode: bool = False          # shared with other nodes (scst_core.cluster)
    # nullio's `dummy` parameter (SCST: a placeholder device); uscst keeps
    # and shows it, a nullio device already being data-free
    dummy: bool = False
    t10_vend_id: str = VDISK_VENDOR
    vend_specific_id: str = ""
    prod_id: str = ""
    prod_rev_lvl: str = VDISK_PROD_REV_LVL
    scsi_device_name: str = ""
    t10_dev_id: str = ""
    usn: str = ""
    naa_id: bytes = b""
    # a handler's own add_device parameters (vdisk_nbd's uri...), as given
    backend_params: dict = attrs.field(factory=dict)
    # set by attach, cleared by detach: touched by task context only
    # the backend's handle, void * to the core: a kshim.fs.file for fileio,
    # blockio and vcdrom; a vdisk.nbd_client.nbd_device for vdisk_nbd
    file: Any = None
    file_size: int = 0                  # bytes the device exposes
    nblocks: int = 0
    dev: scst_device | None = None
    io_ops: vdisk_io_ops | None = None
    pr_dev: scst_pr_dev | None = None   # set by attach
    # mode parameters and medium state: changed only by MODE SELECT,
    # START STOP UNIT and PREVENT ALLOW, which the core serializes
    # (SCST_STRICTLY_SERIALIZED) or which touch one bool: no lock.
    wt_flag: bool = True                # write_through; WCE = not wt_flag
    o_dsync: bool = False               # open the file O_DSYNC (parameter)
    dsync_open: bool = False            # file opened with O_DSYNC
    media_present: bool = True
    prevent_medium_removal: bool = False
    # I_T_L nexuses (tgt_devs) that sent PREVENT ALLOW with PREVENT=1;
    # removal is prevented while any is left (SBC-3 5.13)
    prevent_set: list = attrs.field(factory=list)
    # serializes COMPARE AND WRITE, ORWRITE and WRITE ATOMIC (sleeps)
    caw_mutex: mutex = attrs.field(factory=lambda: mutex("caw_mutex"))
    # SANITIZE (vdisk.sbc, SBC-3 4.11). sanitize_rate: set at creation or
    # through the management tree. The rest is written by
    # vdisk_exec_sanitize (exec context) and by the device's sanitize
    # kthread; one CPU, no preemption, and neither sleeps between the writes
    # that belong together: no lock.
    sanitize_rate: int = VDISK_SANITIZE_RATE    # MiB/s the erase is paced at
    sanitize_state: int = VDISK_SANITIZE_NONE   # the exec gate tests only this
    sanitize_progress: int = 0                  # 0..65535 of the running operation
    sanitize_ause: bool = False                 # AUSE of the operation that failed
    sanitize_thread: task_struct | None = None  # the kthread of the running operation
    sanitize_cmd: scst_cmd | None = None        # SANITIZE IMMED=0 waiting for the end


# The core fills this in to hand REQUEST SENSE a pending sense (bytes,
# fixed format) of the I_T nexus, or None.
vdisk_pending_sense_hook: Callable[[scst_cmd], bytes | None] | None = None


# ---------------------------------------------------------------- identity

def _name_digest(name: str) -> bytes:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()


def vdisk_gen_usn(name: str) -> str:
    """Stable unit serial number derived from the device name."""
    return _name_digest(name).hex()[:16]


def vdisk_gen_naa_id(name: str) -> bytes:
    """Stable 8-byte NAA locally assigned (type 3) designator from the name."""
    v = int.from_bytes(_name_digest(name)[:8], "big") & ((1 << 60) - 1)
    return ((0x3 << 60) | v).to_bytes(8, "big")


def _ascii_field(s: str, n: int) -> bytes:
    """Left-aligned, space-padded printable ASCII field of n bytes."""
    b = bytes(c if 0x20 <= c <= 0x7E else 0x20 for c in s.encode("ascii", "replace"))
    return b[:n].ljust(n, b" ")


# ---------------------------------------------------------------- helpers

def vdisk_copy_resp(cmd: scst_cmd, data: "bytes | bytearray") -> None:
    """Put Data-In into the command's buffer, truncated to the allocation
    length, and set the response length."""
    n = min(len(data), cmd.bufflen)
    if n:
        sg_copy_from_buffer(cmd.sg, cmd.sg_cnt or len(cmd.sg), memoryview(data)[:n])
    scst_set_resp_data_len(cmd, n)


def vdisk_set_sense_info(cmd: scst_cmd, info: int) -> None:
    """Set the INFORMATION field of the sense already set on cmd."""
    sense = cmd.sense
    if sense is None or not cmd.sense_valid_len:
        return
    cmd.sense_valid_len = vdisk_sense_info(sense, cmd.sense_valid_len, info)


def vdisk_sense_info(sense: bytearray, length: int, info: int) -> int:
    """Set the INFORMATION field of the length bytes of sense in sense (a
    buffer with room for a descriptor): the sense's new length."""
    if sense[0] & 0x7F in (0x72, 0x73):
        off = 8 + sense[7]
        sense[off:off + 12] = bytes((0x00, 0x0A, 0x80, 0)) + (info & (2**64 - 1)).to_bytes(8, "big")
        sense[7] += 12
        return off + 12
    sense[0] |= 0x80
    sense[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    return length


def vdisk_io_error(virt_dev: "scst_vdisk_dev", write: bool, pos: int, length: int,
                   n: int) -> tuple[tuple[int, int, int], int]:
    """An asynchronous READ or WRITE of length bytes at pos ended with n
    (-errno, or a short count): log it, and return the sense it gets and
    the block for the sense's INFORMATION field (the first not done; -1:
    none). One mapping for a command's end_io and a predicted one's."""
    pr_err(f"{virt_dev.dev.handler.name}: {virt_dev.name}: {'write' if write else 'read'} of "
           f"{length} bytes at {pos} failed: {n}")
    if write and n == -ENOSPC and virt_dev.thin_provisioned:
        return scst_sense_space_allocation_failed, -1
    return ((scst_sense_write_error if write else scst_sense_read_error),
            (pos + max(n, 0)) >> virt_dev.block_shift)


def vdisk_set_io_error(cmd: scst_cmd, key_asc_ascq: tuple[int, int, int], info: int) -> None:
    """cmd ends with vdisk_io_error's sense (and INFORMATION, info >= 0)."""
    scst_set_cmd_error(cmd, key_asc_ascq)
    if info >= 0:
        vdisk_set_sense_info(cmd, info)


def vdisk_fast_sense(dev: scst_device, key_asc_ascq: tuple[int, int, int], info: int) -> bytes:
    """The sense bytes scst_set_cmd_error (and vdisk_set_sense_info, when
    info >= 0) would give a command of dev, for a predicted command that
    has none (scst_core.fastpath)."""
    sense = bytearray(SCST_SENSE_BUFFERSIZE)
    n = scst_build_sense(sense, dev.d_sense, *key_asc_ascq)
    if info >= 0:
        n = vdisk_sense_info(sense, n, info)
    return bytes(sense[:n])


def vdisk_cmd_done(cmd: scst_cmd) -> int:
    cmd.scst_cmd_done(cmd, SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)
    return SCST_EXEC_COMPLETED


def _virt_dev(cmd: scst_cmd) -> scst_vdisk_dev:
    return cmd.dev.dh_priv


def vdisk_check_range(cmd: scst_cmd, virt_dev: scst_vdisk_dev, lba: int, nblocks: int) -> bool:
    """True if [lba, lba+nblocks) lies on the medium; otherwise set
    LOGICAL BLOCK ADDRESS OUT OF RANGE (SBC-3 4.5) and return False. A
    zero-length range is checked at its LBA."""
    if lba >= virt_dev.nblocks or lba + nblocks > virt_dev.nblocks:
        scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
        return False
    return True


# Opcodes with a PROTECT field in byte 1 bits 7:5 (RDPROTECT, WRPROTECT,
# VRPROTECT, ORPROTECT).
_PROTECT_OPS = frozenset((0x28, 0x2A, 0x2E, 0x2F, 0x88, 0x89, 0x8A, 0x8B, 0x8E, 0x8F,
                          0xA8, 0xAA, 0xAE, 0xAF, 0x41, 0x93, 0x9C))
# Block commands whose LBA range parse() checks (all but WRITE SAME and
# SYNCHRONIZE CACHE, which have "to the end" semantics for length 0).
_RANGE_OPS = frozenset((0x08, 0x0A, 0x28, 0x2A, 0x2E, 0x2F, 0x88, 0x89, 0x8A, 0x8B, 0x8E,
                        0x8F, 0x9C, 0xA8, 0xAA, 0xAE, 0xAF))
# Commands whose Data-Out length is fixed by the CDB -> byte of the length field
_EXACT_DATA_OUT_OPS = {0x41: 7, 0x93: 10, 0x89: 13}
# Commands that need the medium (NOT READY, MEDIUM NOT PRESENT without it).
_MEDIUM_OPS = _RANGE_OPS | frozenset((0x04, 0x25, 0x34, 0x35, 0x37, 0x41, 0x42, 0x48, 0x90,
                                      0x91, 0x93, 0x9E, 0xB7))


# ---------------------------------------------------------------- parse

def vdisk_parse(cmd: scst_cmd) -> int:
    """Checks that need no I/O. Sets the sense and leaves cmd.status set on
    failure; always returns SCST_CMD_STATE_DEFAULT."""
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    cdb = cmd.cdb
    op = cdb[0]
    if op in _MEDIUM_OPS and not virt_dev.media_present:
        scst_set_cmd_error(cmd, scst_sense_no_medium)
        return SCST_CMD_STATE_DEFAULT
    if op in _PROTECT_OPS and cdb[1] & 0xE0:
        # No protection information on this device (SBC-3 4.22.2); a CDB
        # field error comes before the write protection check.
        scst_set_invalid_field_in_cdb(cmd, 1, 7)
        return SCST_CMD_STATE_DEFAULT
    if cmd.op_flags & SCST_WRITE_MEDIUM and (virt_dev.rd_only or cmd.dev.swp):
        scst_set_cmd_error(cmd, scst_sense_write_protected)
        return SCST_CMD_STATE_DEFAULT
    if op in _RANGE_OPS:
        n = cmd.data_len >> virt_dev.block_shift
        lba = cmd.lba
        # vdisk_check_range's test first: the call only to set the sense
        if (lba >= virt_dev.nblocks or lba + n > virt_dev.nblocks) \
                and not vdisk_check_range(cmd, virt_dev, lba, n):
            return SCST_CMD_STATE_DEFAULT
    if op in _EXACT_DATA_OUT_OPS and cmd.expected_transfer_len != cmd.bufflen:
        # The Data-Out must be exactly what the CDB implies (one block for
        # WRITE SAME, twice the blocks for COMPARE AND WRITE).
        scst_set_invalid_field_in_cdb(cmd, _EXACT_DATA_OUT_OPS[op])
    return SCST_CMD_STATE_DEFAULT


# ---------------------------------------------------------------- INQUIRY

_SBC_VPD_PAGES = frozenset((VPD_BLOCK_LIMITS, VPD_BLOCK_DEVICE_CHARACTERISTICS,
                            VPD_LOGICAL_BLOCK_PROVISIONING))


def vdisk_inquiry_std(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bytes:
    buf = bytearray(96)
    buf[0] = cmd.dev.type & 0x1F
    buf[1] = 0x80 if virt_dev.removable else 0
    buf[2] = 0x06                       # SPC-4
    buf[3] = 0x10 | 0x02                # HISUP, response data format 2
    buf[4] = len(buf) - 5
    buf[5] = (scst_tg_tpgs(cmd.dev) & 3) << 4    # ALUA support (scst_core.tg)
    if not virt_dev.cdrom:
        buf[5] |= 0x08                  # 3PC: EXTENDED COPY (vdisk.xcopy)
    buf[7] = 0x02                       # CMDQUE
    buf[8:16] = _ascii_field(virt_dev.t10_vend_id, 8)
    buf[16:32] = _ascii_field(virt_dev.prod_id, 16)
    buf[32:36] = _ascii_field(virt_dev.prod_rev_lvl, 4)
    off = 58
    for vd in (VERSION_DESCRIPTOR_SAM5, VERSION_DESCRIPTOR_ISCSI, VERSION_DESCRIPTOR_SBC3,
               VERSION_DESCRIPTOR_SPC4):
        buf[off:off + 2] = vd.to_bytes(2, "big")
        off += 2
    return bytes(buf)


def _designator(code_set: int, assoc_type: int, ident: bytes) -> bytes:
    return bytes((code_set, assoc_type, 0, len(ident))) + ident


def vdisk_device_identification(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bytes:
    out = bytearray()
    t10 = _ascii_field(virt_dev.t10_vend_id, 8) + \
        virt_dev.vend_specific_id.encode("ascii", "replace")[:244]
    out += _designator(CODE_SET_ASCII, ASSOCIATION_LU | DESIGNATOR_TYPE_T10_VENDOR, t10)
    out += _designator(CODE_SET_BINARY, ASSOCIATION_LU | DESIGNATOR_TYPE_NAA, virt_dev.naa_id)
    if virt_dev.scsi_device_name:
        name = virt_dev.scsi_device_name.encode("utf-8")[:251] + b"\x00"
        name = name.ljust((len(name) + 3) & ~3, b"\x00")
        out += _designator(CODE_SET_UTF8, ASSOCIATION_LU | DESIGNATOR_TYPE_SCSI_NAME_STRING, name)
    out += scst_tg_port_designators(cmd)       # the port the command came through
    return bytes(out)


def _supported_vpd_pages(virt_dev: scst_vdisk_dev) -> bytes:
    if virt_dev.cdrom:
        return bytes((VPD_SUPPORTED_PAGES, VPD_UNIT_SERIAL_NUMBER, VPD_DEVICE_IDENTIFICATION,
                      VPD_EXTENDED_INQUIRY))
    from vdisk.xcopy import VPD_THIRD_PARTY_COPY  # cycle: xcopy imports this module
    return bytes((VPD_SUPPORTED_PAGES, VPD_UNIT_SERIAL_NUMBER, VPD_DEVICE_IDENTIFICATION,
                  VPD_EXTENDED_INQUIRY, VPD_THIRD_PARTY_COPY, VPD_BLOCK_LIMITS,
                  VPD_BLOCK_DEVICE_CHARACTERISTICS, VPD_LOGICAL_BLOCK_PROVISIONING))


def vdisk_extended_inquiry(virt_dev: scst_vdisk_dev) -> bytes:
    """Extended INQUIRY Data VPD page (SPC-4 7.8.7), header included."""
    buf = bytearray(64)
    buf[3] = 0x3C
    buf[5] = 0x07                       # HEADSUP, ORDSUP, SIMPSUP (scst_core.targ)
    buf[6] = 0x00 if virt_dev.nv_cache else 0x01    # V_SUP: a volatile cache exists
    buf[7] = 0x01                       # LUICLR: UAs are cleared per I_T_L nexus
    return bytes(buf)


def vdisk_block_limits(virt_dev: scst_vdisk_dev) -> bytes:
    """Block Limits VPD page (SBC-3 6.5.3), header included."""
    buf = bytearray(0x40)
    buf[3] = 0x3C
    shift = virt_dev.block_shift
    buf[4] = 0x00                                                # WSNZ=0: 0 blocks = to the end
    buf[5] = VDISK_MAX_CAW_BLOCKS
    buf[6:8] = max(1, 4096 >> shift).to_bytes(2, "big")         # opt. granularity
    buf[8:12] = (VDISK_MAX_TRANSFER_BYTES >> shift).to_bytes(4, "big")
    buf[12:16] = (VDISK_OPT_TRANSFER_BYTES >> shift).to_bytes(4, "big")
    buf[16:20] = (VDISK_MAX_PREFETCH_BYTES >> shift).to_bytes(4, "big")
    if virt_dev.thin_provisioned:
        buf[20:24] = VDISK_MAX_UNMAP_LBA_COUNT.to_bytes(4, "big")
        buf[24:28] = VDISK_MAX_UNMAP_DESCRIPTORS.to_bytes(4, "big")
        buf[28:32] = max(1, 4096 >> shift).to_bytes(4, "big")   # opt. unmap granularity
        buf[32:36] = (0x80000000).to_bytes(4, "big")            # UGAVALID, alignment 0
    buf[36:44] = (VDISK_MAX_WRITE_SAME_BYTES >> shift).to_bytes(8, "big")
    atomic = VDISK_MAX_ATOMIC_BYTES >> shift
    buf[44:48] = atomic.to_bytes(4, "big")                      # MAXIMUM ATOMIC TRANSFER LENGTH
    buf[48:52] = (1).to_bytes(4, "big")                         # ATOMIC ALIGNMENT
    buf[52:56] = (1).to_bytes(4, "big")                         # ATOMIC TRANSFER LENGTH GRANULARITY
    return bytes(buf)


def vdisk_block_characteristics(virt_dev: scst_vdisk_dev) -> bytes:
    buf = bytearray(0x40)
    buf[3] = 0x3C
    buf[4:6] = (0 if virt_dev.rotational else 1).to_bytes(2, "big")  # 1: non-rotating
    buf[7] = 0x40 | 0x10                # WABEREQ=01b, WACEREQ=01b: erased blocks read GOOD
    return bytes(buf)


def vdisk_lbp(virt_dev: scst_vdisk_dev) -> bytes:
    buf = bytearray(8)
    buf[3] = 4
    if virt_dev.thin_provisioned:
        buf[5] = 0x80 | 0x40 | 0x20 | 0x04  # LBPU LBPWS LBPWS10, LBPRZ (holes read as zeros)
        buf[6] = 0x02                   # provisioning type: thin
    return bytes(buf)


def _vpd_page(page: int, cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bytes | None:
    if page == VPD_SUPPORTED_PAGES:
        body = _supported_vpd_pages(virt_dev)
    elif page == VPD_UNIT_SERIAL_NUMBER:
        body = virt_dev.usn.encode("ascii", "replace")
    elif page == VPD_DEVICE_IDENTIFICATION:
        body = vdisk_device_identification(cmd, virt_dev)
    elif page == VPD_EXTENDED_INQUIRY:
        body = vdisk_extended_inquiry(virt_dev)[4:]
    elif page in _SBC_VPD_PAGES and virt_dev.cdrom:
        return None
    elif page == VPD_BLOCK_LIMITS:
        body = vdisk_block_limits(virt_dev)[4:]
    elif page == VPD_BLOCK_DEVICE_CHARACTERISTICS:
        body = vdisk_block_characteristics(virt_dev)[4:]
    elif page == VPD_LOGICAL_BLOCK_PROVISIONING:
        body = vdisk_lbp(virt_dev)[4:]
    elif page == 0x8F and not virt_dev.cdrom:   # Third-party Copy (vdisk.xcopy)
        from vdisk.xcopy import vdisk_third_party_copy_vpd  # cycle: xcopy imports this module
        body = vdisk_third_party_copy_vpd(virt_dev)
    else:
        return None
    return bytes((cmd.dev.type & 0x1F, page)) + len(body).to_bytes(2, "big") + body


def vdisk_exec_inquiry(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    cdb = cmd.cdb
    if cdb[1] & 0x02:                   # CMDDT (obsolete)
        scst_set_invalid_field_in_cdb(cmd, _EVPD_BYTE, 1)
        return
    if cdb[1] & 0x01:
        data = _vpd_page(cdb[2], cmd, virt_dev)
        if data is None:
            scst_set_invalid_field_in_cdb(cmd, _PAGE_CODE_BYTE)
            return
    else:
        if cdb[2]:
            scst_set_invalid_field_in_cdb(cmd, _PAGE_CODE_BYTE)
            return
        data = vdisk_inquiry_std(cmd, virt_dev)
    vdisk_copy_resp(cmd, data)


# ---------------------------------------------------------------- simple ones

def vdisk_exec_request_sense(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    desc = bool(cmd.cdb[1] & 0x01)
    buf = bytearray(96)
    if virt_dev.sanitize_state:
        # SBC-3 4.11.2: the sanitize state, with its progress indication.
        from vdisk.sbc import vdisk_sanitize_sense  # cycle: sbc imports this module
        vdisk_copy_resp(cmd, buf[:vdisk_sanitize_sense(buf, desc, virt_dev)])
        return
    pending = vdisk_pending_sense_hook(cmd) if vdisk_pending_sense_hook is not None else None
    if pending:
        key, asc, ascq = pending[2] & 0x0F, pending[12], pending[13]
        n = scst_build_sense(buf, desc, key, asc, ascq)
    else:
        n = scst_build_sense(buf, desc, *scst_sense_no_sense)
    vdisk_copy_resp(cmd, buf[:n])


def vdisk_exec_test_unit_ready(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if not virt_dev.media_present:
        scst_set_cmd_error(cmd, scst_sense_no_medium)


def vdisk_exec_start_stop(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    b4 = cmd.cdb[4]
    power_condition = b4 >> 4
    loej = bool(b4 & 0x02)
    start = bool(b4 & 0x01)
    if power_condition or not loej:
        return                          # power conditions and plain start/stop: accepted
    if not virt_dev.removable:
        scst_set_invalid_field_in_cdb(cmd, 4, 1)
        return
    if virt_dev.prevent_medium_removal:
        # Neither eject nor load while a nexus prevents medium removal.
        scst_set_cmd_error(cmd, scst_sense_medium_removal_prevented)
    else:
        virt_dev.media_present = start


def vdisk_exec_prevent_allow(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """PREVENT=1 on any I_T_L nexus prevents removal until every such
    nexus allows it again, is lost, or a reset clears it (SBC-3 5.13)."""
    prevent = cmd.cdb[4] & 0x03
    if prevent > 1:
        scst_set_invalid_field_in_cdb(cmd, 4, 1)
        return
    if not virt_dev.removable:
        return
    key = cmd.tgt_dev
    lst = virt_dev.prevent_set
    if prevent:
        if key not in lst:
            lst.append(key)
    elif key in lst:
        lst.remove(key)
    virt_dev.prevent_medium_removal = bool(lst)


def vdisk_clear_prevent(virt_dev: scst_vdisk_dev, tgt_dev: object = None) -> None:
    """Drop one nexus's PREVENT (nexus loss), or all of them (reset)."""
    if tgt_dev is None:
        virt_dev.prevent_set.clear()
    elif tgt_dev in virt_dev.prevent_set:
        virt_dev.prevent_set.remove(tgt_dev)
    virt_dev.prevent_medium_removal = bool(virt_dev.prevent_set)


def vdisk_exec_read_capacity(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    cdb = cmd.cdb
    pmi = cdb[8] & 0x01
    if not pmi and int.from_bytes(cdb[2:6], "big"):
        scst_set_invalid_field_in_cdb(cmd, 2)
        return
    last = virt_dev.nblocks - 1
    if last > 0xFFFFFFFE:
        last = 0xFFFFFFFF
    vdisk_copy_resp(cmd, last.to_bytes(4, "big") + virt_dev.block_size.to_bytes(4, "big"))


def vdisk_exec_read_capacity16(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    buf = bytearray(32)
    buf[0:8] = max(virt_dev.nblocks - 1, 0).to_bytes(8, "big")
    buf[8:12] = virt_dev.block_size.to_bytes(4, "big")
    buf[13] = virt_dev.lbppbe
    if virt_dev.thin_provisioned:
        buf[14] = 0x80 | 0x40           # LBPME, LBPRZ
    vdisk_copy_resp(cmd, buf)


def vdisk_exec_get_lba_status(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    lba = cmd.lba
    if lba >= virt_dev.nblocks:
        scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
        return
    ops = virt_dev.io_ops
    if ops.lba_status is not None:
        mapped, extent = ops.lba_status(virt_dev, lba)
    else:
        mapped, extent = True, virt_dev.nblocks - lba
    extent = max(1, min(extent, virt_dev.nblocks - lba, 0xFFFFFFFF))
    desc = lba.to_bytes(8, "big") + extent.to_bytes(4, "big") + bytes((0 if mapped else 1, 0, 0, 0))
    vdisk_copy_resp(cmd, (len(desc) + 4).to_bytes(4, "big") + bytes(4) + desc)


# ---------------------------------------------------------------- MODE SENSE / SELECT

def _page_rw_error_recovery(virt_dev: scst_vdisk_dev, pc: int) -> bytearray:
    p = bytearray(12)
    p[0], p[1] = MODE_PAGE_RW_ERROR_RECOVERY, 10
    return p


def _page_caching(virt_dev: scst_vdisk_dev, pc: int) -> bytearray:
    p = bytearray(20)
    p[0], p[1] = MODE_PAGE_CACHING, 18
    if pc == MODE_SENSE_PC_CHANGEABLE:
        p[2] = 0x04                     # WCE
    elif pc == MODE_SENSE_PC_CURRENT and not virt_dev.wt_flag:
        p[2] = 0x04
    return p


def _page_control(virt_dev: scst_vdisk_dev, pc: int) -> bytearray:
    dev = virt_dev.dev
    p = bytearray(12)
    p[0], p[1] = MODE_PAGE_CONTROL, 10
    if pc == MODE_SENSE_PC_CHANGEABLE:
        p[2] = 0x20 | 0x04              # TST (000b or 001b), D_SENSE
        p[3] = 0x10 | 0x06              # QUEUE ALGORITHM MODIFIER (0 or 1), QERR (not 10b)
        p[4] = 0x08                     # SWP
        p[5] = 0x40                     # TAS
        return p
    if pc == MODE_SENSE_PC_DEFAULT:
        p[2] = 0x02                     # GLTSD
        p[3] = 0x10
    else:
        p[2] = (dev.tst & 7) << 5 | (0x04 if dev.d_sense else 0) | 0x02
        p[3] = (dev.queue_alg & 0x0F) << 4 | (dev.qerr & 3) << 1
        p[4] = 0x08 if dev.swp else 0
        p[5] = 0x40 if dev.tas else 0
    p[8:10] = b"\xff\xff"               # BUSY TIMEOUT PERIOD: unlimited
    return p


def _page_info_exceptions(virt_dev: scst_vdisk_dev, pc: int) -> bytearray:
    p = bytearray(12)
    p[0], p[1] = MODE_PAGE_INFO_EXCEPTIONS, 10
    if pc != MODE_SENSE_PC_CHANGEABLE:
        p[2] = 0x08                     # DEXCPT: no informational exceptions
    return p


# page code -> builder(virt_dev, pc), in ascending page order
vdisk_mode_pages: dict[int, Callable[[scst_vdisk_dev, int], bytearray]] = {
    MODE_PAGE_RW_ERROR_RECOVERY: _page_rw_error_recovery,
    MODE_PAGE_CACHING: _page_caching,
    MODE_PAGE_CONTROL: _page_control,
    MODE_PAGE_INFO_EXCEPTIONS: _page_info_exceptions,
}


def vdisk_exec_mode_sense(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    cdb = cmd.cdb
    ten = cdb[0] == 0x5A
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    pc = cdb[2] >> 6
    page = cdb[2] & 0x3F
    subpage = cdb[3]
    if pc == MODE_SENSE_PC_SAVED:
        scst_set_cmd_error(cmd, scst_sense_saving_params_unsup)
        return
    if subpage not in (0x00, 0xFF):
        scst_set_invalid_field_in_cdb(cmd, 3)
        return
    if page == MODE_PAGE_ALL:
        pages = b"".join(bytes(fn(virt_dev, pc)) for fn in vdisk_mode_pages.values())
    elif page in vdisk_mode_pages:
        pages = bytes(vdisk_mode_pages[page](virt_dev, pc))
    else:
        scst_set_invalid_field_in_cdb(cmd, 2, 5)
        return
    bd = b""
    if not dbd:
        nblocks = virt_dev.nblocks
        if llbaa:
            bd = nblocks.to_bytes(8, "big") + bytes(4) + virt_dev.block_size.to_bytes(4, "big")
        else:
            bd = min(nblocks, 0xFFFFFFFF).to_bytes(4, "big") + b"\x00" + \
                virt_dev.block_size.to_bytes(3, "big")
    dsp = 0x10                          # DPOFUA
    if virt_dev.rd_only or cmd.dev.swp or (cmd.tgt_dev is not None and cmd.tgt_dev.rd_only):
        dsp |= 0x80                     # WP
    if ten:
        total = 8 + len(bd) + len(pages)
        hdr = (total - 2).to_bytes(2, "big") + bytes((0, dsp, 0x01 if llbaa and bd else 0, 0)) + \
            len(bd).to_bytes(2, "big")
    else:
        total = 4 + len(bd) + len(pages)
        hdr = bytes((total - 1, 0, dsp, len(bd)))
    vdisk_copy_resp(cmd, hdr + bd + pages)


def _mode_select_check(cmd: scst_cmd, virt_dev: scst_vdisk_dev, data: memoryview,
                       ten: bool) -> list[tuple[int, bytes]] | None:
    """Validate a MODE SELECT parameter list; return the (page code, new
    page) pairs to apply, or None after setting the sense."""
    hdr_len = 8 if ten else 4
    if len(data) < hdr_len:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return None
    if ten:
        longlba = data[4] & 0x01
        bd_len = int.from_bytes(data[6:8], "big")
        bd_ok = (0, 16) if longlba else (0, 8)
        bd_len_off = 6
    else:
        longlba = 0
        bd_len = data[3]
        bd_ok = (0, 8)
        bd_len_off = 3
    if bd_len not in bd_ok:
        scst_set_invalid_field_in_parm_list(cmd, bd_len_off)
        return None
    off = hdr_len
    if off + bd_len > len(data):
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return None
    if bd_len:
        if longlba:
            bl_off, bl_len = off + 12, 4
        else:
            bl_off, bl_len = off + 5, 3
        if int.from_bytes(data[bl_off:bl_off + bl_len], "big") not in (0, virt_dev.block_size):
            scst_set_invalid_field_in_parm_list(cmd, bl_off)
            return None
        off += bd_len
    changes: list[tuple[int, bytes]] = []
    while off < len(data):
        if off + 2 > len(data):
            scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
            return None
        code = data[off] & 0x3F
        if data[off] & 0x40 or code not in vdisk_mode_pages:
            scst_set_invalid_field_in_parm_list(cmd, off)
            return None
        cur = vdisk_mode_pages[code](virt_dev, MODE_SENSE_PC_CURRENT)
        mask = vdisk_mode_pages[code](virt_dev, MODE_SENSE_PC_CHANGEABLE)
        plen = data[off + 1]
        if plen != cur[1]:
            scst_set_invalid_field_in_parm_list(cmd, off + 1)
            return None
        if off + 2 + plen > len(data):
            scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
            return None
        new = bytes(data[off:off + 2 + plen])
        for i in range(2, 2 + plen):
            diff = (new[i] ^ cur[i]) & ~mask[i] & 0xFF
            if diff:
                scst_set_invalid_field_in_parm_list(cmd, off + i, diff.bit_length() - 1)
                return None
        if code == MODE_PAGE_CONTROL and (new[3] >> 4) > 1:
            scst_set_invalid_field_in_parm_list(cmd, off + 3, 7)
            return None
        if code == MODE_PAGE_CONTROL and (new[3] >> 1) & 3 == 2:      # QERR 10b: reserved
            scst_set_invalid_field_in_parm_list(cmd, off + 3, 2)
            return None
        if new[2:] != bytes(cur[2:]):
            changes.append((code, new))
        off += 2 + plen
    return changes


def _mode_select_apply(virt_dev: scst_vdisk_dev, code: int, new: bytes) -> None:
    dev = virt_dev.dev
    if code == MODE_PAGE_CACHING:
        wt = not new[2] & 0x04
        if wt != virt_dev.wt_flag:
            pr_info(f"vdisk: {virt_dev.name}: write cache {'disabled' if wt else 'enabled'} "
                    f"by MODE SELECT")
        virt_dev.wt_flag = wt
    elif code == MODE_PAGE_CONTROL:
        dev.d_sense = bool(new[2] & 0x04)
        dev.tst = new[2] >> 5
        dev.queue_alg = new[3] >> 4
        dev.qerr = (new[3] >> 1) & 3
        dev.swp = bool(new[4] & 0x08)
        dev.tas = bool(new[5] & 0x40)


def vdisk_exec_mode_select(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    cdb = cmd.cdb
    ten = cdb[0] == 0x55
    if cdb[1] & 0x01:                   # SP: no saved pages
        scst_set_invalid_field_in_cdb(cmd, 1, 0)
        return
    if cmd.bufflen == 0:
        return
    if not cdb[1] & 0x10:               # PF: only SPC page format is understood
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    data = scst_get_buf_full(cmd)
    changes = _mode_select_check(cmd, virt_dev, data, ten)
    if changes is None:
        return
    for code, new in changes:
        _mode_select_apply(virt_dev, code, new)
    if changes:
        # The device's mode pages are shared: the other I_T nexuses learn
        # of the change (SPC-4 6.11).
        for tgt_dev in list(cmd.dev.dev_tgt_dev_list):
            if tgt_dev is not cmd.tgt_dev:
                scst_queue_ua(tgt_dev, scst_sense_mode_params_changed_UA)
        # and a shared device's other nodes take the pages, before GOOD
        scst_cluster_dev_event_wait(cmd.dev, CL_EV_MODE, scst_sense_mode_params_changed_UA,
                                    b"".join(new for _, new in changes))


def vdisk_cluster_mode_pages(dev: scst_device, pages: list[tuple[int, bytes]]) -> int:
    """A peer node's MODE SELECT changed these pages of a shared device:
    take them (scst_cluster_mode_hook). 0, or -EINVAL (logged) for a page
    this device does not have or of another length (the nodes are not
    configured alike)."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    for code, new in pages:
        if code not in vdisk_mode_pages or \
                len(new) != len(vdisk_mode_pages[code](virt_dev, MODE_SENSE_PC_CURRENT)):
            pr_err(f"vdisk: {virt_dev.name}: a peer's mode page {code:#x} of {len(new)} bytes "
                   f"does not fit this device; not taken")
            return -EINVAL
    for code, new in pages:
        _mode_select_apply(virt_dev, code, new)
    return 0


# ---------------------------------------------------------------- data commands

def _fua(cmd: scst_cmd) -> bool:
    op = cmd.cdb[0]
    return op not in (0x08, 0x0A) and bool(cmd.cdb[1] & 0x08)


def vdisk_exec_read(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if cmd.data_len == 0:
        return
    shift = virt_dev.block_shift
    if virt_dev.io_ops.read(virt_dev, cmd, cmd.lba << shift, cmd.data_len) == 0:
        scst_set_resp_data_len(cmd, cmd.data_len)


def vdisk_need_sync(cmd: scst_cmd | None, virt_dev: scst_vdisk_dev, fua: bool) -> bool:
    """Does a write need an explicit flush to reach stable storage?"""
    if virt_dev.nv_cache or virt_dev.dsync_open:
        return False
    return fua or virt_dev.wt_flag


def vdisk_fast_writes(virt_dev: scst_vdisk_dev, items: list) -> Iterator[tuple]:
    """The run of scst_core.fastpath's WRITEs (lba, buf, fua, priv) in
    items a handler's start_fast_list starts, up to the first out of
    range: (pos, buf, kiocb flags, priv), IOCB_DSYNC where the write must
    be durable (FUA or write-through, as vdisk_need_sync decides)."""
    shift = virt_dev.block_shift
    nblocks = virt_dev.nblocks
    sync = IOCB_DSYNC if vdisk_need_sync(None, virt_dev, False) else 0
    for lba, buf, fua, priv in items:
        if lba + (len(buf) >> shift) > nblocks:
            return
        yield (lba << shift, buf,
               (IOCB_DSYNC if vdisk_need_sync(None, virt_dev, True) else 0) if fua else sync, priv)


def vdisk_exec_write(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if cmd.data_len == 0:
        return
    shift = virt_dev.block_shift
    pos = cmd.lba << shift
    ops = virt_dev.io_ops
    if ops.write(virt_dev, cmd, pos, cmd.data_len) != 0:
        return
    # WRITE AND VERIFY: the data must be on the medium before we call it verified.
    fua = _fua(cmd) or cmd.cdb[0] in (0x2E, 0x8E, 0xAE)
    if vdisk_need_sync(cmd, virt_dev, fua):
        ops.sync(virt_dev, cmd, pos, cmd.data_len)


def vdisk_exec_verify(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    bytchk = (cmd.cdb[1] >> 1) & 0x03
    if bytchk == 0 or cmd.data_len == 0:
        return
    shift = virt_dev.block_shift
    ops = virt_dev.io_ops
    expect = scst_get_buf_full(cmd)
    pos = cmd.lba << shift
    left = cmd.data_len
    chunk_max = 1 << 20
    done = 0
    while left > 0:                     # bounded: data_len / 1 MiB iterations
        n = min(left, chunk_max)
        got = bytearray(n)
        if ops.read_into(virt_dev, cmd, pos + done, got) != 0:
            return
        want: bytes | memoryview
        if bytchk == 1:
            want = expect[done:done + n]
        else:                           # one block compared against each block
            bs = virt_dev.block_size
            want = bytes(expect[:bs]) * (n // bs)
        if got != want:
            i = next(i for i in range(n) if got[i] != want[i])
            scst_set_cmd_error(cmd, scst_sense_miscompare_error)
            vdisk_set_sense_info(cmd, done + i)
            return
        done += n
        left -= n


def vdisk_exec_sync_cache(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    shift = virt_dev.block_shift
    n = cmd.data_len >> shift
    if cmd.lba > virt_dev.nblocks or cmd.lba + n > virt_dev.nblocks:
        scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
        return
    if virt_dev.nv_cache:
        return
    virt_dev.io_ops.sync(virt_dev, cmd, cmd.lba << shift, cmd.data_len)


def vdisk_exec_unmap(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if not virt_dev.thin_provisioned:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
        return
    if cmd.cdb[1] & 0x01:               # ANCHOR: anchored LBAs not supported
        scst_set_invalid_field_in_cdb(cmd, 1, 0)
        return
    plen = cmd.bufflen
    if plen == 0:
        return
    if plen < 8:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    data = scst_get_buf_full(cmd)
    bd_len = int.from_bytes(data[2:4], "big")
    if bd_len > plen - 8:
        bd_len = (plen - 8)
    ndesc = bd_len // 16
    if ndesc > VDISK_MAX_UNMAP_DESCRIPTORS:
        scst_set_invalid_field_in_parm_list(cmd, 2)
        return
    ranges = []
    for i in range(ndesc):
        off = 8 + 16 * i
        lba = int.from_bytes(data[off:off + 8], "big")
        cnt = int.from_bytes(data[off + 8:off + 12], "big")
        if cnt > VDISK_MAX_UNMAP_LBA_COUNT:
            scst_set_invalid_field_in_parm_list(cmd, off + 8)
            return
        if lba + cnt > virt_dev.nblocks or (cnt and lba >= virt_dev.nblocks):
            scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
            return
        if cnt:
            ranges.append((lba, cnt))
    shift = virt_dev.block_shift
    for lba, cnt in ranges:
        if virt_dev.io_ops.unmap(virt_dev, cmd, lba << shift, cnt << shift) != 0:
            return


def vdisk_exec_maintenance_in(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    sa = cmd.cdb[1] & 0x1F
    if sa == 0x0C:
        data = vdisk_report_supported_opcodes(cmd, vdisk_usage(virt_dev))
        if data is not None:
            vdisk_copy_resp(cmd, data)
    elif sa == 0x0D:
        vdisk_copy_resp(cmd, vdisk_report_supported_tm_fns(cmd))
    elif sa == 0x0A:
        data = scst_tg_exec_report_tpgs(cmd)      # REPORT TARGET PORT GROUPS
        if data is not None:
            vdisk_copy_resp(cmd, data)
    else:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)


def vdisk_exec_maintenance_out(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if cmd.cdb[1] & 0x1F == 0x0A:
        scst_tg_set_group_info(cmd)               # SET TARGET PORT GROUPS
    else:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)


_usage_cache: dict = {}


def vdisk_usage(virt_dev: scst_vdisk_dev) -> dict:
    """The REPORT SUPPORTED OPERATION CODES rows of this device's type."""
    key = "cdrom" if virt_dev.cdrom else "disk"
    u = _usage_cache.get(key)
    if u is None:
        table = vdisk_cdrom_exec_table if virt_dev.cdrom else vdisk_exec_table
        u = _usage_cache[key] = vdisk_usage_table(table)
    return u


def _exec_pr_in(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    scst_pr_exec_in(cmd)


def _exec_pr_out(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    if cmd.dev.cluster_mode:
        scst_cluster_pr_out(cmd)        # agreed with the other nodes first
    else:
        scst_pr_exec_out(cmd)


def _exec_reserve(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    scst_reserve_local(cmd)


def _exec_release(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    scst_release_local(cmd)


def vdisk_exec_service_action_in(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    sa = cmd.cdb[1] & 0x1F
    if sa == 0x10:
        vdisk_exec_read_capacity16(cmd, virt_dev)
    elif sa == 0x12 and virt_dev.thin_provisioned:
        vdisk_exec_get_lba_status(cmd, virt_dev)
    else:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)


# opcode -> command function; everything else: INVALID COMMAND OPERATION CODE
vdisk_exec_table: dict[int, Callable[[scst_cmd, scst_vdisk_dev], None]] = {
    0x00: vdisk_exec_test_unit_ready,
    0x03: vdisk_exec_request_sense,
    0x08: vdisk_exec_read,
    0x0A: vdisk_exec_write,
    0x12: vdisk_exec_inquiry,
    0x15: vdisk_exec_mode_select,
    0x1A: vdisk_exec_mode_sense,
    0x1B: vdisk_exec_start_stop,
    0x1E: vdisk_exec_prevent_allow,
    0x25: vdisk_exec_read_capacity,
    0x28: vdisk_exec_read,
    0x2A: vdisk_exec_write,
    0x2E: vdisk_exec_write,
    0x2F: vdisk_exec_verify,
    0x35: vdisk_exec_sync_cache,
    0x42: vdisk_exec_unmap,
    0x55: vdisk_exec_mode_select,
    0x5A: vdisk_exec_mode_sense,
    0x88: vdisk_exec_read,
    0x8A: vdisk_exec_write,
    0x8E: vdisk_exec_write,
    0x8F: vdisk_exec_verify,
    0x91: vdisk_exec_sync_cache,
    0x9E: vdisk_exec_service_action_in,
    0xA8: vdisk_exec_read,
    0xAA: vdisk_exec_write,
    0xAE: vdisk_exec_write,
    0xAF: vdisk_exec_verify,
    0x16: _exec_reserve,
    0x17: _exec_release,
    0x56: _exec_reserve,
    0x57: _exec_release,
    0x5E: _exec_pr_in,
    0x5F: _exec_pr_out,
    0xA3: vdisk_exec_maintenance_in,
    0xA4: vdisk_exec_maintenance_out,
}
# the SBC-3 commands of vdisk.sbc
from vdisk.sbc import vdisk_sbc_exec_table  # noqa: E402  (sbc imports this module)
vdisk_exec_table.update(vdisk_sbc_exec_table())
# EXTENDED COPY and RECEIVE COPY RESULTS of vdisk.xcopy
from vdisk.xcopy import vdisk_xcopy_exec_table  # noqa: E402  (xcopy imports this module)
vdisk_exec_table.update(vdisk_xcopy_exec_table())
# what vcdrom dispatches: no writes, no SBC-only commands (MMC-6 4.1)
vdisk_cdrom_exec_table: dict[int, Callable[[scst_cmd, scst_vdisk_dev], None]] = {
    op: fn for op, fn in vdisk_exec_table.items()
    if op in (0x00, 0x03, 0x12, 0x15, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2F, 0x35, 0x55, 0x5A,
              0x5E, 0x5F, 0x16, 0x17, 0x56, 0x57, 0xA3, 0xA8, 0xAF)}


def vdisk_do_exec(cmd: scst_cmd) -> int:
    """Run the command and report it done to the core, now or, when its
    function returns VDISK_EXEC_ASYNC (SANITIZE with IMMED=0), later from
    the context that finishes it. While a sanitize operation runs or has
    failed, vdisk.sbc decides which commands still run (SBC-3 4.11)."""
    virt_dev = _virt_dev(cmd)
    fn = (vdisk_cdrom_exec_table if virt_dev.cdrom else vdisk_exec_table).get(cmd.cdb[0])
    if fn is None:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
    elif not cmd.status:
        if virt_dev.sanitize_state:
            from vdisk.sbc import vdisk_sanitize_check  # cycle: sbc imports this module
            if vdisk_sanitize_check(cmd, virt_dev):
                return vdisk_cmd_done(cmd)
        if fn(cmd, virt_dev) == VDISK_EXEC_ASYNC:
            return SCST_EXEC_COMPLETED
    return vdisk_cmd_done(cmd)


# ---------------------------------------------------------------- attach

def vdisk_attach_common(dev: scst_device, virt_dev: scst_vdisk_dev) -> None:
    """Publish the geometry once the backend knows file_size."""
    virt_dev.dev = dev
    virt_dev.nblocks = virt_dev.file_size >> virt_dev.block_shift
    dev.block_size = virt_dev.block_size
    dev.block_shift = virt_dev.block_shift
    dev.rd_only = virt_dev.rd_only
    dev.cluster_mode = virt_dev.cluster_mode
    virt_dev.pr_dev = scst_pr_init_dev(dev, virt_dev.name)


def vdisk_detach_common(dev: scst_device, virt_dev: scst_vdisk_dev) -> None:
    from vdisk.sbc import vdisk_sanitize_stop  # cycle: sbc imports this module
    vdisk_sanitize_stop(virt_dev)       # before the backend closes the file
    scst_pr_clear_dev(dev)
    virt_dev.pr_dev = None
    virt_dev.prevent_set.clear()
    virt_dev.prevent_medium_removal = False


def vdisk_detach_tgt(tgt_dev: scst_tgt_dev) -> None:
    """I_T_L nexus loss: its PREVENT and SPC-2 reservation go."""
    dev = tgt_dev.dev
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_clear_prevent(virt_dev, tgt_dev)
    scst_pr_nexus_gone(dev, tgt_dev.sess)


def _vdisk_on_reset(dev: scst_device) -> None:
    virt_dev = dev.dh_priv
    if isinstance(virt_dev, scst_vdisk_dev):
        vdisk_clear_prevent(virt_dev)


if _vdisk_on_reset not in scst_dev_reset_hooks:
    scst_dev_reset_hooks.append(_vdisk_on_reset)


# ---------------------------------------------------------------- management

_SIZE_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

vdisk_add_device_parameters = ("filename", "size", "size_mb", "blocksize", "read_only",
                               "nv_cache", "write_through", "o_direct", "o_dsync", "removable",
                               "rotational", "thin_provisioned", "physical_blocksize",
                               "t10_dev_id", "t10_vend_id",
                               "vend_specific_id", "usn", "prod_id", "prod_rev_lvl",
                               "scsi_device_name", "sanitize_rate", "cluster_mode")
# parameters only vdisk_nullio takes
vdisk_nullio_only_parameters = ("dummy",)
# parameters only vdisk_nbd takes (kept in backend_params; vdisk.nbd reads them)
vdisk_nbd_only_parameters = ("uri", "reconnect_timeout")
# parameters only vdisk_rbd takes (kept in backend_params; vdisk.rbd reads them)
vdisk_rbd_only_parameters = ("pool", "image", "conf", "user", "op_timeout")
# handler name -> the parameters only it takes, kept in backend_params
vdisk_backend_only_parameters = {"vdisk_nbd": vdisk_nbd_only_parameters,
                                 "vdisk_rbd": vdisk_rbd_only_parameters}


def vdisk_store_parameters(own: tuple[str, ...]) -> tuple[str, ...]:
    """add_device parameters of a handler whose blocks live in a store
    elsewhere (an NBD export, an RBD image): no local file, so none of the
    file options and no size (the store has one), plus its own."""
    return tuple(p for p in vdisk_add_device_parameters
                 if p not in ("filename", "size", "size_mb", "o_direct", "o_dsync")) + own

# handler name -> its scst_dev_type (filled by vdisk_init)
vdisk_devtypes: dict[str, scst_dev_type] = {}
# device name -> scst_vdisk_dev (protected by scst_mutex in the core's
# callers; touched only from task context)
vdisk_dev_list: dict[str, scst_vdisk_dev] = {}


def vdisk_parse_size(s: str) -> int:
    """'10G' -> bytes; -1 if not a size."""
    s = s.strip().upper()
    if s.endswith("B"):
        s = s[:-1]
    suffix = s[-1:] if s[-1:] in _SIZE_SUFFIX and s[-1:] else ""
    num = s[:-1] if suffix else s
    if not num.isdecimal():
        return -1
    return int(num) * _SIZE_SUFFIX[suffix]


def _parse_bool(s: str) -> int:
    s = s.strip().lower()
    if s in ("1", "y", "yes", "on", "true"):
        return 1
    if s in ("0", "n", "no", "off", "false"):
        return 0
    return -1


_BOOL_PARAMS = {"read_only": "rd_only", "nv_cache": "nv_cache", "write_through": "wt_flag",
                "o_direct": "o_direct", "o_dsync": "o_dsync", "removable": "removable",
                "rotational": "rotational",
                "thin_provisioned": "thin_provisioned", "dummy": "dummy",
                "cluster_mode": "cluster_mode"}
_STR_PARAMS = {"t10_dev_id": 16 + 8, "t10_vend_id": 8, "vend_specific_id": 128, "usn": 252,
               "prod_id": 16, "prod_rev_lvl": 4, "scsi_device_name": 251}


def vdisk_alloc_dev(handler_name: str, dev_name: str,
                    params: dict[str, str]) -> "tuple[scst_vdisk_dev, int] | int":
    """Build an scst_vdisk_dev from the add_device parameters. Returns
    (virt_dev, requested size or -1) or -EINVAL after a pr_err naming the
    offending parameter."""
    virt_dev = scst_vdisk_dev(name=dev_name, nullio=handler_name == "vdisk_nullio")
    size = -1
    pbs_param = 0
    for key, val in params.items():
        backend_key = key in vdisk_backend_only_parameters.get(handler_name, ())
        if key not in vdisk_add_device_parameters and not backend_key and not (
                virt_dev.nullio and key in vdisk_nullio_only_parameters):
            pr_err(f"vdisk: {handler_name}: unknown parameter '{key}' for device {dev_name}")
            return -EINVAL
        if backend_key:
            virt_dev.backend_params[key] = val
        elif key == "filename":
            virt_dev.filename = val
        elif key in ("size", "size_mb"):
            size = vdisk_parse_size(val + ("M" if key == "size_mb" else ""))
            if size < 0:
                pr_err(f"vdisk: {handler_name}: bad {key} '{val}' for device {dev_name}")
                return -EINVAL
        elif key == "blocksize":
            bs = int(val) if val.strip().isdecimal() else 0
            if bs not in (512, 1024, 2048, 4096):
                pr_err(f"vdisk: {handler_name}: bad blocksize '{val}' for device {dev_name} "
                       f"(512, 1024, 2048 or 4096)")
                return -EINVAL
            virt_dev.block_size = bs
            virt_dev.block_shift = bs.bit_length() - 1
        elif key == "physical_blocksize":
            pbs = int(val) if val.strip().isdecimal() else 0
            if pbs < 512 or pbs > 65536 or pbs & (pbs - 1):
                pr_err(f"vdisk: {handler_name}: bad physical_blocksize '{val}' for device "
                       f"{dev_name} (a power of two, 512..65536)")
                return -EINVAL
            pbs_param = pbs
        elif key == "sanitize_rate":
            rate = int(val) if val.strip().isdecimal() else 0
            if not 1 <= rate <= VDISK_SANITIZE_RATE_MAX:
                pr_err(f"vdisk: {handler_name}: bad sanitize_rate '{val}' for device {dev_name} "
                       f"(MiB/s, 1..{VDISK_SANITIZE_RATE_MAX})")
                return -EINVAL
            virt_dev.sanitize_rate = rate
        elif key in _BOOL_PARAMS:
            b = _parse_bool(val)
            if b < 0:
                pr_err(f"vdisk: {handler_name}: bad {key} '{val}' for device {dev_name}")
                return -EINVAL
            setattr(virt_dev, _BOOL_PARAMS[key], bool(b))
            if key == "thin_provisioned":
                virt_dev.thin_provisioned_set = True
        else:
            limit = _STR_PARAMS[key]
            if len(val.encode("utf-8")) > limit or (key != "scsi_device_name" and not val.isascii()):
                pr_err(f"vdisk: {handler_name}: {key} '{val}' for device {dev_name} is too long "
                       f"or not ASCII (at most {limit} bytes)")
                return -EINVAL
            setattr(virt_dev, key, val)
    if handler_name == "vcdrom":
        # MMC: read-only removable medium of 2048-byte blocks; no filename
        # means an empty drive.
        virt_dev.cdrom = virt_dev.removable = virt_dev.rd_only = True
        virt_dev.block_size, virt_dev.block_shift = 2048, 11
        virt_dev.thin_provisioned, virt_dev.thin_provisioned_set = False, True
    elif handler_name == "vdisk_nbd":
        if not virt_dev.backend_params.get("uri"):
            pr_err(f"vdisk: {handler_name}: device {dev_name} needs a uri parameter "
                   f"(nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
            return -EINVAL
    elif handler_name == "vdisk_rbd":
        if not virt_dev.backend_params.get("image"):
            pr_err(f"vdisk: {handler_name}: device {dev_name} needs an image parameter "
                   f"(the RBD image's name; pool, conf and user are optional)")
            return -EINVAL
    elif not virt_dev.nullio and not virt_dev.filename:
        pr_err(f"vdisk: {handler_name}: device {dev_name} needs a filename parameter")
        return -EINVAL
    if pbs_param:
        if pbs_param < virt_dev.block_size:
            pr_err(f"vdisk: {handler_name}: physical_blocksize {pbs_param} of device {dev_name} "
                   f"is smaller than its blocksize {virt_dev.block_size}")
            return -EINVAL
        virt_dev.lbppbe = (pbs_param // virt_dev.block_size).bit_length() - 1
    if virt_dev.nullio and size < 0:
        size = 1 << 40
    if not virt_dev.usn:
        virt_dev.usn = vdisk_gen_usn(dev_name)
    if not virt_dev.t10_dev_id:
        virt_dev.t10_dev_id = dev_name[:24]
    if not virt_dev.vend_specific_id:
        virt_dev.vend_specific_id = virt_dev.t10_dev_id
    if not virt_dev.prod_id:
        virt_dev.prod_id = dev_name[:16]
    virt_dev.naa_id = vdisk_gen_naa_id(dev_name)
    virt_dev.file_size = size if size >= 0 else 0
    return virt_dev, size


def vdisk_add_device(handler_name: str, dev_name: str, params: dict[str, str]) -> int:
    """Create a device of the named vdisk handler (management's add_device).
    0, or -EINVAL (bad parameter), -ENODEV (no such handler), -EEXIST, or
    the attach's -errno. Task context."""
    devt = vdisk_devtypes.get(handler_name)
    if devt is None:
        pr_err(f"vdisk: no handler named {handler_name}")
        return -ENODEV
    if dev_name in vdisk_dev_list:
        pr_err(f"vdisk: device {dev_name} already exists")
        return -EEXIST
    r = vdisk_alloc_dev(handler_name, dev_name, params)
    if isinstance(r, int):
        return r
    virt_dev, _ = r
    dev = scst_register_virtual_device(devt, dev_name, virt_dev)
    if isinstance(dev, int):
        return dev
    vdisk_dev_list[dev_name] = virt_dev
    pr_info(f"vdisk: {handler_name} device {dev_name} added: {virt_dev.nblocks} blocks of "
            f"{virt_dev.block_size} bytes{' read-only' if virt_dev.rd_only else ''}")
    return 0


def vdisk_del_device(dev_name: str) -> int:
    """Remove a vdisk device: 0, -ENOENT, or -EBUSY while it has LUNs or
    commands still running."""
    virt_dev = vdisk_dev_list.get(dev_name)
    if virt_dev is None or virt_dev.dev is None:
        pr_err(f"vdisk: no device named {dev_name}")
        return -ENOENT
    ret = scst_unregister_virtual_device(virt_dev.dev)
    if ret == 0:
        del vdisk_dev_list[dev_name]
    return ret


MODULE_LICENSE("GPL")
MODULE_DESCRIPTION("SCSI disk (type 0) and CDROM (type 5) dev handlers")
# Threads per device of the handlers that sleep in exec (fileio, blockio,
# vcdrom, nbd: also the most NBD requests of one device outstanding at
# once); read when a device is created.
num_threads = 8
module_param("num_threads", "int", 0o444)
MODULE_PARM_DESC("num_threads", "vdisk threads count")
# vdisk_fileio leaves a cached READ of fileio_sendfile_min..fileio_sendfile_max
# bytes in the page cache for the target driver to send with kernel_sendfile
# (zero-copy), when the driver can (no iSCSI DataDigest); max 0: never, the
# default: on loopback the receiver pays more for page-sized fragments than
# the sender saves, and the gain at 32-48 KiB was within the noise
# (decision 0067 has the measurements). Read at each READ.
fileio_sendfile_min = 32768
fileio_sendfile_max = 0
module_param("fileio_sendfile_min", "int", 0o644)
MODULE_PARM_DESC("fileio_sendfile_min",
                 "smallest cached vdisk_fileio READ sent from the page cache (bytes)")
module_param("fileio_sendfile_max", "int", 0o644)
MODULE_PARM_DESC("fileio_sendfile_max",
                 "largest cached vdisk_fileio READ sent from the page cache (bytes; 0: never)")


def vdisk_init() -> int:
    """Register vdisk_fileio, vdisk_blockio, vdisk_nullio, vcdrom, vdisk_nbd and vdisk_rbd with
    the core, and their attributes with the management tree."""
    # These import this file (they are scst_vdisk.c's other parts): a cycle
    # C does not have, broken at call time.
    from vdisk.blockio import blockio_devtype
    from vdisk.cdrom import cdrom_devtype
    from vdisk.fileio import fileio_devtype
    from vdisk.nbd import nbd_devtype
    from vdisk.nullio import nullio_devtype
    from vdisk.rbd import rbd_devtype
    from vdisk.sysfs import vdisk_sysfs_init
    if not 1 <= num_threads <= 128:
        pr_err(f"vdisk: num_threads {num_threads} must be in 1..128")
        return -EINVAL
    done: list[scst_dev_type] = []
    for devt in (fileio_devtype, blockio_devtype, nullio_devtype, cdrom_devtype, nbd_devtype,
                 rbd_devtype):
        devt.owner = THIS_MODULE()
        if not devt.exec_atomic:
            devt.threads_num = num_threads
        ret = scst_register_virtual_dev_driver(devt)
        if ret != 0:
            pr_err(f"vdisk: registering {devt.name} failed: {ret}")
            for d in reversed(done):
                scst_unregister_virtual_dev_driver(d)
                vdisk_devtypes.pop(d.name, None)
            return ret
        vdisk_devtypes[devt.name] = devt
        done.append(devt)
    vdisk_sysfs_init()
    cluster_dev.scst_cluster_mode_hook = vdisk_cluster_mode_pages
    return 0


def vdisk_exit() -> None:
    from vdisk.sysfs import vdisk_sysfs_exit  # cycle: sysfs imports this module
    cluster_dev.scst_cluster_mode_hook = None
    vdisk_sysfs_exit()
    for name in list(vdisk_devtypes)[::-1]:
        devt = vdisk_devtypes.pop(name)
        # Named before unregistering: a detached device forgets its scst_device.
        gone = [n for n, v in vdisk_dev_list.items() if v.dev is not None and v.dev.handler is devt]
        scst_unregister_virtual_dev_driver(devt)
        for dn in gone:
            del vdisk_dev_list[dn]


def vdisk_make_devtype(name: str, exec_fn: Callable[[scst_cmd], int],
                       attach: Callable[[scst_device], int],
                       detach: Callable[[scst_device], None], exec_atomic: bool,
                       exec_nowait: Callable[[scst_cmd], bool] | None = None,
                       dev_type: int = TYPE_DISK,
                       read_fast: Callable[[scst_device, int, memoryview], bool] | None = None,
                       start_fast: Callable[..., bool] | None = None,
                       start_fast_list: Callable[..., int] | None = None) -> scst_dev_type:
    return scst_dev_type(
        name=name, type=dev_type, parse=vdisk_parse, exec=exec_fn, attach=attach,
        detach=detach, detach_tgt=vdisk_detach_tgt, exec_atomic=exec_atomic,
        exec_nowait=exec_nowait, read_fast=read_fast, start_fast=start_fast,
        start_fast_list=start_fast_list,
        add_device=lambda dev_name, params: vdisk_add_device(name, dev_name, params),
        del_device=vdisk_del_device,
        add_device_parameters=vdisk_add_device_parameters)


module_init(vdisk_init)
module_exit(vdisk_exit)
