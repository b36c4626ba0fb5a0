"""uscstadmin: manage a running uscstd through its control socket, in the
manner of SCST's scstadmin.

Every subcommand is one or a few requests on the control socket (one JSON
object per line each way, see kshim/engine_ctl.py); changes are writes of
SCST mgmt commands into the daemon's sysfs tree, so what uscstadmin can do
is exactly what `echo ... > mgmt` on the FUSE mount can do.

Exit codes: 0 done, 1 the daemon refused (the one-line reason is printed),
2 usage error, 3 no daemon to talk to.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from .modcheck import check_module_file

ROOT = "/kernel/scst_tgt"
EXIT_FAILED = 1
EXIT_NO_DAEMON = 3

EPILOG = """\b
Examples:
  uscstadmin list targets
  uscstadmin open-dev disk1 --handler vdisk_fileio -p filename=/srv/d1.img -p size=10G
  uscstadmin add-lun iqn.2026-11.org.uscst:t1 1 disk1
  uscstadmin add-group iqn.2026-11.org.uscst:t1 hosts
  uscstadmin add-init iqn.2026-11.org.uscst:t1 hosts 'iqn.1993-08.org.debian:*'
  uscstadmin add-lun iqn.2026-11.org.uscst:t1 0 disk1 --group hosts --read-only
  uscstadmin set targets/iscsi/iqn.2026-11.org.uscst:t1/HeaderDigest CRC32C
  uscstadmin config /etc/uscst/scst.conf --dry-run
  uscstadmin write-config /etc/uscst/scst.conf
  uscstadmin stats --json
  uscstadmin trace start --events 'scst_*,iscsi_*'
  uscstadmin trace dump -o run.json     (open in ui.perfetto.dev or chrome://tracing)
  uscstadmin lsmod
  uscstadmin insmod --check docs/examples/vdisk_pattern.py
  uscstadmin insmod docs/examples/vdisk_pattern.py pattern_size=64M
  uscstadmin rmmod vdisk_pattern
"""


def default_socket() -> str:
    env = os.environ.get("USCST_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/uscst.sock"
    rt = os.environ.get("XDG_RUNTIME_DIR")
    if rt:
        return os.path.join(rt, "uscst.sock")
    return f"/tmp/uscst-{os.getuid()}/uscst.sock"


class Failed(Exception):
    def __init__(self, msg: str, code: int = EXIT_FAILED, reply: dict | None = None):
        super().__init__(msg)
        self.code = code
        self.reply = reply or {}


class Ctl:
    """One connection to uscstd's control socket."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise Failed(f"cannot reach uscstd at {path}: {e.strerror or e} "
                         f"(is it running? use --socket)", EXIT_NO_DAEMON) from None
        self.f = self.sock.makefile("rwb")

    def call(self, op: str, **kw: Any) -> dict:
        try:
            self.f.write(json.dumps({"op": op, **kw}).encode() + b"\n")
            self.f.flush()
            line = self.f.readline()
        except OSError as e:
            raise Failed(f"control socket {self.path}: {e}", EXIT_NO_DAEMON) from None
        if not line:
            raise Failed(f"uscstd closed the control socket {self.path}", EXIT_NO_DAEMON)
        rsp = json.loads(line)
        if not rsp.get("ok"):
            raise Failed(rsp.get("error") or f"{op} failed", EXIT_FAILED, rsp)
        return rsp

    # helpers on paths relative to /sys/kernel/scst_tgt
    def read(self, rel: str) -> str:
        return self.call("read", path=_abs(rel))["value"]

    def write(self, rel: str, value: str) -> None:
        self.call("write", path=_abs(rel), value=value)

    def tree(self, rel: str = "") -> dict:
        return self.call("tree", path=_abs(rel))["tree"]


def _abs(rel: str) -> str:
    rel = rel.strip("/")
    if rel.startswith("kernel/") or rel.startswith("module/") or rel in ("kernel", "module"):
        return "/" + rel
    if rel.startswith("debug/") or rel == "debug":      # debugfs: /sys/kernel/debug
        return "/kernel/" + rel
    if rel.startswith("sys/"):
        return "/" + rel[4:]
    return f"{ROOT}/{rel}" if rel else ROOT


def _val(node: dict | None) -> str:
    if node is None or node.get("value") is None:
        return ""
    return "\n".join(x for x in node["value"].split("\n") if x and x != "[key]")


def _child(node: dict, name: str) -> dict | None:
    return next((c for c in node.get("children", []) if c["name"] == name), None)


def _dirs(node: dict | None) -> list[dict]:
    return [c for c in (node or {}).get("children", []) if c["kind"] == "dir"]


def _luns(node: dict | None) -> list[dict]:
    out = []
    for d in _dirs(node):
        if d["name"].isdigit():
            link = _child(d, "device")
            out.append({"lun": int(d["name"]),
                        "device": (link or {}).get("target", "?").rsplit("/", 1)[-1],
                        "read_only": _val(_child(d, "read_only")) == "1"})
    return sorted(out, key=lambda x: x["lun"])


def collect(tree: dict) -> dict:
    """Targets, devices, groups and sessions out of one tree snapshot."""
    devices = []
    for d in _dirs(_child(tree, "devices")):
        attrs = {c["name"]: _val(c) for c in d.get("children", []) if c["kind"] == "file"
                 and c.get("value") is not None}
        handler = (_child(d, "handler") or {}).get("target", "").rsplit("/", 1)[-1]
        devices.append({"name": d["name"], "handler": handler, "attrs": attrs,
                        "exported": len(_child(d, "exported").get("children", []))
                        if _child(d, "exported") else 0})
    targets = []
    for drv in _dirs(_child(tree, "targets")):
        for t in _dirs(drv):
            groups = []
            for g in _dirs(_child(t, "ini_groups")):
                inits = [c["name"] for c in _child(g, "initiators").get("children", [])
                         if c["kind"] == "file" and c["name"] != "mgmt"]
                groups.append({"name": g["name"], "luns": _luns(_child(g, "luns")),
                               "initiators": inits})
            sessions = []
            for s in _dirs(_child(t, "sessions")):
                st = {c["name"]: _val(c) for c in s.get("children", [])
                      if c["kind"] == "file" and c.get("value") is not None}   # not force_close
                sessions.append({"name": s["name"], **{k: (int(v) if v.isdigit() else v)
                                                       for k, v in st.items()}})
            targets.append({"driver": drv["name"], "name": t["name"],
                            "enabled": _val(_child(t, "enabled")) == "1",
                            "luns": _luns(_child(t, "luns")), "groups": groups,
                            "sessions": sessions})
    handlers = [{"name": h["name"], "devices": [c["name"] for c in h.get("children", [])
                                                  if c["kind"] == "link"]}
                for h in _dirs(_child(tree, "handlers"))]
    return {"handlers": handlers, "devices": devices, "targets": targets}


# -- CLI ------------------------------------------------------------------------

class Obj:
    def __init__(self, socket_path: str, as_json: bool):
        self.socket_path = socket_path
        self.as_json = as_json
        self._ctl: Ctl | None = None

    @property
    def ctl(self) -> Ctl:
        if self._ctl is None:
            self._ctl = Ctl(self.socket_path)
        return self._ctl

    def done(self, msg: str, data: dict | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps({"ok": True, "message": msg, **(data or {})}))
        else:
            click.echo(msg)


pass_obj = click.make_pass_decorator(Obj)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", default=default_socket, show_default="$USCST_SOCKET, "
              "$XDG_RUNTIME_DIR/uscst.sock or /run/uscst.sock", help="uscstd's control socket")
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
@click.version_option("0.1.0", prog_name="uscstadmin")
@click.pass_context
def cli(ctx: click.Context, socket_path: str, as_json: bool) -> None:
    """Manage a running uscstd target (scstadmin-like)."""
    ctx.obj = Obj(socket_path, as_json)


def _mgmt(o: Obj, rel: str, cmd: str, msg: str) -> None:
    o.ctl.write(rel, cmd)
    o.done(msg)


def _luns_path(target: str, group: str | None, driver: str) -> str:
    base = f"targets/{driver}/{target}"
    return f"{base}/ini_groups/{group}/luns" if group else f"{base}/luns"


@cli.command("list")
@click.argument("what", type=click.Choice(["targets", "devices", "sessions", "groups", "handlers",
                                           "all"]), default="all")
@pass_obj
def list_cmd(o: Obj, what: str) -> None:
    """List targets, devices, sessions, groups or handlers."""
    info = collect(o.ctl.tree())
    if o.as_json:
        if what == "all":
            click.echo(json.dumps(info))
        elif what in ("sessions", "groups"):
            click.echo(json.dumps([{"target": t["name"], **x} for t in info["targets"]
                                   for x in t[what]]))
        else:
            click.echo(json.dumps(info[what]))
        return
    if what in ("handlers", "all"):
        click.echo("Handler          Devices")
        for h in info["handlers"]:
            click.echo(f"{h['name']:<16} {', '.join(h['devices']) or '-'}")
        click.echo()
    if what in ("devices", "all"):
        click.echo("Device           Handler          Size             LUNs  Backing")
        for d in info["devices"]:
            a = d["attrs"]
            click.echo(f"{d['name']:<16} {d['handler']:<16} {a.get('size', '?'):<16} "
                       f"{d['exported']:<5} {a.get('filename', '-') or '-'}")
        click.echo()
    if what in ("targets", "all"):
        click.echo("Driver   Target                                     Enabled  LUNs  Sessions")
        for t in info["targets"]:
            click.echo(f"{t['driver']:<8} {t['name']:<42} {'yes' if t['enabled'] else 'no':<8} "
                       f"{len(t['luns']):<5} {len(t['sessions'])}")
            for lun in t["luns"]:
                click.echo(f"           LUN {lun['lun']:<4} {lun['device']}"
                           f"{' (read-only)' if lun['read_only'] else ''}")
        click.echo()
    if what in ("groups", "all"):
        click.echo("Target                                     Group            LUNs  Initiators")
        for t in info["targets"]:
            for g in t["groups"]:
                click.echo(f"{t['name']:<42} {g['name']:<16} "
                           f"{','.join(str(x['lun']) for x in g['luns']) or '-':<5} "
                           f"{', '.join(g['initiators']) or '-'}")
        click.echo()
    if what in ("sessions", "all"):
        click.echo("Target                                     Initiator                                 "
                   "Reads    Writes")
        for t in info["targets"]:
            for s in t["sessions"]:
                click.echo(f"{t['name']:<42} {s.get('initiator_name', s['name']):<41} "
                           f"{s.get('reads', 0):<8} {s.get('writes', 0)}")


@cli.command("open-dev")
@click.argument("name")
@click.option("--handler", "-H", required=True,
              help="dev handler: vdisk_fileio, vdisk_blockio, vdisk_nullio, vcdrom, vdisk_nbd "
                   "or vdisk_rbd")
@click.option("--param", "-p", multiple=True, metavar="KEY=VALUE",
              help="add_device parameter (repeatable): filename=, size=, blocksize=, ...")
@pass_obj
def open_dev(o: Obj, name: str, handler: str, param: tuple[str, ...]) -> None:
    """Create (open) a device."""
    for p in param:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--param")
    cmd = f"add_device {name}" + (" " + "; ".join(param) if param else "")
    _mgmt(o, f"handlers/{handler}/mgmt", cmd, f"device {name} opened ({handler})")


@cli.command("close-dev")
@click.argument("name")
@pass_obj
def close_dev(o: Obj, name: str) -> None:
    """Remove (close) a device that no LUN uses."""
    link = o.ctl.call("readlink", path=_abs(f"devices/{name}/handler"))["value"]
    _mgmt(o, f"handlers/{link.rsplit('/', 1)[-1]}/mgmt", f"del_device {name}",
          f"device {name} closed")


@cli.command("add-target")
@click.argument("name")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def add_target(o: Obj, name: str, driver: str) -> None:
    """Create a target (disabled until `enable`)."""
    _mgmt(o, f"targets/{driver}/mgmt", f"add_target {name}", f"target {name} added (disabled)")


@cli.command("rem-target")
@click.argument("name")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def rem_target(o: Obj, name: str, driver: str) -> None:
    """Remove a target, closing its sessions first (as SCST does)."""
    _mgmt(o, f"targets/{driver}/mgmt", f"del_target {name}", f"target {name} removed")


@cli.command("enable")
@click.argument("target")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def enable(o: Obj, target: str, driver: str) -> None:
    """Enable a target (accept logins)."""
    _mgmt(o, f"targets/{driver}/{target}/enabled", "1", f"target {target} enabled")


@cli.command("disable")
@click.argument("target")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def disable(o: Obj, target: str, driver: str) -> None:
    """Disable a target (refuse new logins)."""
    _mgmt(o, f"targets/{driver}/{target}/enabled", "0", f"target {target} disabled")


def _lun_opts(f: Any) -> Any:
    f = click.option("--group", "-g", help="initiator group (default: the target's own LUNs)")(f)
    return click.option("--driver", default="iscsi", show_default=True)(f)


@cli.command("add-lun")
@click.argument("target")
@click.argument("lun", type=click.IntRange(0, 16383))
@click.argument("device")
@click.option("--read-only", is_flag=True)
@_lun_opts
@pass_obj
def add_lun(o: Obj, target: str, lun: int, device: str, read_only: bool, group: str | None,
            driver: str) -> None:
    """Map DEVICE at LUN (logged-in initiators get a unit attention)."""
    _mgmt(o, f"{_luns_path(target, group, driver)}/mgmt",
          f"add {device} {lun}" + (" read_only=1" if read_only else ""),
          f"LUN {lun} ({device}) added to {target}{'/' + group if group else ''}")


@cli.command("replace-lun")
@click.argument("target")
@click.argument("lun", type=click.IntRange(0, 16383))
@click.argument("device")
@click.option("--read-only", is_flag=True)
@_lun_opts
@pass_obj
def replace_lun(o: Obj, target: str, lun: int, device: str, read_only: bool, group: str | None,
                driver: str) -> None:
    """Point LUN at another DEVICE."""
    _mgmt(o, f"{_luns_path(target, group, driver)}/mgmt",
          f"replace {device} {lun}" + (" read_only=1" if read_only else ""),
          f"LUN {lun} of {target} now {device}")


@cli.command("rem-lun")
@click.argument("target")
@click.argument("lun", type=click.IntRange(0, 16383))
@_lun_opts
@pass_obj
def rem_lun(o: Obj, target: str, lun: int, group: str | None, driver: str) -> None:
    """Unmap a LUN."""
    _mgmt(o, f"{_luns_path(target, group, driver)}/mgmt", f"del {lun}",
          f"LUN {lun} removed from {target}{'/' + group if group else ''}")


@cli.command("clear-luns")
@click.argument("target")
@_lun_opts
@pass_obj
def clear_luns(o: Obj, target: str, group: str | None, driver: str) -> None:
    """Unmap every LUN of a target or group."""
    _mgmt(o, f"{_luns_path(target, group, driver)}/mgmt", "clear", f"LUNs of {target} cleared")


@cli.command("add-group")
@click.argument("target")
@click.argument("group")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def add_group(o: Obj, target: str, group: str, driver: str) -> None:
    """Create an initiator group."""
    _mgmt(o, f"targets/{driver}/{target}/ini_groups/mgmt", f"create {group}",
          f"group {group} created in {target}")


@cli.command("rem-group")
@click.argument("target")
@click.argument("group")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def rem_group(o: Obj, target: str, group: str, driver: str) -> None:
    """Remove an initiator group without sessions."""
    _mgmt(o, f"targets/{driver}/{target}/ini_groups/mgmt", f"del {group}",
          f"group {group} removed from {target}")


def _inits(driver: str, target: str, group: str) -> str:
    return f"targets/{driver}/{target}/ini_groups/{group}/initiators/mgmt"


@cli.command("add-init")
@click.argument("target")
@click.argument("group")
@click.argument("initiator")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def add_init(o: Obj, target: str, group: str, initiator: str, driver: str) -> None:
    """Add an initiator name or wildcard pattern to a group."""
    _mgmt(o, _inits(driver, target, group), f"add {initiator}",
          f"initiator {initiator} added to {group}")


@cli.command("rem-init")
@click.argument("target")
@click.argument("group")
@click.argument("initiator")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def rem_init(o: Obj, target: str, group: str, initiator: str, driver: str) -> None:
    """Remove an initiator from a group."""
    _mgmt(o, _inits(driver, target, group), f"del {initiator}",
          f"initiator {initiator} removed from {group}")


@cli.command("move-init")
@click.argument("target")
@click.argument("group")
@click.argument("initiator")
@click.argument("to_group")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def move_init(o: Obj, target: str, group: str, initiator: str, to_group: str, driver: str) -> None:
    """Move an initiator from GROUP to TO_GROUP."""
    _mgmt(o, _inits(driver, target, group), f"move {initiator} {to_group}",
          f"initiator {initiator} moved to {to_group}")


@cli.command("clear-inits")
@click.argument("target")
@click.argument("group")
@click.option("--driver", default="iscsi", show_default=True)
@pass_obj
def clear_inits(o: Obj, target: str, group: str, driver: str) -> None:
    """Remove every initiator from a group."""
    _mgmt(o, _inits(driver, target, group), "clear", f"initiators of {group} cleared")


@cli.command("get")
@click.argument("path")
@pass_obj
def get_attr(o: Obj, path: str) -> None:
    """Show an attribute (PATH relative to /sys/kernel/scst_tgt), or every
    attribute of a directory."""
    rsp = o.ctl.call("ls", path=_abs(path)) if not _is_file(o, path) else None
    if rsp is None:
        v = o.ctl.read(path)
        if o.as_json:
            click.echo(json.dumps({"path": path, "value": _val({"value": v}),
                                   "key": "[key]" in v.split("\n")}))
        else:
            click.echo(_val({"value": v}))
        return
    t = o.ctl.tree(path)
    attrs = {c["name"]: _val(c) for c in t.get("children", [])
             if c["kind"] == "file" and c.get("value") is not None}
    if o.as_json:
        click.echo(json.dumps(attrs))
    else:
        for k, v in attrs.items():
            click.echo(f"{k:<28} {v}")


def _is_file(o: Obj, path: str) -> bool:
    parent, _, name = _abs(path).rpartition("/")
    ents = o.ctl.call("ls", path=parent or "/")["entries"]
    e = next((x for x in ents if x["name"] == name), None)
    if e is None:
        raise Failed(f"no such attribute or directory: {path}")
    return e["kind"] == "file"


@cli.command("set")
@click.argument("path")
@click.argument("value")
@pass_obj
def set_attr(o: Obj, path: str, value: str) -> None:
    """Write VALUE to an attribute or mgmt file (PATH relative to
    /sys/kernel/scst_tgt, or /module/... for module parameters)."""
    o.ctl.write(path, value)
    o.done(f"{path} = {value}")


@cli.command("tree")
@click.argument("path", default="")
@pass_obj
def tree_cmd(o: Obj, path: str) -> None:
    """Print the management tree with attribute values."""
    t = o.ctl.tree(path)
    if o.as_json:
        click.echo(json.dumps(t))
        return

    def show(n: dict, indent: str) -> None:
        for c in n.get("children", []):
            if c["kind"] == "dir":
                click.echo(f"{indent}{c['name']}/")
                show(c, indent + "  ")
            elif c["kind"] == "link":
                click.echo(f"{indent}{c['name']} -> {c.get('target')}")
            elif c["name"] != "mgmt":
                click.echo(f"{indent}{c['name']} = {_val(c).replace(chr(10), ', ')}")
    show(t, "")


@cli.command("stats")
@click.option("--latency", is_flag=True, help="per-stage command latency (measure_latency)")
@pass_obj
def stats_cmd(o: Obj, latency: bool) -> None:
    """Per-session and per-device I/O statistics."""
    if latency:
        latency_stats(o)
        return
    info = collect(o.ctl.tree())
    sess = [{"target": t["name"], **s} for t in info["targets"] for s in t["sessions"]]
    devs = [{"device": d["name"], "commands": int(d["attrs"].get("commands", "0") or 0)}
            for d in info["devices"]]
    if o.as_json:
        click.echo(json.dumps({"sessions": sess, "devices": devs}))
        return
    click.echo("Session                                   Reads     Writes    Read KB    Write KB")
    for s in sess:
        click.echo(f"{s.get('initiator_name', s['name']):<41} {s.get('reads', 0):<9} "
                   f"{s.get('writes', 0):<9} {s.get('read_io_count_kb', 0):<10} "
                   f"{s.get('write_io_count_kb', 0)}")
    click.echo()
    click.echo("Device           Commands")
    for d in devs:
        click.echo(f"{d['device']:<16} {d['commands']}")


def parse_latency_raw(text: str) -> list[dict]:
    """The lines of scst_tgt/latency_raw as dicts (times in ns)."""
    out = []
    for line in text.splitlines():
        p = line.split()
        if len(p) < 7:
            continue
        hist = {int(b): int(n) for b, n in (x.split(":") for x in p[7].split(","))} \
            if len(p) > 7 else {}
        out.append({"session": p[0], "lun": None if p[1] == "-" else int(p[1]), "stage": p[2],
                    "count": int(p[3]), "sum_ns": int(p[4]), "min_ns": int(p[5]),
                    "max_ns": int(p[6]), "hist_log2_ns": hist})
    return out


def latency_stats(o: Obj) -> None:
    """stats --latency: SCST's measure_latency figures (turned on if off)."""
    if o.ctl.read("measure_latency").strip() != "1":
        o.ctl.write("measure_latency", "1")
        if not o.as_json:
            click.echo("measure_latency was off: turned on now; run I/O and ask again")
    if o.as_json:
        click.echo(json.dumps({"latency": parse_latency_raw(o.ctl.read("latency_raw"))}))
    else:
        click.echo(o.ctl.read("latency"), nl=False)


@cli.command("config")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="also remove what the file does not name, and "
              "re-create devices whose fixed attributes changed")
@click.option("--dry-run", "-n", is_flag=True, help="only list the changes")
@pass_obj
def config_cmd(o: Obj, file: str, force: bool, dry_run: bool) -> None:
    """Apply an scst.conf file to the running target (only the difference)."""
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise Failed(f"cannot read {file}: {e}") from None
    rsp = o.ctl.call("config_apply", text=text, filename=file, force=force, dry_run=dry_run)
    if o.as_json:
        click.echo(json.dumps(rsp))
        return
    for a in rsp["actions"]:
        click.echo(f"{'would ' if dry_run else ''}{a}")
    click.echo(f"{rsp['changes']} changes{' (dry run, nothing applied)' if dry_run else ' applied'}")


@cli.command("write-config")
@click.argument("file", required=False)
@pass_obj
def write_config(o: Obj, file: str | None) -> None:
    """Write the running configuration in scst.conf syntax (to FILE, mode
    0600, or to standard output)."""
    text = o.ctl.call("config_write")["text"]
    if file is None or file == "-":
        click.echo(text, nl=False)
        return
    tmp = f"{file}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, file)
    except OSError as e:
        raise Failed(f"cannot write {file}: {e.strerror}") from None
    o.done(f"configuration written to {file}")


@cli.command("reload")
@pass_obj
def reload_cmd(o: Obj) -> None:
    """Re-apply the daemon's own --config file (as SIGHUP does)."""
    rsp = o.ctl.call("reload")
    o.done(f"{rsp['changes']} changes applied", {"changes": rsp["changes"]})


# -- tracing (kshim.tracepoint's recorder, through /sys/kernel/tracing) ----------

TRACING = "/kernel/tracing"


@cli.group("trace")
def trace_group() -> None:
    """Record tracepoints in uscstd's ring and export them (Perfetto JSON)."""


@trace_group.command("start")
@click.option("--events", default="*", show_default=True,
              help="comma-separated event names or prefixes ending in '*'")
@click.option("--filter", "filter_", default="", help="e.g. 'sess=iqn... lun=0 op=0x28'")
@click.option("--buffer-kb", type=click.IntRange(1, 1 << 20), help="ring size in KiB")
@pass_obj
def trace_start(o: Obj, events: str, filter_: str, buffer_kb: int | None) -> None:
    """Clear the ring, select events and a filter, and start recording."""
    c = o.ctl
    c.call("write", path=f"{TRACING}/tracing_on", value="0")
    if buffer_kb is not None:
        c.call("write", path=f"{TRACING}/buffer_size_kb", value=str(buffer_kb))
    c.call("write", path=f"{TRACING}/set_event", value=" ".join(events.split(",")))
    c.call("write", path=f"{TRACING}/filter", value=filter_)
    c.call("write", path=f"{TRACING}/trace", value="")
    c.call("write", path=f"{TRACING}/tracing_on", value="1")
    o.done("tracing on")


@trace_group.command("stop")
@pass_obj
def trace_stop(o: Obj) -> None:
    """Stop recording (the ring keeps what it has)."""
    o.ctl.call("write", path=f"{TRACING}/tracing_on", value="0")
    stat = o.ctl.call("read", path=f"{TRACING}/trace_stat")["value"]
    o.done("tracing off; " + ", ".join(stat.split("\n")).strip(", "))


@trace_group.command("dump")
@click.option("-o", "--output", "out", default="-", help="file to write (default stdout)")
@click.option("--format", "fmt", type=click.Choice(["perfetto", "raw", "text"]),
              default="perfetto", show_default=True)
@pass_obj
def trace_dump(o: Obj, out: str, fmt: str) -> None:
    """Write the ring: Perfetto/Chrome trace-event JSON, the raw records, or text."""
    from . import trace_export     # the exporter is needed by this command only
    if fmt == "text":
        text = o.ctl.call("read", path=f"{TRACING}/trace")["value"]
    else:
        raw = o.ctl.call("read", path=f"{TRACING}/trace_raw")["value"]
        text = raw if fmt == "raw" else json.dumps(trace_export.to_perfetto(json.loads(raw)))
    if out == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise Failed(f"cannot write {out}: {e.strerror}") from None
    o.done(f"trace written to {out}")


@trace_group.command("html")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out", required=True, help="the HTML file to write")
@click.option("--itt", help="the command to draw, by ITT (default: the richest command)")
@click.option("--login", type=click.IntRange(0), help="draw the N-th login instead (0 = first)")
def trace_html_cmd(trace_file: str, out: str, itt: str | None, login: int | None) -> None:
    """Draw a dumped trace (Perfetto JSON) as a self-contained HTML page:
    a timeline of kthreads and softirqs and a command's sequence diagram."""
    from . import trace_html    # needed by this command only
    try:
        itt_n = int(itt, 0) if itt is not None else None
    except ValueError:
        raise Failed(f"--itt {itt!r} is not a number (e.g. 0x1a)", 2) from None
    try:
        with open(trace_file, encoding="utf-8") as f:
            doc = json.load(f)
        page = trace_html.render_html(doc, itt_n, login)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise Failed(f"{trace_file}: not a trace from `uscstadmin trace dump`: {e}") from None
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise Failed(f"cannot write {out}: {e.strerror}") from None
    click.echo(f"wrote {out}")


@cli.command("top")
@click.option("--once", is_flag=True, help="print one plain snapshot and exit")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="seconds between reads")
@click.option("--max-seconds", type=click.FloatRange(0), default=0,
              help="leave the live view after this long (0: only on q)")
@pass_obj
def top_cmd(o: Obj, once: bool, interval: float, max_seconds: float) -> None:
    """Live view: kthreads, softirqs, workqueues, slabs, locks, and per
    session/LUN IOPS, MB/s, latency and outstanding commands (keys: s sort,
    d drill into a session, a all, q quit)."""
    from . import top    # rich and the parser load for this command only
    if once:
        click.echo(top.render_once(o.ctl, interval), nl=False)
    else:
        top.run_live(o.ctl, interval, max_seconds)
@cli.command("insmod")
@click.argument("module")
@click.argument("params", nargs=-1)
@click.option("--check", is_flag=True, help="only check that MODULE (a .py file) imports nothing "
              "of the host: kshim, the kernel layers and pure stdlib only (no daemon needed)")
@pass_obj
def insmod_cmd(o: Obj, module: str, params: tuple[str, ...], check: bool) -> None:
    """Load a kernel-style module into the running target: MODULE is a .py
    file or a module name, PARAMS are its module parameters (NAME=VALUE).
    Loading an edited file again after rmmod picks up the edit."""
    for p in params:
        if "=" not in p:
            raise click.BadParameter(f"expected NAME=VALUE, got {p!r}", param_hint="PARAMS")
    if module.endswith(".py") or os.sep in module:
        module = os.path.abspath(module)
        if not os.path.isfile(module):
            raise Failed(f"insmod: {module}: no such file")
    if check:
        if not module.endswith(".py"):
            raise click.BadParameter("--check takes a .py file", param_hint="MODULE")
        problems = check_module_file(Path(module))
        for line in problems:
            click.echo(line)
        if problems:
            raise Failed(f"{module}: {len(problems)} import(s) cross the kernel boundary")
        o.done(f"{module}: imports only kshim, the kernel layers and pure stdlib")
        return
    rsp = o.ctl.call("insmod", module=module, params=list(params))
    o.done(f"module {rsp['name']} loaded", {"name": rsp["name"]})


@cli.command("rmmod")
@click.argument("name")
@pass_obj
def rmmod_cmd(o: Obj, name: str) -> None:
    """Unload a module nobody uses (refused with -EBUSY, naming the holders,
    while its devices have LUNs or its targets exist)."""
    o.ctl.call("rmmod", module=name)
    o.done(f"module {name} removed")


@cli.command("lsmod")
@pass_obj
def lsmod_cmd(o: Obj) -> None:
    """List the loaded modules, last loaded first: size (source lines),
    reference count and who holds them."""
    mods = o.ctl.call("lsmod")["modules"]
    if o.as_json:
        click.echo(json.dumps(mods))
        return
    click.echo(f"{'Module':<24} {'Size':>7}  Used by")
    for m in mods:
        state = "" if m["state"] == "live" else f" [{m['state']}]"
        click.echo(f"{m['name']:<24} {m['size']:>7}  {m['refcount']} {','.join(m['users'])}"
                   .rstrip() + state)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="uscstadmin", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Abort:
        return 1
    except Failed as e:
        as_json = "--json" in (argv if argv is not None else sys.argv[1:])
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(e), **{k: v for k, v in e.reply.items()
                                                                   if k in ("errno", "code")}}))
        click.echo(f"uscstadmin: {e}", err=True)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
