"""kshim/kobject.py and kshim/sysfs.py: directories, attribute files,
links, path lookup with links, refresh callbacks, module parameters. The
callbacks here do not sleep, so no engine is needed."""
from __future__ import annotations

import types

from kshim.err import EACCES, EEXIST, ENOENT
from kshim.kobject import kobj_type, kobject_create_and_add, kobject_del, kobject_get_path
from kshim.sysfs import (EISDIR, __ATTR_RO, __ATTR_RW, __ATTR_WO, kernel_kobj, module_param_named,
                         sysfs_create_file, sysfs_create_link, sysfs_listdir, sysfs_read,
                         sysfs_readlink, sysfs_write)


def test_attributes_show_store_and_refuse_by_mode() -> None:
    top = kobject_create_and_add("t_attrs", kernel_kobj)
    box = {"v": "1"}
    sysfs_create_file(top, __ATTR_RW("v", lambda k, a: box["v"] + "\n",
                                     lambda k, a, buf: (box.__setitem__("v", buf.strip()), len(buf))[1]))
    sysfs_create_file(top, __ATTR_RO("ro", lambda k, a: f"{k.name}\n"))
    sysfs_create_file(top, __ATTR_WO("wo", lambda k, a, buf: len(buf)))
    try:
        assert sysfs_read("/kernel/t_attrs/v") == "1\n"
        assert sysfs_write("/kernel/t_attrs/v", "42\n") == 3 and box["v"] == "42"
        assert sysfs_read("/kernel/t_attrs/ro") == "t_attrs\n"     # show gets its own kobject
        assert sysfs_write("/kernel/t_attrs/ro", "x") == -EACCES
        assert sysfs_read("/kernel/t_attrs/wo") == -EACCES
        assert sysfs_read("/kernel/t_attrs") == -EISDIR
        assert sysfs_read("/kernel/t_attrs/nope") == -ENOENT
        assert sysfs_create_file(top, __ATTR_RO("ro", lambda k, a: "")) == -EEXIST
    finally:
        kobject_del(top)
    assert sysfs_read("/kernel/t_attrs/v") == -ENOENT


def test_links_are_followed_inside_paths_and_read_back_relative() -> None:
    top = kobject_create_and_add("t_links", kernel_kobj)
    a = kobject_create_and_add("a", kobject_create_and_add("deep", top))
    sysfs_create_file(a, __ATTR_RO("name", lambda k, at: f"{k.name}\n"))
    b = kobject_create_and_add("b", top)
    sysfs_create_link(b, a, "to_a")
    try:
        assert kobject_get_path(a) == "/kernel/t_links/deep/a"
        assert sysfs_readlink("/kernel/t_links/b/to_a") == "../deep/a"
        assert sysfs_read("/kernel/t_links/b/to_a/name") == "a\n"
        assert [n for n, _ in sysfs_listdir("/kernel/t_links/b/to_a")] == ["name"]
    finally:
        kobject_del(top)


def test_refresh_callback_runs_before_a_directory_is_read() -> None:
    items = ["x"]

    def refresh(k) -> None:
        for n in list(k.entries):
            if n not in items:
                del k.entries[n]
        for n in items:
            if n not in k.entries:
                sysfs_create_file(k, __ATTR_RO(n, lambda kk, a: a.name))
    top = kobject_create_and_add("t_refresh", kernel_kobj, kobj_type(refresh=refresh))
    try:
        assert [n for n, _ in sysfs_listdir("/kernel/t_refresh")] == ["x"]
        items[:] = ["y", "z"]
        assert [n for n, _ in sysfs_listdir("/kernel/t_refresh")] == ["y", "z"]
        assert sysfs_read("/kernel/t_refresh/z") == "z"
    finally:
        kobject_del(top)


def test_module_param_reads_and_writes_the_variable() -> None:
    mod = types.SimpleNamespace(limit=7, flag=False)
    assert module_param_named("t_mod", "limit", mod, "limit", int) == 0
    assert module_param_named("t_mod", "flag", mod, "flag", bool) == 0
    assert sysfs_read("/module/t_mod/parameters/limit") == "7\n"
    assert sysfs_write("/module/t_mod/parameters/limit", "0x10") > 0 and mod.limit == 16
    assert sysfs_write("/module/t_mod/parameters/limit", "many") < 0 and mod.limit == 16
    assert sysfs_write("/module/t_mod/parameters/flag", "Y") > 0 and mod.flag is True
    assert sysfs_read("/module/t_mod/parameters/flag") == "Y\n"
