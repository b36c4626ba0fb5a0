"""kshim.module: module_init/exit, parameters, exported symbols, refcounts, request_module."""
from __future__ import annotations

import importlib
import sys

import pytest

from kshim import bug, module, printk, sched
from kshim.err import EBUSY, EEXIST, EINVAL, ENOENT, EPERM
from kshim.module import (delete_module, find_module, find_symbol, load_module, module_put,
                          param_get, param_set, request_module, symbol_get, symbol_put,
                          try_module_get)
from kshim.softirq import raise_softirq

MOD_SRC = '''
from kshim.module import (EXPORT_SYMBOL, MODULE_ALIAS, MODULE_LICENSE, MODULE_PARM_DESC,
                          module_exit, module_init, module_param)

MODULE_LICENSE("GPL")
MODULE_ALIAS("{alias}")
log = []
max_sessions = 16
verbose = False
iqn = "iqn.x"
module_param("max_sessions", "uint", 0o644)
MODULE_PARM_DESC("max_sessions", "sessions per target")
module_param("verbose", "bool", 0o444)
module_param("iqn", "charp", 0)


@EXPORT_SYMBOL
def {sym}(x):
    return x * 2


@module_init
def init():
    log.append(("init", max_sessions, verbose, iqn))
    return 0


@module_exit
def exit():
    log.append("exit")
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """A Python module written to disk, importable as t_kmod_<n>, plus the
    modprobe helper request_module needs for modules not imported yet."""
    monkeypatch.syspath_prepend(str(tmp_path))
    level = printk.console_loglevel
    printk.set_console_loglevel(0)
    made = []

    def make(name: str, alias: str, sym: str) -> str:
        (tmp_path / f"{name}.py").write_text(MOD_SRC.format(alias=alias, sym=sym))
        made.append(name)
        return name

    def modprobe(pyname: str) -> int:
        try:
            importlib.import_module(pyname)
        except ImportError:
            return -ENOENT
        return 0
    monkeypatch.setattr(module, "usermode_modprobe", modprobe)
    bug.reset_reports()
    yield make
    for name in made:
        m = find_module(name)
        if m is not None and m.state == module.MODULE_STATE_LIVE:
            m.refcnt = 0
            delete_module(name)
        module.modules.pop(name, None)
        module._by_pymod.pop(name, None)
        sys.modules.pop(name, None)
    module.module_aliases.clear()
    printk.console_loglevel = level


def test_load_applies_parameters_runs_init_and_exports_symbols(fake_module):
    name = fake_module("t_kmod_a", "t-alias-a", "t_double_a")
    assert load_module(name, "max_sessions=4 verbose=y unknown=1") == 0
    mod = sys.modules[name]
    assert mod.log == [("init", 4, True, "iqn.x")]
    assert find_symbol("t_double_a")(3) == 6
    assert load_module(name) == -EEXIST
    assert param_get(name, "max_sessions") == "4" and param_get(name, "verbose") == "Y"


def test_bad_parameter_values_and_permissions_are_refused(fake_module):
    name = fake_module("t_kmod_b", "t-alias-b", "t_double_b")
    assert load_module(name, "max_sessions=-1") == -EINVAL
    assert find_module(name).state != module.MODULE_STATE_LIVE
    assert load_module(name) == 0
    assert param_set(name, "max_sessions", "0x20", from_sysfs=True) == 0
    assert sys.modules[name].max_sessions == 32
    assert param_set(name, "verbose", "n", from_sysfs=True) == -EPERM      # 0444
    assert param_get(name, "iqn", from_sysfs=True) == -EPERM               # perm 0
    assert param_set(name, "nope", "1") == -ENOENT


def test_a_module_in_use_cannot_be_unloaded(fake_module):
    name = fake_module("t_kmod_c", "t-alias-c", "t_double_c")
    load_module(name)
    m = find_module(name)
    fn = symbol_get("t_double_c")
    assert fn(1) == 2 and m.refcnt == 1
    assert delete_module(name) == -EBUSY
    symbol_put("t_double_c")
    assert try_module_get(m) and m.refcnt == 1
    module_put(m)
    assert delete_module(name) == 0
    assert sys.modules[name].log[-1] == "exit"
    assert find_symbol("t_double_c") is None and not try_module_get(m)
    module_put(m)
    assert bug.reports[-1].title == "module_put() below zero"


def test_request_module_loads_by_alias_through_the_modprobe_helper(fake_module):
    name = fake_module("t_kmod_d", "t-alias-d", "t_double_d")
    module.module_aliases["t-alias-d"] = name    # what modules.alias would say before import
    assert request_module("t-alias-d") == 0
    assert find_module(name).state == module.MODULE_STATE_LIVE
    assert request_module("t-alias-d") == 0      # already live
    assert request_module("t_no_such_module") == -ENOENT
    assert "t_kmod_d" in module.lsmod()


def test_module_param_refuses_world_writable_and_unknown_types():
    g = {"__name__": "t_kmod_inline", "x": 1}
    with pytest.raises(ValueError):
        exec("from kshim.module import module_param\nmodule_param('x', 'int', 0o666)", g)
    with pytest.raises(ValueError):
        exec("from kshim.module import module_param\nmodule_param('x', 'float', 0o644)", g)
    module.modules.pop("t_kmod_inline", None)
    module._by_pymod.pop("t_kmod_inline", None)


def test_named_holders_refuse_rmmod_naming_them_and_o_trunc_forces_it(fake_module):
    name = fake_module("t_kmod_e", "t-alias-e", "t_double_e")
    assert load_module(name) == 0
    m = find_module(name)
    user = module.module(name="t_user", pymod="t_user")
    assert module.try_module_get_by(m, "LUN 3 of iqn.x") and module.ref_module(user, m) == 0
    assert module.module_holders(m) == "LUN 3 of iqn.x, t_user" and m.refcnt == 2
    printk.set_console_loglevel(3)
    mark = len(printk.log_buf)
    assert delete_module(name) == -EBUSY
    assert any("t_kmod_e: module is in use by LUN 3 of iqn.x, t_user (refcount 2)" in e[2]
               for e in list(printk.log_buf)[mark:])
    module.module_put_by(m, "LUN 3 of iqn.x")
    assert module.module_holders(m) == "t_user"
    assert delete_module(name, module.O_TRUNC) == 0          # forced, as a shutdown does
    assert sys.modules[name].log[-1] == "exit"
    assert not module.try_module_get_by(m, "late")           # unloaded: no new references


def test_a_live_module_publishes_its_parameters_in_sys_module(fake_module):
    from kshim.sysfs import sysfs_listdir, sysfs_read, sysfs_write
    name = fake_module("t_kmod_f", "t-alias-f", "t_double_f")
    assert sysfs_read(f"/module/{name}/parameters/max_sessions") < 0   # not loaded yet
    assert load_module(name, "max_sessions=5") == 0
    assert [n for n, _ in sysfs_listdir(f"/module/{name}/parameters")] == ["max_sessions",
                                                                           "verbose"]
    assert sysfs_read(f"/module/{name}/parameters/max_sessions") == "5\n"
    assert sysfs_write(f"/module/{name}/parameters/max_sessions", "9") > 0
    assert sys.modules[name].max_sessions == 9
    assert sysfs_write(f"/module/{name}/parameters/verbose", "1") < 0   # 0444
    assert sysfs_read(f"/module/{name}/initstate") == "live\n"
    assert delete_module(name) == 0
    assert sysfs_read(f"/module/{name}/initstate") < 0


def test_an_init_that_fails_or_raises_leaves_nothing_and_names_the_module(fake_module):
    name = fake_module("t_kmod_g", "t-alias-g", "t_double_g")
    importlib.import_module(name)                          # registers; init not run yet
    module.find_module(name).init = lambda: -ENOENT
    assert load_module(name) == -ENOENT
    assert find_symbol("t_double_g") is None and name not in module.lsmod()

    def boom() -> int:
        raise ZeroDivisionError("division by zero")
    module.find_module(name).init = boom
    assert load_module(name) == -module.EFAULT
    rep = bug.reports[-1]
    assert rep.title == f"oops in init of module {name}" and "ZeroDivisionError" in \
        rep.details["error"]
    assert find_module(name).state == module.MODULE_STATE_UNFORMED


def test_free_module_forgets_an_unloaded_module_so_an_edit_registers_afresh(fake_module):
    name = fake_module("t_kmod_h", "t-alias-h", "t_double_h")
    assert load_module(name) == 0
    assert module.free_module(name) == -EBUSY                 # live
    assert delete_module(name) == 0
    assert module.free_module(name) == 0
    assert find_module(name) is None
    del sys.modules[name]
    importlib.import_module(name)                          # the edited file, re-imported
    assert find_module(name) is not None and load_module(name) == 0


def test_an_oops_in_a_modules_softirq_callback_names_the_module(fake_module, kernel):
    name = fake_module("t_kmod_oops", "t-oops", "t_oops_sym")
    assert load_module(name) == 0
    mod = sys.modules[name]

    def broken(_):
        raise ValueError("bad state")
    broken.__module__ = mod.__name__          # as if defined in the module's file

    def body():
        raise_softirq(broken)
        sched.yield_()
    kernel(body)
    rep = bug.find_reports("oops in softirq")
    assert len(rep) == 1 and rep[0].details["module"] == name, [r.title for r in bug.reports]
    assert f"(module {name})" in rep[0].title
