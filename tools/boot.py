"""Boot the uscst target on an engine: load the kernel modules in
dependency order, apply a configuration (scst.conf text) or build the
default target, add the portals; unload in reverse at shutdown.

This is the one public boot call (BootConfig, target_init, target_exit,
run): uscstd is a command line over it, and the sim engine boots the same
way, so the module load order and the configuration are the same under
either engine.

Also the host side of module loading (what /sbin/modprobe and insmod do for
the kernel): module_import() imports a module's Python file or package and
hands it to kshim.module, which then runs its init in task context. Loading
a file is a host action, so it lives here and never in a kernel layer;
kshim.module.usermode_modprobe points at it for request_module.

Contexts: target_init, target_exit, insmod, rmmod, lsmod_rows and
apply_config run in task context (a kthread: they sleep in module inits and
management calls). module_import and run are host calls (run starts the
engine; module_import reads and executes a Python file).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from errno import ENOEXEC   # not in kshim.err: only the host side loads files
from pathlib import Path
from typing import Any, Callable

import attrs

import scst_core.pres as scst_pr
from iscsi_scst.iscsi import iscsi_template
from iscsi_scst.target import iscsi_add_portal, iscsi_target_add, portal_list, target_list
from kshim import engine_ctl, module, printk
from kshim.engine import run as engine_trio_run
from kshim.debug import set_debug
from kshim.err import EEXIST, EINVAL, ENOENT, errname
from kshim.printk import pr_err
from scst_core.main import scst_acg_add_lun, scst_find_device
from scst_core.sysfs import scst_sysfs_schema
from . import scst_conf
from vdisk.vdisk import vdisk_add_device

DEFAULT_PORTAL = ("127.0.0.1", 3260)
# The target's own modules, in load order, with the Python module that
# declares each one's init (its package is the module).
BUILTIN_MODULES = {"scst": "scst_core.main", "scst_vdisk": "vdisk.vdisk",
                   "iscsi_scst": "iscsi_scst.iscsi"}
# Python package under which module files loaded by path are imported, so
# their names never shadow an installed package.
EXT_PACKAGE = "uscst_ext"


@attrs.define
class BootConfig:
    """What to boot. With config_text, that configuration (scst.conf
    syntax) is applied and portals are added to it (127.0.0.1:3260 if it
    names none); without, the default target: iqn with LUN 0 on `disk` (a
    file, created sparse with `size` bytes if missing) or on vdisk_nullio
    when nullio is set."""

    iqn: str
    portals: list[tuple[str, int]] = attrs.field(factory=list)
    disk: str | None = None
    nullio: bool = False
    size: int = 1 << 30
    blocksize: int = 512
    config_text: str | None = None
    config_filename: str | None = None
    pr_dir: str | None = None
    # the disk is there already (its size is kept); None: run() looks at
    # the host's file (the sim engine's caller says so for its in-memory disk)
    disk_exists: bool | None = None
    # extra modules loaded after the target's own: "PATH_OR_NAME[:p=v,...]"
    modules: list[str] = attrs.field(factory=list)
    # parameters of the target's own modules: name -> "p=v p2=v2"
    module_params: dict[str, str] = attrs.field(factory=dict)
    debug: bool = False
    log_level: str = "notice"
    # where progress ("serving ...", "ready at ...") and warnings go
    report: Callable[[str], None] = lambda msg: None
    warn: Callable[[str], None] = lambda msg: None


class ModuleLoadError(Exception):
    """A module file or name that cannot be imported; errno is negative."""

    def __init__(self, msg: str, errno: int) -> None:
        super().__init__(msg)
        self.errno = errno


# Why the last target_init failed, one message each (read after run()).
failures: list[str] = []


# -- host side of module loading ---------------------------------------------------

def parse_module_arg(text: str) -> tuple[str, str]:
    """'PATH_OR_NAME[:p=v,p2=v2]' -> (PATH_OR_NAME, 'p=v p2=v2')."""
    cut = text.find(":", text.rfind("/") + 1)
    if cut < 0:
        return text, ""
    return text[:cut], " ".join(p for p in text[cut + 1:].split(",") if p)


def _source_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        try:
            n += len(p.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError):
            pass
    return n


def _import_file(path: Path) -> str:
    stem = path.stem
    if not stem.isidentifier():
        raise ModuleLoadError(f"{path}: module file name must be a Python identifier", -EINVAL)
    old = module.find_module(stem)
    if old is not None and not old.pymod.startswith(EXT_PACKAGE + "."):
        raise ModuleLoadError(f"{path}: {stem} is the name of a module of the target itself",
                              -EEXIST)
    if old is not None and old.state != module.MODULE_STATE_UNFORMED:
        return stem                    # live: load_module will say -EEXIST
    if old is not None:
        module.free_module(stem)       # unloaded: an edited copy registers afresh
    pyname = f"{EXT_PACKAGE}.{stem}"
    spec = importlib.util.spec_from_file_location(pyname, path)
    if spec is None or spec.loader is None:
        raise ModuleLoadError(f"{path}: not a Python module", -ENOEXEC)
    pymod = importlib.util.module_from_spec(spec)
    pymod.__dict__["__kshim_module_name__"] = stem
    sys.modules[pyname] = pymod
    try:
        spec.loader.exec_module(pymod)
    except Exception as e:          # the developer's file: report, never crash the daemon
        sys.modules.pop(pyname, None)
        module.free_module(stem)
        raise ModuleLoadError(f"{path}: cannot import: {type(e).__name__}: {e}", -ENOEXEC) from e
    m = module.find_module(stem)
    if m is None:
        raise ModuleLoadError(f"{path}: declares nothing for kshim.module (no module_init)",
                              -ENOEXEC)
    m.size = _source_lines([path])
    return stem


def module_import(target: str) -> str:
    """Import a module given as a file path (*.py) or a name (a built-in
    module, an alias, or an importable Python module) and return its
    kernel name. Raises ModuleLoadError."""
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise ModuleLoadError(f"{target}: no such file", -ENOENT)
        return _import_file(path)
    pyname = BUILTIN_MODULES.get(target) or module.module_aliases.get(target, target)
    m = module.find_module(target)
    if m is None:
        try:
            importlib.import_module(pyname)
        except Exception as e:      # an unknown name or a broken module: report it
            raise ModuleLoadError(f"{target}: cannot import {pyname}: {type(e).__name__}: {e}",
                                  -ENOENT) from e
        m = module.find_module(target) or module.find_module_of(pyname)
        if m is None:
            raise ModuleLoadError(f"{target}: {pyname} declares no module", -ENOEXEC)
    if not m.size:
        pkg = sys.modules.get(m.pymod)
        where = Path(getattr(pkg, "__file__", "") or "")
        files = sorted(where.parent.rglob("*.py")) if where.name == "__init__.py" else [where]
        m.size = _source_lines([f for f in files if f.is_file()])
    return m.name


def _usermode_modprobe(name: str) -> int:
    """kshim.module's request_module helper: import, 0 or -errno."""
    try:
        module_import(name)
    except ModuleLoadError as e:
        pr_err(f"modprobe: {e}")
        return e.errno
    return 0


module.usermode_modprobe = _usermode_modprobe


# -- module management in task context ---------------------------------------------------

def _logged(fn: Callable[[], int]) -> dict:
    """Run fn(); a control-socket style reply carrying the error messages it logged."""
    mark = engine_ctl._log_mark()
    ret = fn()
    if ret == 0:
        return {"ok": True}
    msgs = engine_ctl._log_since(mark)
    why = msgs[-1] if msgs else ""
    return {"ok": False, "errno": -ret, "code": errname(ret), "log": msgs,
            "error": why if errname(ret) in why else f"{errname(ret)}: {why}".rstrip(": ")}


def insmod(name: str, args: str = "") -> dict:
    """load_module(name, args) (imported already by module_import)."""
    def load() -> int:
        ret = module.load_module(name, args)
        if ret == -EEXIST:
            pr_err(f"insmod: {name}: module is already loaded")
        return ret
    return _logged(load)


def rmmod(name: str) -> dict:
    """delete_module(name): refused with -EBUSY naming the holders."""
    def unload() -> int:
        ret = module.delete_module(name)
        if ret == -ENOENT:
            pr_err(f"rmmod: {name}: module is not loaded")
        return ret
    return _logged(unload)


def lsmod_rows() -> list[dict]:
    """Live modules, last loaded first: name, size, refcount, users."""
    return [{"name": s.name, "size": s.size, "refcount": s.refcnt, "users": list(s.holders),
             "state": {module.MODULE_STATE_COMING: "coming", module.MODULE_STATE_GOING: "going"
                       }.get(s.state, "live")}
            for s in module.statistics()]


def apply_config(text: str, filename: str, force: bool = False, dry_run: bool = False) -> dict:
    """Apply an scst.conf text as a difference; a control-socket style reply."""
    mark = engine_ctl._log_mark()

    def why(ret: int) -> str:
        msgs = engine_ctl._log_since(mark)
        detail = next((m for m in reversed(msgs) if "failed:" not in m), "")
        return detail or errname(ret)
    try:
        r = scst_conf.apply(text, filename, engine_ctl.SysfsTree(), scst_sysfs_schema(),
                            force=force, dry_run=dry_run, errmsg=why)
    except scst_conf.ConfigError as e:
        return {"ok": False, "error": str(e), "errno": EINVAL, "changes": 0, "applied": 0,
                "actions": []}
    out = {"ok": not r.error, "changes": r.changes, "applied": r.applied,
           "actions": r.actions, "dry_run": dry_run}
    if r.error:
        out["error"] = f"{filename}: {r.error} (after {r.applied} of {r.changes} changes were made)"
        out["errno"] = EINVAL
    return out


# -- boot and shutdown -------------------------------------------------------------------

def target_url(host: str, port: int, iqn: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"iscsi://{h}:{port}/{iqn}/0"


def _add_portals(portals: list[tuple[str, int]], ignore_exist: bool) -> int:
    for host, port in portals:
        p = iscsi_add_portal(host, port)
        if isinstance(p, int) and not (ignore_exist and errname(p) == "-EEXIST"):
            why = "address already in use" if errname(p) == "-EADDRINUSE" else errname(p)
            failures.append(f"cannot listen on {host}:{port}: {why}")
            return p
    return 0


def _load_modules(cfg: BootConfig) -> int:
    for name in BUILTIN_MODULES:
        module_import(name)
        ret = module.load_module(name, cfg.module_params.get(name, ""))
        if ret != 0:
            failures.append(f"module init failed: {name}: {errname(ret)}")
            return ret
    for spec in cfg.modules:
        target, args = parse_module_arg(spec)
        try:
            name = module_import(target)
        except ModuleLoadError as e:
            failures.append(f"--module {e}")
            return e.errno
        ret = module.load_module(name, args)
        if ret != 0:
            failures.append(f"--module {target}: module {name} init failed: {errname(ret)}")
            return ret
        cfg.report(f"module {name} loaded")
    return 0


def _default_target(cfg: BootConfig) -> int:
    if cfg.nullio:
        params = {"size": str(cfg.size), "blocksize": str(cfg.blocksize)}
        handler = "vdisk_nullio"
    else:
        params = {"filename": cfg.disk or "", "blocksize": str(cfg.blocksize)}
        if not cfg.disk_exists:
            params["size"] = str(cfg.size)
        handler = "vdisk_fileio"
    ret = vdisk_add_device(handler, "disk0", params)
    if ret != 0:
        failures.append(f"cannot open backing store {cfg.disk or 'nullio'}: {errname(ret)}")
        return ret
    tgt = iscsi_target_add(iscsi_template, cfg.iqn)
    if isinstance(tgt, int):
        failures.append(f"cannot add target {cfg.iqn}: {errname(tgt)}")
        return tgt
    ret = scst_acg_add_lun(tgt.scst_tgt.default_acg, scst_find_device("disk0"), 0, False)
    if ret != 0:
        failures.append(f"cannot map LUN 0: {errname(ret)}")
        return ret
    return _add_portals(cfg.portals or [DEFAULT_PORTAL], False)


def _report_ready(cfg: BootConfig) -> None:
    enabled = [t.name for t in target_list if t.enabled]
    for p in portal_list:
        for name in enabled:
            cfg.report(f"ready at {target_url(p.host, p.port, name)}")
        if not enabled:
            h = f"[{p.host}]" if ":" in p.host else p.host
            cfg.report(f"ready at iscsi://{h}:{p.port}/ (no target enabled)")


def target_init(cfg: BootConfig) -> int:
    """Load scst, scst_vdisk, iscsi_scst and cfg.modules in that order, then
    apply cfg.config_text (or build the default target) and add the
    portals. 0, or the first -errno with its reason in `failures`; on an
    error what was loaded is unloaded again (the engine runs no exit after a
    failed init). Task context."""
    failures.clear()
    if cfg.pr_dir is not None:
        scst_pr.scst_pr_dir = cfg.pr_dir
    ret = _load_modules(cfg)
    if ret == 0:
        ret = _configure(cfg)
    if ret != 0:
        target_exit()
    return ret


def _configure(cfg: BootConfig) -> int:
    if cfg.config_text is not None:
        filename = cfg.config_filename or "<config>"
        r = apply_config(cfg.config_text, filename)
        if not r["ok"]:
            failures.append(r["error"])
            return -EINVAL
        cfg.report(f"config {filename}: {r['changes']} changes applied")
        ret = _add_portals(cfg.portals, True)
        if ret == 0 and not portal_list:
            ret = _add_portals([DEFAULT_PORTAL], True)
        if ret == 0:
            _report_ready(cfg)
        return ret
    ret = _default_target(cfg)
    if ret != 0:
        return ret
    where = cfg.disk if not cfg.nullio else f"nullio, {cfg.size} bytes"
    cfg.report(f"serving {cfg.iqn} LUN 0 ({where})")
    _report_ready(cfg)
    return 0


def target_exit() -> None:
    """Unload every live module, last loaded first, as a shutdown does:
    forced (each exit function tears down its own objects: iscsi_scst
    logs sessions out and removes its targets, scst_vdisk its devices).
    Task context."""
    for s in module.statistics():
        if s.state == module.MODULE_STATE_LIVE:
            module.delete_module(s.name, module.O_TRUNC)


def _run_sim(cfg: BootConfig, sim: Any, drive: Callable[[Any], None] | None = None) -> int:
    """Boot on a kshim.engine_sim.Simulation, run drive(sim) (the
    scenario: it advances virtual time itself), unload, stop the sim."""
    ret = sim.boot(lambda: target_init(cfg))
    try:
        if ret == 0 and drive is not None:
            drive(sim)
    finally:
        sim.shutdown(target_exit if ret == 0 else None)
    return ret


def run(cfg: BootConfig, engine: str = "trio", **kw: Any) -> int:
    """Boot on the chosen engine, serve until shutdown, unload; return
    target_init's result (0 or -errno; see `failures`).
    engine "trio": kw go to kshim.engine.run (services, handle_signals);
    it serves until SIGTERM/SIGINT or engine.request_shutdown().
    engine "sim": kw are sim (a kshim.engine_sim.Simulation, made by the
    caller with its seed) and drive (a function of the sim run between
    boot and shutdown)."""
    printk.set_console_loglevel(cfg.log_level)
    set_debug(cfg.debug)
    if cfg.disk is not None and cfg.disk_exists is None:
        cfg = attrs.evolve(cfg, disk_exists=os.path.exists(cfg.disk))
    if engine == "sim":
        return _run_sim(cfg, **kw)
    if engine != "trio":
        raise ValueError(f"unknown engine {engine!r} (trio or sim)")
    if cfg.pr_dir is not None:
        try:
            os.makedirs(cfg.pr_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            cfg.warn(f"persistent reservations will not survive a restart: cannot create "
                     f"{cfg.pr_dir}: {e.strerror}")
            cfg = attrs.evolve(cfg, pr_dir=None)
    ret = engine_trio_run(lambda: target_init(cfg), target_exit, **kw)
    return ret if isinstance(ret, int) else -EINVAL
