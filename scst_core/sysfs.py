"""SCST's management tree under /sys/kernel/scst_tgt: handlers, devices,
targets with their LUNs, initiator groups and sessions, and the mgmt files
that accept SCST's commands.

Twin of scst/src/scst_sysfs.c (layout, mgmt command syntax and the
"[key]" marking of attributes that belong in scst.conf).

Layout:
  scst_tgt/{version,setup_id,last_sysfs_mgmt_res,threads,max_tasklet_cmd,
            trace_level,measure_latency,fast_read,fast_reads}
  scst_tgt/handlers/<handler>/{type,mgmt,<device> -> devices/<device>}
  scst_tgt/devices/<device>/{handler ->,type,commands,exported/,<handler attrs>}
  scst_tgt/targets/<driver>/{mgmt,<driver attrs>}
  scst_tgt/targets/<driver>/<target>/{enabled,rel_tgt_id,<target attrs>}
      luns/{mgmt,<lun>/{device ->,read_only}}
      ini_groups/{mgmt,<group>/{addr_method,io_grouping_type,cpu_mask,
          black_hole,luns/...,initiators/{mgmt,<name>}}}
      sessions/<initiator>/{initiator_name,commands,active_commands,reads,
          writes,read_bytes,write_bytes,read_io_count_kb,write_io_count_kb,
          force_close,luns -> the group's luns}
  scst_tgt/device_groups/{mgmt,<dg>/}          (ALUA, scst_core.tg)
      <dg>/devices/{mgmt,<device> -> devices/<device>}
      <dg>/target_groups/{mgmt,<tg>/{group_id,state,preferred,mgmt,
          <target>/rel_tgt_id}}

mgmt commands (one per write, as SCST):
  handlers/<h>/mgmt:   add_device NAME [k=v;...] | del_device NAME
  targets/<d>/mgmt:    add_target NAME [k=v;...] | del_target NAME |
                       add_attribute A V | del_attribute A V |
                       add_target_attribute T A V | del_target_attribute T A V
  .../luns/mgmt:       add DEVICE LUN [read_only=1] | del LUN |
                       replace DEVICE LUN [read_only=1] | clear
  .../ini_groups/mgmt: create NAME | del NAME
  .../initiators/mgmt: add NAME | del NAME | move NAME GROUP | clear
  devices/<d>/resync_size: write 1 (if the handler supports it)
  device_groups/mgmt:  add NAME | del NAME  (create NAME: uscst's older add)
  <dg>/devices/mgmt:   add DEVICE | del DEVICE
  <dg>/target_groups/mgmt: add NAME | del NAME  (create NAME as well)
  <dg>/target_groups/<tg>/mgmt: add TARGET | del TARGET

Contexts: every show() and store() here runs in task context (it takes
scst_mutex inside the core calls); kshim.sysfs's callers guarantee that.

Differs from SCST: directories mirror the core's lists through kobj_type
refresh callbacks instead of being created by the core at registration
(scst_core.main has no sysfs calls yet), so a session appears in the tree
when the tree is next read. Handler- and driver-specific attributes come
from records registered here (scst_devt_sysfs, scst_tgtt_sysfs) rather than
fields of scst_dev_type/scst_tgt_template. Multi-valued attributes are
one file per value (IncomingUser, IncomingUser1, ...) as in SCST, made
from the driver's multi_values on each refresh. Moving an initiator
between groups affects its next session, not a running one. The root's
threads and max_tasklet_cmd, and a group's addr_method, io_grouping_type,
cpu_mask and black_hole are kept and shown but change nothing (one CPU,
no tasklets). docs/config.md tabulates every difference scstadmin sees.
"""
from __future__ import annotations

import re

from typing import Any, Callable

import attrs

from kshim.err import EBUSY, EEXIST, EINVAL, ENODEV, ENOENT, ENOSYS, errname
from kshim.kobject import kobj_type, kobject, kobject_create_and_add, kobject_del
from kshim.printk import pr_err, pr_info
from kshim.sysfs import (S_IRUGO, S_IWUSR, __ATTR, __ATTR_RO, __ATTR_RW, kernel_kobj,
                         kobj_attribute, sysfs_create_file,
                         sysfs_create_link, sysfs_link)
from scst_core import cluster as scst_cluster
from scst_core import cluster_dev
from scst_core import main as scst_main
from scst_core.cluster import scst_cluster_dev_event_wait
from scst_core.cluster_proto import CL_EV_CAPACITY
from scst_core.const import scst_sense_capacity_data_changed_UA
from scst_core.debug import scst_debug_sysfs_init
from scst_core.fastpath import scst_fastpath_sysfs_init
from scst_core.latency import scst_latency_sysfs_init, scst_sess_latency_attr
from scst_core import tg as scst_tg
from scst_core.scst import (scst_acg, scst_acg_dev, scst_dev_type, scst_device, scst_session, scst_tgt,
                            scst_tgt_template)
from scst_core.ua import scst_capacity_data_changed, scst_report_luns_changed

SCST_VERSION_STRING = "3.7.0-uscst"
SCST_SYSFS_KEY_MARK = "[key]"
SCST_MAX_LUN = 16384

# -- what handlers and drivers add to the tree ------------------------------


@attrs.define(slots=True, eq=False)
class scst_devt_sysfs:
    """A dev handler's part of the tree (SCST: devt_attrs, dev_attrs and
    add_device_parameters of struct scst_dev_type). dev_attrs' show/store
    get the device's kobject (kobj.private is the scst_device)."""
    dev_attrs: tuple = ()
    # writable device attributes scst.conf may change on a running device
    dev_live_attrs: tuple[str, ...] = ()
    # add_device parameters that only matter when a device is created
    # (scst.conf leaves a running device alone if they differ)
    dev_create_only_attrs: tuple[str, ...] = ()
    resync_size: Callable[[scst_device], int] | None = None


@attrs.define(slots=True, eq=False)
class scst_tgtt_sysfs:
    """A target driver's part of the tree (SCST: add_target, del_target,
    enable_target, is_target_enabled, tgtt_attrs, tgt_attrs and the
    optional attribute lists of struct scst_tgt_template). tgtt_attrs get
    the driver's kobject (private: the template), tgt_attrs the target's
    (private: the scst_tgt)."""
    add_target: Callable[[str, dict], int] | None = None
    del_target: Callable[[str], int] | None = None
    add_target_parameters: tuple[str, ...] = ()
    enable_target: Callable[[scst_tgt, bool], int] | None = None
    is_target_enabled: Callable[[scst_tgt], bool] | None = None
    tgtt_attrs: tuple = ()
    tgt_attrs: tuple = ()
    sess_attrs: tuple = ()               # created in each session's directory
    tgtt_optional_attributes: tuple[str, ...] = ()
    tgt_optional_attributes: tuple[str, ...] = ()
    add_attribute: Callable[[str, str], int] | None = None
    del_attribute: Callable[[str, str], int] | None = None
    add_target_attribute: Callable[[scst_tgt, str, str], int] | None = None
    del_target_attribute: Callable[[scst_tgt, str, str], int] | None = None
    # driver attributes add_attribute accepts without advertising them
    # (uscst-only: iSCSI's `portal`), so scstadmin's clear leaves them alone
    tgtt_hidden_attributes: tuple[str, ...] = ()
    # The values of the multi-valued attributes as {name: (mode, [values])}:
    # the core shows them as files NAME, NAME1, ... (SCST's
    # IncomingUser, IncomingUser1); None for the driver's own.
    multi_values: Callable[[scst_tgt | None], dict[str, tuple[int, list[str]]]] | None = None
    # close a session (sessions/<initiator>/force_close): 0 or -errno
    close_session: Callable[[scst_session], int] | None = None


devt_sysfs: dict[str, scst_devt_sysfs] = {}
tgtt_sysfs: dict[str, scst_tgtt_sysfs] = {}


def scst_register_devt_sysfs(devt_name: str, ops: scst_devt_sysfs) -> None:
    devt_sysfs[devt_name] = ops


def scst_register_tgtt_sysfs(tgtt_name: str, ops: scst_tgtt_sysfs) -> None:
    tgtt_sysfs[tgtt_name] = ops


def scst_unregister_devt_sysfs(devt_name: str) -> None:
    devt_sysfs.pop(devt_name, None)


def scst_unregister_tgtt_sysfs(tgtt_name: str) -> None:
    tgtt_sysfs.pop(tgtt_name, None)


# -- helpers ------------------------------------------------------------------

last_sysfs_mgmt_res = 0
setup_id = 0
# Root attributes SCST has and uscst keeps only as values: one emulated CPU
# runs every thread, and there are no tasklets (SCST's defaults shown).
_ROOT_DEFAULTS = {"threads": 1, "max_tasklet_cmd": 10}
scst_root_values: dict[str, int] = dict(_ROOT_DEFAULTS)


def scst_attr_show_key(value: Any, key: bool) -> str:
    """An attribute's text; '[key]' on a second line marks a value that
    belongs in scst.conf (SCST's SCST_SYSFS_KEY_MARK)."""
    return f"{value}\n{SCST_SYSFS_KEY_MARK}\n" if key else f"{value}\n"


def scst_parse_params(text: str, allowed: tuple[str, ...], what: str) -> dict | int:
    """'k=v; k2=v2' -> dict, or -EINVAL after a pr_err naming the bad one."""
    params: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k:
            pr_err(f"scst: {what}: expected key=value, got '{item}'")
            return -EINVAL
        if k not in allowed:
            pr_err(f"scst: {what}: unknown parameter '{k}' "
                   f"(known: {', '.join(allowed) or 'none'})")
            return -EINVAL
        params[k] = v
    return params


def _bool_arg(text: str) -> int:
    t = text.strip().lower()
    if t in ("1", "y", "yes", "on", "true"):
        return 1
    if t in ("0", "n", "no", "off", "false"):
        return 0
    return -1


_SECRET_RE = re.compile(r"((?:Incoming|Outgoing)User\s+\S+\s+)\S+")


def scst_redact_secrets(text: str) -> str:
    """text with the secret of every 'IncomingUser/OutgoingUser name secret'
    replaced by ****: for logs and error messages."""
    return _SECRET_RE.sub(r"\1****", text)


def _mgmt_done(ret: int, cmd: str) -> int:
    global last_sysfs_mgmt_res
    last_sysfs_mgmt_res = ret
    if ret < 0:
        pr_err(f"scst: '{scst_redact_secrets(cmd)}' failed: {errname(ret)}")
    return ret


def _mgmt_store(handler: Callable[[kobject, list[str], str], int], usage: str) -> Callable:
    """Wrap a mgmt command handler: split the command, record the result,
    return the write count (or the negative errno)."""
    def store(kobj: kobject, _a: kobj_attribute, buf: str) -> int:
        line = buf.strip()
        words = line.split()
        if not words:
            pr_err(f"scst: empty mgmt command; usage:\n{usage}")
            return _mgmt_done(-EINVAL, line)
        ret = handler(kobj, words, line)
        _mgmt_done(ret, line)
        return len(buf) if ret == 0 else ret
    return store


def _mgmt_attr(handler: Callable, usage: str) -> kobj_attribute:
    return __ATTR("mgmt", S_IRUGO | S_IWUSR, lambda k, a: usage, _mgmt_store(handler, usage))


def _rest_after(line: str, nwords: int) -> str:
    """The text after the first nwords words of line."""
    rest = line
    for _ in range(nwords):
        rest = rest.lstrip()
        i = 0
        while i < len(rest) and not rest[i].isspace():
            i += 1
        rest = rest[i:]
    return rest.strip()


# -- multi-valued attributes: one file per value ------------------------------

def _multi_file_name(name: str, i: int) -> str:
    return name if i == 0 else f"{name}{i}"


def _multi_show(kobj: kobject, a: kobj_attribute) -> str:
    return scst_attr_show_key(a.private[1], True)


def _multi_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    """Writing a value file replaces that value (SCST hands the new value
    to the driver in place of the old one)."""
    name, old = a.private
    tgt = kobj.private if isinstance(kobj.private, scst_tgt) else None
    ops = tgtt_sysfs.get((tgt.tgtt if tgt is not None else kobj.private).name)
    new = buf.strip()
    if ops is None or new == old:
        return len(buf)
    if tgt is None:
        dele, add = ops.del_attribute, ops.add_attribute
        ret = dele(name, old) if dele else -ENOSYS
        if ret == 0 and add is not None:
            ret = add(name, new)
            if ret != 0:
                add(name, old)
    else:
        tdele, tadd = ops.del_target_attribute, ops.add_target_attribute
        ret = tdele(tgt, name, old) if tdele else -ENOSYS
        if ret == 0 and tadd is not None:
            ret = tadd(tgt, name, new)
            if ret != 0:
                tadd(tgt, name, old)
    return len(buf) if ret == 0 else ret


def _sync_multi_files(kobj: kobject, ops: scst_tgtt_sysfs | None, tgt: scst_tgt | None) -> None:
    """Make kobj's NAME, NAME1, ... files mirror the driver's values: one
    file per value, none when a name has no value."""
    if ops is None or ops.multi_values is None:
        return
    want: dict[str, tuple[int, str, str]] = {}
    for name, (mode, values) in ops.multi_values(tgt).items():
        for i, v in enumerate(values):
            want[_multi_file_name(name, i)] = (mode, name, v)
    for fname, e in list(kobj.entries.items()):
        if isinstance(e, kobj_attribute) and e.show is _multi_show:
            w = want.get(fname)
            if w is None or e.private != (w[1], w[2]) or e.mode != w[0]:
                del kobj.entries[fname]
    for fname, (mode, name, v) in want.items():
        if fname not in kobj.entries:
            sysfs_create_file(kobj, __ATTR(fname, mode, _multi_show, _multi_store, (name, v)))


# -- dynamic directories ------------------------------------------------------

def _sync_children(parent: kobject, objs: list, name_of: Callable[[Any], str],
                   make: Callable[[kobject, str, Any], kobject | None],
                   ktype: kobj_type) -> None:
    """Make parent's ktype-children mirror objs, matched by identity."""
    have = {}
    for e in list(parent.entries.values()):
        if isinstance(e, kobject) and e.ktype is ktype:
            have[id(e.private)] = e
    want = {id(o) for o in objs}
    for key, e in have.items():
        if key not in want:
            kobject_del(e)
    for o in objs:
        if id(o) in have and have[id(o)].state_in_sysfs:
            continue
        base = name_of(o)
        name = base
        n = 1
        while name in parent.entries:
            name = f"{base}_{n}"
            n += 1
        make(parent, name, o)


def _sync_links(kobj: kobject, targets: dict[str, kobject]) -> None:
    for name, e in list(kobj.entries.items()):
        if isinstance(e, sysfs_link) and (name not in targets or targets[name] is not e.target):
            del kobj.entries[name]
    for name, t in targets.items():
        if name not in kobj.entries:
            sysfs_create_link(kobj, t, name)


scst_tgt_kobj: kobject | None = None
scst_handlers_kobj: kobject | None = None
scst_devices_kobj: kobject | None = None
scst_targets_kobj: kobject | None = None


def _dev_kobj(dev: scst_device) -> kobject | None:
    _devices_refresh(scst_devices_kobj)
    for e in scst_devices_kobj.entries.values():
        if isinstance(e, kobject) and e.private is dev:
            return e
    return None


# ---- handlers

def _handler_mgmt(kobj: kobject, words: list[str], line: str) -> int:
    devt = kobj.private
    if words[0] == "add_device" and len(words) >= 2:
        if devt.add_device is None:
            return -ENOSYS
        params = scst_parse_params(_rest_after(line, 2), devt.add_device_parameters,
                                   f"{devt.name} add_device {words[1]}")
        if isinstance(params, int):
            return params
        return devt.add_device(words[1], params)
    if words[0] == "del_device" and len(words) == 2:
        if devt.del_device is None:
            return -ENOSYS
        dev = scst_main.scst_find_device(words[1])
        if dev is None or dev.handler is not devt:
            pr_err(f"scst: {devt.name}: no device {words[1]}")
            return -ENOENT
        if dev.dev_tgt_dev_list or _device_exported(dev):
            pr_err(f"scst: device {words[1]} is still exported as a LUN; delete its LUNs first")
            return -EBUSY
        ret = devt.del_device(words[1])
        if ret == 0:
            scst_tg.scst_dg_dev_remove_by_dev(dev)     # as scst_unregister_device
        return ret
    pr_err(f"scst: {devt.name}: unknown mgmt command '{line}'")
    return -EINVAL


def _handler_usage(devt: scst_dev_type) -> str:
    return (f"Usage: echo \"add_device device_name [parameters]\" >mgmt\n"
            f"       echo \"del_device device_name\" >mgmt\n"
            f"\nThe following parameters available: {', '.join(devt.add_device_parameters)}\n")


def _handler_refresh(kobj: kobject) -> None:
    devt = kobj.private
    links = {}
    for dev in list(devt.dev_list):
        dk = _dev_kobj(dev)
        if dk is not None:
            links[dev.virt_name] = dk
    _sync_links(kobj, links)


handler_ktype = kobj_type(refresh=_handler_refresh)


def _make_handler(parent: kobject, name: str, devt: scst_dev_type) -> kobject | None:
    k = kobject_create_and_add(name, parent, handler_ktype, devt)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RO("type", lambda kk, a: f"{devt.type} - {_type_name(devt.type)}\n"))
    sysfs_create_file(k, _mgmt_attr(_handler_mgmt, _handler_usage(devt)))
    return k


def _type_name(t: int) -> str:
    return {0: "SCSI disk", 1: "SCSI tape", 5: "SCSI CD-ROM"}.get(t, "unknown")


def _handlers_refresh(kobj: kobject) -> None:
    _sync_children(kobj, list(scst_main.scst_dev_type_list), lambda d: d.name, _make_handler,
                   handler_ktype)


# ---- devices

def _device_exported(dev: scst_device) -> list:
    """(tgt, acg, lun) of every mapping of dev."""
    out = []
    for tgtt in scst_main.scst_template_list:
        for tgt in tgtt.tgt_list:
            for acg in [tgt.default_acg] + list(tgt.tgt_acg_list):
                if acg is None:
                    continue
                for lun, acg_dev in acg.acg_dev_list.items():
                    if acg_dev.dev is dev:
                        out.append((tgt, acg, lun))
    return out


def _exported_refresh(kobj: kobject) -> None:
    dev = kobj.private
    links = {}
    for i, (tgt, acg, lun) in enumerate(_device_exported(dev)):
        lk = _lun_kobj(tgt, acg, lun)
        if lk is not None:
            links[f"export{i}"] = lk
    _sync_links(kobj, links)


exported_ktype = kobj_type(refresh=_exported_refresh)


def _resync_size_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    dev = kobj.private
    ops = devt_sysfs.get(dev.handler.name)
    if ops is None or ops.resync_size is None:
        return -ENOSYS
    ret = ops.resync_size(dev)
    if ret < 0:
        return ret
    if ret > 0:             # the size changed, here and so on the other nodes
        scst_capacity_data_changed(dev)
        scst_cluster_dev_event_wait(dev, CL_EV_CAPACITY, scst_sense_capacity_data_changed_UA)
    return len(buf)


def _cluster_resync(dev: scst_device) -> int:
    """A peer says dev's size changed: re-read it (scst_cluster_resync_hook)."""
    ops = devt_sysfs.get(dev.handler.name)
    if ops is None or ops.resync_size is None:
        return 0
    return ops.resync_size(dev)


def _cluster_listen_show(kobj: kobject, a: kobj_attribute) -> str:
    return scst_attr_show_key(scst_cluster.cluster_listen_text,
                              bool(scst_cluster.cluster_listen_text))


def _cluster_listen_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    ret = scst_cluster.scst_cluster_set_listen(buf)
    return ret if ret < 0 else len(buf)


def _cluster_peers_show(kobj: kobject, a: kobj_attribute) -> str:
    text = scst_cluster.scst_cluster_peers_text()
    return scst_attr_show_key(text, bool(text))


def _cluster_peers_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    ret = scst_cluster.scst_cluster_set_peers(buf)
    return ret if ret < 0 else len(buf)


def _device_refresh(kobj: kobject) -> None:
    dev = kobj.private
    hk = scst_handlers_kobj.entries.get(dev.handler.name) if scst_handlers_kobj else None
    if isinstance(hk, kobject):
        _sync_links(kobj, {"handler": hk})


device_ktype = kobj_type(refresh=_device_refresh)


def _make_device(parent: kobject, name: str, dev: scst_device) -> kobject | None:
    k = kobject_create_and_add(name, parent, device_ktype, dev)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RO("type", lambda kk, a: f"{dev.type} - {_type_name(dev.type)}\n"))
    sysfs_create_file(k, __ATTR_RO("commands", lambda kk, a: f"{dev.cmd_count}\n"))
    sysfs_create_file(k, __ATTR_RO("threads_num", lambda kk, a:
                                   f"{len(dev.cmd_threads.threads) if dev.cmd_threads else 0}\n"))
    kobject_create_and_add("exported", k, exported_ktype, dev)
    ops = devt_sysfs.get(dev.handler.name)
    if ops is not None:
        for a in ops.dev_attrs:
            sysfs_create_file(k, a)
        if ops.resync_size is not None:
            sysfs_create_file(k, __ATTR("resync_size", S_IWUSR, None, _resync_size_store))
    return k


def _devices_refresh(kobj: kobject) -> None:
    _sync_children(kobj, list(scst_main.scst_dev_list), lambda d: d.virt_name, _make_device,
                   device_ktype)


# ---- LUNs (of the default group or of an initiator group)

def _lun_add(acg: scst_acg, words: list[str], line: str, replace: bool) -> int:
    verb = words[0]
    if len(words) < 3 or not words[2].isdecimal():
        pr_err(f"scst: usage: {verb} DEVICE LUN [read_only=1]")
        return -EINVAL
    dev = scst_main.scst_find_device(words[1])
    if dev is None:
        pr_err(f"scst: {verb}: no device named {words[1]}")
        return -ENODEV
    lun = int(words[2])
    if lun >= SCST_MAX_LUN:
        pr_err(f"scst: {verb}: LUN {lun} out of range (0..{SCST_MAX_LUN - 1})")
        return -EINVAL
    params = scst_parse_params(_rest_after(line, 3), ("read_only",), f"{verb} {words[1]} {lun}")
    if isinstance(params, int):
        return params
    ro = 0
    if "read_only" in params:
        ro = _bool_arg(params["read_only"])
        if ro < 0:
            pr_err(f"scst: {verb}: bad read_only value '{params['read_only']}'")
            return -EINVAL
    if lun in acg.acg_dev_list:
        if not replace:
            pr_err(f"scst: LUN {lun} already exists in group {acg.acg_name}")
            return -EEXIST
        ret = scst_main.scst_acg_del_lun(acg, lun)
        if ret != 0:
            return ret
    ret = scst_main.scst_acg_add_lun(acg, dev, lun, bool(ro))
    if ret == 0:
        scst_report_luns_changed(acg)
        pr_info(f"scst: {'replaced' if replace else 'added'} LUN {lun} ({dev.virt_name}) "
                f"in group {acg.acg_name} of {acg.tgt.tgt_name if acg.tgt else '?'}")
    return ret


def _luns_mgmt(kobj: kobject, words: list[str], line: str) -> int:
    acg: scst_acg = kobj.private
    verb = words[0]
    if verb in ("add", "replace"):
        return _lun_add(acg, words, line, verb == "replace")
    if verb == "del" and len(words) == 2 and words[1].isdecimal():
        ret = scst_main.scst_acg_del_lun(acg, int(words[1]))
        if ret == -ENOENT:
            pr_err(f"scst: no LUN {words[1]} in group {acg.acg_name}")
        if ret == 0:
            scst_report_luns_changed(acg)
        return ret
    if verb == "clear" and len(words) == 1:
        luns = list(acg.acg_dev_list)
        for lun in luns:
            scst_main.scst_acg_del_lun(acg, lun)
        if luns:
            scst_report_luns_changed(acg)
        return 0
    pr_err(f"scst: unknown LUN mgmt command '{line}'")
    return -EINVAL


LUNS_USAGE = ("Usage: echo \"add H:C:I:L|VNAME lun [parameters]\" >mgmt\n"
              "       echo \"del lun\" >mgmt\n"
              "       echo \"replace H:C:I:L|VNAME lun [parameters]\" >mgmt\n"
              "       echo \"clear\" >mgmt\n"
              "\nThe following parameters available: read_only\n")


def _lun_refresh(kobj: kobject) -> None:
    acg_dev = kobj.private
    dk = _dev_kobj(acg_dev.dev)
    _sync_links(kobj, {"device": dk} if dk is not None else {})


lun_ktype = kobj_type(refresh=_lun_refresh)


def _make_lun(parent: kobject, name: str, acg_dev: scst_acg_dev) -> kobject | None:
    k = kobject_create_and_add(name, parent, lun_ktype, acg_dev)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RO("read_only", lambda kk, a: scst_attr_show_key(
        int(acg_dev.rd_only), acg_dev.rd_only and not acg_dev.dev.rd_only)))
    return k


def _luns_refresh(kobj: kobject) -> None:
    acg: scst_acg = kobj.private
    _sync_children(kobj, [acg.acg_dev_list[n] for n in sorted(acg.acg_dev_list)],
                   lambda ad: str(ad.lun), _make_lun, lun_ktype)


luns_ktype = kobj_type(refresh=_luns_refresh)


def _make_luns_dir(parent: kobject, acg: scst_acg) -> kobject | None:
    k = kobject_create_and_add("luns", parent, luns_ktype, acg)
    if k is not None:
        sysfs_create_file(k, _mgmt_attr(_luns_mgmt, LUNS_USAGE))
    return k


def _lun_kobj(tgt: scst_tgt, acg: scst_acg, lun: int) -> kobject | None:
    tk = _tgt_kobj(tgt)
    if tk is None:
        return None
    if acg is tgt.default_acg:
        luns = tk.entries.get("luns")
    else:
        groups = tk.entries["ini_groups"]
        _ini_groups_refresh(groups)
        gk = next((e for e in groups.entries.values()
                   if isinstance(e, kobject) and e.private is acg), None)
        luns = gk.entries.get("luns") if gk is not None else None
    if not isinstance(luns, kobject):
        return None
    _luns_refresh(luns)
    e = luns.entries.get(str(lun))
    return e if isinstance(e, kobject) else None


# ---- initiator groups

def _find_acg(tgt: scst_tgt, name: str) -> scst_acg | None:
    return next((a for a in tgt.tgt_acg_list if a.acg_name == name), None)


def _initiators_mgmt(kobj: kobject, words: list[str], line: str) -> int:
    acg: scst_acg = kobj.private
    verb = words[0]
    if verb == "add" and len(words) == 2:
        if words[1] in acg.acn_list:
            pr_err(f"scst: initiator {words[1]} already in group {acg.acg_name}")
            return -EEXIST
        acg.acn_list.append(words[1])
        return 0
    if verb == "del" and len(words) == 2:
        if words[1] not in acg.acn_list:
            pr_err(f"scst: initiator {words[1]} not in group {acg.acg_name}")
            return -ENOENT
        acg.acn_list.remove(words[1])
        return 0
    if verb == "move" and len(words) == 3:
        dest = _find_acg(acg.tgt, words[2])
        if dest is None:
            pr_err(f"scst: move: no group {words[2]} in target {acg.tgt.tgt_name}")
            return -ENOENT
        if words[1] not in acg.acn_list:
            pr_err(f"scst: initiator {words[1]} not in group {acg.acg_name}")
            return -ENOENT
        if words[1] in dest.acn_list:
            pr_err(f"scst: initiator {words[1]} already in group {dest.acg_name}")
            return -EEXIST
        acg.acn_list.remove(words[1])
        dest.acn_list.append(words[1])
        return 0
    if verb == "clear" and len(words) == 1:
        acg.acn_list.clear()
        return 0
    pr_err(f"scst: unknown initiators mgmt command '{line}'")
    return -EINVAL


INITIATORS_USAGE = ("Usage: echo \"add INITIATOR_NAME\" >mgmt\n"
                    "       echo \"del INITIATOR_NAME\" >mgmt\n"
                    "       echo \"move INITIATOR_NAME DEST_GROUP_NAME\" >mgmt\n"
                    "       echo \"clear\" >mgmt\n")


def _initiators_refresh(kobj: kobject) -> None:
    acg: scst_acg = kobj.private
    for name in list(kobj.entries):
        if name != "mgmt" and (name not in acg.acn_list):
            del kobj.entries[name]
    for name in acg.acn_list:
        if name not in kobj.entries and "/" not in name:
            sysfs_create_file(kobj, __ATTR_RO(name, lambda kk, a: f"{a.name}\n"))


initiators_ktype = kobj_type(refresh=_initiators_refresh)
group_ktype = kobj_type()

# An initiator group's attributes (SCST's scst_acg_* sysfs attributes):
# name -> (acg field, default, parser of a written value: the value or None).
_ADDR_METHODS = ("PERIPHERAL", "FLAT", "LUN")
_IO_GROUPING = ("auto", "this_group_only", "never")


def _parse_cpu_mask(t: str) -> int | None:
    try:
        v = int(t, 16)
    except ValueError:
        return None
    return v if v & 1 else None           # the mask must keep the one CPU we have


_ACG_ATTRS: dict[str, tuple[str, Any, Callable[[str], Any]]] = {
    "addr_method": ("addr_method", "PERIPHERAL",
                    lambda t: t.upper() if t.upper() in _ADDR_METHODS else None),
    "io_grouping_type": ("acg_io_grouping_type", "auto",
                         lambda t: t if t in _IO_GROUPING or t.isdecimal() else None),
    "cpu_mask": ("acg_cpu_mask", 1, _parse_cpu_mask),
    "black_hole": ("acg_black_hole_type", 0,
                   lambda t: int(t) if t in ("0", "1", "2", "3", "4") else None),
}


def _acg_attr_show(kobj: kobject, a: kobj_attribute) -> str:
    field, default, _ = _ACG_ATTRS[a.name]
    v = getattr(kobj.private, field)
    return scst_attr_show_key(f"{v:x}" if a.name == "cpu_mask" else v, v != default)


def _acg_attr_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    field, _, parse = _ACG_ATTRS[a.name]
    v = parse(buf.strip())
    if v is None:
        pr_err(f"scst: {kobj.private.acg_name}: bad {a.name} value '{buf.strip()}'")
        return -EINVAL
    setattr(kobj.private, field, v)
    return len(buf)


def _make_group(parent: kobject, name: str, acg: scst_acg) -> kobject | None:
    k = kobject_create_and_add(name, parent, group_ktype, acg)
    if k is None:
        return None
    for aname in _ACG_ATTRS:
        sysfs_create_file(k, __ATTR_RW(aname, _acg_attr_show, _acg_attr_store))
    _make_luns_dir(k, acg)
    ik = kobject_create_and_add("initiators", k, initiators_ktype, acg)
    sysfs_create_file(ik, _mgmt_attr(_initiators_mgmt, INITIATORS_USAGE))
    return k


def _ini_groups_mgmt(kobj: kobject, words: list[str], line: str) -> int:
    tgt: scst_tgt = kobj.private
    verb = words[0]
    if verb == "create" and len(words) == 2:
        r = scst_main.scst_alloc_add_acg(tgt, words[1])
        if isinstance(r, int):
            pr_err(f"scst: group {words[1]} already exists in {tgt.tgt_name}")
            return r
        return 0
    if verb == "del" and len(words) == 2:
        acg = _find_acg(tgt, words[1])
        if acg is None:
            pr_err(f"scst: no group {words[1]} in {tgt.tgt_name}")
            return -ENOENT
        if acg.acg_sess_list:
            pr_err(f"scst: group {words[1]} has sessions")
            return -EBUSY
        for lun in list(acg.acg_dev_list):
            scst_main.scst_acg_del_lun(acg, lun)
        tgt.tgt_acg_list.remove(acg)
        return 0
    pr_err(f"scst: unknown ini_groups mgmt command '{line}'")
    return -EINVAL


INI_GROUPS_USAGE = ("Usage: echo \"create GROUP_NAME\" >mgmt\n"
                    "       echo \"del GROUP_NAME\" >mgmt\n")


def _ini_groups_refresh(kobj: kobject) -> None:
    tgt: scst_tgt = kobj.private
    _sync_children(kobj, list(tgt.tgt_acg_list), lambda a: a.acg_name, _make_group, group_ktype)


ini_groups_ktype = kobj_type(refresh=_ini_groups_refresh)


# ---- sessions

_SESS_STATS = ("reads", "writes", "read_bytes", "write_bytes")    # scst_sess_io_stats' order


def _make_session(parent: kobject, name: str, sess: scst_session) -> kobject | None:
    k = kobject_create_and_add(name, parent, session_ktype, sess)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RO("initiator_name", lambda kk, a: f"{sess.initiator_name}\n"))
    sysfs_create_file(k, __ATTR_RO("active_commands", lambda kk, a: f"{sess.cmd_count}\n"))
    io = scst_main.scst_sess_io_stats
    sysfs_create_file(k, __ATTR_RO("commands", lambda kk, a: f"{sum(io(sess)[:2])}\n"))
    for i, f in enumerate(_SESS_STATS):
        sysfs_create_file(k, __ATTR_RO(f, lambda kk, a: f"{io(sess)[a.private]}\n", i))
    sysfs_create_file(k, __ATTR_RO("read_io_count_kb", lambda kk, a: f"{io(sess)[2] >> 10}\n"))
    sysfs_create_file(k, __ATTR_RO("write_io_count_kb", lambda kk, a: f"{io(sess)[3] >> 10}\n"))
    sysfs_create_file(k, __ATTR_RO("acg", lambda kk, a: f"{sess.acg.acg_name if sess.acg else ''}\n"))
    sysfs_create_file(k, scst_sess_latency_attr(sess))
    sysfs_create_file(k, __ATTR("force_close", S_IWUSR, None, _sess_force_close_store))
    ops = tgtt_sysfs.get(sess.tgt.tgtt.name)
    for a in ops.sess_attrs if ops is not None else ():
        sysfs_create_file(k, a)
    return k


def _sess_force_close_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    """Any write closes the session (SCST's force_close)."""
    sess: scst_session = kobj.private
    ops = tgtt_sysfs.get(sess.tgt.tgtt.name)
    if ops is None or ops.close_session is None:
        return -ENOSYS
    ret = ops.close_session(sess)
    return len(buf) if ret == 0 else ret


def _session_refresh(kobj: kobject) -> None:
    sess: scst_session = kobj.private
    tgt = sess.tgt
    luns = None
    if sess.acg is not None:
        lk = _lun_kobj_dir(tgt, sess.acg)
        luns = lk
    _sync_links(kobj, {"luns": luns} if luns is not None else {})


session_ktype = kobj_type(refresh=_session_refresh)


def _lun_kobj_dir(tgt: scst_tgt, acg: scst_acg) -> kobject | None:
    tk = _tgt_kobj(tgt)
    if tk is None:
        return None
    if acg is tgt.default_acg:
        return tk.entries.get("luns")
    groups = tk.entries["ini_groups"]
    _ini_groups_refresh(groups)
    gk = next((e for e in groups.entries.values() if isinstance(e, kobject) and e.private is acg), None)
    return gk.entries.get("luns") if gk is not None else None


def _sessions_refresh(kobj: kobject) -> None:
    tgt: scst_tgt = kobj.private
    _sync_children(kobj, [s for s in tgt.sess_list if not s.shut_phase],
                   lambda s: s.initiator_name.replace("/", "_"), _make_session, session_ktype)


sessions_ktype = kobj_type(refresh=_sessions_refresh)


# ---- targets

def _tgt_enabled(tgt: scst_tgt) -> bool:
    ops = tgtt_sysfs.get(tgt.tgtt.name)
    if ops is not None and ops.is_target_enabled is not None:
        return ops.is_target_enabled(tgt)
    return tgt.enabled


def _tgt_enabled_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    tgt: scst_tgt = kobj.private
    b = _bool_arg(buf)
    if b < 0:
        pr_err(f"scst: {tgt.tgt_name}: enabled takes 0 or 1, not '{buf.strip()}'")
        return -EINVAL
    ops = tgtt_sysfs.get(tgt.tgtt.name)
    if ops is not None and ops.enable_target is not None:
        ret = ops.enable_target(tgt, bool(b))
        if ret < 0:
            return ret
    else:
        tgt.enabled = bool(b)
    return len(buf)


def _rel_tgt_id_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    tgt: scst_tgt = kobj.private
    t = buf.strip()
    if not t.isdecimal() or not 1 <= int(t) <= 0xFFFF:
        pr_err(f"scst: {tgt.tgt_name}: rel_tgt_id must be 1..65535, not '{t}'")
        return -EINVAL
    n = int(t)
    for tg in tgt.tgtt.tgt_list:
        if tg is not tgt and tg.rel_tgt_id == n:
            pr_err(f"scst: rel_tgt_id {n} is used by {tg.tgt_name}")
            return -EEXIST
    if _tgt_enabled(tgt) and tgt.rel_tgt_id != n:
        pr_err(f"scst: {tgt.tgt_name}: disable the target before changing rel_tgt_id")
        return -EBUSY
    tgt.rel_tgt_id = n
    return len(buf)


def _target_refresh(kobj: kobject) -> None:
    tgt: scst_tgt = kobj.private
    _sync_multi_files(kobj, tgtt_sysfs.get(tgt.tgtt.name), tgt)


target_ktype = kobj_type(refresh=_target_refresh)


def _make_target(parent: kobject, name: str, tgt: scst_tgt) -> kobject | None:
    k = kobject_create_and_add(name, parent, target_ktype, tgt)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RW("enabled", lambda kk, a: f"{int(_tgt_enabled(tgt))}\n",
                                   _tgt_enabled_store))
    sysfs_create_file(k, __ATTR_RW("rel_tgt_id", lambda kk, a: scst_attr_show_key(
        tgt.rel_tgt_id, True), _rel_tgt_id_store))
    ops = tgtt_sysfs.get(tgt.tgtt.name)
    if ops is not None:
        for a in ops.tgt_attrs:
            sysfs_create_file(k, a)
    _make_luns_dir(k, tgt.default_acg)
    gk = kobject_create_and_add("ini_groups", k, ini_groups_ktype, tgt)
    sysfs_create_file(gk, _mgmt_attr(_ini_groups_mgmt, INI_GROUPS_USAGE))
    kobject_create_and_add("sessions", k, sessions_ktype, tgt)
    return k


def _tgt_kobj(tgt: scst_tgt) -> kobject | None:
    if scst_targets_kobj is None:
        return None
    _targets_refresh(scst_targets_kobj)
    dk = scst_targets_kobj.entries.get(tgt.tgtt.name)
    if not isinstance(dk, kobject):
        return None
    _driver_refresh(dk)
    e = next((e for e in dk.entries.values() if isinstance(e, kobject) and e.private is tgt), None)
    return e


def _find_tgt(tgtt: scst_tgt_template, name: str) -> scst_tgt | None:
    return next((t for t in tgtt.tgt_list if t.tgt_name == name), None)


def _driver_mgmt(kobj: kobject, words: list[str], line: str) -> int:
    tgtt: scst_tgt_template = kobj.private
    ops = tgtt_sysfs.get(tgtt.name, scst_tgtt_sysfs())
    verb = words[0]
    if verb == "add_target" and len(words) >= 2:
        if ops.add_target is None:
            return -ENOSYS
        params = scst_parse_params(_rest_after(line, 2), ops.add_target_parameters,
                                   f"{tgtt.name} add_target {words[1]}")
        if isinstance(params, int):
            return params
        return ops.add_target(words[1], params)
    if verb == "del_target" and len(words) == 2:
        if ops.del_target is None:
            return -ENOSYS
        tgt = _find_tgt(tgtt, words[1])
        if tgt is None:
            pr_err(f"scst: {tgtt.name}: no target {words[1]}")
            return -ENOENT
        # the driver closes the target's sessions first, as SCST's do
        return ops.del_target(words[1])
    if verb in ("add_attribute", "del_attribute") and len(words) >= 3:
        if words[1] not in ops.tgtt_optional_attributes + ops.tgtt_hidden_attributes:
            pr_err(f"scst: {tgtt.name}: unknown attribute '{words[1]}' "
                   f"(known: {', '.join(ops.tgtt_optional_attributes) or 'none'})")
            return -EINVAL
        fn = ops.add_attribute if verb == "add_attribute" else ops.del_attribute
        return fn(words[1], _rest_after(line, 2)) if fn is not None else -ENOSYS
    if verb in ("add_target_attribute", "del_target_attribute") and len(words) >= 4:
        tgt = _find_tgt(tgtt, words[1])
        if tgt is None:
            pr_err(f"scst: {tgtt.name}: no target {words[1]}")
            return -ENOENT
        if words[2] not in ops.tgt_optional_attributes:
            pr_err(f"scst: {tgtt.name}: unknown target attribute '{words[2]}' "
                   f"(known: {', '.join(ops.tgt_optional_attributes) or 'none'})")
            return -EINVAL
        tfn = ops.add_target_attribute if verb == "add_target_attribute" else ops.del_target_attribute
        return tfn(tgt, words[2], _rest_after(line, 3)) if tfn is not None else -ENOSYS
    pr_err(f"scst: {tgtt.name}: unknown mgmt command '{line}'")
    return -EINVAL


def _driver_usage(tgtt: scst_tgt_template) -> str:
    ops = tgtt_sysfs.get(tgtt.name, scst_tgtt_sysfs())
    return ("Usage: echo \"add_target target_name [parameters]\" >mgmt\n"
            "       echo \"del_target target_name\" >mgmt\n"
            "       echo \"add_attribute <attribute> <value>\" >mgmt\n"
            "       echo \"del_attribute <attribute> <value>\" >mgmt\n"
            "       echo \"add_target_attribute target_name <attribute> <value>\" >mgmt\n"
            "       echo \"del_target_attribute target_name <attribute> <value>\" >mgmt\n"
            f"\nThe following parameters available: {', '.join(ops.add_target_parameters)}\n"
            f"The following target driver attributes available: "
            f"{', '.join(ops.tgtt_optional_attributes)}\n"
            f"The following target attributes available: {', '.join(ops.tgt_optional_attributes)}\n")


def _driver_refresh(kobj: kobject) -> None:
    tgtt: scst_tgt_template = kobj.private
    _sync_multi_files(kobj, tgtt_sysfs.get(tgtt.name), None)
    _sync_children(kobj, list(tgtt.tgt_list), lambda t: t.tgt_name, _make_target, target_ktype)


driver_ktype = kobj_type(refresh=_driver_refresh)


def _make_driver(parent: kobject, name: str, tgtt: scst_tgt_template) -> kobject | None:
    k = kobject_create_and_add(name, parent, driver_ktype, tgtt)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR("mgmt", S_IRUGO | S_IWUSR, lambda kk, a: _driver_usage(tgtt),
                                _mgmt_store(_driver_mgmt, "see: cat mgmt")))
    ops = tgtt_sysfs.get(tgtt.name)
    if ops is not None:
        for a in ops.tgtt_attrs:
            sysfs_create_file(k, a)
    return k


def _targets_refresh(kobj: kobject) -> None:
    _sync_children(kobj, list(scst_main.scst_template_list), lambda t: t.name, _make_driver,
                   driver_ktype)


# ---- device groups (ALUA; the objects live in scst_core.tg)

def _add_del_mgmt(what: str, add_verb: str, noun: str, add: Callable[[Any, str], int],
                  remove: Callable[[Any, str], int]) -> tuple[Callable, str]:
    """The mgmt handler of a device_groups/ directory taking "<add_verb>
    NAME" and "del NAME" (add/remove get kobj.private and NAME), and its
    usage text."""
    def mgmt(kobj: kobject, words: list[str], line: str) -> int:
        # "create" is uscst's older spelling of a group's "add"; kept working
        if len(words) == 2 and (words[0] == add_verb or (add_verb == "add" and words[0] == "create"
                                                         and noun == "group_name")):
            return add(kobj.private, words[1])
        if len(words) == 2 and words[0] == "del":
            return remove(kobj.private, words[1])
        pr_err(f"scst: unknown {what} mgmt command '{line}'")
        return -EINVAL
    usage = (f"Usage: echo \"{add_verb} {noun}\" >mgmt\n"
             f"       echo \"del {noun}\" >mgmt\n")
    return mgmt, usage


_dg_mgmt, DG_USAGE = _add_del_mgmt("device_groups", "add", "group_name",
                                   lambda _, n: scst_tg.scst_dg_add(n),
                                   lambda _, n: scst_tg.scst_dg_remove(n))
_dg_devices_mgmt, DG_DEVICES_USAGE = _add_del_mgmt(
    "device group devices", "add", "device", scst_tg.scst_dg_dev_add,
    scst_tg.scst_dg_dev_remove_by_name)
_tg_mgmt, TG_USAGE = _add_del_mgmt("target group", "add", "target_name", scst_tg.scst_tg_tgt_add,
                                   scst_tg.scst_tg_tgt_remove_by_name)
_tgs_mgmt, TGS_USAGE = _add_del_mgmt("target_groups", "add", "group_name", scst_tg.scst_tg_add,
                                     scst_tg.scst_tg_remove_by_name)


def _dg_devices_refresh(kobj: kobject) -> None:
    links = {}
    for dev in list(kobj.private.dev_list):
        dk = _dev_kobj(dev)
        if dk is not None:
            links[dev.virt_name] = dk
    _sync_links(kobj, links)


dg_devices_ktype = kobj_type(refresh=_dg_devices_refresh)


def _tg_tgt_rel_tgt_id_show(kobj: kobject, a: kobj_attribute) -> str:
    t = kobj.private
    local = scst_tg._find_tgt(t.name)
    if local is not None:
        return f"{local.rel_tgt_id}\n"
    return scst_attr_show_key(t.rel_tgt_id, t.rel_tgt_id != 0)


def _tg_tgt_rel_tgt_id_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    t = kobj.private
    v = buf.strip()
    if not v.isdecimal():
        pr_err(f"scst: {t.name}: rel_tgt_id must be 0..65535, not '{v}'")
        return -EINVAL
    ret = scst_tg.scst_tg_tgt_set_rel_tgt_id(t, int(v))
    return len(buf) if ret == 0 else ret


tg_tgt_ktype = kobj_type()


def _make_tg_tgt(parent: kobject, name: str, t: scst_tg.scst_tg_tgt) -> kobject | None:
    k = kobject_create_and_add(name, parent, tg_tgt_ktype, t)
    if k is not None:
        sysfs_create_file(k, __ATTR_RW("rel_tgt_id", _tg_tgt_rel_tgt_id_show,
                                       _tg_tgt_rel_tgt_id_store))
    return k


def _tg_group_id_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    v = buf.strip()
    if not v.isdecimal():
        pr_err(f"scst: group_id must be a number 1..65535, not '{v}'")
        return -EINVAL
    ret = scst_tg.scst_tg_set_group_id(kobj.private, int(v))
    return len(buf) if ret == 0 else ret


def _tg_state_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    state = scst_tg.scst_alua_name_to_state(buf)
    if state == scst_tg.SCST_TG_STATE_UNDEFINED:
        pr_err(f"scst: unknown ALUA state '{buf.strip()}' "
               f"(known: {', '.join(scst_tg.scst_alua_state_names())})")
        return -EINVAL
    ret = scst_tg.scst_tg_set_state(kobj.private, state)
    return len(buf) if ret == 0 else ret


def _tg_preferred_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    b = _bool_arg(buf)
    if b < 0:
        pr_err(f"scst: preferred takes 0 or 1, not '{buf.strip()}'")
        return -EINVAL
    scst_tg.scst_tg_set_preferred(kobj.private, bool(b))
    return len(buf)


def _tg_refresh(kobj: kobject) -> None:
    tg = kobj.private
    _sync_children(kobj, list(tg.tgt_list), lambda t: t.name, _make_tg_tgt, tg_tgt_ktype)


tg_ktype = kobj_type(refresh=_tg_refresh)


def _make_tg(parent: kobject, name: str, tg: scst_tg.scst_target_group) -> kobject | None:
    k = kobject_create_and_add(name, parent, tg_ktype, tg)
    if k is None:
        return None
    sysfs_create_file(k, __ATTR_RW("group_id", lambda kk, a: scst_attr_show_key(
        tg.group_id, tg.group_id != 0), _tg_group_id_store))
    sysfs_create_file(k, __ATTR_RW("state", lambda kk, a: scst_attr_show_key(
        scst_tg.scst_alua_state_name(tg.state),
        tg.state != scst_tg.SCST_TG_STATE_OPTIMIZED), _tg_state_store))
    sysfs_create_file(k, __ATTR_RW("preferred", lambda kk, a: scst_attr_show_key(
        int(tg.preferred), tg.preferred), _tg_preferred_store))
    sysfs_create_file(k, _mgmt_attr(_tg_mgmt, TG_USAGE))
    return k


def _tgs_refresh(kobj: kobject) -> None:
    dg = kobj.private
    _sync_children(kobj, list(dg.tg_list), lambda t: t.name, _make_tg, tg_ktype)


tgs_ktype = kobj_type(refresh=_tgs_refresh)
dg_ktype = kobj_type()


def _make_dg(parent: kobject, name: str, dg: scst_tg.scst_dev_group) -> kobject | None:
    k = kobject_create_and_add(name, parent, dg_ktype, dg)
    if k is None:
        return None
    dk = kobject_create_and_add("devices", k, dg_devices_ktype, dg)
    sysfs_create_file(dk, _mgmt_attr(_dg_devices_mgmt, DG_DEVICES_USAGE))
    tk = kobject_create_and_add("target_groups", k, tgs_ktype, dg)
    sysfs_create_file(tk, _mgmt_attr(_tgs_mgmt, TGS_USAGE))
    return k


def _dgs_refresh(kobj: kobject) -> None:
    _sync_children(kobj, list(scst_tg.scst_dev_group_list), lambda d: d.name, _make_dg,
                   dg_ktype)


# -- init / exit --------------------------------------------------------------

def _setup_id_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    global setup_id
    try:
        setup_id = int(buf.strip(), 0)
    except ValueError:
        return -EINVAL
    return len(buf)


def _root_value_show(kobj: kobject, a: kobj_attribute) -> str:
    v = scst_root_values[a.name]
    return scst_attr_show_key(v, v != _ROOT_DEFAULTS[a.name])


def _root_value_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    t = buf.strip()
    if not t.isdecimal() or int(t) < 1:
        pr_err(f"scst: {a.name} takes a number, not '{t}'")
        return -EINVAL
    scst_root_values[a.name] = int(t)
    return len(buf)


def scst_sysfs_init() -> int:
    """Create /sys/kernel/scst_tgt. 0 or -EEXIST/-ENOMEM. Task context."""
    global scst_tgt_kobj, scst_handlers_kobj, scst_devices_kobj, scst_targets_kobj
    if scst_tgt_kobj is not None:
        return -EEXIST
    root = kobject_create_and_add("scst_tgt", kernel_kobj)
    if root is None:
        return -EEXIST
    scst_tgt_kobj = root
    sysfs_create_file(root, __ATTR_RO("version", lambda k, a: f"{SCST_VERSION_STRING}\n"))
    sysfs_create_file(root, __ATTR_RO("last_sysfs_mgmt_res",
                                      lambda k, a: f"{last_sysfs_mgmt_res}\n"))
    sysfs_create_file(root, __ATTR_RW("setup_id", lambda k, a: scst_attr_show_key(
        hex(setup_id), setup_id != 0), _setup_id_store))
    for name in scst_root_values:
        sysfs_create_file(root, __ATTR_RW(name, _root_value_show, _root_value_store))
    sysfs_create_file(root, __ATTR_RW("cluster_listen", _cluster_listen_show,
                                      _cluster_listen_store))
    sysfs_create_file(root, __ATTR_RW("cluster_peers", _cluster_peers_show,
                                      _cluster_peers_store))
    sysfs_create_file(root, __ATTR_RO("cluster_state",
                                      lambda k, a: scst_cluster.scst_cluster_state()))
    cluster_dev.scst_cluster_resync_hook = _cluster_resync
    scst_handlers_kobj = kobject_create_and_add("handlers", root, kobj_type(refresh=_handlers_refresh))
    scst_devices_kobj = kobject_create_and_add("devices", root, kobj_type(refresh=_devices_refresh))
    scst_targets_kobj = kobject_create_and_add("targets", root, kobj_type(refresh=_targets_refresh))
    dgk = kobject_create_and_add("device_groups", root, kobj_type(refresh=_dgs_refresh))
    sysfs_create_file(dgk, _mgmt_attr(_dg_mgmt, DG_USAGE))
    scst_debug_sysfs_init(root)
    scst_latency_sysfs_init(root)
    scst_fastpath_sysfs_init(root)
    return 0


def scst_sysfs_exit() -> None:
    global scst_tgt_kobj, scst_handlers_kobj, scst_devices_kobj, scst_targets_kobj
    scst_cluster.scst_cluster_exit()
    cluster_dev.scst_cluster_resync_hook = None
    if scst_tgt_kobj is not None:
        kobject_del(scst_tgt_kobj)
    scst_tgt_kobj = scst_handlers_kobj = scst_devices_kobj = scst_targets_kobj = None


def scst_sysfs_schema() -> dict:
    """What scst.conf may say, from what is registered: per handler the
    add_device parameters (and which are live-writable or creation-only),
    per target driver its attributes, add_target parameters and target
    attributes. Multi-valued attributes are listed under "multi"."""
    handlers = {}
    for devt in scst_main.scst_dev_type_list:
        ops = devt_sysfs.get(devt.name, scst_devt_sysfs())
        handlers[devt.name] = {"params": list(devt.add_device_parameters),
                               "live": list(ops.dev_live_attrs),
                               "create_only": list(ops.dev_create_only_attrs)}
    drivers = {}
    for tgtt in scst_main.scst_template_list:
        tops = tgtt_sysfs.get(tgtt.name, scst_tgtt_sysfs())
        drivers[tgtt.name] = {
            "attrs": [a.name for a in tops.tgtt_attrs if a.store is not None
                      and a.name not in tops.tgtt_optional_attributes],
            "multi": list(tops.tgtt_optional_attributes + tops.tgtt_hidden_attributes),
            "target_params": list(tops.add_target_parameters),
            "target_attrs": ["enabled", "rel_tgt_id"] + [
                a.name for a in tops.tgt_attrs if a.store is not None
                and a.name not in tops.tgt_optional_attributes],
            "target_multi": list(tops.tgt_optional_attributes),
        }
    return {"handlers": handlers, "drivers": drivers, "lun_attrs": ["read_only"],
            "root_attrs": ["setup_id", *scst_root_values, "cluster_listen", "cluster_peers"]}
