"""uscstd: the uscst iSCSI target daemon.

Boots the emulated kernel on this thread, loads the vdisk handlers and the
iSCSI target driver, and serves until SIGINT or SIGTERM. With no arguments
it serves iqn.2026-11.org.uscst:default with LUN 0 backed by a sparse 1 GiB
file in the data directory, on 127.0.0.1:3260. With --config FILE it serves
what the scst.conf-syntax file describes instead; SIGHUP (or `uscstadmin
config FILE`) re-applies the file live, as a difference.

Management: the SCST sysfs tree lives in the emulated kernel; it is served
on a Unix control socket (--control, mode 0600; uscstadmin talks to it) and,
with --fuse MOUNTPOINT, as a FUSE file system. When started by systemd
(Type=notify) it sends READY=1 once serving.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

DEFAULT_IQN = "iqn.2026-11.org.uscst:default"
DEFAULT_PORTAL = "127.0.0.1:3260"
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SIZE_RE = re.compile(r"^(\d+)([KMGTP]?)(i?B)?$", re.IGNORECASE)
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")


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
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise UsageError(f"invalid portal {text!r} (use HOST:PORT or [IPv6]:PORT)")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise UsageError(f"invalid port in portal {text!r}")
    host = m.group(1)
    return host, port


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    p.add_argument("--config", metavar="FILE",
                   help="apply this scst.conf-syntax file at start (and again on SIGHUP) "
                        "instead of serving the default target")
    p.add_argument("--fuse", metavar="MOUNTPOINT",
                   help="mount the management tree (/sys/kernel/scst_tgt) here with FUSE")
    p.add_argument("--control", metavar="PATH",
                   help="control socket for uscstadmin (default $XDG_RUNTIME_DIR/uscst.sock, "
                        "/run/uscst.sock as root)")
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
    config_text = None
    config = None
    if args.config:
        config = os.path.abspath(args.config)
        try:
            with open(config, encoding="utf-8") as f:
                config_text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --config {args.config}: {e.strerror}")
        except UnicodeDecodeError:
            raise UsageError(f"--config {args.config} is not UTF-8 text")
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
                raise UsageError(f"cannot create data directory {data_dir}: {e.strerror}")
            disk = os.path.join(data_dir, "disk0.img")
        if os.path.isdir(disk):
            raise UsageError(f"--disk {disk} is a directory")
        parent = os.path.dirname(disk)
        if not os.path.exists(disk) and not os.path.isdir(parent):
            raise UsageError(f"directory of --disk {disk} does not exist")
    from kshim.engine_ctl import default_control_path
    # Persistent reservations with APTPL live beside the data.
    state_dir = (args.data_dir or (os.path.dirname(disk) if disk else None)
                 or default_data_dir())
    return dict(iqn=args.iqn, size=size, portals=portals, disk=disk, nullio=args.nullio,
                pr_dir=os.path.join(os.path.abspath(state_dir), "pr"),
                blocksize=args.blocksize, log_level=args.log_level, debug=args.debug,
                config=config, config_text=config_text, fuse=args.fuse,
                control=os.path.abspath(args.control) if args.control else default_control_path())


# -- driver management glue -------------------------------------------------
# What vdisk and iscsi_scst add to the management tree (SCST keeps these in
# scst_vdisk.c's attribute tables and iscsi-scst's config.c). They live
# here until vdisk/ and iscsi_scst/ carry them; everything below runs in
# task context (sysfs callbacks) and touches only kernel-side objects.

_VDISK_BOOL = {"read_only": "rd_only", "nv_cache": "nv_cache", "write_through": "wt_flag",
               "o_direct": "o_direct", "o_dsync": "o_dsync", "removable": "removable",
               "rotational": "rotational",
               "thin_provisioned": "thin_provisioned"}
_VDISK_STR_LIVE = ("t10_dev_id", "usn", "t10_vend_id", "vend_specific_id", "prod_id",
                   "prod_rev_lvl")
_vdisk_defaults: dict = {}


def _vdisk_default(dev) -> object:
    """The scst_vdisk_dev the same name would get with no parameters."""
    from vdisk.vdisk import vdisk_alloc_dev
    key = (dev.handler.name, dev.virt_name)
    d = _vdisk_defaults.get(key)
    if d is None:
        params = {} if dev.handler.name == "vdisk_nullio" else {"filename": "-"}
        d = vdisk_alloc_dev(dev.handler.name, dev.virt_name, params)[0]
        _vdisk_defaults[key] = d
    return d


def register_vdisk_sysfs() -> None:
    from kshim.err import EINVAL
    from kshim.fs import vfs_getsize
    from kshim.printk import pr_err
    from kshim.sysfs import __ATTR_RO, __ATTR_RW
    from scst_core.sysfs import (scst_attr_show_key, scst_devt_sysfs, scst_register_devt_sysfs)
    from scst_core.ua import scst_capacity_data_changed
    from vdisk.vdisk import VDISK_SANITIZE_RATE, VDISK_SANITIZE_RATE_MAX, vdisk_parse_size

    def vd(kobj):
        return kobj.private.dh_priv

    def show_bool(kobj, a):
        v = vd(kobj)
        val = getattr(v, _VDISK_BOOL[a.name])
        return scst_attr_show_key(int(val), val != getattr(_vdisk_default(kobj.private), _VDISK_BOOL[a.name]))

    def show_str(kobj, a):
        v = vd(kobj)
        val = getattr(v, a.name)
        return scst_attr_show_key(val, val != getattr(_vdisk_default(kobj.private), a.name))

    def store_str(kobj, a, buf):
        text = buf.strip()
        limit = {"t10_dev_id": 24, "usn": 252, "t10_vend_id": 8, "vend_specific_id": 128,
                 "prod_id": 16, "prod_rev_lvl": 4}[a.name]
        if len(text.encode()) > limit or not text.isascii() or not text:
            pr_err(f"vdisk: {kobj.name}: {a.name} '{text}' must be 1..{limit} ASCII characters")
            return -EINVAL
        setattr(vd(kobj), a.name, text)
        return len(buf)

    def show_sanitize_rate(kobj, a):
        v = vd(kobj)
        return scst_attr_show_key(v.sanitize_rate, v.sanitize_rate != VDISK_SANITIZE_RATE)

    def store_sanitize_rate(kobj, a, buf):
        text = buf.strip()
        rate = int(text) if text.isdigit() else 0
        if not 1 <= rate <= VDISK_SANITIZE_RATE_MAX:
            pr_err(f"vdisk: {kobj.name}: sanitize_rate '{text}' must be 1..{VDISK_SANITIZE_RATE_MAX} "
                   f"(MiB/s)")
            return -EINVAL
        vd(kobj).sanitize_rate = rate       # paces the next sanitize operation
        return len(buf)

    def show_filename(kobj, a):
        v = vd(kobj)
        return scst_attr_show_key(v.filename, not v.nullio)

    def show_blocksize(kobj, a):
        v = vd(kobj)
        return scst_attr_show_key(v.block_size, v.block_size != 512)

    def show_physical_blocksize(kobj, a):
        v = vd(kobj)
        return scst_attr_show_key(v.block_size << v.lbppbe, v.lbppbe != 0)

    def show_size(kobj, a):
        v = vd(kobj)
        return scst_attr_show_key(v.file_size, v.nullio and v.file_size != 1 << 40)

    def show_size_mb(kobj, a):
        return f"{vd(kobj).file_size >> 20}\n"

    def store_size(kobj, a, buf):
        v = vd(kobj)
        if not v.nullio:
            pr_err(f"vdisk: {kobj.name}: resize the file and write 1 to resync_size instead")
            return -EINVAL
        n = vdisk_parse_size(buf.strip())
        if n < v.block_size:
            pr_err(f"vdisk: {kobj.name}: bad size '{buf.strip()}'")
            return -EINVAL
        if n != v.file_size:
            v.file_size = n
            v.nblocks = n >> v.block_shift
            scst_capacity_data_changed(kobj.private)
        return len(buf)

    def resync_size(dev) -> int:
        v = dev.dh_priv
        if v.nullio or v.file is None:
            return 0
        n = vfs_getsize(v.file)
        if n < 0:
            return n
        if n == v.file_size:
            return 0
        v.file_size = n
        v.nblocks = n >> v.block_shift
        return 1

    common = [__ATTR_RO("blocksize", show_blocksize),
              __ATTR_RO("physical_blocksize", show_physical_blocksize),
              __ATTR_RO("size_mb", show_size_mb)]
    common += [__ATTR_RO(n, show_bool) for n in _VDISK_BOOL]
    common += [__ATTR_RW(n, show_str, store_str) for n in _VDISK_STR_LIVE]
    common += [__ATTR_RW("sanitize_rate", show_sanitize_rate, store_sanitize_rate)]
    fileio = tuple(common + [__ATTR_RO("filename", show_filename), __ATTR_RO("size", show_size)])
    nullio = tuple(common + [__ATTR_RW("size", show_size, store_size)])
    scst_register_devt_sysfs("vdisk_fileio", scst_devt_sysfs(
        dev_attrs=fileio, dev_live_attrs=_VDISK_STR_LIVE + ("sanitize_rate",),
        dev_create_only_attrs=("size", "size_mb"),
        resync_size=resync_size))
    # vdisk_blockio: fileio's attributes but o_direct (always direct)
    blockio = tuple(a for a in fileio if a.name != "o_direct")
    scst_register_devt_sysfs("vdisk_blockio", scst_devt_sysfs(
        dev_attrs=blockio, dev_live_attrs=_VDISK_STR_LIVE + ("sanitize_rate",),
        dev_create_only_attrs=("size", "size_mb"),
        resync_size=resync_size))
    scst_register_devt_sysfs("vdisk_nullio", scst_devt_sysfs(
        dev_attrs=nullio, dev_live_attrs=_VDISK_STR_LIVE + ("size", "sanitize_rate")))


# iSCSI negotiation keys a target carries: name -> (iscsi_tgt_params field, kind)
_ISCSI_TGT_KEYS = {
    "InitialR2T": ("initial_r2t", "bool"), "ImmediateData": ("immediate_data", "bool"),
    "MaxRecvDataSegmentLength": ("max_recv_data_length", (512, (1 << 24) - 1)),
    "MaxXmitDataSegmentLength": ("max_xmit_data_length", (512, (1 << 24) - 1)),
    "MaxBurstLength": ("max_burst_length", (512, (1 << 24) - 1)),
    "FirstBurstLength": ("first_burst_length", (512, (1 << 24) - 1)),
    "MaxOutstandingR2T": ("max_outstanding_r2t", (1, 65535)),
    "MaxConnections": ("max_connections", (1, 8)),
    "HeaderDigest": ("header_digest", "digest"), "DataDigest": ("data_digest", "digest"),
    "QueuedCommands": ("queued_cmnds", (1, 2048)), "RspTimeout": ("rsp_timeout", (1, 65535)),
    "NopInInterval": ("nop_in_interval", (0, 65535)), "NopInTimeout": ("nop_in_timeout", (1, 65535)),
}
# Values of the optional (multi-valued) attributes: driver's under None,
# a target's under its name. IncomingUser/OutgoingUser also become the
# CHAP users the login checks (apply_chap).
iscsi_attr_values: dict = {}
iscsi_driver_state = {"enabled": True}


def _iscsi_fmt(kind, v) -> str:
    if kind == "bool":
        return "Yes" if v else "No"
    if kind == "digest":
        return ",".join(v)
    return str(v)


def register_iscsi_sysfs() -> None:
    from iscsi_scst import target as iscsi_target_mod
    from iscsi_scst.iscsi import iscsi_template
    from iscsi_scst.target import (iscsi_add_portal, iscsi_del_portal, iscsi_target_add,
                                   iscsi_target_del, portal_list, target_list)
    from iscsi_scst.nagle import iscsi_nagle_sess_attrs, iscsi_nagle_tgt_attrs
    from iscsi_scst.usr.chap import chap_credentials_from_attrs
    from iscsi_scst.usr.param import iscsi_tgt_params
    from kshim.err import EEXIST, EINVAL, ENOENT
    from kshim.printk import pr_err
    from kshim.sysfs import __ATTR_RO, __ATTR_RW, module_param_named
    from scst_core.sysfs import scst_attr_show_key, scst_register_tgtt_sysfs, scst_tgtt_sysfs
    defaults = iscsi_tgt_params()

    def itgt(tgt):
        return tgt.tgt_priv

    def add_target(name: str, params: dict) -> int:
        if not _IQN_RE.match(name):
            pr_err(f"iscsi: bad target name '{name}' (expected iqn.YYYY-MM.domain:name)")
            return -EINVAL
        t = iscsi_target_add(iscsi_template, name)
        if isinstance(t, int):
            if t == -EEXIST:
                pr_err(f"iscsi: target {name} already exists")
            return t
        # SCST creates targets disabled: they are enabled once configured.
        t.enabled = False
        t.scst_tgt.enabled = False
        return 0

    def del_target(name: str) -> int:
        t = next((x for x in target_list if x.name == name), None)
        if t is None:
            return -ENOENT
        iscsi_target_del(t)
        iscsi_attr_values.pop(name, None)
        return 0

    def enable_target(tgt, on: bool) -> int:
        itgt(tgt).enabled = on
        tgt.enabled = on
        return 0

    def key_show(kobj, a):
        field, kind = _ISCSI_TGT_KEYS[a.name]
        v = getattr(itgt(kobj.private).tgt_params, field)
        return scst_attr_show_key(_iscsi_fmt(kind, v), v != getattr(defaults, field))

    def key_store(kobj, a, buf):
        field, kind = _ISCSI_TGT_KEYS[a.name]
        text = buf.strip()
        if kind == "bool":
            if text.lower() not in ("yes", "no", "1", "0"):
                pr_err(f"iscsi: {a.name} takes Yes or No, not '{text}'")
                return -EINVAL
            val = text.lower() in ("yes", "1")
        elif kind == "digest":
            vals = tuple(x.strip() for x in text.split(",") if x.strip())
            if not vals or any(x not in ("None", "CRC32C") for x in vals):
                pr_err(f"iscsi: {a.name} takes None, CRC32C or a list of both, not '{text}'")
                return -EINVAL
            val = vals
        else:
            lo, hi = kind
            if not text.isdigit() or not lo <= int(text) <= hi:
                pr_err(f"iscsi: {a.name} must be a number in {lo}..{hi}, not '{text}'")
                return -EINVAL
            val = int(text)
        setattr(itgt(kobj.private).tgt_params, field, val)
        return len(buf)

    def multi_show(owner):
        def show(kobj, a):
            key = owner(kobj)
            if a.name == "portal" and key is None:
                vals = [f"[{p.host}]:{p.port}" if ":" in p.host else f"{p.host}:{p.port}"
                        for p in portal_list]
            else:
                vals = iscsi_attr_values.get(key, {}).get(a.name, [])
            return "".join(f"{v}\n" for v in vals) + ("[key]\n" if vals else "")
        return show

    def add_attr(key, name: str, value: str) -> int:
        if not value:
            pr_err(f"iscsi: {name} needs a value")
            return -EINVAL
        if name in ("IncomingUser", "OutgoingUser") and len(value.split()) != 2:
            pr_err(f"iscsi: {name} takes 'user secret'")    # never echo a secret
            return -EINVAL
        if name == "portal":
            try:
                host, port = parse_portal(value)
            except UsageError as e:
                pr_err(f"iscsi: {e}")
                return -EINVAL
            p = iscsi_add_portal(host, port)
            return p if isinstance(p, int) else 0
        vals = iscsi_attr_values.setdefault(key, {}).setdefault(name, [])
        if name == "OutgoingUser" and vals:
            pr_err(f"iscsi: only one OutgoingUser; delete '{vals[0]}' first")
            return -EEXIST
        if value in vals:
            return -EEXIST
        vals.append(value)
        if name in ("IncomingUser", "OutgoingUser"):
            ret = apply_chap(key)
            if ret != 0:
                vals.remove(value)
            return ret
        if name == "allowed_portal":
            apply_allowed_portals(key)
        return 0

    def apply_allowed_portals(key) -> None:
        t = next((x for x in target_list if x.name == key), None)
        if t is not None:
            t.allowed_portals = tuple(iscsi_attr_values.get(key, {}).get("allowed_portal", []))

    def apply_chap(key) -> int:
        """Make the CHAP users of a target (key: its name) or of discovery
        (key None) take effect for the next login."""
        vals = iscsi_attr_values.get(key, {})
        creds = chap_credentials_from_attrs(vals.get("IncomingUser", []),
                                            vals.get("OutgoingUser", []))
        if isinstance(creds, str):
            pr_err(f"iscsi: {creds}")
            return -EINVAL
        if not creds.incoming and creds.outgoing is None:
            creds = None
        if key is None:
            iscsi_target_mod.iscsi_discovery_chap = creds
        else:
            t = next((x for x in target_list if x.name == key), None)
            if t is not None:
                t.chap = creds
        return 0

    def del_attr(key, name: str, value: str) -> int:
        if name == "portal":
            try:
                host, port = parse_portal(value)
            except UsageError:
                return -EINVAL
            p = next((p for p in portal_list if p.host == host and p.port == port), None)
            return iscsi_del_portal(p) if p is not None else -ENOENT
        vals = iscsi_attr_values.get(key, {}).get(name, [])
        if value not in vals:
            pr_err(f"iscsi: {name} '{value}' not set")
            return -ENOENT
        vals.remove(value)
        if name in ("IncomingUser", "OutgoingUser"):
            return apply_chap(key)
        if name == "allowed_portal":
            apply_allowed_portals(key)
        return 0

    def drv_enabled_store(kobj, a, buf):
        t = buf.strip()
        if t not in ("0", "1"):
            return -EINVAL
        iscsi_driver_state["enabled"] = t == "1"
        return len(buf)

    tgt_owner = lambda kobj: kobj.private.tgt_name   # noqa: E731
    tgt_attrs = [__ATTR_RW(n, key_show, key_store) for n in _ISCSI_TGT_KEYS]
    tgt_attrs += [__ATTR_RO("tid", lambda k, a: f"{itgt(k.private).tid}\n")]
    tgt_attrs += iscsi_nagle_tgt_attrs()
    tgt_attrs += [__ATTR_RO(n, multi_show(tgt_owner))
                  for n in ("IncomingUser", "OutgoingUser", "allowed_portal")]
    tgtt_attrs = [__ATTR_RW("enabled", lambda k, a: scst_attr_show_key(
        int(iscsi_driver_state["enabled"]), True), drv_enabled_store),
        __ATTR_RO("version", lambda k, a: "0.1.0-uscst\n")]
    tgtt_attrs += [__ATTR_RO(n, multi_show(lambda k: None))
                   for n in ("IncomingUser", "OutgoingUser", "portal")]
    scst_register_tgtt_sysfs(iscsi_template.name, scst_tgtt_sysfs(
        add_target=add_target, del_target=del_target, enable_target=enable_target,
        is_target_enabled=lambda tgt: itgt(tgt).enabled,
        tgtt_attrs=tuple(tgtt_attrs), tgt_attrs=tuple(tgt_attrs),
        sess_attrs=iscsi_nagle_sess_attrs(),
        tgtt_optional_attributes=("IncomingUser", "OutgoingUser", "portal"),
        tgt_optional_attributes=("IncomingUser", "OutgoingUser", "allowed_portal"),
        add_attribute=lambda n, v: add_attr(None, n, v),
        del_attribute=lambda n, v: del_attr(None, n, v),
        add_target_attribute=lambda t, n, v: add_attr(t.tgt_name, n, v),
        del_target_attribute=lambda t, n, v: del_attr(t.tgt_name, n, v)))
    from iscsi_scst import conn as iscsi_conn_mod, session as iscsi_session_mod
    module_param_named("iscsi_scst", "iscsi_max_conns", iscsi_target_mod, "iscsi_max_conns", int)
    module_param_named("iscsi_scst", "iscsi_max_sessions", iscsi_session_mod,
                       "iscsi_max_sessions", int)
    module_param_named("iscsi_scst", "iscsi_login_timeout", iscsi_conn_mod,
                       "iscsi_login_timeout", int)


def mgmt_init() -> int:
    """Create the management tree and register the drivers' parts of it
    (task context, after vdisk_init and iscsi_init)."""
    from scst_core.sysfs import scst_sysfs_init
    ret = scst_sysfs_init()
    if ret != 0:
        return ret
    register_vdisk_sysfs()
    register_iscsi_sysfs()
    return 0


def mgmt_exit() -> None:
    from scst_core.sysfs import scst_sysfs_exit
    scst_sysfs_exit()
    _vdisk_defaults.clear()
    iscsi_attr_values.clear()


def _url(host: str, port: int, iqn: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"iscsi://{h}:{port}/{iqn}/0"


def serve(cfg: dict) -> int:
    import scst_core.pres as scst_pr
    from kshim import engine, engine_ctl, printk
    from kshim.debug import set_debug
    from kshim.err import EINVAL, errname
    from iscsi_scst.iscsi import iscsi_exit, iscsi_init, iscsi_template
    from iscsi_scst.target import iscsi_add_portal, iscsi_target_add, portal_list, target_list
    from scst_core.main import scst_acg_add_lun, scst_find_device
    from tools import scst_conf
    from vdisk.vdisk import vdisk_add_device, vdisk_exit, vdisk_init

    printk.set_console_loglevel(cfg["log_level"])
    set_debug(cfg["debug"])
    failure: list[str] = []

    def apply_text(text: str, filename: str, force: bool = False, dry_run: bool = False) -> dict:
        """Apply a config in task context; a control-socket style reply."""
        from scst_core.sysfs import scst_sysfs_schema
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
            out["error"] = (f"{filename}: {r.error} (after {r.applied} of {r.changes} "
                            f"changes were made)")
            out["errno"] = EINVAL
        return out

    def print_ready() -> None:
        enabled = [t.name for t in target_list if t.enabled]
        for p in portal_list:
            for name in enabled:
                print(f"uscstd: ready at {_url(p.host, p.port, name)}", flush=True)
            if not enabled:
                h = f"[{p.host}]" if ":" in p.host else p.host
                print(f"uscstd: ready at iscsi://{h}:{p.port}/ (no target enabled)", flush=True)

    def add_portals(portals: list, ignore_exist: bool) -> int:
        for host, port in portals:
            p = iscsi_add_portal(host, port)
            if isinstance(p, int) and not (ignore_exist and errname(p) == "-EEXIST"):
                why = "address already in use" if errname(p) == "-EADDRINUSE" else errname(p)
                failure.append(f"cannot listen on {host}:{port}: {why}")
                return p
        return 0

    try:
        os.makedirs(cfg["pr_dir"], mode=0o700, exist_ok=True)
        scst_pr.scst_pr_dir = cfg["pr_dir"]
    except OSError as e:
        print(f"uscstd: persistent reservations will not survive a restart: cannot create "
              f"{cfg['pr_dir']}: {e.strerror}", file=sys.stderr)

    def init() -> int:
        ret = vdisk_init()
        if ret == 0:
            ret = iscsi_init()
        if ret == 0:
            ret = mgmt_init()
        if ret != 0:
            failure.append(f"module init failed: {errname(ret)}")
            return ret
        if cfg["config"]:
            r = apply_text(cfg["config_text"], cfg["config"])
            if not r["ok"]:
                failure.append(r["error"])
                return -EINVAL
            print(f"uscstd: config {cfg['config']}: {r['changes']} changes applied", flush=True)
            ret = add_portals(cfg["portals"], True)
            if ret == 0 and not portal_list:
                ret = add_portals([parse_portal(DEFAULT_PORTAL)], True)
            if ret != 0:
                return ret
            print_ready()
            return 0
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
        ret = add_portals(cfg["portals"], False)
        if ret != 0:
            return ret
        where = cfg["disk"] or f"nullio, {cfg['size']} bytes"
        print(f"uscstd: serving {cfg['iqn']} LUN 0 ({where})", flush=True)
        for host, port in cfg["portals"]:
            print(f"uscstd: ready at {_url(host, port, cfg['iqn'])}", flush=True)
        return 0

    def exit_fn() -> None:
        mgmt_exit()
        iscsi_exit()
        vdisk_exit()

    # -- management services (trio side) ----------------------------------
    import trio

    def warn(msg: str) -> None:
        print(f"uscstd: {msg}", file=sys.stderr, flush=True)

    async def reload(force: bool = False) -> dict:
        path = cfg["config"]
        if not path:
            return {"ok": False, "error": "uscstd was started without --config", "errno": EINVAL}
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"cannot read {path}: {e}", "errno": EINVAL}
        return await engine.call_in_task(lambda: apply_text(text, path, force))

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
                print(f"uscstd: SIGHUP: {cfg['config']}: {r['changes']} changes applied", flush=True)
            else:
                warn(f"SIGHUP: {r['error']}")

    async def op_config_apply(req: dict) -> dict:
        text, filename = req.get("text"), req.get("filename", "<config>")
        if not isinstance(text, str) or not isinstance(filename, str):
            return {"ok": False, "error": "config_apply needs text and filename", "errno": EINVAL}
        force, dry = bool(req.get("force")), bool(req.get("dry_run"))
        return await engine.call_in_task(lambda: apply_text(text, filename, force, dry))

    async def op_config_write(req: dict) -> dict:
        text = await engine.call_in_task(
            lambda: scst_conf.write_running(engine_ctl.SysfsTree()))
        return {"ok": True, "text": text}

    async def op_reload(req: dict) -> dict:
        return await reload(bool(req.get("force")))

    async def op_schema(req: dict) -> dict:
        from scst_core.sysfs import scst_sysfs_schema
        return {"ok": True, "schema": await engine.call_in_task(scst_sysfs_schema)}

    ops = {"config_apply": op_config_apply, "config_write": op_config_write,
           "reload": op_reload, "schema": op_schema}

    def control_ready() -> None:
        print(f"uscstd: control socket {cfg['control']}", flush=True)
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
            on_ready=lambda: print(f"uscstd: management tree mounted at {cfg['fuse']}", flush=True)))
    engine.reload_hook = reload_hook

    ret = engine.run(init, exit_fn, services=services)
    engine.reload_hook = None
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
