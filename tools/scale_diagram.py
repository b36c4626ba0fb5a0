"""Draw a scale-out layout from the nodes' scst.conf files (plain text).

Usage: python -m tools.scale_diagram NODE.conf [NODE.conf ...]

Reads each node's file with tools/scst_conf.parse (syntax and structure
only; names are not checked against a running target) and prints, per
node, its targets with their ALUA target port group, state and
rel_tgt_id, each LUN's device with handler, backing and cluster_mode;
then the cluster link (each node's cluster_listen against the others'
cluster_peers) and the backing stores, a device of the same name and
backing on several nodes drawn once as shared. Portals are left out: the
diagram is about which port and group serve which unit. Output depends
only on the files and their order. docs/scale-out.md's two-node diagram
is this tool's output for docs/examples/two-nodes-*.conf
(tests/test_scale_diagram.py keeps them equal). Dev-only (decision 0046).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from tools.scst_conf import Config, ConfigError, Device, parse

PROG = "scale_diagram"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see python -m tools.scale_diagram --help)")


def _attr(attrs: dict, name: str, default: str = "") -> str:
    a = attrs.get(name)
    return " ".join(a.values) if a is not None else default


def backing(dev: Device) -> str:
    """Where the device's blocks live: a file, an NBD URI or an RBD pool/image."""
    if "uri" in dev.attrs:
        return _attr(dev.attrs, "uri")
    if "image" in dev.attrs:
        return f"rbd {_attr(dev.attrs, 'pool', 'rbd')}/{_attr(dev.attrs, 'image')}"
    if "filename" in dev.attrs:
        return _attr(dev.attrs, "filename")
    return "(no backing)"


def _port_group(cfg: Config, target: str) -> str:
    for dg in cfg.dgroups.values():
        for tg in dg.tgroups.values():
            if target in tg.targets:
                return (f"tpg {tg.name} group_id {_attr(tg.attrs, 'group_id', '?')} "
                        f"state {_attr(tg.attrs, 'state', 'active')}")
    return "no target port group"


def render(nodes: list[tuple[str, Config]]) -> str:
    """The diagram for (label, config) pairs, in that order."""
    stores: dict[tuple[str, str], list[str]] = {}     # (device, backing) -> nodes
    for label, cfg in nodes:
        for dev in cfg.devices.values():
            stores.setdefault((dev.name, backing(dev)), []).append(label)
    store_no = {key: i for i, key in enumerate(stores, 1)}
    out: list[str] = []
    for label, cfg in nodes:
        out.append(f"node {label}")
        for drv in cfg.drivers.values():
            for t in drv.targets.values():
                out.append(f"  {drv.name} target {t.name}")
                out.append(f"    rel_tgt_id {_attr(t.attrs, 'rel_tgt_id', '?')}, "
                           f"{_port_group(cfg, t.name)}")
                for lun in sorted(t.luns.values(), key=lambda x: x.lun):
                    dev = cfg.devices.get(lun.device)
                    if dev is None:
                        out.append(f"    LUN {lun.lun} -> {lun.device} (not defined)")
                        continue
                    out.append(f"    LUN {lun.lun} -> {dev.name} ({dev.handler}, cluster_mode "
                               f"{_attr(dev.attrs, 'cluster_mode', '0')}) "
                               f"-> store [{store_no[(dev.name, backing(dev))]}]")
    out.append("cluster link")
    links = 0
    for i, (label, cfg) in enumerate(nodes):
        listen = _attr(cfg.attrs, "cluster_listen")
        for peer in cfg.attrs["cluster_peers"].values if "cluster_peers" in cfg.attrs else []:
            other = [(j, lb) for j, (lb, c) in enumerate(nodes) if _attr(c.attrs, "cluster_listen") == peer]
            if not other:
                out.append(f"  {label} {listen or '(no cluster_listen)'} --> {peer} (no node given)")
            elif listen and listen in _attr(nodes[other[0][0]][1].attrs, "cluster_peers").split():
                if i < other[0][0]:
                    out.append(f"  {label} {listen} <--> {other[0][1]} {peer}")
            else:
                out.append(f"  {label} {listen or '(no cluster_listen)'} --> {other[0][1]} {peer}")
            links += 1
    if not links:
        out.append("  (none)")
    out.append("backing stores")
    for key, labels in stores.items():
        dev_name, where = key
        shared = f"shared by {', '.join(labels)}" if len(labels) > 1 else f"on {labels[0]} only"
        out.append(f"  [{store_no[key]}] {where}: device {dev_name}, {shared}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog=PROG, description="Draw nodes' targets, ALUA groups, LUNs, backing "
                 "stores and cluster link from their scst.conf files.")
    ap.add_argument("conf", nargs="+", help="one scst.conf per node")
    try:
        args = ap.parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    nodes: list[tuple[str, Config]] = []
    for fn in args.conf:
        try:
            nodes.append((Path(fn).stem, parse(Path(fn).read_text(), fn)))
        except ConfigError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        except (OSError, UnicodeDecodeError) as e:
            print(f"{PROG}: {fn}: cannot read: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 2
    sys.stdout.write(render(nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
