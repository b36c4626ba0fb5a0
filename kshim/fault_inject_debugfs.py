"""The fault-injection debugfs tree: /sys/kernel/debug/<point>/<attribute>
and /sys/kernel/debug/fault-inject/.

Twin of lib/fault-inject.c's fault_create_debugfs_attr (one directory per
point, one file per attribute) and of the per-task files of fs/proc/base.c
(make-it-fail, fail-nth). The framework is kshim/fault_inject.py; a point
adds its own files through its fault_attr.debugfs (fail_function's
inject, injectable, <func>/retval).

Contexts: debugfs_init and every show/store callback in task context (a
sysfs read or write: the control socket, the FUSE mount, uscstadmin).

Differs from the kernel: it lives in the sysfs emulation (kshim.sysfs),
reached as debug/... by uscstadmin; make-it-fail and fail-nth are in
debug/fault-inject/ (written "PID-or-COMM VALUE"), not /proc/PID; the
same directory holds the enumerate mode's files (enumerate: record, a
site's number, off; sites: what the recording found). A bad write is
-EINVAL with the reason on the console.
"""
from __future__ import annotations

import fnmatch

from kshim import sched
from kshim.err import EINVAL
from kshim.fault_inject import (COMMON_ATTRS, ENUMERATE_POINTS, POINTS, enumerate_record,
                                enumerate_sites, enumerate_stop, enumerate_target,
                                fault_attr_get, fault_attr_set, fault_points, fault_state,
                                parse_attr_value, point_added_hooks, set_fail_nth,
                                set_make_it_fail)
from kshim.kobject import kobject, kobject_create_and_add
from kshim.printk import KERN_WARNING, printk
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, kernel_kobj, kobj_attribute, sysfs_create_file


def _show(kobj: kobject, a: kobj_attribute) -> str:
    return fault_attr_get(kobj.name, a.private) + "\n"


def _store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    try:
        fault_attr_set(kobj.name, a.private, buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: {e}")
        return -EINVAL
    return len(buf)


def _task_by_key(key: str) -> list[sched.task_struct]:
    if key.isdigit():
        t = sched.find_task_by_pid(int(key))
        return [t] if t is not None else []
    return [t for t in list(sched.all_tasks.values()) if fnmatch.fnmatchcase(t.comm, key)]


def _two_words(buf: str) -> tuple[str, int]:
    parts = buf.split()
    if len(parts) != 2:
        raise ValueError("expected 'PID-or-COMM VALUE'")
    return parts[0], parse_attr_value(int, parts[1])


def _store_make_it_fail(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    try:
        key, on = _two_words(buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: make-it-fail: {e}")
        return -EINVAL
    if not key.isdigit():
        comms = fault_state.make_it_fail_comms
        if on and key not in comms:
            comms.append(key)
        elif not on and key in comms:
            comms.remove(key)
    for t in _task_by_key(key):
        set_make_it_fail(t, bool(on))
    return len(buf)


def _show_make_it_fail(_k: kobject, _a: kobj_attribute) -> str:
    names = [f"{t.pid} {t.comm}" for t in list(fault_state.make_it_fail)]
    return "".join(f"{n}\n" for n in sorted(names + fault_state.make_it_fail_comms))


def _store_fail_nth(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    try:
        key, nth = _two_words(buf)
    except ValueError as e:
        printk(KERN_WARNING + f"fault_inject: fail-nth: {e}")
        return -EINVAL
    tasks = _task_by_key(key)
    if not tasks or nth < 0:
        return -EINVAL
    for t in tasks:
        set_fail_nth(t, nth)
    return len(buf)


def _show_fail_nth(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{t.pid} {t.comm} {n}\n" for t, n in list(fault_state.fail_nth.items()))


def _store_enumerate(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    words = buf.split()
    if words[:1] == ["record"]:
        bad = [p for p in words[1:] if p not in fault_points]
        if bad:
            return -EINVAL
        enumerate_record(tuple(words[1:]) or ENUMERATE_POINTS)
    elif words == ["off"]:
        enumerate_stop()
    elif len(words) == 1 and words[0].isdigit():
        if enumerate_target(int(words[0])) < 0:
            return -EINVAL
    else:
        return -EINVAL
    return len(buf)


def _show_enumerate(_k: kobject, _a: kobj_attribute) -> str:
    st = fault_state
    if st.enum_mode == "target":
        s = st.enum_sites[st.enum_target]
        return f"target {s.index} {'injected' if st.enum_done else 'pending'}\n"
    return st.enum_mode + "\n"


def _show_sites(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{s.index} hits={s.hits} injected={s.injected} {s.point} {s.where}\n"
                   for s in enumerate_sites())


def _point_dir(root: kobject, point: str) -> None:
    rw = S_IRUGO | S_IWUSR
    d = kobject_create_and_add(point, root)
    if d is None:
        return
    for name in list(COMMON_ATTRS) + list(POINTS[point]):
        sysfs_create_file(d, __ATTR(name, rw, _show, _store, private=name))
    extra = fault_points[point].debugfs
    if extra is not None:
        extra(d)


def _point_added(point: str) -> None:
    """A point declared after debugfs_init gets its directory at once."""
    root = kernel_kobj.entries.get("debug")
    if root is not None and "fault-inject" in root.entries:
        _point_dir(root, point)


point_added_hooks.append(_point_added)


def debugfs_init() -> kobject | None:
    """Create /sys/kernel/debug/<point>/... and debug/fault-inject/ (once)."""
    root = kernel_kobj.entries.get("debug")
    if root is None:
        root = kobject_create_and_add("debug", kernel_kobj)
    if root is None or "fault-inject" in root.entries:
        return root
    rw = S_IRUGO | S_IWUSR
    for point in fault_points:
        _point_dir(root, point)
    ctl = kobject_create_and_add("fault-inject", root)
    if ctl is not None:
        sysfs_create_file(ctl, __ATTR("make-it-fail", rw, _show_make_it_fail,
                                      _store_make_it_fail))
        sysfs_create_file(ctl, __ATTR("fail-nth", rw, _show_fail_nth, _store_fail_nth))
        sysfs_create_file(ctl, __ATTR("enumerate", rw, _show_enumerate, _store_enumerate))
        sysfs_create_file(ctl, __ATTR("sites", S_IRUGO, _show_sites, None))
    return root
