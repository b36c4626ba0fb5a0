"""Reservations: SPC-4 persistent reservations (PERSISTENT RESERVE IN and
OUT, all six reservation types, APTPL) and SPC-2 RESERVE/RELEASE, with the
per-command access check both imply.

Twin of scst/src/scst_pres.c (and the RESERVE/RELEASE parts of
scst_targ.c: scst_reserve_local, scst_release_local,
scst_check_local_events' reservation test).

Contexts: scst_pr_is_cmd_allowed() from any context, never sleeps (it only
reads state). The PR IN/OUT and RESERVE/RELEASE exec functions run in the
dev handler's exec context; every state change happens before the only
sleep (the APTPL file write under pr_mutex), so on our one CPU a command
sees the state either before or after another command's change, never
half of it. scst_pr_init_dev/scst_pr_clear_dev from task context
(attach/detach), scst_pr_nexus_gone from any context.

Differs from SCST: an I_T nexus is identified by its TransportID (the
target driver's get_initiator_port_transport_id, or the initiator name
with the iSCSI ISID) plus the relative target port id, instead of a
pointer to the tgt_dev, so a registration may name a nexus that is not
logged in (REGISTER AND MOVE to an initiator port by name and ISID, or
APTPL state restored at start) and applies once it logs in. REGISTER AND
MOVE takes iSCSI TransportIDs only; one of format 00b (a name without an
ISID) must match exactly one initiator port the device server knows at
that target port. SPEC_I_PT and ALL_TG_PT are not supported (REPORT
CAPABILITIES says so: SIP_C=0, ATP_C=0). PREEMPT AND ABORT aborts the
preempted nexuses' tasks through the core (scst_pr_abort_all, with TAS)
and completes without waiting for them to end. The APTPL state lives in two
alternating files <scst_pr_dir>/<device>.pr0/.pr1, each ending in a
SHA-256 of its content; the newer valid one wins at attach, so a crash in
the middle of a write leaves the previous state (no rename needed). A
damaged slot is reported in the kernel log and skipped; with none valid
the device starts without registrations. The state is written and
fsynced inside the PR OUT's exec, before the command completes.

Hooks the core needs (scst_core.targ, owned by its maintainer):
- before a command reaches the dev handler's exec (or its parse):
      if not scst_pr_is_cmd_allowed(cmd):
          scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
  vdisk calls it from its parse() until the core does.
- LUN RESET / TARGET RESET / I_T nexus loss: scst_pr_dev_reset(dev) for
  each device the reset reaches (releases the SPC-2 reservation).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable

import attrs

from kshim.err import EINVAL, EIO, ENOENT
from kshim.fs import (O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, file_inode, filp_close, filp_open,
                      i_size_read, vfs_fsync, vfs_readv, vfs_writev)
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.printk import pr_err, pr_info
from scst_core.const import (SAM_STAT_RESERVATION_CONFLICT, UNIT_ATTENTION,
                             scst_sense_invalid_release,
                             scst_sense_parameter_list_length_invalid)
from scst_core.lib import (scst_get_buf_full, scst_set_cmd_error, scst_set_cmd_error_status,
                           scst_set_invalid_field_in_cdb, scst_set_invalid_field_in_parm_list,
                           scst_set_resp_data_len)
from scst_core.scst import (SCST_EXCL_ACCESS_ALLOWED, SCST_REG_RESERVE_ALLOWED,
                            SCST_WRITE_EXCL_ALLOWED)
from scst_core.ua import scst_queue_ua

if TYPE_CHECKING:
    from scst_core.scst import scst_cmd, scst_device, scst_session

# Persistent reservation types (SPC-4 table 185)
TYPE_WRITE_EXCLUSIVE = 0x1
TYPE_EXCLUSIVE_ACCESS = 0x3
TYPE_WRITE_EXCLUSIVE_REGONLY = 0x5
TYPE_EXCLUSIVE_ACCESS_REGONLY = 0x6
TYPE_WRITE_EXCLUSIVE_ALL_REG = 0x7
TYPE_EXCLUSIVE_ACCESS_ALL_REG = 0x8
_VALID_TYPES = frozenset((1, 3, 5, 6, 7, 8))
_ALL_REG_TYPES = frozenset((7, 8))
_REGONLY_TYPES = frozenset((5, 6, 7, 8))

# PERSISTENT RESERVE IN service actions
PR_READ_KEYS = 0x00
PR_READ_RESERVATION = 0x01
PR_REPORT_CAPS = 0x02
PR_READ_FULL_STATUS = 0x03
# PERSISTENT RESERVE OUT service actions
PR_REGISTER = 0x00
PR_RESERVE = 0x01
PR_RELEASE = 0x02
PR_CLEAR = 0x03
PR_PREEMPT = 0x04
PR_PREEMPT_AND_ABORT = 0x05
PR_REGISTER_AND_IGNORE = 0x06
PR_REGISTER_AND_MOVE = 0x07

# Unit attentions PR establishes (SPC-4 5.7)
scst_sense_reservations_preempted_UA = (UNIT_ATTENTION, 0x2A, 0x03)
scst_sense_reservations_released_UA = (UNIT_ATTENTION, 0x2A, 0x04)
scst_sense_registrations_preempted_UA = (UNIT_ATTENTION, 0x2A, 0x05)

# PROTOCOL IDENTIFIER of an iSCSI TransportID (SPC-4 7.6.1 table 444)
SCSI_TRANSPORTID_PROTOCOLID_ISCSI = 0x5

_PR_FILE_MAGIC = "uscst-pr 1"

# Where APTPL state is kept; None: APTPL not supported (PTPL_C=0). uscstd
# sets it to an existing directory.
scst_pr_dir: str | None = None


@attrs.define(slots=True, eq=False)
class scst_dev_registrant:
    """One registered I_T nexus (scst_pres.c: struct scst_dev_registrant)."""
    transport_id: bytes
    rel_tgt_id: int
    key: int


@attrs.define(slots=True, eq=False)
class scst_pr_dev:
    """A device's reservation state. Changed only by PR OUT, RESERVE,
    RELEASE, resets and nexus loss (see the module docstring for why no
    spinlock guards it); pr_mutex serializes the APTPL file writes."""
    name: str
    pr_generation: int = 0
    registrants: list = attrs.field(factory=list)       # scst_dev_registrant
    pr_is_set: bool = False
    pr_type: int = 0
    pr_scope: int = 0
    pr_holder: scst_dev_registrant | None = None        # None with an all-registrants type
    pr_aptpl: bool = False
    file_gen: int = 0
    # SPC-2 reservation: the nexus holding it, or None
    reserved_by: tuple | None = None
    # cluster_mode (scst_core.cluster): the number of the last PR change
    # this node and its peers agreed on, 0 for none yet; cluster_mutex
    # lets one PR OUT at a time of this node change and send the state
    cluster_seq: int = 0
    cluster_mutex: mutex = attrs.field(factory=lambda: mutex("pr_cluster_mutex"))
    pr_mutex: mutex = attrs.field(factory=lambda: mutex("pr_mutex"))


# device -> its reservation state (set at attach, dropped at detach)
scst_pr_devs: dict = {}
# session -> (transport id, rel_tgt_id), cached: computed once per session
_nexus_cache: dict = {}
# Called with the device on LUN/target reset, after the SPC-2 release
# (vdisk clears its PREVENT ALLOW state here).
scst_dev_reset_hooks: list[Callable[["scst_device"], None]] = []


# ---------------------------------------------------------------- nexus

def scst_iscsi_transport_id(name: str, isid: bytes | None) -> bytes:
    """SPC-4 7.6.4.6 iSCSI TransportID, format 01b (initiator port)."""
    s = name if isid is None else f"{name},i,0x{isid.hex()}"
    b = s.encode("utf-8") + b"\x00"
    b = b.ljust(max(20, (len(b) + 3) & ~3), b"\x00")
    return bytes((0x45 if isid is not None else 0x05, 0)) + len(b).to_bytes(2, "big") + b


def scst_cmd_nexus(cmd: "scst_cmd") -> tuple[bytes, int]:
    """The command's I_T nexus: (initiator port TransportID, relative
    target port id)."""
    return scst_sess_nexus(cmd.sess)


def scst_sess_nexus(sess: "scst_session") -> tuple[bytes, int]:
    nx = _nexus_cache.get(sess)
    if nx is None:
        tgt = sess.tgt
        fn = tgt.tgtt.get_initiator_port_transport_id
        tid = fn(tgt, sess) if fn is not None else None
        if not tid:
            isid = getattr(sess.tgt_priv, "isid", None)
            tid = scst_iscsi_transport_id(sess.initiator_name,
                                          isid if isinstance(isid, bytes) else None)
        nx = (tid, tgt.rel_tgt_id)
        _nexus_cache[sess] = nx
    return nx


def _find_reg(prd: scst_pr_dev, nexus: tuple[bytes, int]) -> scst_dev_registrant | None:
    tid, rel = nexus
    for r in prd.registrants:
        if r.rel_tgt_id == rel and r.transport_id == tid:
            return r
    return None


def _is_holder(prd: scst_pr_dev, reg: scst_dev_registrant | None) -> bool:
    if not prd.pr_is_set or reg is None:
        return False
    return prd.pr_type in _ALL_REG_TYPES or prd.pr_holder is reg


# ---------------------------------------------------------------- access check

def scst_pr_is_cmd_allowed(cmd: "scst_cmd") -> bool:
    """May this command run under the device's reservations (SPC-4 5.7.1
    table 44, SPC-2 5.5.1)? Never sleeps."""
    prd = scst_pr_devs.get(cmd.dev)
    if prd is None or (prd.reserved_by is None and not prd.pr_is_set):
        return True
    nexus = scst_cmd_nexus(cmd)
    flags = cmd.op_flags
    if prd.reserved_by is not None:
        if prd.reserved_by == nexus:
            return True
        op = cmd.cdb[0]
        if op in (0x17, 0x57):          # RELEASE from another nexus: a no-op, GOOD
            return True
        return bool(flags & SCST_REG_RESERVE_ALLOWED)
    reg = _find_reg(prd, nexus)
    if _is_holder(prd, reg):
        return True
    t = prd.pr_type
    if reg is not None and t in _REGONLY_TYPES:
        return True
    if t in (TYPE_WRITE_EXCLUSIVE, TYPE_WRITE_EXCLUSIVE_REGONLY, TYPE_WRITE_EXCLUSIVE_ALL_REG):
        return bool(flags & SCST_WRITE_EXCL_ALLOWED)
    return bool(flags & SCST_EXCL_ACCESS_ALLOWED)


# ---------------------------------------------------------------- SPC-2 RESERVE / RELEASE

def scst_reserve_local(cmd: "scst_cmd") -> None:
    prd = scst_pr_devs.get(cmd.dev)
    if prd is None:
        return
    cdb = cmd.cdb
    if cdb[0] == 0x56 and cdb[1] & 0x03:   # 3RDPTY / LONGID: not supported
        scst_set_invalid_field_in_cdb(cmd, 1, 0)
        return
    nexus = scst_cmd_nexus(cmd)
    if prd.registrants or prd.pr_is_set:
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
        return
    if prd.reserved_by is not None and prd.reserved_by != nexus:
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
        return
    prd.reserved_by = nexus


def scst_release_local(cmd: "scst_cmd") -> None:
    prd = scst_pr_devs.get(cmd.dev)
    if prd is None:
        return
    if prd.reserved_by is not None and prd.reserved_by == scst_cmd_nexus(cmd):
        prd.reserved_by = None


# ---------------------------------------------------------------- PERSISTENT RESERVE IN

def _copy_out(cmd: "scst_cmd", data: bytes) -> None:
    n = min(len(data), cmd.bufflen)
    if n:
        scst_get_buf_full(cmd)[:n] = data[:n]
    scst_set_resp_data_len(cmd, n)


def scst_pr_exec_in(cmd: "scst_cmd") -> None:
    prd = scst_pr_devs.get(cmd.dev)
    if prd is None:
        return
    sa = cmd.cdb[1] & 0x1F
    gen = prd.pr_generation.to_bytes(4, "big")
    if sa == PR_READ_KEYS:
        keys = b"".join(r.key.to_bytes(8, "big") for r in prd.registrants)
        _copy_out(cmd, gen + len(keys).to_bytes(4, "big") + keys)
    elif sa == PR_READ_RESERVATION:
        if not prd.pr_is_set:
            _copy_out(cmd, gen + bytes(4))
            return
        key = prd.pr_holder.key if prd.pr_holder is not None else 0
        desc = key.to_bytes(8, "big") + bytes(5) + bytes(((prd.pr_scope << 4) | prd.pr_type,)) \
            + bytes(2)
        _copy_out(cmd, gen + len(desc).to_bytes(4, "big") + desc)
    elif sa == PR_REPORT_CAPS:
        buf = bytearray(8)
        buf[1] = 8
        buf[2] = 0x10 | (0x01 if scst_pr_dir is not None else 0)    # CRH, PTPL_C
        buf[3] = 0x80 | (0x01 if prd.pr_aptpl else 0)                # TMV, PTPL_A
        buf[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02                    # WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
        buf[5] = 0x01                                                # EX_AC_AR
        _copy_out(cmd, bytes(buf))
    elif sa == PR_READ_FULL_STATUS:
        out = bytearray()
        for r in prd.registrants:
            d = bytearray(24)
            d[0:8] = r.key.to_bytes(8, "big")
            if _is_holder(prd, r):
                d[12] = 0x01
                d[13] = (prd.pr_scope << 4) | prd.pr_type
            d[18:20] = r.rel_tgt_id.to_bytes(2, "big")
            d[20:24] = len(r.transport_id).to_bytes(4, "big")
            out += d + r.transport_id
        _copy_out(cmd, gen + len(out).to_bytes(4, "big") + bytes(out))
    else:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)


# ---------------------------------------------------------------- PERSISTENT RESERVE OUT

def _queue_ua_nexus(cmd: "scst_cmd", nexus: tuple[bytes, int], sense: tuple[int, int, int]) -> None:
    """Establish a UA on every tgt_dev of the device that belongs to nexus."""
    for tgt_dev in list(cmd.dev.dev_tgt_dev_list):
        if scst_sess_nexus(tgt_dev.sess) == nexus:
            scst_queue_ua(tgt_dev, sense)


def _ua_registrants(cmd: "scst_cmd", prd: scst_pr_dev, sense: tuple[int, int, int],
                    skip: tuple[bytes, int], regs: list | None = None) -> None:
    for r in (prd.registrants if regs is None else regs):
        nx = (r.transport_id, r.rel_tgt_id)
        if nx != skip:
            _queue_ua_nexus(cmd, nx, sense)


def _release_reservation(prd: scst_pr_dev) -> None:
    prd.pr_is_set = False
    prd.pr_type = prd.pr_scope = 0
    prd.pr_holder = None


def _unregister(cmd: "scst_cmd", prd: scst_pr_dev, reg: scst_dev_registrant) -> None:
    prd.registrants.remove(reg)
    if not prd.pr_is_set:
        return
    if prd.pr_type in _ALL_REG_TYPES:
        if not prd.registrants:
            _release_reservation(prd)
    elif prd.pr_holder is reg:
        t = prd.pr_type
        _release_reservation(prd)
        if t in (TYPE_WRITE_EXCLUSIVE_REGONLY, TYPE_EXCLUSIVE_ACCESS_REGONLY):
            _ua_registrants(cmd, prd, scst_sense_reservations_released_UA, (b"", -1))


def scst_pr_exec_out(cmd: "scst_cmd") -> None:
    prd = scst_pr_devs.get(cmd.dev)
    if prd is None:
        return
    cdb = cmd.cdb
    sa = cdb[1] & 0x1F
    scope = cdb[2] >> 4
    ptype = cdb[2] & 0x0F
    plen = int.from_bytes(cdb[5:9], "big")
    if sa > PR_REGISTER_AND_MOVE:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    if sa == PR_REGISTER_AND_MOVE:
        scst_pr_register_and_move(cmd, prd, plen)
        return
    if plen != 24:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    data = scst_get_buf_full(cmd)
    if len(data) < 24:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    res_key = int.from_bytes(data[0:8], "big")
    sa_key = int.from_bytes(data[8:16], "big")
    spec_i_pt = bool(data[20] & 0x08)
    all_tg_pt = bool(data[20] & 0x04)
    aptpl = bool(data[20] & 0x01)
    if spec_i_pt:
        scst_set_invalid_field_in_parm_list(cmd, 20, 3)
        return
    if all_tg_pt:
        scst_set_invalid_field_in_parm_list(cmd, 20, 2)
        return
    if aptpl and scst_pr_dir is None:
        scst_set_invalid_field_in_parm_list(cmd, 20, 0)
        return
    nexus = scst_cmd_nexus(cmd)
    reg = _find_reg(prd, nexus)
    changed = False
    # A REGISTER with APTPL=0 turns persistence off: the file must then be
    # rewritten (empty) too, or the last APTPL state would come back.
    was_aptpl = prd.pr_aptpl
    if sa in (PR_REGISTER, PR_REGISTER_AND_IGNORE):
        if reg is None:
            if sa == PR_REGISTER and res_key != 0:
                scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
                return
            if sa_key != 0:
                prd.registrants.append(scst_dev_registrant(nexus[0], nexus[1], sa_key))
                prd.pr_aptpl = aptpl
                changed = True
        else:
            if sa == PR_REGISTER and res_key != reg.key:
                scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
                return
            if sa_key == 0:
                _unregister(cmd, prd, reg)
            else:
                reg.key = sa_key
            prd.pr_aptpl = aptpl
            changed = True
        prd.pr_generation = (prd.pr_generation + 1) & 0xFFFFFFFF
    else:
        if reg is None or res_key != reg.key:
            scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
            return
        if sa == PR_RESERVE:
            if scope != 0:
                scst_set_invalid_field_in_cdb(cmd, 2, 7)
                return
            if ptype not in _VALID_TYPES:
                scst_set_invalid_field_in_cdb(cmd, 2, 3)
                return
            if prd.pr_is_set:
                if not _is_holder(prd, reg) or prd.pr_type != ptype or prd.pr_scope != scope:
                    scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
                return
            prd.pr_is_set = True
            prd.pr_type, prd.pr_scope = ptype, scope
            prd.pr_holder = None if ptype in _ALL_REG_TYPES else reg
            changed = True
        elif sa == PR_RELEASE:
            if not prd.pr_is_set or not _is_holder(prd, reg):
                return
            if prd.pr_type != ptype or prd.pr_scope != scope:
                scst_set_cmd_error(cmd, scst_sense_invalid_release)
                return
            t = prd.pr_type
            _release_reservation(prd)
            if t not in (TYPE_WRITE_EXCLUSIVE, TYPE_EXCLUSIVE_ACCESS):
                _ua_registrants(cmd, prd, scst_sense_reservations_released_UA, nexus)
            changed = True
        elif sa == PR_CLEAR:
            others = list(prd.registrants)
            prd.registrants.clear()
            _release_reservation(prd)
            _ua_registrants(cmd, prd, scst_sense_reservations_preempted_UA, nexus, others)
            prd.pr_generation = (prd.pr_generation + 1) & 0xFFFFFFFF
            changed = True
        else:                           # PREEMPT, PREEMPT AND ABORT
            before = [(r.transport_id, r.rel_tgt_id) for r in prd.registrants]
            if not _pr_preempt(cmd, prd, reg, nexus, sa_key, scope, ptype):
                return
            prd.pr_generation = (prd.pr_generation + 1) & 0xFFFFFFFF
            changed = True
            if sa == PR_PREEMPT_AND_ABORT:
                # The preempted nexuses' commands are aborted (SPC-4
                # 5.12.11.2.4); the core imports this module, hence here.
                from scst_core.targ import scst_pr_abort_all  # cycle: targ imports pres
                kept = {(r.transport_id, r.rel_tgt_id) for r in prd.registrants}
                scst_pr_abort_all(cmd, [nx for nx in before if nx not in kept])
    if changed and (prd.pr_aptpl or was_aptpl):
        scst_pr_sync_device_file(prd)


def _pr_preempt(cmd: "scst_cmd", prd: scst_pr_dev, reg: scst_dev_registrant,
                nexus: tuple[bytes, int], sa_key: int, scope: int, ptype: int) -> bool:
    """SPC-4 5.7.11.4. False when the sense or status is set."""
    if prd.pr_is_set and (scope != 0 or ptype not in _VALID_TYPES):
        scst_set_invalid_field_in_cdb(cmd, 2, 3 if scope == 0 else 7)
        return False
    if prd.pr_is_set and prd.pr_type in _ALL_REG_TYPES:
        if sa_key == 0:
            victims = [r for r in prd.registrants if r is not reg]
            prd.pr_type, prd.pr_scope = ptype, scope
            prd.pr_holder = None if ptype in _ALL_REG_TYPES else reg
        else:
            victims = [r for r in prd.registrants if r.key == sa_key and r is not reg]
    elif prd.pr_is_set and prd.pr_holder is not None and prd.pr_holder.key == sa_key:
        victims = [r for r in prd.registrants if r.key == sa_key and r is not reg]
        prd.pr_type, prd.pr_scope = ptype, scope
        prd.pr_holder = None if ptype in _ALL_REG_TYPES else reg
    else:
        if sa_key == 0:
            scst_set_invalid_field_in_parm_list(cmd, 8)
            return False
        victims = [r for r in prd.registrants if r.key == sa_key]
        if not victims:
            scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
            return False
    for r in victims:
        if r in prd.registrants:
            prd.registrants.remove(r)
    _ua_registrants(cmd, prd, scst_sense_registrations_preempted_UA, nexus, victims)
    return True


# ---------------------------------------------------------------- REGISTER AND MOVE

def scst_iscsi_parse_transport_id(tid: bytes) -> tuple[str, bytes | None] | int:
    """Decode an iSCSI TransportID (SPC-4 7.6.4.6) of exactly
    4 + ADDITIONAL LENGTH bytes: (initiator name, ISID) for format 01b
    (initiator port), (initiator name, None) for format 00b (initiator
    device). A malformed one gives the offset in tid of the field at fault
    (>= 0)."""
    if tid[0] & 0x0F != SCSI_TRANSPORTID_PROTOCOLID_ISCSI or tid[0] & 0xB0:
        return 0
    addl = int.from_bytes(tid[2:4], "big")
    if addl < 20 or addl % 4 or 4 + addl != len(tid):
        return 2
    # The name (00b) or the ISID (01b) ends at the first NUL.
    text = bytes(tid[4:]).split(b"\x00", 1)[0]
    isid = None
    if tid[0] & 0x40:
        sep = text.lower().find(b",i,0x")
        if sep < 0:
            return 4
        isid_hex = text[sep + 5:]
        if len(isid_hex) != 12 or not all(c in b"0123456789abcdefABCDEF" for c in isid_hex):
            return 4 + sep + 5
        isid = bytes.fromhex(isid_hex.decode("ascii"))
        text = text[:sep]
    try:
        name = text.decode("utf-8")
    except UnicodeDecodeError:
        return 4
    return (name, isid) if name else 4


def _pr_tgt_port_exists(cmd: "scst_cmd", rel_tgt_id: int) -> bool:
    """Is rel_tgt_id a target port of ours through which cmd's device is
    reachable: the command's own, or a registered target mapping the
    device in one of its groups?"""
    from scst_core import main as scst_main  # cycle: main imports pres (through targ)
    if cmd.sess.tgt.rel_tgt_id == rel_tgt_id:
        return True
    for tgtt in scst_main.scst_template_list:
        for tgt in tgtt.tgt_list:
            if tgt.rel_tgt_id != rel_tgt_id:
                continue
            for acg in [tgt.default_acg] + tgt.tgt_acg_list:
                if acg is not None and any(d.dev is cmd.dev for d in acg.acg_dev_list.values()):
                    return True
    return False


def _pr_dest_port(cmd: "scst_cmd", prd: scst_pr_dev, rel_tgt_id: int, name: str,
                  isid: bytes | None) -> bytes | None:
    """The TransportID of the initiator port a REGISTER AND MOVE names at
    rel_tgt_id. iSCSI names compare without regard to case (RFC 3722
    folds them to lower case, the form a port not known yet is kept in).
    With an ISID (format 01b) the port is that one, known or not; with a
    name alone (00b) it must be the only port of that name the device
    server knows there (a registrant or a logged-in nexus), else None."""
    known = [r.transport_id for r in prd.registrants if r.rel_tgt_id == rel_tgt_id]
    for tgt_dev in cmd.dev.dev_tgt_dev_list:
        tid, rel = scst_sess_nexus(tgt_dev.sess)
        if rel == rel_tgt_id and tid not in known:
            known.append(tid)
    matches = []
    for tid in known:
        port = scst_iscsi_parse_transport_id(tid)
        if not isinstance(port, int) and port[0].lower() == name.lower() \
                and (isid is None or port[1] == isid):
            matches.append(tid)
    if isid is not None:
        return matches[0] if matches else scst_iscsi_transport_id(name.lower(), isid)
    return matches[0] if len(matches) == 1 else None


def scst_pr_register_and_move(cmd: "scst_cmd", prd: scst_pr_dev, plen: int) -> None:
    """PERSISTENT RESERVE OUT, REGISTER AND MOVE (SPC-4 5.13.8, parameter
    list 6.16.4): the holder registers another I_T nexus with the service
    action key and hands it the reservation, same scope and type. The
    destination need not be logged in: its registration applies when that
    initiator port logs in at that target port."""
    if plen < 24:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    data = scst_get_buf_full(cmd)
    n = min(plen, len(data))
    if n < 24:
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    res_key = int.from_bytes(data[0:8], "big")
    sa_key = int.from_bytes(data[8:16], "big")
    unreg = bool(data[17] & 0x02)
    aptpl = bool(data[17] & 0x01)
    rel_tgt_id = int.from_bytes(data[18:20], "big")
    tid_len = int.from_bytes(data[20:24], "big")
    nexus = scst_cmd_nexus(cmd)
    reg = _find_reg(prd, nexus)
    if reg is None or res_key != reg.key:
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
        return
    if not prd.pr_is_set:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    if prd.pr_type in _ALL_REG_TYPES or prd.pr_holder is not reg:
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
        return
    if sa_key == 0:
        scst_set_invalid_field_in_parm_list(cmd, 8)
        return
    if aptpl and scst_pr_dir is None:
        scst_set_invalid_field_in_parm_list(cmd, 17, 0)
        return
    if tid_len < 24 or tid_len % 4:
        scst_set_invalid_field_in_parm_list(cmd, 20)
        return
    if 24 + tid_len > n or 28 + int.from_bytes(data[26:28], "big") > 24 + tid_len:
        # The TransportID does not fit the parameter list, or is truncated.
        scst_set_cmd_error(cmd, scst_sense_parameter_list_length_invalid)
        return
    port = scst_iscsi_parse_transport_id(bytes(data[24:24 + tid_len]))
    if isinstance(port, int):
        scst_set_invalid_field_in_parm_list(cmd, 24 + port)
        return
    if not _pr_tgt_port_exists(cmd, rel_tgt_id):
        scst_set_invalid_field_in_parm_list(cmd, 18)
        return
    dest_tid = _pr_dest_port(cmd, prd, rel_tgt_id, *port)
    if dest_tid is None or dest_tid == nexus[0]:
        scst_set_invalid_field_in_parm_list(cmd, 24)
        return
    was_aptpl = prd.pr_aptpl
    dest = _find_reg(prd, (dest_tid, rel_tgt_id))
    if dest is None:
        dest = scst_dev_registrant(dest_tid, rel_tgt_id, sa_key)
        prd.registrants.append(dest)
    else:
        dest.key = sa_key
    prd.pr_holder = dest
    if unreg:
        _unregister(cmd, prd, reg)
    prd.pr_aptpl = aptpl
    prd.pr_generation = (prd.pr_generation + 1) & 0xFFFFFFFF
    if prd.pr_aptpl or was_aptpl:
        scst_pr_sync_device_file(prd)


# ---------------------------------------------------------------- APTPL file

def _pr_file_text(prd: scst_pr_dev, file_gen: int | None = None) -> str:
    fg = prd.file_gen if file_gen is None else file_gen
    lines = [_PR_FILE_MAGIC, f"file_gen {fg}", f"generation {prd.pr_generation}",
             f"aptpl {int(prd.pr_aptpl)}"]
    for r in prd.registrants:
        lines.append(f"reg {r.key:016x} {r.rel_tgt_id} {r.transport_id.hex()}")
    if prd.pr_is_set:
        holder = prd.registrants.index(prd.pr_holder) if prd.pr_holder in prd.registrants else -1
        lines.append(f"res {prd.pr_type} {prd.pr_scope} {holder}")
    body = "\n".join(lines) + "\n"
    return body + "sha256 " + hashlib.sha256(body.encode()).hexdigest() + "\n"


def _pr_file_parse(text: str) -> dict | None:
    """The state in one slot file, or None if it is torn or not ours."""
    head, sep, tail = text.rpartition("sha256 ")
    if not sep or hashlib.sha256(head.encode()).hexdigest() != tail.strip():
        return None
    lines = head.splitlines()
    if not lines or lines[0] != _PR_FILE_MAGIC:
        return None
    st: dict = {"regs": [], "res": None}
    for ln in lines[1:]:
        f = ln.split()
        if f[0] == "file_gen":
            st["file_gen"] = int(f[1])
        elif f[0] == "generation":
            st["generation"] = int(f[1])
        elif f[0] == "aptpl":
            st["aptpl"] = f[1] == "1"
        elif f[0] == "reg":
            st["regs"].append((int(f[1], 16), int(f[2]), bytes.fromhex(f[3])))
        elif f[0] == "res":
            st["res"] = (int(f[1]), int(f[2]), int(f[3]))
            if st["res"][0] not in _VALID_TYPES or st["res"][1] != 0:
                return None
    return st if "file_gen" in st else None


def _pr_path(prd: scst_pr_dev, slot: int) -> str:
    return f"{scst_pr_dir}/{prd.name}.pr{slot}"


def scst_pr_sync_device_file(prd: scst_pr_dev) -> int:
    """Write the state to the older slot file (fsynced). With APTPL off,
    write an empty state so nothing is restored. 0 or -errno. Sleeps."""
    if scst_pr_dir is None:
        return 0
    mutex_lock(prd.pr_mutex)
    try:
        prd.file_gen += 1
        if prd.pr_aptpl:
            text = _pr_file_text(prd)
        else:
            empty = scst_pr_dev(prd.name, file_gen=prd.file_gen)
            text = _pr_file_text(empty)
        data = text.encode()
        f = filp_open(_pr_path(prd, prd.file_gen & 1), O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        if isinstance(f, int):
            pr_err(f"scst: cannot write PR state of {prd.name}: {f}")
            return f
        n = vfs_writev(f, [memoryview(data)], 0)
        ret = vfs_fsync(f, False) if n == len(data) else (n if n < 0 else -5)
        filp_close(f)
        if ret < 0:
            pr_err(f"scst: writing PR state of {prd.name} failed: {ret}")
        return ret
    finally:
        mutex_unlock(prd.pr_mutex)


def _pr_read_slot(prd: scst_pr_dev, slot: int) -> dict | None | int:
    """The state in one slot file; None if there is no such file; -EIO
    (after a kernel log message naming the file) if it is torn, truncated
    or not ours. Sleeps."""
    path = _pr_path(prd, slot)
    f = filp_open(path, O_RDONLY)
    if isinstance(f, int):
        if f != -ENOENT:
            pr_err(f"scst: {prd.name}: cannot open APTPL state file {path}: {f}")
            return -EIO
        return None
    size = min(i_size_read(file_inode(f)), 1 << 20)
    buf = bytearray(size)
    n = vfs_readv(f, [memoryview(buf)], 0) if size else 0
    filp_close(f)
    st = None
    if n == size:
        try:
            st = _pr_file_parse(buf.decode())
        except (UnicodeDecodeError, ValueError, IndexError):
            st = None
    if st is None:
        pr_err(f"scst: {prd.name}: APTPL state file {path} is corrupt or truncated "
               f"({size} bytes), ignored")
        return -EIO
    return st


def scst_pr_load_device_file(prd: scst_pr_dev) -> None:
    """Restore the newer valid slot. A damaged slot is reported and
    skipped; with no valid slot left the device starts without
    registrations. Sleeps."""
    best = None
    damaged = False
    for slot in (0, 1):
        st = _pr_read_slot(prd, slot)
        if isinstance(st, int):
            damaged = True
        elif st is not None and (best is None or st["file_gen"] > best["file_gen"]):
            best = st
    if best is None:
        if damaged:
            pr_err(f"scst: {prd.name}: no valid APTPL state file in {scst_pr_dir}: "
                   f"{prd.name} starts without persistent reservations")
        return
    # Go on writing after the newest generation, so the slot to be written
    # next is never the one just restored.
    prd.file_gen = best["file_gen"]
    prd.pr_generation = best.get("generation", 0)
    prd.registrants = [scst_dev_registrant(tid, rel, key) for key, rel, tid in best["regs"]]
    prd.pr_aptpl = bool(prd.registrants)
    if best["res"] is not None:
        t, scope, holder = best["res"]
        prd.pr_is_set, prd.pr_type, prd.pr_scope = True, t, scope
        prd.pr_holder = prd.registrants[holder] if 0 <= holder < len(prd.registrants) else None
    if prd.registrants:
        pr_info(f"scst: {prd.name}: restored {len(prd.registrants)} APTPL registration(s), "
                f"generation {prd.pr_generation}"
                + (f", reservation type {prd.pr_type}" if prd.pr_is_set else ""))


# ---------------------------------------------------------------- cluster_mode

def scst_pr_snapshot(dev: "scst_device") -> str | None:
    """The device's persistent reservation state as text (the APTPL file
    format), for scst_core.cluster to send to a peer; None without PR
    state. Any context."""
    prd = scst_pr_devs.get(dev)
    return None if prd is None else _pr_file_text(prd, 0)


def scst_pr_restore(dev: "scst_device", text: str) -> int:
    """Replace the device's registrations, reservation, PR generation and
    APTPL switch with a snapshot's (a peer's, or this node's own to undo a
    change the peers refused): 0, or -EINVAL for a damaged snapshot,
    -ENOENT without PR state. The SPC-2 reservation is not part of it.
    Sleeps when APTPL state has to be written."""
    prd = scst_pr_devs.get(dev)
    if prd is None:
        return -ENOENT
    try:
        st = _pr_file_parse(text)
    except (ValueError, IndexError):
        st = None
    if st is None:
        return -EINVAL
    was_aptpl = prd.pr_aptpl
    prd.pr_generation = st.get("generation", 0)
    prd.registrants = [scst_dev_registrant(tid, rel, key) for key, rel, tid in st["regs"]]
    prd.pr_aptpl = st.get("aptpl", bool(prd.registrants))
    _release_reservation(prd)
    if st["res"] is not None:
        t, scope, holder = st["res"]
        prd.pr_is_set, prd.pr_type, prd.pr_scope = True, t, scope
        prd.pr_holder = prd.registrants[holder] if 0 <= holder < len(prd.registrants) else None
    if prd.pr_aptpl or was_aptpl:
        scst_pr_sync_device_file(prd)
    return 0


# ---------------------------------------------------------------- life cycle

def scst_pr_init_dev(dev: "scst_device", name: str) -> scst_pr_dev:
    """Give dev its reservation state, restoring APTPL state. Task context."""
    prd = scst_pr_dev(name)
    if scst_pr_dir is not None:
        scst_pr_load_device_file(prd)
    scst_pr_devs[dev] = prd
    return prd


def scst_pr_clear_dev(dev: "scst_device") -> None:
    scst_pr_devs.pop(dev, None)


def scst_pr_nexus_gone(dev: "scst_device", sess: "scst_session") -> None:
    """I_T nexus loss for one device: the SPC-2 reservation goes;
    persistent registrations stay (SPC-4 5.7.3)."""
    prd = scst_pr_devs.get(dev)
    nx = scst_sess_nexus(sess)
    _nexus_cache.pop(sess, None)
    if prd is not None and prd.reserved_by == nx:
        prd.reserved_by = None


def scst_pr_dev_reset(dev: "scst_device") -> None:
    """LUN or target reset reached dev: release the SPC-2 reservation and
    tell the dev handler."""
    prd = scst_pr_devs.get(dev)
    if prd is not None:
        prd.reserved_by = None
    for fn in scst_dev_reset_hooks:
        fn(dev)
