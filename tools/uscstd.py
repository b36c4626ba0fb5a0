"""uscstd: the uscst iSCSI target daemon.

Boots the emulated kernel on this thread (tools.boot: the modules scst,
scst_vdisk and iscsi_scst, then any --module), and serves until SIGINT or
SIGTERM. With no arguments it serves iqn.2026-11.org.uscst:default with LUN
0 backed by a sparse 1 GiB file in the data directory, on 127.0.0.1:3260.
With --config FILE it serves what the scst.conf-syntax file describes
instead; SIGHUP (or `uscstadmin config FILE`) re-applies the file live, as a
difference.

Management: the SCST sysfs tree lives in the emulated kernel; it is served
on a Unix control socket (--control, mode 0600; uscstadmin talks to it,
including insmod/rmmod/lsmod) and, with --fuse MOUNTPOINT, as a FUSE file
system. When started by systemd (Type=notify) it sends READY=1 once serving.
With --metrics HOST:PORT it serves Prometheus metrics (docs/observe.md);
`uscstadmin top` reads the same counters over the control socket.
Started with PYTHONTRACEMALLOC=N, its control op tracemalloc_dump writes a
tracemalloc snapshot of the daemon (tools/soak.py --tracemalloc); the op
gc_collect runs a full collection and says how much cyclic garbage it found.

The command line is the OPTIONS table: one row per option, so a new one is
one row (and, if it needs checking, a line in resolve()).
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import tracemalloc
from typing import Any, Callable, NoReturn

import trio

from iscsi_scst.config import ISCSI_NAME_RE, iscsi_parse_portal
from iscsi_scst.iscsi import iscsi_metrics
from kshim import engine, engine_ctl, fault_inject, fault_inject_debugfs
from kshim.engine_metrics import format_metrics, metrics_service
from kshim.err import EINVAL, errname
from kshim.proc import proc_create, remove_proc_entry
from scst_core.stats import scst_metrics
from scst_core.sysfs import scst_sysfs_schema
from . import boot, scst_conf

DEFAULT_IQN = "iqn.2026-11.org.uscst:default"
DEFAULT_PORTAL = "127.0.0.1:3260"
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SIZE_RE = re.compile(r"^(\d+)([KMGTP]?)(i?B)?$", re.IGNORECASE)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("uscstd: ...", exit 2)."""

    def error(self, message: str) -> "NoReturn":
        raise UsageError(f"{message} (see uscstd --help)")


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/uscst"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "uscst")


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid size {text!r} (use e.g. 512M, 1G, 10G)")
    n = int(m.group(1)) << (10 * " KMGTP".index(m.group(2).upper() or " "))
    if n < 4096:
        raise UsageError(f"size {text!r} is too small (minimum 4K)")
    return n


def parse_portal(text: str) -> tuple[str, int]:
    hp = iscsi_parse_portal(text)
    if isinstance(hp, str):
        raise UsageError(hp)
    return hp


# (flags, argparse keyword arguments): the whole command line
OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--portal",), dict(action="append", metavar="HOST:PORT",
                         help=f"listen here (repeatable; [::1]:3260 for IPv6; default "
                              f"{DEFAULT_PORTAL})")),
    (("--disk",), dict(metavar="PATH", help="backing file (created sparse with --size if missing)")),
    (("--size",), dict(default="1G",
                       help="size of a created backing file or nullio LUN (default 1G)")),
    (("--iqn",), dict(default=DEFAULT_IQN, help=f"target name (default {DEFAULT_IQN})")),
    (("--nullio",), dict(action="store_true", help="serve a LUN without data (vdisk_nullio)")),
    (("--blocksize",), dict(type=int, default=512, choices=(512, 4096),
                            help="logical block size")),
    (("--data-dir",), dict(metavar="DIR", help="where the default disk lives "
                           "(default /var/lib/uscst as root, else ~/.local/share/uscst)")),
    (("--log-level",), dict(default="notice", choices=LOG_LEVELS,
                            help="kernel log messages up to this level reach stderr "
                                 "(default notice)")),
    (("--debug",), dict(action="store_true",
                        help="turn on the kshim debugging aids (lock, context and slab checks)")),
    (("--config",), dict(metavar="FILE",
                         help="apply this scst.conf-syntax file at start (and again on SIGHUP) "
                              "instead of serving the default target")),
    (("--module",), dict(action="append", metavar="PATH_OR_NAME[:PARAM=VALUE,...]",
                         help="load this kernel-style module (a .py file or a module name) "
                              "after the target's own, before the config (repeatable)")),
    (("--fuse",), dict(metavar="MOUNTPOINT",
                       help="mount the management tree (/sys/kernel/scst_tgt) here with FUSE")),
    (("--control",), dict(metavar="PATH",
                          help="control socket for uscstadmin (default $XDG_RUNTIME_DIR/uscst.sock, "
                               "/run/uscst.sock as root)")),
    (("--fault",), dict(action="append", metavar="POINT:ATTR=VALUE,...",
                        help="inject faults from the first call (docs/fault-injection.md); "
                             "repeatable; $USCST_FAULTS adds more")),
    (("--metrics",), dict(metavar="HOST:PORT",
                          help="serve Prometheus metrics at http://HOST:PORT/metrics "
                               "(PORT alone: 127.0.0.1:PORT)")),
    (("--version",), dict(action="version", version="uscstd 0.1.0")),
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="uscstd",
        description="uscst iSCSI target daemon: SCST re-created in Python on a kernel-API "
                    "emulation layer.",
        epilog="Example: uscstd --portal 127.0.0.1:3260 --disk /srv/disk.img --size 10G")
    for flags, kw in OPTIONS:
        p.add_argument(*flags, **kw)
    return p


def _check_module_arg(text: str) -> str:
    target, params = boot.parse_module_arg(text)
    if not target:
        raise UsageError(f"--module {text!r}: no module named")
    if (target.endswith(".py") or os.sep in target) and not os.path.isfile(target):
        raise UsageError(f"--module {target}: no such file")
    bad = [p for p in params.split() if "=" not in p]
    if bad:
        raise UsageError(f"--module {text!r}: parameter {bad[0]!r} is not PARAM=VALUE")
    return text


def resolve(args: argparse.Namespace) -> dict:
    if not ISCSI_NAME_RE.match(args.iqn) or "/" in args.iqn:
        raise UsageError(f"invalid target name {args.iqn!r} (printable, no blanks or '/', "
                         f"at most 223 bytes; e.g. iqn.YYYY-MM.domain:name)")
    size = parse_size(args.size)
    portals = [parse_portal(p) for p in (args.portal or [DEFAULT_PORTAL])]
    modules = [_check_module_arg(m) for m in (args.module or [])]
    disk = None
    config_text = None
    config = None
    if args.config:
        config = os.path.abspath(args.config)
        try:
            with open(config, encoding="utf-8") as f:
                config_text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --config {args.config}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--config {args.config} is not UTF-8 text") from None
    if args.fuse and not os.path.isdir(args.fuse):
        raise UsageError(f"--fuse {args.fuse}: not a directory")
    if args.config:
        portals = [parse_portal(p) for p in (args.portal or [])]
    elif not args.nullio:
        if args.disk:
            disk = os.path.abspath(args.disk)
        else:
            data_dir = os.path.abspath(args.data_dir or default_data_dir())
            try:
                os.makedirs(data_dir, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create data directory {data_dir}: {e.strerror}") from None
            disk = os.path.join(data_dir, "disk0.img")
        if os.path.isdir(disk):
            raise UsageError(f"--disk {disk} is a directory")
        parent = os.path.dirname(disk)
        if not os.path.exists(disk) and not os.path.isdir(parent):
            raise UsageError(f"directory of --disk {disk} does not exist")
    import vdisk.blockio, vdisk.fileio  # noqa: E401,F401 (their injectable functions)
    faults = fault_inject.split_env_specs(os.environ.get("USCST_FAULTS", "")) + (args.fault or [])
    try:
        fault_inject.apply_fault_specs(faults, dry_run=True)
    except ValueError as e:
        raise UsageError(f"--fault: {e}") from None
    # Persistent reservations with APTPL live beside the data.
    state_dir = (args.data_dir or (os.path.dirname(disk) if disk else None)
                 or default_data_dir())
    return dict(iqn=args.iqn, size=size, portals=portals, disk=disk, nullio=args.nullio,
                pr_dir=os.path.join(os.path.abspath(state_dir), "pr"),
                blocksize=args.blocksize, log_level=args.log_level, debug=args.debug,
                config=config, config_text=config_text, fuse=args.fuse, modules=modules,
                faults=faults,
                control=os.path.abspath(args.control) if args.control else engine_ctl.default_control_path(),
                metrics=parse_portal(args.metrics if ":" in (args.metrics or ":")
                                     else f"127.0.0.1:{args.metrics}") if args.metrics else None)


def serve(cfg: dict) -> int:
    def say(msg: str) -> None:
        print(f"uscstd: {msg}", flush=True)

    def warn(msg: str) -> None:
        print(f"uscstd: {msg}", file=sys.stderr, flush=True)

    bcfg = boot.BootConfig(
        iqn=cfg["iqn"], portals=cfg["portals"], disk=cfg["disk"], nullio=cfg["nullio"],
        size=cfg["size"], blocksize=cfg["blocksize"], config_text=cfg["config_text"],
        config_filename=cfg["config"], pr_dir=cfg["pr_dir"], modules=cfg["modules"],
        debug=cfg["debug"], log_level=cfg["log_level"], report=say, warn=warn)

    # -- management services (trio side) ----------------------------------
    async def reload(force: bool = False) -> dict:
        path = cfg["config"]
        if not path:
            return {"ok": False, "error": "uscstd was started without --config", "errno": EINVAL}
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"cannot read {path}: {e}", "errno": EINVAL}
        return await engine_ctl.ctl_call(f"reload {path}",
                                         lambda: boot.apply_config(text, path, force))

    reload_send, reload_recv = trio.open_memory_channel(4)

    def reload_hook() -> None:        # softirq context, on the CPU thread: only queue
        try:
            reload_send.send_nowait(None)
        except trio.WouldBlock:
            pass

    async def reload_service() -> None:
        async for _ in reload_recv:
            r = await reload()
            if r["ok"]:
                say(f"SIGHUP: {cfg['config']}: {r['changes']} changes applied")
            else:
                warn(f"SIGHUP: {r['error']}")

    async def op_config_apply(req: dict) -> dict:
        text, filename = req.get("text"), req.get("filename", "<config>")
        if not isinstance(text, str) or not isinstance(filename, str):
            return {"ok": False, "error": "config_apply needs text and filename", "errno": EINVAL}
        force, dry = bool(req.get("force")), bool(req.get("dry_run"))
        return await engine_ctl.ctl_call("config_apply",
                                         lambda: boot.apply_config(text, filename, force, dry))

    async def op_config_write(req: dict) -> dict:
        return await engine_ctl.ctl_call("config_write", lambda: {
            "ok": True, "text": scst_conf.write_running(engine_ctl.SysfsTree())})

    async def op_reload(req: dict) -> dict:
        return await reload(bool(req.get("force")))

    async def op_schema(req: dict) -> dict:
        return await engine_ctl.ctl_call("schema", lambda: {"ok": True,
                                                            "schema": scst_sysfs_schema()})

    async def op_insmod(req: dict) -> dict:
        target, params = req.get("module"), req.get("params", [])
        if not isinstance(target, str) or not isinstance(params, list) or \
                not all(isinstance(p, str) and "=" in p for p in params):
            return {"ok": False, "error": "insmod needs a module and param=value strings",
                    "errno": EINVAL}
        try:
            name = boot.module_import(target)      # a host action: on the engine side
        except boot.ModuleLoadError as e:
            return {"ok": False, "error": str(e), "errno": -e.errno, "code": errname(e.errno)}
        r = await engine_ctl.ctl_call(f"insmod {name}",
                                      lambda: boot.insmod(name, " ".join(params)), "insmod")
        return {**r, "name": name}

    async def op_rmmod(req: dict) -> dict:
        name = req.get("module")
        if not isinstance(name, str):
            return {"ok": False, "error": "rmmod needs a module name", "errno": EINVAL}
        return await engine_ctl.ctl_call(f"rmmod {name}", lambda: boot.rmmod(name), "rmmod")

    async def op_lsmod(req: dict) -> dict:
        return await engine_ctl.ctl_call("lsmod", lambda: {"ok": True,
                                                           "modules": boot.lsmod_rows()})

    async def op_tracemalloc_dump(req: dict) -> dict:
        # For memory hunts (tools/soak.py --tracemalloc): uscstd started with
        # PYTHONTRACEMALLOC=N writes a tracemalloc snapshot of itself to path.
        path = req.get("path")
        if not isinstance(path, str) or not path:
            return {"ok": False, "error": "tracemalloc_dump needs a path", "errno": EINVAL}
        if not tracemalloc.is_tracing():
            return {"ok": False, "error": "not tracing: start uscstd with PYTHONTRACEMALLOC=N",
                    "errno": EINVAL}
        if req.get("collect"):
            gc.collect()
        try:
            tracemalloc.take_snapshot().dump(path)
        except OSError as e:
            return {"ok": False, "error": f"{path}: {e.strerror}", "errno": e.errno}
        current, peak = tracemalloc.get_traced_memory()
        return {"ok": True, "traced": current, "peak": peak, "gc_objects": len(gc.get_objects())}

    async def op_gc_collect(req: dict) -> dict:
        # For memory hunts: what a full collection finds is cyclic garbage
        # that reference counting could not free (decision 0005 makes
        # collections rare, so such garbage piles up between them).
        return {"ok": True, "collected": gc.collect(), "tracked": len(gc.get_objects())}

    ops = {"config_apply": op_config_apply, "config_write": op_config_write,
           "reload": op_reload, "schema": op_schema,
           "insmod": op_insmod, "rmmod": op_rmmod, "lsmod": op_lsmod,
           "tracemalloc_dump": op_tracemalloc_dump, "gc_collect": op_gc_collect}

    def control_ready() -> None:
        say(f"control socket {cfg['control']}")
        engine_ctl.sd_notify("READY=1\nSTATUS=serving")

    def control_failed(msg: str) -> None:
        warn(f"control socket: {msg}")
        engine_ctl.sd_notify("READY=1\nSTATUS=serving without a control socket")

    services = [engine_ctl.control_service(cfg["control"], ops, control_failed,
                                           on_ready=control_ready),
                reload_service]
    if cfg["fuse"]:
        services.append(engine_ctl.fuse_service(
            cfg["fuse"], on_error=warn,
            on_ready=lambda: say(f"management tree mounted at {cfg['fuse']}")))
    if cfg["metrics"]:
        services.append(_metrics_service(cfg["metrics"], warn))
    _proc_metrics()
    engine.reload_hook = reload_hook
    fault_inject_debugfs.debugfs_init()
    fault_inject.apply_fault_specs(cfg["faults"])      # before the first call
    ret = boot.run(bcfg, "trio", services=services)
    engine.reload_hook = None
    if boot.failures:
        print(f"uscstd: {boot.failures[0]}", file=sys.stderr)
        return 1
    if ret < 0:
        print(f"uscstd: start-up failed: {errname(ret)}", file=sys.stderr)
        return 1
    print("uscstd: stopped", flush=True)
    return 0


def _proc_metrics() -> None:
    """The same counters as text for the control socket's `proc metrics`
    (uscstadmin top reads them there, --metrics or not)."""
    remove_proc_entry("metrics")
    proc_create("metrics", lambda: format_metrics(scst_metrics() + iscsi_metrics()).decode())


def _metrics_service(where: tuple[str, int], warn: Callable[[str], None]) -> Any:
    """--metrics: the Prometheus endpoint over the SCST core's and the iSCSI
    driver's counters (an engine service, like the control socket)."""
    return metrics_service(where[0], where[1], [scst_metrics, iscsi_metrics], on_error=warn,
                           on_ready=lambda a: print(f"uscstd: metrics at http://{a}/metrics",
                                                    flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        cfg = resolve(args)
    except UsageError as e:
        print(f"uscstd: {e}", file=sys.stderr)
        return 2
    if cfg["disk"]:
        print(f"uscstd: data: {cfg['disk']}", flush=True)
    try:
        return serve(cfg)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
