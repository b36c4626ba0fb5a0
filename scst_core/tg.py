"""Asymmetric logical unit access (ALUA): device groups, target port
groups, their access states, and the SCSI side of them (the port
designators of VPD page 0x83, INQUIRY's TPGS field, REPORT TARGET PORT
GROUPS, SET TARGET PORT GROUPS and the filtering of commands that arrive
through a target port whose group is not accessible).

Twin of scst/src/scst_tg.c. Behaviour from SPC-4 5.16 (asymmetric logical
unit access), 6.27 (REPORT TARGET PORT GROUPS), 6.38 (SET TARGET PORT
GROUPS) and 7.8.6 (Device Identification VPD page designators).

Model (as SCST): a device group (dg) holds devices, each device in at most
one dg, and target groups (tg); a tg has a group_id (1..65535, unique in
its dg), an access state, a preferred flag and a list of targets named by
target name (an SCST target is one SCSI target port). A command on device
D through target T is in the state of the tg of D's dg that names T; a
device in no dg, or a target in no tg of its dg, is active/optimized.

Contexts: management calls (scst_dg_add ... scst_tg_set_preferred) take
scst_dg_mutex, so task context only (sysfs stores). The command-path calls
(scst_tg_check_alua, scst_tg_port_designators, scst_tg_tpgs,
scst_tg_get_group_info, scst_tg_set_group_info) take no lock and never
sleep: any context. They may run lockless because the emulated machine is
one non-preemptive CPU and no management call sleeps between reading and
writing the group lists (it only sleeps in mutex_lock, before it starts).

Differs from SCST: SET TARGET PORT GROUPS changes the states itself,
synchronously, instead of blocking the device group's devices and asking
the user-space on_stpg script through scst_event; a command that arrives
while its group is transitioning is failed at once (NOT READY, 04/0A)
instead of being retried after half a second; the command filter is looked
up per command in one dictionary (scst_alua_filters, empty unless some
group is in a restricting state) instead of a per-tgt_dev alua_filter
pointer. A state change raises ASYMMETRIC ACCESS STATE CHANGED on every
I_T_L nexus of the group's devices except the one that sent the SET TARGET
PORT GROUPS (SPC-4 5.16.2.6), not only on the nexuses through the changed
group's ports. The TARGET PORT GROUP's STATUS CODE says whether the last
change came from SET TARGET PORT GROUPS (1) or from management (2; SCST
always reports 2). An offline descriptor in SET TARGET PORT GROUPS names a
relative target port (SPC-4 6.38); since states are kept per group, the
group holding that port goes offline. The LBA dependent state is not
supported. In the offline state commands are answered NOT READY, LOGICAL
UNIT NOT READY, OFFLINE (04/12) rather than not at all.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import attrs

from kshim.err import EBUSY, EEXIST, EINVAL, ENODEV, ENOENT
from kshim.mutex import mutex, mutex_lock, mutex_unlock
from kshim.printk import pr_err, pr_info
from scst_core.const import (ASSOCIATION_TARGET_PORT, CODE_SET_BINARY, CODE_SET_UTF8,
                             DESIGNATOR_TYPE_RELATIVE_TARGET_PORT,
                             DESIGNATOR_TYPE_SCSI_NAME_STRING,
                             DESIGNATOR_TYPE_TARGET_PORT_GROUP, ILLEGAL_REQUEST, INQUIRY,
                             LOG_SELECT, LOG_SENSE, MAINTENANCE_IN, MAINTENANCE_OUT,
                             MODE_SELECT_10, MODE_SENSE_10, NOT_READY,
                             PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT, READ_BUFFER,
                             RELEASE_10, REPORT_LUNS, REQUEST_SENSE, RESERVE_10,
                             SERVICE_ACTION_IN_16, UNIT_ATTENTION, WRITE_BUFFER)
from scst_core.lib import (scst_get_buf_full, scst_set_cmd_error,
                           scst_set_invalid_field_in_cdb, scst_set_invalid_field_in_parm_list)
from scst_core.ua import scst_queue_ua

if TYPE_CHECKING:
    from scst_core.scst import scst_cmd, scst_device, scst_session, scst_tgt

# Design notes:
# - The hot path (scst_core.targ.scst_cmd_init_done) tests
#   `scst_tg.scst_alua_filters` once: the dictionary is empty unless some
#   group is standby, unavailable, offline or transitioning, so READs cost
#   one attribute test when ALUA is not configured or every group is active.
#   It is rebuilt (never changed in place) after every change.
# - Targets are named, not pointed to (as SCST's scst_tg_tgt): a group may
#   name a target that is registered later, or one served by another
#   system (its relative target port identifier is then given by hand).

# Primary target port asymmetric access states (SPC-4 table 173; scst.h
# enum scst_tg_state)
SCST_TG_STATE_OPTIMIZED = 0x0
SCST_TG_STATE_NONOPTIMIZED = 0x1
SCST_TG_STATE_STANDBY = 0x2
SCST_TG_STATE_UNAVAILABLE = 0x3
SCST_TG_STATE_LBA_DEPENDENT = 0x4
SCST_TG_STATE_OFFLINE = 0xE
SCST_TG_STATE_TRANSITIONING = 0xF
SCST_TG_STATE_UNDEFINED = -1

# REPORT TARGET PORT GROUPS descriptor bits
SCST_TG_PREFERRED = 0x80
SCST_TG_SUP_OPTIMIZED = 0x01
SCST_TG_SUP_NONOPTIMIZED = 0x02
SCST_TG_SUP_STANDBY = 0x04
SCST_TG_SUP_UNAVAILABLE = 0x08
SCST_TG_SUP_LBA_DEPENDENT = 0x10
SCST_TG_SUP_OFFLINE = 0x40
SCST_TG_SUP_TRANSITION = 0x80
_SUPPORTED_STATES = (SCST_TG_SUP_OPTIMIZED | SCST_TG_SUP_NONOPTIMIZED | SCST_TG_SUP_STANDBY
                     | SCST_TG_SUP_UNAVAILABLE | SCST_TG_SUP_OFFLINE | SCST_TG_SUP_TRANSITION)

# TARGET PORT GROUP descriptor STATUS CODE (SPC-4 table 175)
SCST_TG_STATUS_NONE = 0
SCST_TG_STATUS_BY_STPG = 1
SCST_TG_STATUS_IMPLICIT = 2

# Seconds an implicit transition takes at most (extended RTPG header):
# ours are immediate.
SCST_TG_IMPLICIT_TRANSITION_TIME = 0

# INQUIRY TPGS field: implicit (01b) and explicit (10b) ALUA
SCST_TPGS_IMPLICIT_EXPLICIT = 0x3

# Sense (scst_const.h names)
scst_sense_alua_transitioning = (NOT_READY, 0x04, 0x0A)
scst_sense_alua_standby = (NOT_READY, 0x04, 0x0B)
scst_sense_alua_unav = (NOT_READY, 0x04, 0x0C)
scst_sense_alua_offline = (NOT_READY, 0x04, 0x12)
scst_sense_asym_access_state_changed = (UNIT_ATTENTION, 0x2A, 0x06)
scst_sense_set_target_pgs_failed = (ILLEGAL_REQUEST, 0x67, 0x0A)

# SCSI transport protocol identifiers (SPC-4 table 398) by target driver
_PROTOCOL_ID = {"iscsi": 0x5}

# sysfs/scst.conf names (scst_tg.c's scst_tg_state_names); the first name
# of each state is the one shown
_STATE_NAMES: dict[int, tuple[str, ...]] = {
    SCST_TG_STATE_OPTIMIZED: ("active", "optimized", "active/optimized"),
    SCST_TG_STATE_NONOPTIMIZED: ("nonoptimized", "active/nonoptimized", "non-optimized"),
    SCST_TG_STATE_STANDBY: ("standby",),
    SCST_TG_STATE_UNAVAILABLE: ("unavailable",),
    SCST_TG_STATE_OFFLINE: ("offline",),
    SCST_TG_STATE_TRANSITIONING: ("transitioning",),
}
_NAME_TO_STATE = {n: s for s, names in _STATE_NAMES.items() for n in names}

SCST_TG_MAX_GROUP_ID = 0xFFFF
SCST_STPG_MAX_DESCRIPTORS = 64        # as SCST: a sanity bound on one command


@attrs.define(slots=True, eq=False)
class scst_tg_tgt:
    """A target (SCSI target port) in a target group."""
    tg: "scst_target_group"
    name: str
    # for a target this system does not serve (a port of a peer): its
    # relative target port identifier, set by hand; 0 for local targets
    rel_tgt_id: int = 0


@attrs.define(slots=True, eq=False)
class scst_target_group:
    dg: "scst_dev_group"
    name: str
    # protected by scst_dg_mutex for writers; read locklessly by commands
    group_id: int = 0
    state: int = SCST_TG_STATE_OPTIMIZED
    preferred: bool = False
    status_code: int = SCST_TG_STATUS_NONE
    tgt_list: list = attrs.field(factory=list)        # scst_tg_tgt


@attrs.define(slots=True, eq=False)
class scst_dev_group:
    name: str
    # protected by scst_dg_mutex for writers; read locklessly by commands
    dev_list: list = attrs.field(factory=list)        # scst_device
    tg_list: list = attrs.field(factory=list)         # scst_target_group


scst_dg_mutex = mutex("scst_dg_mutex")
# protected by scst_dg_mutex for writers
scst_dev_group_list: list[scst_dev_group] = []
# device -> {target name -> filter}, only for ports whose group restricts
# commands; rebuilt by _scst_update_alua_filters (see the design notes)
scst_alua_filters: dict = {}
alua_stats = {"filtered": 0, "state_changes": 0, "stpg": 0}


# -- names --------------------------------------------------------------------

def scst_alua_state_name(state: int) -> str | None:
    names = _STATE_NAMES.get(state)
    return names[0] if names else None


def scst_alua_name_to_state(name: str) -> int:
    """The state a sysfs/scst.conf name stands for, or SCST_TG_STATE_UNDEFINED."""
    return _NAME_TO_STATE.get(name.strip().lower(), SCST_TG_STATE_UNDEFINED)


def scst_alua_state_names() -> tuple[str, ...]:
    return tuple(n[0] for n in _STATE_NAMES.values())


# -- lookups (callers hold scst_dg_mutex, or run on the command path) ----------

def __lookup_dg_by_name(name: str) -> scst_dev_group | None:
    return next((dg for dg in scst_dev_group_list if dg.name == name), None)


def scst_lookup_dg_by_name(name: str) -> scst_dev_group | None:
    return __lookup_dg_by_name(name)


def scst_lookup_dg_by_dev(dev: "scst_device") -> scst_dev_group | None:
    for dg in scst_dev_group_list:
        if dev in dg.dev_list:
            return dg
    return None


def scst_lookup_tg_by_name(dg: scst_dev_group, name: str) -> scst_target_group | None:
    return next((tg for tg in dg.tg_list if tg.name == name), None)


def __lookup_tg_by_group_id(dg: scst_dev_group, group_id: int) -> scst_target_group | None:
    return next((tg for tg in dg.tg_list if tg.group_id == group_id), None)


def __lookup_dg_tgt(dg: scst_dev_group, tgt_name: str) -> scst_tg_tgt | None:
    for tg in dg.tg_list:
        for t in tg.tgt_list:
            if t.name == tgt_name:
                return t
    return None


def _find_tgt(name: str) -> "scst_tgt | None":
    """The local target of that name (SCST's __lookup_tgt)."""
    from scst_core import main as scst_main   # main imports targ, which imports us
    for tgtt in scst_main.scst_template_list:
        for tgt in tgtt.tgt_list:
            if tgt.tgt_name == name:
                return tgt
    return None


def _tg_tgt_rel_id(t: scst_tg_tgt) -> int:
    tgt = _find_tgt(t.name)
    return tgt.rel_tgt_id if tgt is not None else t.rel_tgt_id


# -- the command filter ---------------------------------------------------------

# Commands each restricting state still serves (SPC-4 5.16.2.4.4 standby,
# 5.16.2.4.5 unavailable, 5.16.2.4.6 offline, 5.16.2.5 transitioning; plus
# READ CAPACITY, RESERVE and RELEASE as SCST allows them, so hosts can size
# a standby path). MAINTENANCE IN reports (identifying information, target
# port groups, supported opcodes and TMFs, timestamp) are always served.
_MI_REPORTS = frozenset((0x05, 0x0A, 0x0C, 0x0D, 0x0F))
_UNAV_OPS = frozenset((INQUIRY, 0x25, REPORT_LUNS, REQUEST_SENSE, READ_BUFFER, WRITE_BUFFER))
_STANDBY_OPS = _UNAV_OPS | frozenset((
    0x1A, MODE_SENSE_10, 0x15, MODE_SELECT_10, LOG_SELECT, LOG_SENSE, 0x1C, 0x1D,
    0x16, RESERVE_10, 0x17, RELEASE_10, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT))


def _allowed(cmd: "scst_cmd", ops: frozenset, stpg: bool) -> bool:
    cdb = cmd.cdb
    op = cdb[0]
    if op in ops:
        return True
    sa = cdb[1] & 0x1F
    if op == MAINTENANCE_IN:
        return sa in _MI_REPORTS
    if op == MAINTENANCE_OUT:
        return stpg and sa == 0x0A
    if op == SERVICE_ACTION_IN_16:
        return sa == 0x10                   # READ CAPACITY(16)
    return False


def _filter(ops: frozenset, stpg: bool, sense: tuple[int, int, int]) -> Callable:
    def alua_filter(cmd: "scst_cmd") -> bool:
        if _allowed(cmd, ops, stpg):
            return False
        scst_set_cmd_error(cmd, sense)
        alua_stats["filtered"] += 1
        return True
    return alua_filter


# scst_tg.c's scst_alua_filter[]: None where every command is served
_scst_alua_filter: dict[int, Callable | None] = {
    SCST_TG_STATE_OPTIMIZED: None,
    SCST_TG_STATE_NONOPTIMIZED: None,
    SCST_TG_STATE_STANDBY: _filter(_STANDBY_OPS, True, scst_sense_alua_standby),
    SCST_TG_STATE_UNAVAILABLE: _filter(_UNAV_OPS, True, scst_sense_alua_unav),
    SCST_TG_STATE_OFFLINE: _filter(_UNAV_OPS, True, scst_sense_alua_offline),
    SCST_TG_STATE_TRANSITIONING: _filter(_UNAV_OPS, False, scst_sense_alua_transitioning),
}


def _scst_update_alua_filters() -> None:
    global scst_alua_filters
    filters: dict = {}
    for dg in scst_dev_group_list:
        for tg in dg.tg_list:
            f = _scst_alua_filter.get(tg.state)
            if f is None or not tg.tgt_list:
                continue
            for dev in dg.dev_list:
                m = filters.setdefault(dev, {})
                for t in tg.tgt_list:
                    m[t.name] = f
    scst_alua_filters = filters


def scst_tg_check_alua(cmd: "scst_cmd") -> bool:
    """On the command path (any context), after the LUN lookup: if the
    command's target port is in a group whose state does not serve it, set
    NOT READY with the state's sense and return True (the command is
    finished). Callers test scst_alua_filters first."""
    m = scst_alua_filters.get(cmd.dev)
    if m is None or cmd.tgt is None:
        return False
    f = m.get(cmd.tgt.tgt_name)
    return f is not None and f(cmd)


# -- unit attentions --------------------------------------------------------------

def _gen_state_changed_ua(dg: scst_dev_group, skip_sess: "scst_session | None") -> None:
    """ASYMMETRIC ACCESS STATE CHANGED on every I_T_L nexus of dg's
    devices, except those of the I_T nexus skip_sess (SPC-4 5.16.2.6)."""
    for dev in list(dg.dev_list):
        for tgt_dev in list(dev.dev_tgt_dev_list):
            if skip_sess is None or tgt_dev.sess is not skip_sess:
                scst_queue_ua(tgt_dev, scst_sense_asym_access_state_changed)


def __scst_tg_set_state(tg: scst_target_group, state: int, status_code: int,
                        skip_sess: "scst_session | None") -> bool:
    """Change tg's state; True if it changed. No UA for transitioning
    (as SCST: the change that follows it raises one)."""
    if tg.state == state:
        return False
    old = tg.state
    tg.state = state
    tg.status_code = status_code
    _scst_update_alua_filters()
    alua_stats["state_changes"] += 1
    if state != SCST_TG_STATE_TRANSITIONING:
        _gen_state_changed_ua(tg.dg, skip_sess)
    pr_info(f"scst: changed ALUA state of {tg.dg.name}/{tg.name} from "
            f"{scst_alua_state_name(old)} into {scst_alua_state_name(state)}")
    return True


# -- management (task context: sysfs stores) --------------------------------------

def scst_dg_add(name: str) -> int:
    """Create a device group. 0, -EINVAL (bad name) or -EEXIST."""
    if not name or "/" in name or name in (".", ".."):
        pr_err(f"scst: bad device group name '{name}'")
        return -EINVAL
    mutex_lock(scst_dg_mutex)
    try:
        if __lookup_dg_by_name(name) is not None:
            pr_err(f"scst: device group {name} already exists")
            return -EEXIST
        scst_dev_group_list.append(scst_dev_group(name))
    finally:
        mutex_unlock(scst_dg_mutex)
    pr_info(f"scst: device group {name} created")
    return 0


def __scst_dg_remove(dg: scst_dev_group) -> None:
    # Leaving ALUA makes every port active/optimized again: say so.
    for tg in dg.tg_list:
        __scst_tg_set_state(tg, SCST_TG_STATE_OPTIMIZED, SCST_TG_STATUS_IMPLICIT, None)
    scst_dev_group_list.remove(dg)
    dg.dev_list.clear()
    dg.tg_list.clear()
    _scst_update_alua_filters()


def scst_dg_remove(name: str) -> int:
    """Delete a device group and everything in it. 0 or -ENOENT."""
    mutex_lock(scst_dg_mutex)
    try:
        dg = __lookup_dg_by_name(name)
        if dg is None:
            pr_err(f"scst: no device group {name}")
            return -ENOENT
        __scst_dg_remove(dg)
    finally:
        mutex_unlock(scst_dg_mutex)
    pr_info(f"scst: device group {name} deleted")
    return 0


def scst_dg_dev_add(dg: scst_dev_group, name: str) -> int:
    """Add the device named name to dg. 0, -ENODEV (no such device) or
    -EEXIST (it is in a device group already)."""
    from scst_core import main as scst_main  # cycle: main imports targ, which imports tg
    mutex_lock(scst_dg_mutex)
    try:
        dev = scst_main.scst_find_device(name)
        if dev is None:
            pr_err(f"scst: device group {dg.name}: no device {name}")
            return -ENODEV
        other = scst_lookup_dg_by_dev(dev)
        if other is not None:
            pr_err(f"scst: device {name} is in device group {other.name} already")
            return -EEXIST
        dg.dev_list.append(dev)
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_dg_dev_remove_by_name(dg: scst_dev_group, name: str) -> int:
    """0 or -ENOENT."""
    mutex_lock(scst_dg_mutex)
    try:
        dev = next((d for d in dg.dev_list if d.virt_name == name), None)
        if dev is None:
            pr_err(f"scst: device {name} is not in device group {dg.name}")
            return -ENOENT
        dg.dev_list.remove(dev)
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_dg_dev_remove_by_dev(dev: "scst_device") -> int:
    """The device goes away: drop it from its device group. 0 or -ENOENT."""
    mutex_lock(scst_dg_mutex)
    try:
        dg = scst_lookup_dg_by_dev(dev)
        if dg is None:
            return -ENOENT
        dg.dev_list.remove(dev)
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_add(dg: scst_dev_group, name: str) -> int:
    """Create a target group in dg (active/optimized, group_id 0 until
    set). 0, -EINVAL (bad name) or -EEXIST."""
    if not name or "/" in name or name in (".", "..", "mgmt"):
        pr_err(f"scst: bad target group name '{name}'")
        return -EINVAL
    mutex_lock(scst_dg_mutex)
    try:
        if scst_lookup_tg_by_name(dg, name) is not None:
            pr_err(f"scst: target group {name} already exists in {dg.name}")
            return -EEXIST
        dg.tg_list.append(scst_target_group(dg, name))
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_remove_by_name(dg: scst_dev_group, name: str) -> int:
    """0 or -ENOENT. Its ports become active/optimized."""
    mutex_lock(scst_dg_mutex)
    try:
        tg = scst_lookup_tg_by_name(dg, name)
        if tg is None:
            pr_err(f"scst: no target group {name} in {dg.name}")
            return -ENOENT
        if tg.tgt_list:
            __scst_tg_set_state(tg, SCST_TG_STATE_OPTIMIZED, SCST_TG_STATUS_IMPLICIT, None)
        dg.tg_list.remove(tg)
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_tgt_add(tg: scst_target_group, name: str) -> int:
    """Put the target named name into tg; it need not exist (yet). 0,
    -EINVAL or -EEXIST (it is in a target group of this dg already)."""
    if not name or "/" in name or name == "mgmt":
        pr_err(f"scst: bad target name '{name}'")
        return -EINVAL
    mutex_lock(scst_dg_mutex)
    try:
        if __lookup_dg_tgt(tg.dg, name) is not None:
            pr_err(f"scst: target {name} is in a target group of {tg.dg.name} already")
            return -EEXIST
        tg.tgt_list.append(scst_tg_tgt(tg, name))
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_tgt_remove_by_name(tg: scst_target_group, name: str) -> int:
    """0 or -ENOENT."""
    mutex_lock(scst_dg_mutex)
    try:
        t = next((t for t in tg.tgt_list if t.name == name), None)
        if t is None:
            pr_err(f"scst: target {name} is not in target group {tg.name}")
            return -ENOENT
        tg.tgt_list.remove(t)
        _scst_update_alua_filters()
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_tgt_set_rel_tgt_id(t: scst_tg_tgt, rel_tgt_id: int) -> int:
    """The relative target port identifier of a target served elsewhere.
    0, -EINVAL (out of 0..65535) or -EBUSY (the target is local: its own
    rel_tgt_id counts)."""
    if not 0 <= rel_tgt_id <= 0xFFFF:
        return -EINVAL
    if rel_tgt_id and _find_tgt(t.name) is not None:
        pr_err(f"scst: {t.name} is a local target: set its own rel_tgt_id")
        return -EBUSY
    t.rel_tgt_id = rel_tgt_id
    return 0


def scst_tg_set_group_id(tg: scst_target_group, group_id: int) -> int:
    """0, -EINVAL (not 1..65535) or -EEXIST (used by another group of the dg)."""
    if not 1 <= group_id <= SCST_TG_MAX_GROUP_ID:
        pr_err(f"scst: group_id must be 1..{SCST_TG_MAX_GROUP_ID}, not {group_id}")
        return -EINVAL
    mutex_lock(scst_dg_mutex)
    try:
        other = __lookup_tg_by_group_id(tg.dg, group_id)
        if other is not None and other is not tg:
            pr_err(f"scst: group_id {group_id} is used by {tg.dg.name}/{other.name}")
            return -EEXIST
        tg.group_id = group_id
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_set_state(tg: scst_target_group, state: int) -> int:
    """Change the state by management (an implicit transition): every
    nexus of the group's devices gets a unit attention. 0 or -EINVAL."""
    if state not in _scst_alua_filter:
        return -EINVAL
    mutex_lock(scst_dg_mutex)
    try:
        __scst_tg_set_state(tg, state, SCST_TG_STATUS_IMPLICIT, None)
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_set_preferred(tg: scst_target_group, preferred: bool) -> int:
    """As SCST, a change raises ASYMMETRIC ACCESS STATE CHANGED (it ends
    an initiator's STPG retry loop). 0."""
    mutex_lock(scst_dg_mutex)
    try:
        if tg.preferred != preferred:
            tg.preferred = preferred
            _gen_state_changed_ua(tg.dg, None)
    finally:
        mutex_unlock(scst_dg_mutex)
    return 0


def scst_tg_cleanup() -> None:
    """Module exit: drop every device group."""
    mutex_lock(scst_dg_mutex)
    try:
        while scst_dev_group_list:
            __scst_dg_remove(scst_dev_group_list[0])
    finally:
        mutex_unlock(scst_dg_mutex)


# -- the SCSI side (command path, any context) -------------------------------------

def scst_alua_configured(dev: "scst_device") -> bool:
    return scst_lookup_dg_by_dev(dev) is not None


def scst_tg_dev_peer_ports(dev: "scst_device") -> list[str]:
    """Names of the target ports dev's device group lists that this system
    does not serve: ports of another node exporting the same logical unit
    (uscst's addition, for handlers that must know the LU is shared)."""
    dg = scst_lookup_dg_by_dev(dev)
    if dg is None:
        return []
    return [t.name for tg in dg.tg_list for t in tg.tgt_list if _find_tgt(t.name) is None]


def scst_lookup_tg(dev: "scst_device", tgt: "scst_tgt") -> scst_target_group | None:
    dg = scst_lookup_dg_by_dev(dev)
    if dg is None:
        return None
    t = __lookup_dg_tgt(dg, tgt.tgt_name)
    return t.tg if t is not None else None


def scst_lookup_tg_id(dev: "scst_device", tgt: "scst_tgt") -> int:
    """The group_id of the port's group for dev, 0 if none."""
    tg = scst_lookup_tg(dev, tgt)
    return tg.group_id if tg is not None else 0


def scst_get_alua_state(dev: "scst_device", tgt: "scst_tgt") -> int:
    tg = scst_lookup_tg(dev, tgt)
    return tg.state if tg is not None else SCST_TG_STATE_OPTIMIZED


def scst_tg_tpgs(dev: "scst_device") -> int:
    """INQUIRY's TPGS field: 0 when the device is in no device group,
    else implicit and explicit ALUA (11b)."""
    return SCST_TPGS_IMPLICIT_EXPLICIT if scst_alua_configured(dev) else 0


def _port_designator(tgt: "scst_tgt", code_set: int, dtype: int, ident: bytes) -> bytes:
    proto = _PROTOCOL_ID.get(tgt.tgtt.name) if tgt.tgtt is not None else None
    b0 = ((proto << 4) if proto is not None else 0) | code_set
    b1 = (0x80 if proto is not None else 0) | ASSOCIATION_TARGET_PORT | dtype   # PIV
    return bytes((b0, b1, 0, len(ident))) + ident


def scst_tg_target_port_name(tgt: "scst_tgt") -> str:
    """The SCSI target port name: for iSCSI '<target name>,t,0x<TPGT>'
    (RFC 7143 10.1, SPC-4 7.8.6.11)."""
    if tgt.tgtt is not None and tgt.tgtt.name == "iscsi":
        tpgt = getattr(tgt.tgt_priv, "portal_group_tag", 1)
        return f"{tgt.tgt_name},t,0x{tpgt:04x}"
    return tgt.tgt_name


def scst_tg_port_designators(cmd: "scst_cmd") -> bytes:
    """The target port designators of the Device Identification VPD page
    (SPC-4 7.8.6) for the port the command came through: relative target
    port (type 4), target port group (type 5, when the device is in a
    device group and the port in one of its groups) and the SCSI name
    string of the port (type 8). Empty without a target."""
    tgt = cmd.tgt
    if tgt is None:
        return b""
    out = _port_designator(tgt, CODE_SET_BINARY, DESIGNATOR_TYPE_RELATIVE_TARGET_PORT,
                           bytes(2) + (tgt.rel_tgt_id & 0xFFFF).to_bytes(2, "big"))
    if cmd.dev is not None:
        tg_id = scst_lookup_tg_id(cmd.dev, tgt)
        if tg_id:
            out += _port_designator(tgt, CODE_SET_BINARY, DESIGNATOR_TYPE_TARGET_PORT_GROUP,
                                    bytes(2) + tg_id.to_bytes(2, "big"))
    name = scst_tg_target_port_name(tgt).encode("utf-8", "replace")[:251] + b"\x00"
    name = name.ljust((len(name) + 3) & ~3, b"\x00")       # null-terminated, 4-byte multiple
    out += _port_designator(tgt, CODE_SET_UTF8, DESIGNATOR_TYPE_SCSI_NAME_STRING, name)
    return out


def scst_tg_get_group_info(dev: "scst_device", data_format: int) -> bytes | int:
    """REPORT TARGET PORT GROUPS parameter data (SPC-4 6.27.2) for dev:
    data_format 0 (length only) or 1 (extended header with the implicit
    transition time); -EINVAL for another format. A device in no device
    group reports no groups."""
    if data_format not in (0, 1):
        return -EINVAL
    body = bytearray()
    if data_format == 1:
        body += bytes((0x10, SCST_TG_IMPLICIT_TRANSITION_TIME, 0, 0))
    dg = scst_lookup_dg_by_dev(dev)
    for tg in (dg.tg_list if dg is not None else ()):
        ports = tg.tgt_list[:255]
        body.append((SCST_TG_PREFERRED if tg.preferred else 0) | tg.state)
        body.append(_SUPPORTED_STATES)
        body += tg.group_id.to_bytes(2, "big")
        body += bytes((0, tg.status_code, 0, len(ports)))
        for t in ports:
            body += bytes(2) + (_tg_tgt_rel_id(t) & 0xFFFF).to_bytes(2, "big")
    # RETURN DATA LENGTH counts what follows it, the extended header included
    return len(body).to_bytes(4, "big") + bytes(body)


def scst_tg_exec_report_tpgs(cmd: "scst_cmd") -> bytes | None:
    """REPORT TARGET PORT GROUPS: the parameter data, or None after
    setting INVALID FIELD IN CDB (an unknown PARAMETER DATA FORMAT)."""
    fmt = cmd.cdb[1] >> 5
    data = scst_tg_get_group_info(cmd.dev, fmt)
    if isinstance(data, int):
        scst_set_invalid_field_in_cdb(cmd, 1, 7)
        return None
    return data


def scst_tg_set_group_info(cmd: "scst_cmd") -> int:
    """SET TARGET PORT GROUPS (SPC-4 6.38): explicit transitions. Every
    descriptor is checked before any state changes. Returns 0 (done, the
    changed groups' nexuses other than the sender's got a unit attention)
    or a negative errno with the command's sense set: an unsupported state
    or an unknown group or port is ILLEGAL REQUEST, INVALID FIELD IN
    PARAMETER LIST with the field pointer on it (-EINVAL, -ENOENT); a device
    in no device group, or a group that is transitioning, fails with SET
    TARGET PORT GROUPS COMMAND FAILED or the transitioning sense."""
    dev = cmd.dev
    plen = int.from_bytes(cmd.cdb[6:10], "big")
    n = min(plen, cmd.bufflen)
    if n == 0:
        return 0        # SPC-4: no data, no change
    buf = bytes(scst_get_buf_full(cmd)[:n])
    if n < 4 or (n - 4) % 4:
        scst_set_invalid_field_in_cdb(cmd, 6)
        return -EINVAL
    if (n - 4) // 4 > SCST_STPG_MAX_DESCRIPTORS:
        scst_set_invalid_field_in_cdb(cmd, 6)
        return -EINVAL
    dg = scst_lookup_dg_by_dev(dev)
    if dg is None:
        scst_set_cmd_error(cmd, scst_sense_set_target_pgs_failed)
        return -EINVAL
    changes: list[tuple[scst_target_group, int]] = []
    for off in range(4, n, 4):
        state = buf[off] & 0x0F
        ident = int.from_bytes(buf[off + 2:off + 4], "big")
        if state not in (SCST_TG_STATE_OPTIMIZED, SCST_TG_STATE_NONOPTIMIZED,
                         SCST_TG_STATE_STANDBY, SCST_TG_STATE_UNAVAILABLE,
                         SCST_TG_STATE_OFFLINE):
            scst_set_invalid_field_in_parm_list(cmd, off, 3)
            return -EINVAL
        if state == SCST_TG_STATE_OFFLINE:
            # names a relative target port: its group goes offline
            tg = next((t.tg for g in dg.tg_list for t in g.tgt_list
                       if ident and _tg_tgt_rel_id(t) == ident), None)
        else:
            tg = __lookup_tg_by_group_id(dg, ident) if ident else None
        if tg is None:
            scst_set_invalid_field_in_parm_list(cmd, off + 2)
            return -ENOENT
        if tg.state == SCST_TG_STATE_TRANSITIONING:
            scst_set_cmd_error(cmd, scst_sense_alua_transitioning)
            return -EBUSY
        changes.append((tg, state))
    alua_stats["stpg"] += 1
    for tg, state in changes:
        __scst_tg_set_state(tg, state, SCST_TG_STATUS_BY_STPG, cmd.sess)
    return 0
