"""Loadable modules: init/exit, parameters, exported symbols, reference counts.

Twin of kernel/module/main.c (load_module, delete_module, try_module_get),
kernel/params.c (module_param), kernel/kmod.c (request_module) and
include/linux/module.h, moduleparam.h, export.h.

Contexts: load_module, delete_module, request_module and the init/exit
functions run in task context (they may sleep); try_module_get, module_put,
symbol lookups and parameter reads from any context.

Differs from the kernel: a module is one Python package or module (its
kernel name is the last part of the Python name unless MODULE_NAME() says
otherwise). Importing it registers it (module_init, module_param,
EXPORT_SYMBOL run at import, like a module's sections being linked in);
load_module() then runs the function it registered with module_init().
request_module("name") finds it by kernel name, MODULE_ALIAS() or
`module_aliases`; one not imported yet is handed to `usermode_modprobe`, a
host-side helper (kshim itself never imports by name, as the kernel calls
/sbin/modprobe). module_param(name, type, perm) declares that the module-level
global `name` of the calling Python module is a parameter: values given to
load_module (or param_set) are parsed with the kernel's rules for `type`
("int", "uint", "long", "ulong", "short", "ushort", "byte", "bool",
"invbool", "charp", "hexint") and stored in that global, so the module's
code reads it as a plain variable. Permissions are recorded; param_set with
from_sysfs=True refuses a parameter without a write bit, as sysfs would.
EXPORT_SYMBOL(fn) registers fn under its name; symbol_get takes a module
reference. A Python import cannot be undone: delete_module runs the exit
function and forgets the module, and a later load_module runs init again.
A module loaded from a file by the host side can be dropped with
free_module() once unloaded, so an edited copy of the file registers afresh.
A package whose __init__ calls MODULE_NAME() is one module with all its
submodules (scst_core is `scst`, vdisk `scst_vdisk`, iscsi_scst
`iscsi_scst`), as the kernel links several .c files into one .ko;
module_param_named(..., ns=) then names the submodule holding a variable.
A live module's parameters appear as /sys/module/<name>/parameters/*
(writable where perm allows), beside refcnt and initstate.
Reference holders have names (try_module_get_by, ref_module), so a refused
rmmod can say who holds the module; the kernel only lists modules in
`holders/`. try_module_get succeeds unless the module is going away (as the
kernel's module_is_live), so code used without load_module (unit tests)
still counts its references. delete_module(name, O_TRUNC) forces an unload
of a busy module (CONFIG_MODULE_FORCE_UNLOAD), which the target's shutdown
uses: each exit function tears down its own objects.

Debug aids: delete_module of a module in use is refused (-EBUSY) and names
the holders; module_put below zero is reported; loading a module whose symbol
is already exported by another is refused with -EEXIST, as the kernel does.
An init or exit function that raises is an oops naming the module; a failed
init leaves nothing behind (parameters, symbols, sysfs). statistics() and
lsmod() list modules with their size, reference counts and holders.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

import attrs

from kshim.bug import getframe, report_bug
from kshim.err import EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, EPERM, errname
from kshim.kobject import kobject, kobject_create_and_add, kobject_del
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.sysfs import __ATTR, kobj_attribute, module_kobj, sysfs_create_file

MODULE_STATE_LIVE = 0
MODULE_STATE_COMING = 1
MODULE_STATE_GOING = 2
MODULE_STATE_UNFORMED = 3

S_IRUSR = 0o400
S_IWUSR = 0o200
S_IRGRP = 0o040
S_IWGRP = 0o020
S_IROTH = 0o004
S_IRUGO = S_IRUSR | S_IRGRP | S_IROTH
S_IWUGO = S_IWUSR | S_IWGRP | 0o002

# delete_module flags (include/uapi/asm-generic/fcntl.h)
O_NONBLOCK = 0o4000
O_TRUNC = 0o1000


@attrs.define(slots=True, eq=False)
class kernel_param:
    name: str
    type: str
    perm: int
    globals: dict                 # the Python module's namespace holding the value
    var: str                      # the global's name there
    desc: str = ""


@attrs.define(slots=True, eq=False)
class module:
    name: str
    pymod: str                    # the Python module (or package) name
    state: int = MODULE_STATE_UNFORMED
    refcnt: int = 0
    init: Callable[[], int] | None = None
    exit: Callable[[], None] | None = None
    params: dict[str, kernel_param] = attrs.field(factory=dict)
    syms: list[str] = attrs.field(factory=list)
    info: dict[str, str] = attrs.field(factory=dict)
    # who holds refcnt: holder name -> references ("?" for unnamed ones)
    holders: dict[str, int] = attrs.field(factory=dict)
    size: int = 0                 # source lines, set by whoever loaded it
    mkobj: kobject | None = None  # /sys/module/<name> while live
    unloaded: bool = False        # delete_module ran (the kernel would have freed it)


modules: dict[str, module] = {}           # kernel name -> module
_by_pymod: dict[str, module] = {}         # Python module name -> module
_symbols: dict[str, tuple[Any, module | None, bool]] = {}   # name -> (obj, owner, gpl)
module_aliases: dict[str, str] = {}       # alias -> Python module name
# The "usermode helper" request_module calls for a module not imported yet,
# like the kernel's /sbin/modprobe: set by the host side (tools, tests); it
# imports the named Python module and returns 0 or a negative errno.
usermode_modprobe: Callable[[str], int] | None = None


def _caller_globals(depth: int = 2) -> dict:
    return getframe(depth).f_globals


def _module_for(g: dict) -> module:
    """The module record of the Python module whose globals are g (made on demand)."""
    pyname = g.get("__name__", "?")
    m = _by_pymod.get(pyname)
    if m is None:
        # a submodule of a registered package belongs to it
        for prefix, pm in _by_pymod.items():
            if pyname.startswith(prefix + "."):
                return pm
        name = g.get("__kshim_module_name__") or pyname.rsplit(".", 1)[-1]
        m = module(name, pyname)
        _by_pymod[pyname] = m
        modules.setdefault(name, m)
    return m


def THIS_MODULE() -> module:
    """The module the calling code belongs to."""
    return _module_for(_caller_globals())


def MODULE_NAME(name: str) -> None:
    """Name the calling Python module's kernel module (default: its last
    dotted part). Called from a package's __init__, it makes the package
    and every submodule one kernel module."""
    g = _caller_globals()
    g["__kshim_module_name__"] = name
    m = _by_pymod.get(g["__name__"])
    if m is None:
        _module_for(g)
    elif m.name != name:
        if modules.get(m.name) is m:
            del modules[m.name]
        m.name = name
        modules[name] = m


def module_init(fn: Callable[[], int]) -> Callable[[], int]:
    """Register fn as the module's init function (usable as a decorator)."""
    _module_for(_caller_globals()).init = fn
    return fn


def module_exit(fn: Callable[[], None]) -> Callable[[], None]:
    _module_for(_caller_globals()).exit = fn
    return fn


def _modinfo(key: str, value: str) -> None:
    _module_for(_caller_globals(3)).info[key] = value


def MODULE_LICENSE(s: str) -> None:
    _modinfo("license", s)


def MODULE_AUTHOR(s: str) -> None:
    _modinfo("author", s)


def MODULE_DESCRIPTION(s: str) -> None:
    _modinfo("description", s)


def MODULE_VERSION(s: str) -> None:
    _modinfo("version", s)


def MODULE_ALIAS(alias: str) -> None:
    """request_module(alias) will load the calling Python module."""
    g = _caller_globals()
    module_aliases[alias] = g["__name__"]


# -- parameters ------------------------------------------------------------------------

_INT_RANGES = {"byte": (0, 255), "short": (-(1 << 15), (1 << 15) - 1), "ushort": (0, (1 << 16) - 1),
               "int": (-(1 << 31), (1 << 31) - 1), "uint": (0, (1 << 32) - 1),
               "long": (-(1 << 63), (1 << 63) - 1), "ulong": (0, (1 << 64) - 1),
               "hexint": (0, (1 << 32) - 1), "ullong": (0, (1 << 64) - 1),
               "llong": (-(1 << 63), (1 << 63) - 1)}
PARAM_TYPES = tuple(_INT_RANGES) + ("bool", "invbool", "charp")


def module_param_named(name: str, var: str, type: str, perm: int, ns: Any = None) -> None:
    """Parameter `name` stored in the global `var` of the caller or, for a
    variable another file of the same module owns, of the Python module ns."""
    if type not in PARAM_TYPES:
        raise ValueError(f"module_param: unknown type {type!r}")
    if perm & 0o002:
        raise ValueError(f"module_param {name}: world-writable permissions {perm:o}")
    g = _caller_globals()
    m = _module_for(g)
    holder = vars(ns) if ns is not None else g
    if var not in holder:
        raise ValueError(f"module_param {name}: no global {var!r} in {holder['__name__']}")
    m.params[name] = kernel_param(name, type, perm, holder, var)


def module_param(name: str, type: str, perm: int) -> None:
    """The caller's global `name` is a parameter of `type` with sysfs `perm`."""
    g = _caller_globals()
    if type not in PARAM_TYPES:
        raise ValueError(f"module_param: unknown type {type!r}")
    if perm & 0o002:
        raise ValueError(f"module_param {name}: world-writable permissions {perm:o}")
    if name not in g:
        raise ValueError(f"module_param {name}: no global {name!r} in {g['__name__']}")
    _module_for(g).params[name] = kernel_param(name, type, perm, g, name)


def MODULE_PARM_DESC(name: str, desc: str) -> None:
    p = _module_for(_caller_globals()).params.get(name)
    if p is not None:
        p.desc = desc


def param_parse(type: str, text: str) -> "int | bool | str | None":
    """The value of `text` for a parameter of `type`, or None if invalid."""
    if type in ("bool", "invbool"):
        t = text.strip().lower()
        if t in ("1", "y", "yes", "on", "true", ""):
            v = True
        elif t in ("0", "n", "no", "off", "false"):
            v = False
        else:
            return None
        return (not v) if type == "invbool" else v
    if type == "charp":
        return text
    try:
        n = int(text.strip(), 0)
    except ValueError:
        return None
    lo, hi = _INT_RANGES[type]
    return n if lo <= n <= hi else None


def param_set(modname: str, name: str, text: str, from_sysfs: bool = False) -> int:
    """Set a parameter from text: 0, -ENOENT (no such module/parameter),
    -EPERM (read-only through sysfs) or -EINVAL (bad value)."""
    m = modules.get(modname)
    p = m.params.get(name) if m is not None else None
    if p is None:
        return -ENOENT
    if from_sysfs and not (p.perm & S_IWUGO):
        return -EPERM
    v = param_parse(p.type, text)
    if v is None:
        return -EINVAL
    p.globals[p.var] = v
    return 0


def param_get(modname: str, name: str, from_sysfs: bool = False) -> "str | int":
    """The text of a parameter's value, as /sys/module/<m>/parameters shows
    it ("Y"/"N" for bools); -ENOENT or -EPERM (perm 0 through sysfs)."""
    m = modules.get(modname)
    p = m.params.get(name) if m is not None else None
    if p is None:
        return -ENOENT
    if from_sysfs and not (p.perm & 0o444):
        return -EPERM
    v = p.globals[p.var]
    if p.type in ("bool", "invbool"):
        return "Y" if (v if p.type == "bool" else not v) else "N"
    if p.type == "hexint":
        return f"{v:#x}"
    return str(v)


def parse_args(modname: str, args: str) -> int:
    """Apply "a=1 b=x" to the module's parameters; 0 or the first error."""
    for tok in args.split():
        key, _, val = tok.partition("=")
        key = key.replace("-", "_")
        ret = param_set(modname, key, val)
        if ret == -ENOENT:
            pr_warn(f"{modname}: unknown parameter '{key}' ignored")
            continue
        if ret:
            pr_err(f"{modname}: '{val}' invalid for parameter '{key}'")
            return ret
    return 0


# -- symbols ----------------------------------------------------------------------------

def _export(obj: Any, gpl: bool, g: dict) -> Any:
    name = getattr(obj, "__name__", None)
    if name is None:
        raise ValueError("EXPORT_SYMBOL needs a named object")
    m = _module_for(g)
    old = _symbols.get(name)
    if old is not None and old[0] is not obj and old[1] is not m:
        pr_err(f"{m.name}: exports duplicate symbol {name} (owned by "
               f"{old[1].name if old[1] else 'kernel'})")
        dups = m.info.setdefault("duplicate_symbols", "")
        m.info["duplicate_symbols"] = (dups + " " + name).strip()
        return obj
    _symbols[name] = (obj, m, gpl)
    if name not in m.syms:
        m.syms.append(name)
    return obj


def EXPORT_SYMBOL(obj: Any) -> Any:
    """Export obj under its name (usable as a decorator)."""
    return _export(obj, False, _caller_globals())


def EXPORT_SYMBOL_GPL(obj: Any) -> Any:
    return _export(obj, True, _caller_globals())


def find_symbol(name: str) -> Any:
    ent = _symbols.get(name)
    return ent[0] if ent is not None else None


def symbol_get(name: str) -> Any:
    """The exported object, taking a reference on its module; None if absent."""
    ent = _symbols.get(name)
    if ent is None:
        return None
    obj, owner, _ = ent
    if owner is not None and not try_module_get(owner):
        return None
    return obj


def symbol_put(name: str) -> None:
    ent = _symbols.get(name)
    if ent is not None and ent[1] is not None:
        module_put(ent[1])


# -- reference counts -----------------------------------------------------------------

def try_module_get_by(m: module | None, holder: str) -> bool:
    """Take a reference for `holder` unless the module is going away; True if taken."""
    if m is None:
        return True
    if m.state == MODULE_STATE_GOING or m.unloaded:
        return False
    m.refcnt += 1
    m.holders[holder] = m.holders.get(holder, 0) + 1
    return True


def module_put_by(m: module | None, holder: str) -> None:
    """Drop a reference try_module_get_by(m, holder) took."""
    if m is None:
        return
    n = m.holders.get(holder, 0)
    if m.refcnt <= 0 or n <= 0:
        report_bug("module_put() below zero", module=m.name, holder=holder)
        return
    m.refcnt -= 1
    if n == 1:
        del m.holders[holder]
    else:
        m.holders[holder] = n - 1


def try_module_get(m: module | None) -> bool:
    """Take an unnamed reference unless the module is going away; True if taken."""
    return try_module_get_by(m, "?")


def __module_get(m: module | None) -> None:
    if m is not None:
        m.refcnt += 1
        m.holders["?"] = m.holders.get("?", 0) + 1


def module_put(m: module | None) -> None:
    module_put_by(m, "?")


def ref_module(a: module | None, b: module | None) -> int:
    """Module a uses module b: b cannot be unloaded before a. 0 or -ENOENT
    (b is going away). Undone by module_put_by(b, a.name)."""
    if a is None or b is None or a is b:
        return 0
    return 0 if try_module_get_by(b, a.name) else -ENOENT


def module_refcount(m: module) -> int:
    return m.refcnt


def module_holders(m: module) -> str:
    """'holder, holder, ...' for messages (each named once, as lsmod does)."""
    return ", ".join(m.holders)


def module_is_live(m: module) -> bool:
    return m.state != MODULE_STATE_GOING and not m.unloaded


def find_module(name: str) -> module | None:
    return modules.get(name)


def find_module_of(pyname: str) -> module | None:
    """The module a Python module (or a file of a module's package) belongs to."""
    m = _by_pymod.get(pyname)
    if m is None:
        m = next((pm for prefix, pm in _by_pymod.items() if pyname.startswith(prefix + ".")),
                 None)
    return m


# -- loading ------------------------------------------------------------------------------

def _lookup(name: str) -> module | None:
    m = modules.get(name)
    if m is not None:
        return m
    pyname = module_aliases.get(name, name)
    return _by_pymod.get(pyname)


def _param_show(k: kobject, a: kobj_attribute) -> "str | int":
    v = param_get(k.parent.name if k.parent else "", a.name, from_sysfs=True)
    return v if isinstance(v, int) else v + "\n"


def _param_store(k: kobject, a: kobj_attribute, buf: str) -> int:
    modname = k.parent.name if k.parent else ""
    ret = param_set(modname, a.name, buf.strip(), from_sysfs=True)
    if ret == -EINVAL:
        pr_err(f"{modname}: '{buf.strip()}' invalid for parameter '{a.name}'")
    return ret if ret else len(buf)


def _initstate_show(k: kobject, a: kobj_attribute) -> str:
    m = modules.get(k.name)
    names = {MODULE_STATE_LIVE: "live", MODULE_STATE_COMING: "coming",
             MODULE_STATE_GOING: "going"}
    return f"{names.get(m.state, 'unformed') if m else 'unformed'}\n"


def _refcnt_show(k: kobject, a: kobj_attribute) -> str:
    m = modules.get(k.name)
    return f"{m.refcnt if m else 0}\n"


def _mod_sysfs_setup(m: module) -> None:
    """/sys/module/<name>/{initstate,refcnt,parameters/*} (kernel/module/sysfs.c)."""
    old = module_kobj.entries.get(m.name)
    if isinstance(old, kobject):
        kobject_del(old)
    mk = kobject_create_and_add(m.name, module_kobj)
    if mk is None:
        pr_warn(f"{m.name}: no /sys/module entry (bad name)")
        return
    m.mkobj = mk
    sysfs_create_file(mk, __ATTR("initstate", 0o444, _initstate_show, None))
    sysfs_create_file(mk, __ATTR("refcnt", 0o444, _refcnt_show, None))
    if m.params:
        pk = kobject_create_and_add("parameters", mk)
        for p in m.params.values():
            # the kernel shows a perm-0 parameter nowhere
            if pk is not None and p.perm & 0o777:
                sysfs_create_file(pk, __ATTR(p.name, p.perm & 0o664, _param_show,
                                             _param_store if p.perm & S_IWUGO else None))


def _mod_sysfs_teardown(m: module) -> None:
    if m.mkobj is not None:
        kobject_del(m.mkobj)
        m.mkobj = None


def _drop_symbols(m: module) -> None:
    for sym in m.syms:
        ent = _symbols.get(sym)
        if ent is not None and ent[1] is m:
            del _symbols[sym]
    m.syms.clear()


def module_oops(title: str, e: BaseException, **details: object) -> None:
    """Report an exception that escaped a module's code (an init, exit or
    a callback the core called) as an oops: title, details (the module's
    name first), the error and where it was raised. Call it from the
    except clause that caught e."""
    report_bug(title, **details, error=f"{type(e).__name__}: {e}",
               trace=traceback.format_exc())


def _call_oopsable(m: module, what: str, fn: Callable[[], Any]) -> Any:
    """fn(); an exception escaping it is an oops naming the module (and
    -EFAULT), since the kthread that loads modules must survive it."""
    try:
        return fn()
    except Exception as e:          # an oops in a module's init/exit names the module
        module_oops(f"oops in {what} of module {m.name}", e, module=m.name)
        return -EFAULT


def load_module(name: str, args: str = "") -> int:
    """Load a module already imported (by kernel name, alias or Python name):
    apply args to its parameters, run its init function. If it is not
    imported yet, ask usermode_modprobe to import it. 0, -EEXIST if already
    live, -ENOENT if unknown, or the init function's error (an init that
    raises: -EFAULT). A failed init leaves the module unloaded: no sysfs
    entry, no symbols, no references."""
    m = _lookup(name)
    if m is None and usermode_modprobe is not None:
        ret = usermode_modprobe(module_aliases.get(name, name))
        if ret:
            return ret
        m = _lookup(name)
    if m is None:
        pr_err(f"load_module: unknown module {name}")
        return -ENOENT
    if m.state in (MODULE_STATE_LIVE, MODULE_STATE_COMING):
        return -EEXIST
    if m.info.get("duplicate_symbols"):
        pr_err(f"{m.name}: exports duplicate symbols {m.info['duplicate_symbols']}")
        return -EEXIST
    if args:
        ret = parse_args(m.name, args)
        if ret:
            return ret
    m.state = MODULE_STATE_COMING
    m.unloaded = False
    ret = _call_oopsable(m, "init", m.init) if m.init is not None else 0
    if not isinstance(ret, int):
        ret = 0
    if ret:
        m.state = MODULE_STATE_UNFORMED
        m.unloaded = True
        _drop_symbols(m)
        pr_err(f"{m.name}: module init failed: {errname(ret)}")
        return ret
    m.state = MODULE_STATE_LIVE
    del modules[m.name]            # lsmod lists in load order
    modules[m.name] = m
    _mod_sysfs_setup(m)
    pr_info(f"{m.name}: loaded")
    return 0


def delete_module(name: str, flags: int = 0) -> int:
    """Run the exit function of an unused module and forget its symbols.
    0, -ENOENT, or -EBUSY while references are held (the holders are
    logged). flags O_TRUNC forces the unload of a busy module."""
    m = _lookup(name)
    if m is None or m.state != MODULE_STATE_LIVE:
        return -ENOENT
    if m.refcnt and not flags & O_TRUNC:
        pr_err(f"{m.name}: module is in use by {module_holders(m)} (refcount {m.refcnt})")
        return -EBUSY
    m.state = MODULE_STATE_GOING
    if m.exit is not None:
        _call_oopsable(m, "exit", m.exit)
    _drop_symbols(m)
    _mod_sysfs_teardown(m)
    if m.refcnt:
        pr_warn(f"{m.name}: forced unload, still held by {module_holders(m)}")
    m.state = MODULE_STATE_UNFORMED
    m.unloaded = True
    pr_info(f"{m.name}: unloaded")
    return 0


def free_module(name: str) -> int:
    """Forget an unloaded module record entirely (the host side does this
    before importing an edited copy of a module file). 0, -ENOENT, -EBUSY."""
    m = _lookup(name)
    if m is None:
        return -ENOENT
    if m.state != MODULE_STATE_UNFORMED or m.refcnt:
        return -EBUSY
    _drop_symbols(m)                # a failed import may have exported some
    if modules.get(m.name) is m:
        del modules[m.name]
    _by_pymod.pop(m.pymod, None)
    for alias in [a for a, py in module_aliases.items() if py == m.pymod]:
        del module_aliases[alias]
    return 0


def request_module(name: str) -> int:
    """Make the module known as `name` (alias, kernel or Python name) live,
    loading it if needed. 0, or a negative errno."""
    m = _lookup(name)
    if m is not None and m.state == MODULE_STATE_LIVE:
        return 0
    ret = load_module(name)
    return 0 if ret == -EEXIST else ret


@attrs.frozen
class module_stats:
    """One module in statistics()."""

    name: str
    state: int
    refcnt: int
    params: int
    symbols: int
    size: int = 0
    holders: tuple[str, ...] = ()


def statistics() -> list[module_stats]:
    """Loaded modules (last loaded first, as lsmod lists them) with state,
    reference count, parameters, symbols, size and holders."""
    return [module_stats(m.name, m.state, m.refcnt, len(m.params), len(m.syms), m.size,
                         tuple(m.holders))
            for m in reversed(list(modules.values())) if m.state != MODULE_STATE_UNFORMED]


def lsmod() -> str:
    """The table lsmod prints: Module, Size, Used by (count and holders)."""
    lines = [f"{'Module':<24} {'Size':>7}  Used by"]
    for s in statistics():
        state = {MODULE_STATE_COMING: " [loading]", MODULE_STATE_GOING: " [unloading]"}
        lines.append(f"{s.name:<24} {s.size:>7}  {s.refcnt} {','.join(s.holders)}".rstrip()
                     + state.get(s.state, ""))
    return "\n".join(lines) + "\n"
