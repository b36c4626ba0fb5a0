"""sysfs: attribute files and symbolic links on the kobject tree, and the
path-based access the management services use (the FUSE mount and the
control socket).

Twin of fs/sysfs/{file,dir,symlink}.c, include/linux/sysfs.h, and the
/sys/module/<name>/parameters part of kernel/params.c.

Contexts: sysfs_create_file/sysfs_remove_file/sysfs_create_link from task
context. The access calls (sysfs_read, sysfs_write, sysfs_listdir,
sysfs_lookup, sysfs_readlink) run show() and store() callbacks, which may
sleep (they take scst_mutex, open files): task context only. The engine's
services call them through engine.call_in_task.

Differs from the kernel: show(kobj, attr) returns a str (or a negative
errno) instead of filling a page; store(kobj, attr, buf) gets the written
text as str and returns the count consumed or a negative errno. Output is
not limited to PAGE_SIZE. A write is one store() call with the whole
buffer, as sysfs does for a write() at offset 0. Paths are '/'-separated,
relative to the sysfs root (so "/kernel/scst_tgt" is /sys/kernel/scst_tgt);
links in the middle of a path are followed, a final link is returned as a
link. Directories whose kobj_type has refresh() are brought up to date
before they are read (see kshim.kobject).
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim.err import EACCES, EEXIST, EINVAL, ENOENT
from kshim.kobject import kobject, kobject_create_and_add, kobject_get_path, kobject_init

# Access modes (include/uapi/linux/stat.h)
S_IRUGO = 0o444
S_IWUSR = 0o200
S_IRUSR = 0o400
S_IRWXU = 0o700

# errno values kshim.err does not define yet (include/uapi/asm-generic/errno-base.h)
ENOTDIR = 20
EISDIR = 21
ELOOP = 40

# How many links one path walk follows (fs/namei.c MAXSYMLINKS)
MAXSYMLINKS = 40


@attrs.define(slots=True, eq=False)
class attribute:
    name: str
    mode: int = S_IRUGO


@attrs.define(slots=True, eq=False)
class kobj_attribute:
    """An attribute file: show() makes its text, store() takes a write."""
    attr: attribute
    show: Callable[[kobject, "kobj_attribute"], "str | int"] | None = None
    store: Callable[[kobject, "kobj_attribute", str], int] | None = None
    private: Any = None                  # free for the creator (e.g. a field name)

    @property
    def name(self) -> str:
        return self.attr.name

    @property
    def mode(self) -> int:
        return self.attr.mode


def __ATTR(name: str, mode: int, show: Callable | None, store: Callable | None,
           private: Any = None) -> kobj_attribute:
    """include/linux/sysfs.h __ATTR: a kobj_attribute from its parts."""
    return kobj_attribute(attribute(name, mode), show, store, private)


def __ATTR_RO(name: str, show: Callable, private: Any = None) -> kobj_attribute:
    return __ATTR(name, S_IRUGO, show, None, private)


def __ATTR_WO(name: str, store: Callable, private: Any = None) -> kobj_attribute:
    return __ATTR(name, S_IWUSR, None, store, private)


def __ATTR_RW(name: str, show: Callable, store: Callable, private: Any = None) -> kobj_attribute:
    return __ATTR(name, S_IRUGO | S_IWUSR, show, store, private)


@attrs.define(slots=True, eq=False)
class sysfs_link:
    name: str
    target: kobject


# The root of the tree and the well-known directories under it.
sysfs_root = kobject()
kobject_init(sysfs_root, None)
sysfs_root.state_in_sysfs = True
kernel_kobj = kobject_create_and_add("kernel", sysfs_root)
module_kobj = kobject_create_and_add("module", sysfs_root)


# -- creation ---------------------------------------------------------------

def sysfs_create_file(kobj: kobject, attr: kobj_attribute) -> int:
    if attr.name in kobj.entries:
        return -EEXIST
    kobj.entries[attr.name] = attr
    return 0


def sysfs_create_files(kobj: kobject, attrs_: "list[kobj_attribute] | tuple") -> int:
    for a in attrs_:
        ret = sysfs_create_file(kobj, a)
        if ret != 0:
            return ret
    return 0


def sysfs_remove_file(kobj: kobject, attr: "kobj_attribute | str") -> None:
    name = attr if isinstance(attr, str) else attr.name
    if isinstance(kobj.entries.get(name), kobj_attribute):
        del kobj.entries[name]


def sysfs_create_link(kobj: kobject, target: kobject, name: str) -> int:
    if name in kobj.entries:
        return -EEXIST
    kobj.entries[name] = sysfs_link(name, target)
    return 0


def sysfs_remove_link(kobj: kobject, name: str) -> None:
    if isinstance(kobj.entries.get(name), sysfs_link):
        del kobj.entries[name]


# -- module parameters (kernel/params.c) ------------------------------------

def module_param_named(modname: str, name: str, holder: Any, field: str, type_: type,
                       mode: int = S_IRUGO | S_IWUSR) -> int:
    """Publish holder.field as /sys/module/<modname>/parameters/<name>.
    holder is the module (or object) owning the variable, since Python has
    no addresses; type_ is int, bool or str."""
    mod = module_kobj.entries.get(modname)
    if mod is None:
        mod = kobject_create_and_add(modname, module_kobj)
    params = mod.entries.get("parameters")
    if params is None:
        params = kobject_create_and_add("parameters", mod)

    def show(_k: kobject, _a: kobj_attribute) -> str:
        v = getattr(holder, field)
        return (("Y" if v else "N") if type_ is bool else str(v)) + "\n"

    def store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
        text = buf.strip()
        if type_ is bool:
            if text not in ("0", "1", "Y", "N", "y", "n"):
                return -EINVAL
            setattr(holder, field, text in ("1", "Y", "y"))
        elif type_ is int:
            try:
                setattr(holder, field, int(text, 0))
            except ValueError:
                return -EINVAL
        else:
            setattr(holder, field, text)
        return len(buf)
    return sysfs_create_file(params, __ATTR(name, mode, show, store if mode & 0o222 else None))


# -- access by path (the services' side) ------------------------------------

def _refresh(kobj: kobject) -> None:
    kt = kobj.ktype
    if kt is not None and kt.refresh is not None:
        kt.refresh(kobj)


def sysfs_lookup(path: str) -> "kobject | kobj_attribute | sysfs_link | int":
    """The entry at path, or -ENOENT / -ENOTDIR / -ELOOP."""
    node: Any = sysfs_root
    parts = [p for p in path.split("/") if p]
    hops = 0
    i = 0
    while i < len(parts):
        name = parts[i]
        if isinstance(node, sysfs_link):
            hops += 1
            if hops > MAXSYMLINKS:
                return -ELOOP
            node = node.target
        if not isinstance(node, kobject):
            return -ENOTDIR
        if name == ".":
            i += 1
            continue
        if name == "..":
            node = node.parent or sysfs_root
            i += 1
            continue
        _refresh(node)
        nxt = node.entries.get(name)
        if nxt is None:
            return -ENOENT
        node = nxt
        i += 1
    return node


def _follow(entry: Any) -> Any:
    hops = 0
    while isinstance(entry, sysfs_link):
        hops += 1
        if hops > MAXSYMLINKS:
            return -ELOOP
        entry = entry.target
    return entry


def sysfs_listdir(path: str) -> "list[tuple[str, Any]] | int":
    """(name, entry) pairs of the directory at path, sorted by name."""
    d = _follow(sysfs_lookup(path))
    if isinstance(d, int):
        return d
    if not isinstance(d, kobject):
        return -ENOTDIR
    _refresh(d)
    return sorted(d.entries.items())


def sysfs_read(path: str) -> "str | int":
    """The text of the attribute at path, or a negative errno."""
    a = _follow(sysfs_lookup(path))
    if isinstance(a, int):
        return a
    if isinstance(a, kobject):
        return -EISDIR
    if a.show is None or not a.mode & 0o444:
        return -EACCES
    kobj = _owner(path)
    return a.show(kobj, a)


def sysfs_write(path: str, buf: str) -> int:
    """Store buf into the attribute at path: count or a negative errno."""
    a = _follow(sysfs_lookup(path))
    if isinstance(a, int):
        return a
    if isinstance(a, kobject):
        return -EISDIR
    if a.store is None or not a.mode & 0o222:
        return -EACCES
    return a.store(_owner(path), a, buf)


def sysfs_readlink(path: str) -> "str | int":
    """The link's target as a path relative to the link's directory."""
    link = sysfs_lookup(path)
    if isinstance(link, int):
        return link
    if not isinstance(link, sysfs_link):
        return -EINVAL
    here = [p for p in path.split("/") if p][:-1]
    there = [p for p in kobject_get_path(link.target).split("/") if p]
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "/".join([".."] * (len(here) - common) + there[common:]) or "."


def _owner(path: str) -> kobject:
    parent = _follow(sysfs_lookup(path.rstrip("/").rsplit("/", 1)[0] or "/"))
    return parent if isinstance(parent, kobject) else sysfs_root
