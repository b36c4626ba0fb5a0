"""uscstd: the uscst iSCSI target daemon.

Boots the emulated kernel on this thread, loads the vdisk handlers and the
iSCSI target driver, and serves one target with one LUN until SIGINT or
SIGTERM. With no arguments it serves iqn.2026-11.org.uscst:default with
LUN 0 backed by a sparse 1 GiB file in the data directory, on
127.0.0.1:3260.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

DEFAULT_IQN = "iqn.2026-11.org.uscst:default"
DEFAULT_PORTAL = "127.0.0.1:3260"
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SIZE_RE = re.compile(r"^(\d+)([KMGTP]?)(i?B)?$", re.IGNORECASE)
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")


class UsageError(Exception):
    pass


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
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise UsageError(f"invalid portal {text!r} (use HOST:PORT or [IPv6]:PORT)")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise UsageError(f"invalid port in portal {text!r}")
    host = m.group(1)
    return host, port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uscstd",
        description="uscst iSCSI target daemon: SCST re-created in Python on a kernel-API "
                    "emulation layer.",
        epilog="Example: uscstd --portal 127.0.0.1:3260 --disk /srv/disk.img --size 10G")
    p.add_argument("--portal", action="append", metavar="HOST:PORT",
                   help=f"listen here (repeatable; [::1]:3260 for IPv6; default {DEFAULT_PORTAL})")
    p.add_argument("--disk", metavar="PATH", help="backing file (created sparse with --size if missing)")
    p.add_argument("--size", default="1G", help="size of a created backing file or nullio LUN (default 1G)")
    p.add_argument("--iqn", default=DEFAULT_IQN, help=f"target name (default {DEFAULT_IQN})")
    p.add_argument("--nullio", action="store_true", help="serve a LUN without data (vdisk_nullio)")
    p.add_argument("--blocksize", type=int, default=512, choices=(512, 4096), help="logical block size")
    p.add_argument("--data-dir", metavar="DIR", help="where the default disk lives "
                   "(default /var/lib/uscst as root, else ~/.local/share/uscst)")
    p.add_argument("--log-level", default="notice", choices=LOG_LEVELS,
                   help="kernel log messages up to this level reach stderr (default notice)")
    p.add_argument("--debug", action="store_true",
                   help="turn on the kshim debugging aids (lock, context and slab checks)")
    p.add_argument("--version", action="version", version="uscstd 0.1.0")
    return p


def resolve(args: argparse.Namespace) -> dict:
    if not _IQN_RE.match(args.iqn):
        raise UsageError(f"invalid target name {args.iqn!r} (expected iqn.YYYY-MM.domain:name)")
    size = parse_size(args.size)
    portals = [parse_portal(p) for p in (args.portal or [DEFAULT_PORTAL])]
    for host, _port in portals:
        if not (host.startswith("127.") or host in ("::1", "localhost", "0.0.0.0", "::")):
            pass   # any local address may be served; the tests use loopback only
    disk = None
    if not args.nullio:
        if args.disk:
            disk = os.path.abspath(args.disk)
        else:
            data_dir = os.path.abspath(args.data_dir or default_data_dir())
            try:
                os.makedirs(data_dir, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create data directory {data_dir}: {e.strerror}")
            disk = os.path.join(data_dir, "disk0.img")
        if os.path.isdir(disk):
            raise UsageError(f"--disk {disk} is a directory")
        parent = os.path.dirname(disk)
        if not os.path.exists(disk) and not os.path.isdir(parent):
            raise UsageError(f"directory of --disk {disk} does not exist")
    return dict(iqn=args.iqn, size=size, portals=portals, disk=disk, nullio=args.nullio,
                blocksize=args.blocksize, log_level=args.log_level, debug=args.debug)


def _url(host: str, port: int, iqn: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"iscsi://{h}:{port}/{iqn}/0"


def serve(cfg: dict) -> int:
    from kshim import engine, printk
    from kshim.debug import set_debug
    from kshim.err import errname
    from iscsi_scst.iscsi import iscsi_exit, iscsi_init, iscsi_template
    from iscsi_scst.target import iscsi_add_portal, iscsi_target_add
    from scst_core.main import scst_acg_add_lun, scst_find_device
    from vdisk.vdisk import vdisk_add_device, vdisk_exit, vdisk_init

    printk.set_console_loglevel(cfg["log_level"])
    set_debug(cfg["debug"])
    failure: list[str] = []

    def init() -> int:
        ret = vdisk_init()
        if ret == 0:
            ret = iscsi_init()
        if ret != 0:
            failure.append(f"module init failed: {errname(ret)}")
            return ret
        if cfg["nullio"]:
            params = {"size": str(cfg["size"]), "blocksize": str(cfg["blocksize"])}
            handler = "vdisk_nullio"
        else:
            params = {"filename": cfg["disk"], "blocksize": str(cfg["blocksize"])}
            if not os.path.exists(cfg["disk"]):
                params["size"] = str(cfg["size"])
            handler = "vdisk_fileio"
        ret = vdisk_add_device(handler, "disk0", params)
        if ret != 0:
            failure.append(f"cannot open backing store {cfg['disk'] or 'nullio'}: {errname(ret)}")
            return ret
        tgt = iscsi_target_add(iscsi_template, cfg["iqn"])
        if isinstance(tgt, int):
            failure.append(f"cannot add target {cfg['iqn']}: {errname(tgt)}")
            return tgt
        ret = scst_acg_add_lun(tgt.scst_tgt.default_acg, scst_find_device("disk0"), 0, False)
        if ret != 0:
            failure.append(f"cannot map LUN 0: {errname(ret)}")
            return ret
        for host, port in cfg["portals"]:
            p = iscsi_add_portal(host, port)
            if isinstance(p, int):
                why = "address already in use" if errname(p) == "-EADDRINUSE" else errname(p)
                failure.append(f"cannot listen on {host}:{port}: {why}")
                return p
        where = cfg["disk"] or f"nullio, {cfg['size']} bytes"
        print(f"uscstd: serving {cfg['iqn']} LUN 0 ({where})", flush=True)
        for host, port in cfg["portals"]:
            print(f"uscstd: ready at {_url(host, port, cfg['iqn'])}", flush=True)
        return 0

    def exit_fn() -> None:
        iscsi_exit()
        vdisk_exit()

    ret = engine.run(init, exit_fn)
    if failure:
        print(f"uscstd: {failure[0]}", file=sys.stderr)
        return 1
    if isinstance(ret, int) and ret < 0:
        print(f"uscstd: start-up failed: {errname(ret)}", file=sys.stderr)
        return 1
    print("uscstd: stopped", flush=True)
    return 0


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
