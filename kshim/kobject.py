"""Kernel objects: named, reference-counted nodes that form the sysfs tree.

Twin of lib/kobject.c and include/linux/kobject.h.

Contexts: kobject_init/kobject_add/kobject_del/kobject_put from task
context (management, module init); they take no sleeping lock but the sysfs
callbacks they enable run in task context. kobject_get/kobject_name/
kobject_get_path from any context.

Differs from the kernel: a kobject's sysfs directory is its `entries` dict
(name -> child kobject, attribute or link) rather than a kernfs node; ksets
and uevents are not emulated. A kobj_type may carry `refresh(kobj)`, called
by kshim.sysfs before a directory is listed or looked up in, so a directory
can mirror a list that has no creation hooks yet (uscst's scst_core.sysfs
uses it for sessions and LUNs). Release runs when the count reaches zero, as
in the kernel; there is no delayed release.

Debug aids: kobject_put on a count of zero and kobject_add of an object that
is already in the tree are reported through WARN_ON.
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim.bug import WARN_ON
from kshim.err import EEXIST, EINVAL


@attrs.define(slots=True, eq=False)
class kobj_type:
    """What kind of object a kobject is embedded in."""
    release: Callable[["kobject"], None] | None = None
    default_attrs: tuple = ()            # kobj_attribute records created by kobject_add
    # uscst: bring `entries` up to date before the directory is read
    refresh: Callable[["kobject"], None] | None = None


@attrs.define(slots=True, eq=False)
class kobject:
    name: str = ""
    parent: "kobject | None" = None
    ktype: kobj_type | None = None
    private: Any = None                  # the structure this kobject is embedded in
    # touched from task context only (management): no lock
    entries: dict = attrs.field(factory=dict)     # name -> kobject | attribute | sysfs_link
    refcount: int = 1
    state_initialized: bool = False
    state_in_sysfs: bool = False


def kobject_init(kobj: kobject, ktype: kobj_type | None) -> None:
    kobj.ktype = ktype
    kobj.refcount = 1
    kobj.state_initialized = True


def kobject_add(kobj: kobject, parent: kobject | None, name: str) -> int:
    """Link kobj into parent's directory under name. 0, -EINVAL (bad name,
    not initialised, already added) or -EEXIST (name taken)."""
    if not kobj.state_initialized or WARN_ON(kobj.state_in_sysfs):
        return -EINVAL
    if not name or "/" in name or name in (".", ".."):
        return -EINVAL
    if parent is not None:
        if name in parent.entries:
            return -EEXIST
        parent.entries[name] = kobj
        kobject_get(parent)
    kobj.name = name
    kobj.parent = parent
    kobj.state_in_sysfs = True
    if kobj.ktype is not None:
        from kshim.sysfs import sysfs_create_file  # cycle: sysfs imports kobject
        for attr in kobj.ktype.default_attrs:
            sysfs_create_file(kobj, attr)
    return 0


def kobject_init_and_add(kobj: kobject, ktype: kobj_type | None, parent: kobject | None,
                         name: str) -> int:
    kobject_init(kobj, ktype)
    return kobject_add(kobj, parent, name)


def kobject_create_and_add(name: str, parent: kobject | None,
                           ktype: kobj_type | None = None, private: Any = None) -> kobject | None:
    """A bare directory kobject, or None if the name is taken or invalid."""
    kobj = kobject(private=private)
    if kobject_init_and_add(kobj, ktype, parent, name) != 0:
        return None
    return kobj


def kobject_del(kobj: kobject) -> None:
    """Unlink kobj (and with it its whole subtree) from sysfs."""
    if not kobj.state_in_sysfs:
        return
    parent = kobj.parent
    if parent is not None and parent.entries.get(kobj.name) is kobj:
        del parent.entries[kobj.name]
        kobject_put(parent)
    kobj.state_in_sysfs = False


def kobject_get(kobj: kobject | None) -> kobject | None:
    if kobj is not None:
        kobj.refcount += 1
    return kobj


def kobject_put(kobj: kobject | None) -> None:
    if kobj is None or WARN_ON(kobj.refcount <= 0):
        return
    kobj.refcount -= 1
    if kobj.refcount == 0:
        kobject_del(kobj)
        if kobj.ktype is not None and kobj.ktype.release is not None:
            kobj.ktype.release(kobj)


def kobject_name(kobj: kobject) -> str:
    return kobj.name


def kobject_get_path(kobj: kobject) -> str:
    """'/kernel/scst_tgt/devices/disk0' style path from the sysfs root."""
    parts = []
    k: kobject | None = kobj
    while k is not None and k.parent is not None:
        parts.append(k.name)
        k = k.parent
    return "/" + "/".join(reversed(parts))
