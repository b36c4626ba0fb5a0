"""Registration of target drivers, targets, sessions, dev handlers, devices,
access control groups and LUNs.

Twin of scst/src/scst_main.c and the ACG/LUN parts of scst_lib.c.

Contexts: registration calls take scst_mutex, so task context only
(module init, management). scst_register_session and
scst_unregister_session are called by target drivers from task context.

Also the module's init and exit (init_scst/exit_scst) and its parameters
(scst_threads, scst_max_bufflen).

Module references: a dev handler's or target driver's module uses `scst`
(ref_module at registration); a target holds its driver's module and a
LUN its device handler's module, so rmmod of either is refused (-EBUSY,
naming "target NAME" or "LUN n of TARGET") while they exist.

Differs from SCST: session registration is synchronous; unregistration
finishes (and calls the driver's unreg_done_fn) when the session's last
command is freed, without a management thread. A device handler with
threads_num 0 gets scst_threads threads per device (there is no shared
pool). Unregistering a dev handler (its module going away) first removes
the LUNs of its devices, as unregistering a target removes its LUNs.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

from kshim.err import EBUSY, EEXIST, EINVAL, ENODEV, ENOENT
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO, EI_ETYPE_NULL
from kshim.kthread import kthread_stop
from kshim.list import list_head_release
from kshim.module import (MODULE_DESCRIPTION, MODULE_LICENSE, THIS_MODULE, module_exit,
                          module_init, module_param, module_param_named, module_put_by,
                          ref_module, try_module_get_by)
from kshim.mutex import mutex_lock, mutex_unlock
from kshim.printk import pr_err, pr_info
from scst_core import targ as scst_targ
from scst_core.cluster_dev import (scst_cluster_dev_exit, scst_cluster_dev_init,
                                   scst_cluster_dev_registered)
from scst_core.scst import (SCST_DEFAULT_DEV_THREADS, scst_acg, scst_acg_dev, scst_cmd_threads,
                            scst_dev_type,
                            scst_device, scst_mutex, scst_session, scst_tgt,
                            scst_tgt_dev, scst_tgt_template)
from scst_core.targ import scst_add_threads

MODULE_LICENSE("GPL")
MODULE_DESCRIPTION("SCSI target core")

# Threads per device of a handler that leaves threads_num at 0 (SCST: the
# global command threads; read at device registration).
scst_threads = SCST_DEFAULT_DEV_THREADS
module_param("scst_threads", "int", 0o444)
module_param_named("scst_max_bufflen", "SCST_MAX_BUFFLEN", "int", 0o644, ns=scst_targ)

scst_template_list: list[scst_tgt_template] = []
scst_dev_type_list: list[scst_dev_type] = []
scst_dev_list: list[scst_device] = []
_next_dev_id = 0
_this_module = THIS_MODULE()


def _lun_holder(acg: scst_acg, lun: int) -> str:
    tgt = acg.tgt
    name = tgt.tgt_name if tgt is not None else "?"
    return f"LUN {lun} of {name}" + ("" if tgt is None or acg is tgt.default_acg
                                     else f"/{acg.acg_name}")


# -- target drivers and targets ---------------------------------------------

def scst_register_target_template(tgtt: scst_tgt_template) -> int:
    mutex_lock(scst_mutex)
    try:
        if any(t.name == tgtt.name for t in scst_template_list):
            pr_err(f"scst: target driver {tgtt.name} already registered")
            return -EEXIST
        if ref_module(tgtt.owner, _this_module):
            return -ENODEV
        scst_template_list.append(tgtt)
    finally:
        mutex_unlock(scst_mutex)
    pr_info(f"scst: target driver {tgtt.name} registered")
    return 0


def scst_unregister_target_template(tgtt: scst_tgt_template) -> None:
    for tgt in list(tgtt.tgt_list):
        scst_unregister_target(tgt)
    mutex_lock(scst_mutex)
    if tgtt in scst_template_list:
        scst_template_list.remove(tgtt)
        if tgtt.owner is not None:
            module_put_by(_this_module, tgtt.owner.name)
    mutex_unlock(scst_mutex)


def scst_register_target(tgtt: scst_tgt_template, target_name: str) -> scst_tgt | int:
    mutex_lock(scst_mutex)
    try:
        if any(t.tgt_name == target_name for t in tgtt.tgt_list):
            return -EEXIST
        if not try_module_get_by(tgtt.owner, f"target {target_name}"):
            return -ENODEV
        tgt = scst_tgt(tgtt, target_name)
        tgt.rel_tgt_id = len(tgtt.tgt_list) + 1
        tgt.default_acg = scst_acg(tgt, "default")
        tgtt.tgt_list.append(tgt)
    finally:
        mutex_unlock(scst_mutex)
    pr_info(f"scst: target {target_name} for driver {tgtt.name} registered")
    return tgt


def scst_unregister_target(tgt: scst_tgt) -> None:
    if tgt.tgtt.release is not None:
        tgt.tgtt.release(tgt)
    for acg in (tgt.default_acg, *tgt.tgt_acg_list):
        if acg is not None:
            for lun in list(acg.acg_dev_list):
                scst_acg_del_lun(acg, lun)
    mutex_lock(scst_mutex)
    if tgt in tgt.tgtt.tgt_list:
        tgt.tgtt.tgt_list.remove(tgt)
        module_put_by(tgt.tgtt.owner, f"target {tgt.tgt_name}")
    mutex_unlock(scst_mutex)


# -- access control ---------------------------------------------------------

def scst_find_acg(tgt: scst_tgt, initiator_name: str) -> scst_acg:
    """The group whose initiator patterns match, else the default group."""
    for acg in tgt.tgt_acg_list:
        for pattern in acg.acn_list:
            if fnmatch.fnmatchcase(initiator_name, pattern):
                return acg
    return tgt.default_acg


def scst_alloc_add_acg(tgt: scst_tgt, name: str) -> scst_acg | int:
    if any(a.acg_name == name for a in tgt.tgt_acg_list):
        return -EEXIST
    acg = scst_acg(tgt, name)
    tgt.tgt_acg_list.append(acg)
    return acg


def scst_acg_add_lun(acg: scst_acg, dev: scst_device, lun: int, read_only: bool) -> int:
    """Map dev at lun in acg; sessions in the group see it at once."""
    mutex_lock(scst_mutex)
    try:
        if lun in acg.acg_dev_list:
            return -EEXIST
        if not 0 <= lun < 16384:
            return -EINVAL
        if not try_module_get_by(dev.handler.owner, _lun_holder(acg, lun)):
            pr_err(f"scst: handler {dev.handler.name} of {dev.virt_name} is going away")
            return -ENODEV
        acg_dev = scst_acg_dev(dev, lun, acg, read_only or dev.rd_only)
        acg.acg_dev_list[lun] = acg_dev
        for sess in acg.acg_sess_list:
            _alloc_tgt_dev(sess, acg_dev)
    finally:
        mutex_unlock(scst_mutex)
    return 0


def scst_acg_del_lun(acg: scst_acg, lun: int) -> int:
    mutex_lock(scst_mutex)
    try:
        acg_dev = acg.acg_dev_list.pop(lun, None)
        if acg_dev is None:
            return -ENOENT
        for sess in acg.acg_sess_list:
            _free_tgt_dev(sess, lun)
        module_put_by(acg_dev.dev.handler.owner, _lun_holder(acg, lun))
    finally:
        mutex_unlock(scst_mutex)
    return 0


def _alloc_tgt_dev(sess: scst_session, acg_dev: scst_acg_dev) -> None:
    dev = acg_dev.dev
    tgt_dev = scst_tgt_dev(dev, sess, acg_dev.lun, acg_dev, acg_dev.rd_only)
    if dev.handler.attach_tgt is not None and dev.handler.attach_tgt(tgt_dev) != 0:
        pr_err(f"scst: attach_tgt of {dev.virt_name} failed")
        return
    dev.dev_tgt_dev_list.append(tgt_dev)
    sess.sess_tgt_dev_list[acg_dev.lun] = tgt_dev


def _free_tgt_dev(sess: scst_session, lun: int) -> None:
    tgt_dev = sess.sess_tgt_dev_list.pop(lun, None)
    if tgt_dev is None:
        return
    # The LUN's I/O stays in the session's totals.
    sess.reads += tgt_dev.reads
    sess.writes += tgt_dev.writes
    sess.read_bytes += tgt_dev.read_bytes
    sess.write_bytes += tgt_dev.write_bytes
    dev = tgt_dev.dev
    if dev.handler.detach_tgt is not None:
        dev.handler.detach_tgt(tgt_dev)
    if tgt_dev in dev.dev_tgt_dev_list:
        dev.dev_tgt_dev_list.remove(tgt_dev)


# -- sessions ---------------------------------------------------------------

def scst_sess_io_stats(sess: scst_session) -> tuple[int, int, int, int]:
    """The session's (reads, writes, read_bytes, write_bytes) of commands
    completed GOOD: its own counters plus those of its live LUNs (DEV_DONE
    counts each command once, in its tgt_dev)."""
    r, w, rb, wb = sess.reads, sess.writes, sess.read_bytes, sess.write_bytes
    for td in sess.sess_tgt_dev_list.values():
        r += td.reads
        w += td.writes
        rb += td.read_bytes
        wb += td.write_bytes
    return r, w, rb, wb


@ALLOW_ERROR_INJECTION(EI_ETYPE_NULL)
def scst_register_session(tgt: scst_tgt, atomic: bool, initiator_name: str, tgt_priv: Any,
                          result_fn_data: Any = None,
                          result_fn: Callable[[scst_session, Any, int], None] | None = None
                          ) -> scst_session | None:
    sess = scst_session(tgt, initiator_name, tgt_priv)
    mutex_lock(scst_mutex)
    try:
        acg = scst_find_acg(tgt, initiator_name)
        sess.acg = acg
        acg.acg_sess_list.append(sess)
        for acg_dev in acg.acg_dev_list.values():
            _alloc_tgt_dev(sess, acg_dev)
        tgt.sess_list.append(sess)
    finally:
        mutex_unlock(scst_mutex)
    if result_fn is not None:
        result_fn(sess, result_fn_data, 0)
    return sess


def scst_unregister_session(sess: scst_session, wait: bool,
                            unreg_done_fn: Callable[[scst_session], None] | None = None) -> None:
    """Detach the session; it is freed when its last command is. `wait` is
    accepted for SCST's signature: the driver's done function tells the end."""
    sess.shut_phase = 1
    sess.unreg_done_fn = unreg_done_fn
    if sess.cmd_count == 0:
        scst_sess_free_final(sess)


def scst_sess_free_final(sess: scst_session) -> None:
    if sess.shut_phase == 2:
        return
    sess.shut_phase = 2
    acg = sess.acg
    if acg is not None and sess in acg.acg_sess_list:
        acg.acg_sess_list.remove(sess)
    for lun in list(sess.sess_tgt_dev_list):
        _free_tgt_dev(sess, lun)
    tgt = sess.tgt
    if sess in tgt.sess_list:
        tgt.sess_list.remove(sess)
        tgt.closed_reads += sess.reads
        tgt.closed_writes += sess.writes
        tgt.closed_read_bytes += sess.read_bytes
        tgt.closed_write_bytes += sess.write_bytes
    list_head_release(sess.sess_cmd_list)       # empty now: freed with sess
    if sess.unreg_done_fn is not None:
        sess.unreg_done_fn(sess)


# -- dev handlers and devices -----------------------------------------------

def scst_register_virtual_dev_driver(devt: scst_dev_type) -> int:
    mutex_lock(scst_mutex)
    try:
        if any(d.name == devt.name for d in scst_dev_type_list):
            return -EEXIST
        if ref_module(devt.owner, _this_module):
            return -ENODEV
        scst_dev_type_list.append(devt)
    finally:
        mutex_unlock(scst_mutex)
    pr_info(f"scst: virtual device handler {devt.name} registered")
    return 0


def scst_unregister_virtual_dev_driver(devt: scst_dev_type) -> None:
    for dev in list(devt.dev_list):
        scst_del_dev_luns(dev)
        scst_unregister_virtual_device(dev)
    mutex_lock(scst_mutex)
    if devt in scst_dev_type_list:
        scst_dev_type_list.remove(devt)
        if devt.owner is not None:
            module_put_by(_this_module, devt.owner.name)
    mutex_unlock(scst_mutex)


def scst_del_dev_luns(dev: scst_device) -> None:
    """Unmap dev from every group of every target (task context)."""
    for tgtt in scst_template_list:
        for tgt in tgtt.tgt_list:
            for acg in (tgt.default_acg, *tgt.tgt_acg_list):
                for lun in [n for n, d in acg.acg_dev_list.items() if d.dev is dev]:
                    scst_acg_del_lun(acg, lun)


def scst_find_dev_type(name: str) -> scst_dev_type | None:
    return next((d for d in scst_dev_type_list if d.name == name), None)


def scst_find_device(name: str) -> scst_device | None:
    return next((d for d in scst_dev_list if d.virt_name == name), None)


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def scst_register_virtual_device(devt: scst_dev_type, dev_name: str,
                                 dh_priv: Any = None) -> scst_device | int:
    """Create the device, attach the handler, start its command threads."""
    global _next_dev_id
    if scst_find_device(dev_name) is not None:
        pr_err(f"scst: device {dev_name} already exists")
        return -EEXIST
    dev = scst_device(devt.type, devt, dev_name, dh_priv=dh_priv)
    if devt.attach is not None:
        ret = devt.attach(dev)
        if ret != 0:
            pr_err(f"scst: attach of device {dev_name} to {devt.name} failed: {ret}")
            return ret
    _next_dev_id += 1
    dev.virt_id = _next_dev_id
    dev.cmd_threads = scst_cmd_threads(f"{dev_name[:10]}_")
    if not devt.exec_atomic:
        scst_add_threads(dev.cmd_threads, devt.threads_num or scst_threads)
    mutex_lock(scst_mutex)
    scst_dev_list.append(dev)
    devt.dev_list.append(dev)
    mutex_unlock(scst_mutex)
    pr_info(f"scst: attached {devt.name} device {dev_name}")
    scst_cluster_dev_registered(dev)
    return dev


def scst_unregister_virtual_device(dev: scst_device) -> int:
    # Busy while mapped, and while commands of a LUN just unmapped still
    # run (their I/O uses the handler's file until they end).
    if dev.dev_tgt_dev_list or dev.dev_cmd_count:
        return -EBUSY
    mutex_lock(scst_mutex)
    if dev in scst_dev_list:
        scst_dev_list.remove(dev)
    if dev in dev.handler.dev_list:
        dev.handler.dev_list.remove(dev)
    mutex_unlock(scst_mutex)
    for t in dev.cmd_threads.threads:
        kthread_stop(t)
    dev.cmd_threads.threads.clear()
    if dev.handler.detach is not None:
        dev.handler.detach(dev)
    return 0


# -- module init / exit ---------------------------------------------------------

def init_scst() -> int:
    """Create the management tree (module init, task context)."""
    # scst_core.sysfs imports this file's lists: the cycle scst_main.c and
    # scst_sysfs.c have too, broken at call time.
    from scst_core.sysfs import scst_sysfs_init  # cycle: sysfs imports main
    if scst_threads < 1:
        pr_err(f"scst: scst_threads {scst_threads} must be at least 1")
        return -EINVAL
    ret = scst_sysfs_init()
    if ret == 0:
        scst_cluster_dev_init()
        pr_info(f"scst: core loaded, {scst_threads} threads per device by default")
    return ret


def exit_scst() -> None:
    from scst_core.sysfs import scst_sysfs_exit     # the cycle init_scst names
    scst_cluster_dev_exit()
    scst_sysfs_exit()


module_init(init_scst)
module_exit(exit_scst)
