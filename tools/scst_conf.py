"""scst.conf: parse, validate, write back, and apply as a difference.

Counterpart of scstadmin's config handling (scstadmin/scst-*/lib/SCST/SCST.pm
and scstadmin's -config/-write_config), written from SCST's documented
file syntax:

    # comment
    HANDLER vdisk_fileio {
        DEVICE disk0 {
            filename /srv/disk0.img
            nv_cache 1
        }
    }
    TARGET_DRIVER iscsi {
        enabled 1
        TARGET iqn.2026-11.org.uscst:t1 {
            HeaderDigest "CRC32C,None"
            LUN 0 disk0
            LUN 1 disk1 {
                read_only 1
            }
            GROUP hosts {
                LUN 0 disk1
                INITIATOR iqn.1993-08.org.debian:*
            }
            enabled 1
        }
    }
    DEVICE_GROUP dg {               (ALUA, scst_core.tg)
        DEVICE disk0
        TARGET_GROUP local {
            group_id 1
            state active            (nonoptimized standby unavailable offline
            preferred 1              transitioning)
            TARGET iqn.2026-11.org.uscst:t1
            TARGET iqn.2026-11.org.peer:t2 {
                rel_tgt_id 5        (a port another system serves)
            }
        }
    }

Where it runs: inside uscstd, in task context (engine.call_in_task), so a
whole apply runs as one kthread between two looks at the tree; it talks
to the tree only through an accessor (read/listdir/readlink/write on paths
under /sys/kernel/scst_tgt), exactly as scstadmin talks to sysfs. The
parser and writer are pure and are also used by uscstadmin.

Rules (as scstadmin): applying a file changes only what differs; objects
the file does not name stay unless force; everything is validated (syntax,
known handlers/drivers/attributes, value types, references) before the
first change, and errors name file:line:column. An attribute the file
omits keeps its running value. A new target is created disabled, as in
SCST: say `enabled 1`.

Differs from scstadmin: a device attribute that cannot change on a running
device is an error unless force (then the device is re-created, its LUNs
re-added); a failure half-way through an apply (e.g. a backing file that
cannot be opened) stops there and reports which changes were made.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from scst_core.sysfs import scst_redact_secrets
from scst_core.tg import (SCST_TG_STATE_UNDEFINED, scst_alua_name_to_state,
                          scst_alua_state_name, scst_alua_state_names)

SCST_ROOT = "/kernel/scst_tgt"
KEY_MARK = "[key]"
MAX_LUN = 16383

_BOOL_ATTRS = frozenset(("enabled", "read_only", "nv_cache", "write_through", "o_direct", "o_dsync",
                         "removable", "rotational", "thin_provisioned", "cluster_mode"))
_YESNO_ATTRS = frozenset(("InitialR2T", "ImmediateData"))
_INT_ATTRS = frozenset(("blocksize", "physical_blocksize", "rel_tgt_id",
                        "MaxRecvDataSegmentLength", "MaxXmitDataSegmentLength", "MaxBurstLength",
                        "FirstBurstLength",
                        "MaxOutstandingR2T", "QueuedCommands", "RspTimeout", "NopInInterval",
                        "NopInTimeout", "size_mb", "sanitize_rate"))
# What the vdisk handlers accept, checked here so that the error names the line
_INT_RANGES = {"blocksize": (512, 4096), "physical_blocksize": (512, 65536),
               "sanitize_rate": (1, 1 << 20)}
_POW2_ATTRS = frozenset(("blocksize", "physical_blocksize"))
_DIGEST_ATTRS = frozenset(("HeaderDigest", "DataDigest"))
_SIZE_ATTRS = frozenset(("size",))


class ConfigError(Exception):
    """A file that cannot be applied: str() is 'file:line:col: message'."""

    def __init__(self, filename: str, line: int, col: int, msg: str):
        super().__init__(f"{filename}:{line}:{col}: {msg}")
        self.filename, self.line, self.col, self.msg = filename, line, col, msg


# -- tokens and statements ----------------------------------------------------

@dataclass
class Word:
    text: str
    line: int
    col: int
    quoted: bool = False


@dataclass
class Stmt:
    words: list[Word]
    body: "list[Stmt] | None" = None      # None: not a block

    @property
    def pos(self) -> tuple[int, int]:
        return self.words[0].line, self.words[0].col


_SPECIAL = set('{}#"\'')
_TOP_LEVEL = frozenset(("HANDLER", "TARGET_DRIVER", "DEVICE_GROUP"))


def _tokenize(text: str, fn: str) -> list[tuple[str, Any]]:
    """('word', Word) | ('{', Word) | ('}', Word) | ('nl', Word) tokens."""
    toks: list[tuple[str, Any]] = []
    line, i, n = 1, 0, len(text)
    line_start = 0
    while i < n:
        c = text[i]
        col = i - line_start + 1
        if c == "\n":
            toks.append(("nl", Word("\n", line, col)))
            line += 1
            i += 1
            line_start = i
        elif c.isspace():
            # Every separator str.isspace() knows (\v, \f, \x1c-\x1f, NBSP...),
            # as the word scan below stops at them too.
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{}":
            toks.append((c, Word(c, line, col)))
            i += 1
        elif c in "\"'":
            j = i + 1
            buf = []
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise ConfigError(fn, line, col, f"unterminated quoted string (expected {c})")
                if text[j] == "\\" and j + 1 < n and text[j + 1] in (c, "\\"):
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ConfigError(fn, line, col, f"unterminated quoted string (expected {c})")
            toks.append(("word", Word("".join(buf), line, col, True)))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            toks.append(("word", Word(text[i:j], line, col)))
            i = j
    toks.append(("eof", Word("", line, i - line_start + 1)))
    return toks


# Blocks nest at most TARGET_DRIVER > TARGET > GROUP > LUN (4 levels); deeper
# nesting is an error, reported at the opening '{' that crosses the limit.
MAX_BLOCK_DEPTH = 8


@dataclass
class _Open:
    """A block being read: where it opened, what it is called, its statements."""
    opener: Word | None
    owner: str
    owner_at: tuple[int, int]
    out: list[Stmt]
    words: list[Word]


def parse_statements(text: str, filename: str = "<config>") -> list[Stmt]:
    """The file as nested statements; raises ConfigError on bad syntax.

    Iterative, with an explicit stack of open blocks, so no file can reach
    Python's recursion limit; nesting deeper than MAX_BLOCK_DEPTH is an error
    naming the '{' that crosses it."""
    toks = _tokenize(text, filename)
    pos = 0
    stack = [_Open(None, "", (0, 0), [], [])]
    while True:
        cur = stack[-1]
        kind, w = toks[pos]
        if kind == "nl":
            pos += 1
            continue
        if kind == "eof":
            if cur.opener is not None:
                raise ConfigError(filename, w.line, w.col,
                                  f"expected '}}' to close {cur.owner} opened at line "
                                  f"{cur.opener.line}, column {cur.opener.col}; found end of file")
            return cur.out
        if kind == "}":
            if cur.opener is None:
                raise ConfigError(filename, w.line, w.col, "unexpected '}' with no open block")
            pos += 1
            stack.pop()
            stack[-1].out.append(Stmt(cur.words, cur.out))
            kind, w = toks[pos]
            if kind not in ("nl", "eof", "}"):
                raise ConfigError(filename, w.line, w.col,
                                  f"expected end of line after '}}', found '{w.text}'")
            continue
        if kind == "{":
            raise ConfigError(filename, w.line, w.col,
                              "expected a keyword or attribute name before '{'")
        if cur.opener is not None and w.text in _TOP_LEVEL:
            raise ConfigError(filename, w.line, w.col,
                              f"{w.text} inside {cur.owner.removesuffix(' block')} (opened at "
                              f"line {cur.owner_at[0]}, column {cur.owner_at[1]}): expected "
                              f"'}}' to close it first")
        words: list[Word] = []
        while toks[pos][0] == "word":
            words.append(toks[pos][1])
            pos += 1
        kind, w = toks[pos]
        if kind == "{":
            if len(stack) > MAX_BLOCK_DEPTH:
                raise ConfigError(filename, w.line, w.col,
                                  f"blocks nested more than {MAX_BLOCK_DEPTH} deep")
            pos += 1
            stack.append(_Open(w, " ".join(x.text for x in words[:2]) + " block",
                               (words[0].line, words[0].col), [], words))
        else:
            cur.out.append(Stmt(words))
            if kind == "nl":
                pos += 1
            elif kind not in ("eof", "}"):
                raise ConfigError(filename, w.line, w.col, f"unexpected '{w.text}'")


# -- the model ------------------------------------------------------------------

@dataclass
class Attr:
    name: str
    values: list[str]
    pos: tuple[int, int] = (0, 0)


@dataclass
class Device:
    name: str
    handler: str
    attrs: dict[str, Attr] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    shown: dict[str, str] = field(default_factory=dict)   # running: every readable value


@dataclass
class Lun:
    lun: int
    device: str
    read_only: bool = False
    ro_given: bool = False
    dev_ro: bool = False           # running: read-only because its device is
    pos: tuple[int, int] = (0, 0)
    dev_pos: tuple[int, int] = (0, 0)


@dataclass
class Group:
    name: str
    luns: dict[int, Lun] = field(default_factory=dict)
    initiators: dict[str, tuple[int, int]] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    # SCST's group attributes (addr_method, io_grouping_type, cpu_mask, black_hole)
    attrs: dict[str, Attr] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)


@dataclass
class Target:
    name: str
    attrs: dict[str, Attr] = field(default_factory=dict)
    luns: dict[int, Lun] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    shown: dict[str, str] = field(default_factory=dict)


@dataclass
class Driver:
    name: str
    attrs: dict[str, Attr] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    shown: dict[str, str] = field(default_factory=dict)


@dataclass
class TgTarget:
    name: str
    rel_tgt_id: int = 0                 # given for a target another system serves
    pos: tuple[int, int] = (0, 0)
    rel_pos: tuple[int, int] = (0, 0)


@dataclass
class TargetGroup:
    name: str
    attrs: dict[str, Attr] = field(default_factory=dict)     # group_id, state, preferred
    targets: dict[str, TgTarget] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    shown: dict[str, str] = field(default_factory=dict)


@dataclass
class DeviceGroup:
    name: str
    devices: dict[str, tuple[int, int]] = field(default_factory=dict)   # name -> position
    tgroups: dict[str, TargetGroup] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)


@dataclass
class Config:
    filename: str = "<config>"
    devices: dict[str, Device] = field(default_factory=dict)
    handlers: dict[str, tuple[int, int]] = field(default_factory=dict)  # named HANDLER blocks
    drivers: dict[str, Driver] = field(default_factory=dict)
    dgroups: dict[str, DeviceGroup] = field(default_factory=dict)      # DEVICE_GROUP blocks
    attrs: dict[str, Attr] = field(default_factory=dict)   # top level: setup_id, cluster_peers...
    shown: dict[str, str] = field(default_factory=dict)

    @property
    def alua(self) -> list[DeviceGroup]:
        return list(self.dgroups.values())


def _attr_value(words: list[Word]) -> str:
    return " ".join(w.text for w in words[1:])


def _add_attr(attrs: dict[str, Attr], st: Stmt, fn: str, multi: Iterable[str]) -> None:
    w = st.words[0]
    if len(st.words) < 2:
        raise ConfigError(fn, w.line, w.col, f"expected a value after attribute '{w.text}'")
    val = _attr_value(st.words)
    a = attrs.get(w.text)
    if a is not None:
        if w.text not in multi:
            raise ConfigError(fn, w.line, w.col, f"attribute '{w.text}' given twice "
                              f"(first at line {a.pos[0]}, column {a.pos[1]})")
        a.values.append(val)
    else:
        attrs[w.text] = Attr(w.text, [val], (w.line, w.col))


def _need_name(st: Stmt, fn: str, what: str) -> str:
    w = st.words[0]
    if len(st.words) < 2:
        raise ConfigError(fn, w.line, w.col, f"expected a name after {w.text} ({what})")
    if len(st.words) > 2:
        x = st.words[2]
        raise ConfigError(fn, x.line, x.col, f"expected '{{' or end of line after {w.text} "
                          f"{st.words[1].text}, found '{x.text}'")
    return st.words[1].text


def _parse_lun(st: Stmt, fn: str) -> Lun:
    w = st.words[0]
    if len(st.words) != 3:
        raise ConfigError(fn, w.line, w.col, "expected 'LUN <number> <device>'")
    num = st.words[1]
    if not num.text.isdigit() or int(num.text) > MAX_LUN:
        raise ConfigError(fn, num.line, num.col,
                          f"expected a LUN number 0..{MAX_LUN}, found '{num.text}'")
    lun = Lun(int(num.text), st.words[2].text, pos=(w.line, w.col),
              dev_pos=(st.words[2].line, st.words[2].col))
    for a in st.body or []:
        aw = a.words[0]
        if a.body is not None or aw.text != "read_only":
            raise ConfigError(fn, aw.line, aw.col, f"unknown LUN attribute '{aw.text}' "
                              f"(expected: read_only)")
        if len(a.words) != 2:
            raise ConfigError(fn, aw.line, aw.col, "expected 'read_only 0|1'")
        lun.read_only = _check_value("read_only", a.words[1].text, fn, a.words[1]) == "1"
        lun.ro_given = True
    return lun


def parse(text: str, filename: str = "<config>") -> Config:
    """Parse a whole file into a Config (syntax and structure only: the
    attribute names are checked by validate())."""
    fn = filename
    cfg = Config(filename=filename)
    for st in parse_statements(text, filename):
        w = st.words[0]
        kw = w.text
        if kw == "HANDLER":
            hname = _need_name(st, fn, "a dev handler such as vdisk_fileio")
            if st.body is None:
                raise ConfigError(fn, w.line, w.col, f"expected '{{' after HANDLER {hname}")
            cfg.handlers.setdefault(hname, (w.line, w.col))
            for d in st.body:
                dw = d.words[0]
                if dw.text != "DEVICE":
                    raise ConfigError(fn, dw.line, dw.col,
                                      f"expected DEVICE in HANDLER {hname}, found '{dw.text}'")
                dname = _need_name(d, fn, "the device name")
                if dname in cfg.devices:
                    p = cfg.devices[dname].pos
                    raise ConfigError(fn, dw.line, dw.col, f"device {dname} defined twice "
                                      f"(first at line {p[0]}, column {p[1]})")
                dev = Device(dname, hname, pos=(dw.line, dw.col))
                for a in d.body or []:
                    if a.body is not None:
                        aw = a.words[0]
                        raise ConfigError(fn, aw.line, aw.col,
                                          f"unexpected block '{aw.text}' in DEVICE {dname}")
                    _add_attr(dev.attrs, a, fn, ())
                cfg.devices[dname] = dev
        elif kw == "TARGET_DRIVER":
            dname = _need_name(st, fn, "a target driver such as iscsi")
            if st.body is None:
                raise ConfigError(fn, w.line, w.col, f"expected '{{' after TARGET_DRIVER {dname}")
            drv = cfg.drivers.get(dname) or Driver(dname, pos=(w.line, w.col))
            cfg.drivers[dname] = drv
            for t in st.body:
                tw = t.words[0]
                if tw.text == "TARGET":
                    tname = _need_name(t, fn, "the target name")
                    if tname in drv.targets:
                        raise ConfigError(fn, tw.line, tw.col, f"target {tname} defined twice")
                    drv.targets[tname] = _parse_target(t, tname, fn)
                elif t.body is not None:
                    raise ConfigError(fn, tw.line, tw.col,
                                      f"expected TARGET or an attribute in TARGET_DRIVER "
                                      f"{dname}, found block '{tw.text}'")
                else:
                    _add_attr(drv.attrs, t, fn, ("IncomingUser", "OutgoingUser", "portal"))
        elif kw == "DEVICE_GROUP":
            gname = _need_name(st, fn, "the ALUA device group name")
            if st.body is None:
                raise ConfigError(fn, w.line, w.col, "expected '{' after DEVICE_GROUP name")
            if gname in cfg.dgroups:
                p = cfg.dgroups[gname].pos
                raise ConfigError(fn, w.line, w.col, f"device group {gname} defined twice "
                                  f"(first at line {p[0]}, column {p[1]})")
            cfg.dgroups[gname] = _parse_dgroup(st, gname, fn)
        elif st.body is None and kw in ROOT_ATTRS:
            _add_attr(cfg.attrs, st, fn, ())
        else:
            raise ConfigError(fn, w.line, w.col,
                              f"expected HANDLER, TARGET_DRIVER, DEVICE_GROUP or one of "
                              f"{_known(ROOT_ATTRS)}, found '{kw}'")
    return cfg


def _parse_target(t: Stmt, tname: str, fn: str) -> Target:
    tw = t.words[0]
    tgt = Target(tname, pos=(tw.line, tw.col))
    for s in t.body or []:
        sw = s.words[0]
        if sw.text == "LUN":
            lun = _parse_lun(s, fn)
            if lun.lun in tgt.luns:
                raise ConfigError(fn, sw.line, sw.col, f"LUN {lun.lun} given twice in {tname}")
            tgt.luns[lun.lun] = lun
        elif sw.text == "GROUP":
            gname = _need_name(s, fn, "the initiator group name")
            if gname in tgt.groups:
                raise ConfigError(fn, sw.line, sw.col, f"group {gname} defined twice in {tname}")
            g = Group(gname, pos=(sw.line, sw.col))
            for x in s.body or []:
                xw = x.words[0]
                if xw.text == "LUN":
                    lun = _parse_lun(x, fn)
                    if lun.lun in g.luns:
                        raise ConfigError(fn, xw.line, xw.col,
                                          f"LUN {lun.lun} given twice in group {gname}")
                    g.luns[lun.lun] = lun
                elif xw.text == "INITIATOR":
                    if len(x.words) != 2 or x.body is not None:
                        raise ConfigError(fn, xw.line, xw.col, "expected 'INITIATOR <name or pattern>'")
                    g.initiators[x.words[1].text] = (xw.line, xw.col)
                elif xw.text in GROUP_ATTRS and x.body is None:
                    _add_attr(g.attrs, x, fn, ())
                else:
                    raise ConfigError(fn, xw.line, xw.col,
                                      f"expected LUN, INITIATOR or one of {', '.join(GROUP_ATTRS)} "
                                      f"in GROUP {gname}, found '{xw.text}'")
            tgt.groups[gname] = g
        elif s.body is not None:
            raise ConfigError(fn, sw.line, sw.col,
                              f"expected LUN, GROUP or an attribute in TARGET {tname}, "
                              f"found block '{sw.text}'")
        else:
            _add_attr(tgt.attrs, s, fn, ("IncomingUser", "OutgoingUser", "allowed_portal"))
    return tgt


_ALUA_TG_ATTRS = ("group_id", "state", "preferred")
GROUP_ATTRS = ("addr_method", "black_hole", "cpu_mask", "io_grouping_type")


def _check_tg_value(name: str, w: Word, fn: str) -> str:
    """Validate and normalise a TARGET_GROUP attribute value."""
    v = w.text.strip()
    if name == "group_id":
        if not v.isdigit() or not 1 <= int(v) <= 0xFFFF:
            raise ConfigError(fn, w.line, w.col, f"expected a group_id 1..65535, found '{v}'")
        return str(int(v))
    if name == "state":
        state = scst_alua_name_to_state(v)
        if state == SCST_TG_STATE_UNDEFINED:
            raise ConfigError(fn, w.line, w.col, f"expected an ALUA state "
                              f"({', '.join(scst_alua_state_names())}), found '{v}'")
        return scst_alua_state_name(state) or v
    lv = v.lower()                               # preferred: a boolean
    if lv in ("1", "y", "yes", "on", "true"):
        return "1"
    if lv in ("0", "n", "no", "off", "false"):
        return "0"
    raise ConfigError(fn, w.line, w.col, f"expected 0 or 1 for {name}, found '{v}'")


def _parse_dgroup(st: Stmt, gname: str, fn: str) -> DeviceGroup:
    dw = st.words[0]
    dg = DeviceGroup(gname, pos=(dw.line, dw.col))
    for s in st.body or []:
        w = s.words[0]
        if w.text == "DEVICE" and s.body is None:
            name = _need_name(s, fn, "a device name")
            if name in dg.devices:
                p = dg.devices[name]
                raise ConfigError(fn, w.line, w.col, f"device {name} given twice in DEVICE_GROUP "
                                  f"{gname} (first at line {p[0]}, column {p[1]})")
            dg.devices[name] = (s.words[1].line, s.words[1].col)
        elif w.text == "TARGET_GROUP" and s.body is not None:
            tname = _need_name(s, fn, "the target group name")
            if tname in dg.tgroups:
                raise ConfigError(fn, w.line, w.col,
                                  f"target group {tname} defined twice in DEVICE_GROUP {gname}")
            dg.tgroups[tname] = _parse_tgroup(s, tname, fn)
        else:
            raise ConfigError(fn, w.line, w.col,
                              f"expected 'DEVICE <name>' or 'TARGET_GROUP <name> {{' in "
                              f"DEVICE_GROUP {gname}, found '{w.text}'")
    return dg


def _parse_tgroup(s: Stmt, tname: str, fn: str) -> TargetGroup:
    w0 = s.words[0]
    tg = TargetGroup(tname, pos=(w0.line, w0.col))
    for x in s.body or []:
        xw = x.words[0]
        if xw.text == "TARGET":
            name = _need_name(x, fn, "a target name")
            if name in tg.targets:
                raise ConfigError(fn, xw.line, xw.col, f"target {name} given twice in "
                                  f"TARGET_GROUP {tname}")
            t = TgTarget(name, pos=(xw.line, xw.col))
            for y in x.body or []:
                yw = y.words[0]
                if y.body is not None or yw.text != "rel_tgt_id" or len(y.words) != 2:
                    raise ConfigError(fn, yw.line, yw.col, f"expected 'rel_tgt_id <number>' in "
                                      f"TARGET {name}, found '{yw.text}'")
                v = y.words[1]
                if not v.text.isdigit() or int(v.text) > 0xFFFF:
                    raise ConfigError(fn, v.line, v.col,
                                      f"expected a rel_tgt_id 0..65535, found '{v.text}'")
                t.rel_tgt_id, t.rel_pos = int(v.text), (yw.line, yw.col)
            tg.targets[name] = t
        elif xw.text in _ALUA_TG_ATTRS and x.body is None:
            if len(x.words) != 2:
                raise ConfigError(fn, xw.line, xw.col, f"expected '{xw.text} <value>'")
            _add_attr(tg.attrs, x, fn, ())
            tg.attrs[xw.text].values = [_check_tg_value(xw.text, x.words[1], fn)]
        else:
            raise ConfigError(fn, xw.line, xw.col, f"expected TARGET or one of "
                              f"{', '.join(_ALUA_TG_ATTRS)} in TARGET_GROUP {tname}, "
                              f"found '{xw.text}'")
    return tg


# -- values -------------------------------------------------------------------

def _parse_size(text: str) -> int | None:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t[-1:] in "KMGTP" and t[-1:]:
        mult = 1 << (10 * ("KMGTP".index(t[-1]) + 1))
        t = t[:-1]
    return int(t) * mult if t.isdigit() else None


def _check_value(name: str, value: str, fn: str, where: Word | Attr) -> str:
    """Validate and normalise a value; raise ConfigError naming its place."""
    line, col = (where.line, where.col) if isinstance(where, Word) else where.pos
    v = value.strip()
    if name in _BOOL_ATTRS:
        lv = v.lower()
        if lv in ("1", "y", "yes", "on", "true"):
            return "1"
        if lv in ("0", "n", "no", "off", "false"):
            return "0"
        raise ConfigError(fn, line, col, f"expected 0 or 1 for {name}, found '{value}'")
    if name in _YESNO_ATTRS:
        if v.lower() in ("yes", "1"):
            return "Yes"
        if v.lower() in ("no", "0"):
            return "No"
        raise ConfigError(fn, line, col, f"expected Yes or No for {name}, found '{value}'")
    if name in _INT_ATTRS:
        if not v.isdigit():
            raise ConfigError(fn, line, col, f"expected a number for {name}, found '{value}'")
        n = int(v)
        lo, hi = _INT_RANGES.get(name, (0, n))
        if not lo <= n <= hi or name in _POW2_ATTRS and n & (n - 1):
            what = "a power of two" if name in _POW2_ATTRS else "a number"
            raise ConfigError(fn, line, col,
                              f"expected {what} from {lo} to {hi} for {name}, found '{value}'")
        return str(n)
    if name in _DIGEST_ATTRS:
        parts = [p.strip() for p in v.split(",")]
        if not parts or any(p not in ("None", "CRC32C") for p in parts):
            raise ConfigError(fn, line, col,
                              f"expected None, CRC32C or 'CRC32C,None' for {name}, found '{value}'")
        return ",".join(parts)
    if name in _SIZE_ATTRS:
        n = _parse_size(v)
        if n is None:
            raise ConfigError(fn, line, col, f"expected a size such as 10G for {name}, found '{value}'")
        return str(n)
    return v


def _norm(name: str, value: str) -> str:
    try:
        return _check_value(name, value, "", Attr(name, []))
    except ConfigError:
        return value.strip()


# -- validation against what the running target knows -------------------------

def _err(cfg: Config, pos: tuple[int, int], msg: str) -> ConfigError:
    return ConfigError(cfg.filename, pos[0], pos[1], msg)


def _known(names: Iterable[str]) -> str:
    names = sorted(set(names))
    return ", ".join(names) if names else "none"


def validate(cfg: Config, schema: dict, running: "Config | None" = None, force: bool = False) -> None:
    """Check names, attributes, values and references; raise ConfigError."""
    handlers = schema["handlers"]
    for a in cfg.attrs.values():
        if a.name not in schema.get("root_attrs", ()):
            raise _err(cfg, a.pos, f"attribute '{a.name}' is not known to the running target")
    for hname, pos in cfg.handlers.items():
        if hname not in handlers:
            raise _err(cfg, pos, f"unknown handler '{hname}' (expected one of: {_known(handlers)})")
    for dev in cfg.devices.values():
        params = handlers[dev.handler]["params"]
        for a in dev.attrs.values():
            if a.name not in params:
                raise _err(cfg, a.pos, f"unknown attribute '{a.name}' for DEVICE {dev.name} of "
                           f"HANDLER {dev.handler} (expected one of: {_known(params)})")
            _check_value(a.name, a.values[0], cfg.filename, a)
        if dev.handler in ("vdisk_fileio", "vdisk_blockio") and "filename" not in dev.attrs:
            raise _err(cfg, dev.pos, f"DEVICE {dev.name} of HANDLER {dev.handler} needs a "
                       f"'filename' attribute")
        if dev.handler == "vdisk_nbd" and "uri" not in dev.attrs:
            raise _err(cfg, dev.pos, f"DEVICE {dev.name} of HANDLER vdisk_nbd needs a 'uri' "
                       f"attribute (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
    devices = set(cfg.devices)
    if running is not None and not force:
        devices |= set(running.devices)
    drivers = schema["drivers"]
    for drv in cfg.drivers.values():
        ds = drivers.get(drv.name)
        if ds is None:
            raise _err(cfg, drv.pos, f"unknown target driver '{drv.name}' "
                       f"(expected one of: {_known(drivers)})")
        allowed = ds["attrs"] + ds["multi"]
        for a in drv.attrs.values():
            if a.name not in allowed:
                raise _err(cfg, a.pos, f"unknown attribute '{a.name}' for TARGET_DRIVER "
                           f"{drv.name} (expected one of: {_known(allowed)})")
            for v in a.values:
                _check_value(a.name, v, cfg.filename, a)
        tallowed = ds["target_attrs"] + ds["target_multi"] + ds["target_params"]
        for tgt in drv.targets.values():
            for a in tgt.attrs.values():
                if a.name not in tallowed:
                    raise _err(cfg, a.pos, f"unknown attribute '{a.name}' for TARGET {tgt.name} "
                               f"(expected one of: {_known(tallowed)})")
                for v in a.values:
                    _check_value(a.name, v, cfg.filename, a)
            seen: dict[str, str] = {}
            for g in tgt.groups.values():
                for ini, pos in g.initiators.items():
                    if ini in seen:
                        raise _err(cfg, pos, f"initiator {ini} is in groups {seen[ini]} and "
                                   f"{g.name} of TARGET {tgt.name}; it may be in one only")
                    seen[ini] = g.name
            for lun in list(tgt.luns.values()) + [x for g in tgt.groups.values() for x in g.luns.values()]:
                if lun.device not in devices:
                    raise _err(cfg, lun.dev_pos, f"LUN {lun.lun} names device '{lun.device}', "
                               f"which is neither in this file nor running")
    _validate_dgroups(cfg, devices)


def _validate_dgroups(cfg: Config, devices: set[str]) -> None:
    """ALUA references: devices exist and sit in one group; group_ids and
    targets are unique within a device group."""
    owner: dict[str, str] = {}
    for dg in cfg.dgroups.values():
        for d, pos in dg.devices.items():
            if d not in devices:
                raise _err(cfg, pos, f"DEVICE_GROUP {dg.name} names device '{d}', "
                           f"which is neither in this file nor running")
            if d in owner:
                raise _err(cfg, pos, f"device {d} is in DEVICE_GROUPs {owner[d]} and {dg.name}; "
                           f"it may be in one only")
            owner[d] = dg.name
        ids: dict[str, str] = {}
        tgts: dict[str, str] = {}
        for tg in dg.tgroups.values():
            gid = tg.attrs.get("group_id")
            if gid is not None:
                if gid.values[0] in ids:
                    raise _err(cfg, gid.pos, f"group_id {gid.values[0]} of TARGET_GROUP {tg.name} "
                               f"is used by TARGET_GROUP {ids[gid.values[0]]} too")
                ids[gid.values[0]] = tg.name
            for t in tg.targets.values():
                if t.name in tgts:
                    raise _err(cfg, t.pos, f"target {t.name} is in TARGET_GROUPs {tgts[t.name]} "
                               f"and {tg.name} of DEVICE_GROUP {dg.name}; it may be in one only")
                tgts[t.name] = tg.name


# -- the running configuration, read from the tree ------------------------------

class Tree:
    """The accessor the planner uses. read() returns text or a negative
    errno, listdir() (name, kind) pairs with kind 'dir', 'file' or 'link'."""

    def read(self, path: str) -> "str | int": raise NotImplementedError
    def write(self, path: str, text: str) -> int: raise NotImplementedError
    def listdir(self, path: str) -> "list[tuple[str, str]] | int": raise NotImplementedError
    def readlink(self, path: str) -> "str | int": raise NotImplementedError


def _split_key(text: "str | int") -> tuple[list[str], bool]:
    if isinstance(text, int):
        return [], False
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    key = KEY_MARK in lines
    return [ln for ln in lines if ln != KEY_MARK], key


# the top level's attributes (/sys/kernel/scst_tgt/NAME) scst.conf may set
ROOT_ATTRS = ("setup_id", "threads", "max_tasklet_cmd", "cluster_listen", "cluster_peers")
_DEV_SKIP = frozenset(("type", "commands", "threads_num", "size_mb", "resync_size"))
_TGT_SKIP = frozenset(("tid",))


# A multi-valued attribute is one file per value: NAME, NAME1, NAME2, ...
_MULTI_FILE_RE = re.compile(r"^(IncomingUser|OutgoingUser|allowed_portal)(\d*)$")


def _read_attrs(tree: Tree, path: str, skip: Iterable[str] = ()) -> tuple[dict[str, Attr], dict[str, str]]:
    attrs: dict[str, Attr] = {}
    shown: dict[str, str] = {}
    multi: dict[str, list[tuple[int, str]]] = {}
    ents = tree.listdir(path)
    for name, kind in ([] if isinstance(ents, int) else ents):
        if kind != "file" or name == "mgmt" or name in skip:
            continue
        text = tree.read(f"{path}/{name}")
        if isinstance(text, int):
            continue
        values, key = _split_key(text)
        m = _MULTI_FILE_RE.match(name)
        if m is not None:
            if key and values:
                multi.setdefault(m.group(1), []).append((int(m.group(2) or 0), values[0]))
            continue
        shown[name] = "\n".join(values)
        if key and values:
            attrs[name] = Attr(name, values)
    for name, vals in multi.items():
        attrs[name] = Attr(name, [v for _, v in sorted(vals)])
        shown[name] = "\n".join(attrs[name].values)
    return attrs, shown


def _add_unkeyed(attrs: dict[str, Attr], shown: dict[str, str], names: Iterable[str]) -> None:
    """Take the named attributes into attrs although the tree shows them
    without [key]: `enabled` (SCST prints it bare, scst.conf still says it)
    and the iSCSI driver's uscst-only `portal` list."""
    for name in names:
        if name in shown and name not in attrs and shown[name]:
            attrs[name] = Attr(name, shown[name].split("\n"))


def _read_luns(tree: Tree, path: str) -> dict[int, Lun]:
    luns: dict[int, Lun] = {}
    ents = tree.listdir(path)
    for name, kind in ([] if isinstance(ents, int) else ents):
        if kind != "dir" or not name.isdigit():
            continue
        link = tree.readlink(f"{path}/{name}/device")
        dev = link.rsplit("/", 1)[-1] if isinstance(link, str) else "?"
        # The LUN's own flag carries the key mark; without it a 1 comes
        # from a read-only device.
        ro, key = _split_key(tree.read(f"{path}/{name}/read_only"))
        on = ro[:1] == ["1"]
        luns[int(name)] = Lun(int(name), dev, read_only=on and key, dev_ro=on and not key)
    return luns


def _read_dgroups(tree: Tree) -> dict[str, DeviceGroup]:
    out: dict[str, DeviceGroup] = {}
    base = f"{SCST_ROOT}/device_groups"
    ents = tree.listdir(base)
    for gname, kind in ([] if isinstance(ents, int) else ents):
        if kind != "dir":
            continue
        dg = DeviceGroup(gname)
        devs = tree.listdir(f"{base}/{gname}/devices")
        for dname, dkind in ([] if isinstance(devs, int) else devs):
            if dkind == "link":
                dg.devices[dname] = (0, 0)
        tp = f"{base}/{gname}/target_groups"
        tgs = tree.listdir(tp)
        for tname, tkind in ([] if isinstance(tgs, int) else tgs):
            if tkind != "dir":
                continue
            attrs, shown = _read_attrs(tree, f"{tp}/{tname}")
            tg = TargetGroup(tname, attrs, shown=shown)
            tents = tree.listdir(f"{tp}/{tname}")
            for xname, xkind in ([] if isinstance(tents, int) else tents):
                if xkind != "dir":
                    continue
                rel, key = _split_key(tree.read(f"{tp}/{tname}/{xname}/rel_tgt_id"))
                tg.targets[xname] = TgTarget(xname, int(rel[0]) if key and rel
                                             and rel[0].isdigit() else 0)
            dg.tgroups[tname] = tg
        out[gname] = dg
    return out


def read_running(tree: Tree, alua: "list | None" = None) -> Config:
    """The running configuration, read from the tree. alua is accepted
    for older callers and ignored: device groups are read from the tree."""
    cfg = Config(filename="<running>")
    R = SCST_ROOT
    for name in ROOT_ATTRS:
        values, key = _split_key(tree.read(f"{R}/{name}"))
        if values:
            cfg.shown[name] = values[0]
            if key:
                cfg.attrs[name] = Attr(name, values[:1])
    hents = tree.listdir(f"{R}/handlers")
    for hname, kind in ([] if isinstance(hents, int) else hents):
        if kind != "dir":
            continue
        for dname, dkind in tree.listdir(f"{R}/handlers/{hname}"):
            if dkind != "link":
                continue
            attrs, shown = _read_attrs(tree, f"{R}/devices/{dname}", _DEV_SKIP)
            cfg.devices[dname] = Device(dname, hname, attrs, shown=shown)
        cfg.handlers[hname] = (0, 0)
    dents = tree.listdir(f"{R}/targets")
    for dname, kind in ([] if isinstance(dents, int) else dents):
        if kind != "dir":
            continue
        dp = f"{R}/targets/{dname}"
        attrs, shown = _read_attrs(tree, dp)
        _add_unkeyed(attrs, shown, ("enabled", "portal"))
        drv = Driver(dname, attrs, shown=shown)
        for tname, tkind in tree.listdir(dp):
            if tkind != "dir":
                continue
            tp = f"{dp}/{tname}"
            tattrs, tshown = _read_attrs(tree, tp, _TGT_SKIP)
            _add_unkeyed(tattrs, tshown, ("enabled",))
            tgt = Target(tname, tattrs, _read_luns(tree, f"{tp}/luns"), shown=tshown)
            gents = tree.listdir(f"{tp}/ini_groups")
            for gname, gkind in ([] if isinstance(gents, int) else gents):
                if gkind != "dir":
                    continue
                g = Group(gname, _read_luns(tree, f"{tp}/ini_groups/{gname}/luns"))
                g.attrs, g.shown = _read_attrs(tree, f"{tp}/ini_groups/{gname}")
                for iname, ikind in tree.listdir(f"{tp}/ini_groups/{gname}/initiators"):
                    if ikind == "file" and iname != "mgmt":
                        g.initiators[iname] = (0, 0)
                tgt.groups[gname] = g
            drv.targets[tname] = tgt
        cfg.drivers[dname] = drv
    cfg.dgroups = _read_dgroups(tree)
    return cfg


# -- writing --------------------------------------------------------------------

def _q(v: str) -> str:
    if v and not any(c.isspace() or c in _SPECIAL for c in v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attr_lines(attrs: dict[str, Attr], indent: str) -> list[str]:
    out = []
    for name in sorted(attrs):
        for v in attrs[name].values:
            out.append(f"{indent}{name} {_q(v)}")
    return out


def _lun_lines(luns: dict[int, Lun], indent: str) -> list[str]:
    out = []
    for n in sorted(luns):
        lun = luns[n]
        if lun.read_only:
            out += [f"{indent}LUN {n} {_q(lun.device)} {{", f"{indent}\tread_only 1", f"{indent}}}"]
        else:
            out.append(f"{indent}LUN {n} {_q(lun.device)}")
    return out


def _dgroup_lines(dg: DeviceGroup) -> list[str]:
    """One DEVICE_GROUP block in scstadmin's layout."""
    out = [f"DEVICE_GROUP {_q(dg.name)} {{"]
    out += [f"\tDEVICE {_q(d)}" for d in sorted(dg.devices)]
    for tn in sorted(dg.tgroups):
        tg = dg.tgroups[tn]
        out += ["", f"\tTARGET_GROUP {_q(tn)} {{"]
        out += _attr_lines(tg.attrs, "\t\t")
        if tg.attrs and tg.targets:
            out.append("")
        for name in sorted(tg.targets):
            t = tg.targets[name]
            if t.rel_tgt_id:
                out += [f"\t\tTARGET {_q(name)} {{", f"\t\t\trel_tgt_id {t.rel_tgt_id}", "\t\t}"]
            else:
                out.append(f"\t\tTARGET {_q(name)}")
        out.append("\t}")
    return out + ["}"]


def write(cfg: Config, header: str = "# Automatically generated by uscst.") -> str:
    """scst.conf text for cfg, in SCST's layout (tabs, sorted names)."""
    out = [header, ""]
    if cfg.attrs:
        out += _attr_lines(cfg.attrs, "") + [""]
    by_handler: dict[str, list[Device]] = {}
    for d in cfg.devices.values():
        by_handler.setdefault(d.handler, []).append(d)
    for h in sorted(by_handler):
        out.append(f"HANDLER {h} {{")
        for d in sorted(by_handler[h], key=lambda x: x.name):
            if d.attrs:
                out.append(f"\tDEVICE {_q(d.name)} {{")
                out += _attr_lines(d.attrs, "\t\t")
                out.append("\t}")
            else:
                out.append(f"\tDEVICE {_q(d.name)}")
        out += ["}", ""]
    for dn in sorted(cfg.drivers):
        drv = cfg.drivers[dn]
        out.append(f"TARGET_DRIVER {dn} {{")
        out += _attr_lines(drv.attrs, "\t")
        for tn in sorted(drv.targets):
            t = drv.targets[tn]
            out += ["", f"\tTARGET {_q(tn)} {{"]
            out += _attr_lines(t.attrs, "\t\t")
            if t.luns:
                out += [""] + _lun_lines(t.luns, "\t\t")
            for gn in sorted(t.groups):
                g = t.groups[gn]
                out += ["", f"\t\tGROUP {_q(gn)} {{"]
                out += _attr_lines(g.attrs, "\t\t\t")
                if g.attrs and (g.luns or g.initiators):
                    out.append("")
                out += _lun_lines(g.luns, "\t\t\t")
                if g.luns and g.initiators:
                    out.append("")
                out += [f"\t\t\tINITIATOR {_q(i)}" for i in sorted(g.initiators)]
                out.append("\t\t}")
            out.append("\t}")
        out += ["}", ""]
    for gn in sorted(cfg.dgroups):
        out += _dgroup_lines(cfg.dgroups[gn]) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


# -- planning the difference ----------------------------------------------------

@dataclass
class Action:
    path: str           # under SCST_ROOT
    text: str           # what is written
    what: str           # one line for the user


def _params(attrs: dict[str, Attr], allowed: Iterable[str]) -> str:
    allowed = set(allowed)
    return "; ".join(f"{a.name}={a.values[0]}" for a in attrs.values() if a.name in allowed)


def plan(cfg: Config, running: Config, schema: dict, force: bool = False) -> list[Action]:
    """The writes that turn running into cfg. Raises ConfigError (with the
    file position) for a change that cannot be made."""
    validate(cfg, schema, running, force)
    first: list[Action] = []       # disables and removals needed before the rest
    acts: list[Action] = []
    last: list[Action] = []        # removals under force, then enables
    recreated: set[str] = set()
    # the node's own attributes first; the cluster link once its devices
    # exist (a peer's state for them must find them)
    link: list[Action] = []
    for a in cfg.attrs.values():
        if _norm(a.name, a.values[0]) != _norm(a.name, running.shown.get(a.name, "")):
            (link if a.name.startswith("cluster_") else acts).append(
                Action(f"/{a.name}", a.values[0], f"set {a.name} {a.values[0]}"))
    # devices
    for dev in cfg.devices.values():
        hs = schema["handlers"][dev.handler]
        r = running.devices.get(dev.name)
        if r is not None and r.handler != dev.handler:
            if not force:
                raise _err(cfg, dev.pos, f"device {dev.name} runs under handler {r.handler}, "
                           f"not {dev.handler}; use --force to re-create it")
            recreated.add(dev.name)
        elif r is not None:
            for a in dev.attrs.values():
                if a.name in hs["create_only"]:
                    continue
                want = _norm(a.name, a.values[0])
                have = _norm(a.name, r.shown.get(a.name, ""))
                if want == have:
                    continue
                if a.name in hs["live"]:
                    acts.append(Action(f"/devices/{dev.name}/{a.name}", a.values[0],
                                       f"set device {dev.name} {a.name} {a.values[0]}"))
                elif force:
                    recreated.add(dev.name)
                else:
                    raise _err(cfg, a.pos, f"attribute '{a.name}' of device {dev.name} cannot "
                               f"change while it exists (running: {have}, file: {want}); "
                               f"use --force to re-create the device")
        if r is None or dev.name in recreated:
            p = _params(dev.attrs, hs["params"])
            acts.append(Action(f"/handlers/{dev.handler}/mgmt",
                               f"add_device {dev.name}" + (f" {p}" if p else ""),
                               f"add device {dev.name} ({dev.handler})"))
    for name in recreated:
        r = running.devices[name]
        for drv in running.drivers.values():
            for t in drv.targets.values():
                for lun in t.luns.values():
                    if lun.device == name:
                        first.append(Action(f"/targets/{drv.name}/{t.name}/luns/mgmt",
                                            f"del {lun.lun}", f"del LUN {lun.lun} of {t.name}"))
                for g in t.groups.values():
                    for lun in g.luns.values():
                        if lun.device == name:
                            first.append(Action(
                                f"/targets/{drv.name}/{t.name}/ini_groups/{g.name}/luns/mgmt",
                                f"del {lun.lun}", f"del LUN {lun.lun} of {t.name}/{g.name}"))
        first.append(Action(f"/handlers/{r.handler}/mgmt", f"del_device {name}",
                            f"del device {name} (to re-create it)"))
    # drivers and targets
    for drv in cfg.drivers.values():
        ds = schema["drivers"][drv.name]
        rd = running.drivers.get(drv.name) or Driver(drv.name)
        dp = f"/targets/{drv.name}"
        for a in drv.attrs.values():
            if a.name in ds["multi"]:
                have = rd.attrs.get(a.name, Attr(a.name, [])).values
                for v in a.values:
                    if v not in have:
                        acts.append(Action(f"{dp}/mgmt", f"add_attribute {a.name} {v}",
                                           scst_redact_secrets(f"add {drv.name} {a.name} {v}")))
                if force:
                    for v in have:
                        if v not in a.values:
                            last.append(Action(f"{dp}/mgmt", f"del_attribute {a.name} {v}",
                                               scst_redact_secrets(f"del {drv.name} {a.name} {v}")))
            elif _norm(a.name, a.values[0]) != _norm(a.name, rd.shown.get(a.name, "")):
                (last if a.name == "enabled" and _norm(a.name, a.values[0]) == "1" else acts).append(
                    Action(f"{dp}/{a.name}", a.values[0], f"set {drv.name} {a.name} {a.values[0]}"))
        for tgt in drv.targets.values():
            _plan_target(cfg, drv.name, ds, tgt, rd.targets.get(tgt.name), recreated, force,
                         first, acts, last)
        if force:
            for tname in rd.targets:
                if tname not in drv.targets:
                    last.append(Action(f"{dp}/mgmt", f"del_target {tname}", f"del target {tname}"))
    _plan_dgroups(cfg, running, recreated, force, acts, last)
    acts += link
    if force:
        wanted = set(cfg.devices)
        for name, r in running.devices.items():
            if name not in wanted:
                last.append(Action(f"/handlers/{r.handler}/mgmt", f"del_device {name}",
                                   f"del device {name}"))
    enables = [a for a in last if a.path.endswith("/enabled")]
    rest = [a for a in last if not a.path.endswith("/enabled")]
    return first + acts + rest + enables


def _plan_luns(cfg: Config, path: str, label: str, want: dict[int, Lun], have: dict[int, Lun],
               recreated: set[str], force: bool, acts: list[Action], last: list[Action]) -> None:
    for n, lun in sorted(want.items()):
        r = have.get(n)
        if r is not None and r.device in recreated:
            r = None
        ro = " read_only=1" if lun.read_only else ""
        if r is None:
            acts.append(Action(f"{path}/mgmt", f"add {lun.device} {n}{ro}",
                               f"add LUN {n} ({lun.device}) to {label}"))
        elif r.device != lun.device or (r.read_only or r.dev_ro) != (lun.read_only or r.dev_ro):
            acts.append(Action(f"{path}/mgmt", f"replace {lun.device} {n}{ro}",
                               f"replace LUN {n} of {label} with {lun.device}"))
    if force:
        for n, r in sorted(have.items()):
            if n not in want and r.device not in recreated:
                last.append(Action(f"{path}/mgmt", f"del {n}", f"del LUN {n} of {label}"))


def _plan_target(cfg: Config, dname: str, ds: dict, tgt: Target, rt: Target | None,
                 recreated: set[str], force: bool, first: list[Action], acts: list[Action],
                 last: list[Action]) -> None:
    dp = f"/targets/{dname}"
    tp = f"{dp}/{tgt.name}"
    if rt is None:
        p = _params(tgt.attrs, ds["target_params"])
        acts.append(Action(f"{dp}/mgmt", f"add_target {tgt.name}" + (f" {p}" if p else ""),
                           f"add target {tgt.name}"))
        rt = Target(tgt.name, shown={"enabled": "0"})
    for a in tgt.attrs.values():
        if a.name in ds["target_params"]:
            continue
        if a.name in ds["target_multi"]:
            have = rt.attrs.get(a.name, Attr(a.name, [])).values
            for v in a.values:
                if v not in have:
                    acts.append(Action(f"{dp}/mgmt", f"add_target_attribute {tgt.name} {a.name} {v}",
                                       scst_redact_secrets(f"add {tgt.name} {a.name} {v}")))
            if force:
                for v in have:
                    if v not in a.values:
                        last.append(Action(f"{dp}/mgmt",
                                           f"del_target_attribute {tgt.name} {a.name} {v}",
                                           scst_redact_secrets(f"del {tgt.name} {a.name} {v}")))
            continue
        want = _norm(a.name, a.values[0])
        if want == _norm(a.name, rt.shown.get(a.name, "")):
            continue
        act = Action(f"{tp}/{a.name}", a.values[0], f"set {tgt.name} {a.name} {a.values[0]}")
        if a.name == "enabled":
            (last if want == "1" else first).append(act)
        else:
            acts.append(act)
    _plan_luns(cfg, f"{tp}/luns", tgt.name, tgt.luns, rt.luns, recreated, force, acts, last)
    owner = {i: g.name for g in rt.groups.values() for i in g.initiators}
    for g in tgt.groups.values():
        gp = f"{tp}/ini_groups/{g.name}"
        rg = rt.groups.get(g.name)
        if rg is None:
            acts.append(Action(f"{tp}/ini_groups/mgmt", f"create {g.name}",
                               f"create group {g.name} in {tgt.name}"))
            rg = Group(g.name)
        for a in g.attrs.values():
            if a.values[0] != rg.shown.get(a.name):
                acts.append(Action(f"{gp}/{a.name}", a.values[0],
                                   f"set {tgt.name}/{g.name} {a.name} {a.values[0]}"))
        _plan_luns(cfg, f"{gp}/luns", f"{tgt.name}/{g.name}", g.luns, rg.luns, recreated, force,
                   acts, last)
    for g in tgt.groups.values():
        gp = f"{tp}/ini_groups/{g.name}"
        for ini in g.initiators:
            cur = owner.get(ini)
            if cur == g.name:
                continue
            if cur is not None:
                acts.append(Action(f"{tp}/ini_groups/{cur}/initiators/mgmt", f"move {ini} {g.name}",
                                   f"move initiator {ini} from {cur} to {g.name}"))
            else:
                acts.append(Action(f"{gp}/initiators/mgmt", f"add {ini}",
                                   f"add initiator {ini} to {tgt.name}/{g.name}"))
        if force and g.name in rt.groups:
            for ini in rt.groups[g.name].initiators:
                if ini not in g.initiators and not any(ini in x.initiators for x in tgt.groups.values()):
                    last.append(Action(f"{gp}/initiators/mgmt", f"del {ini}",
                                       f"del initiator {ini} from {tgt.name}/{g.name}"))
    if force:
        for gname in rt.groups:
            if gname not in tgt.groups:
                last.append(Action(f"{tp}/ini_groups/mgmt", f"del {gname}",
                                   f"del group {gname} of {tgt.name}"))


_DG = "/device_groups"
_TG_DEFAULTS = {"group_id": "0", "state": "active", "preferred": "0"}   # a new target group


def _plan_dgroups(cfg: Config, running: Config, recreated: set[str], force: bool,
                  acts: list[Action], last: list[Action]) -> None:
    """ALUA: device groups after the devices and targets they name exist;
    removals (force) before devices are deleted."""
    # where each device and target is now, to move rather than fail
    dev_in = {d: g.name for g in running.dgroups.values() for d in g.devices
              if d not in recreated}
    for dg in cfg.dgroups.values():
        rdg = running.dgroups.get(dg.name)
        gp = f"{_DG}/{dg.name}"
        if rdg is None:
            acts.append(Action(f"{_DG}/mgmt", f"add {dg.name}", f"create device group {dg.name}"))
            rdg = DeviceGroup(dg.name)
        for d in dg.devices:
            cur = dev_in.get(d)
            if cur == dg.name:
                continue
            if cur is not None:
                acts.append(Action(f"{_DG}/{cur}/devices/mgmt", f"del {d}",
                                   f"move device {d} out of device group {cur}"))
            acts.append(Action(f"{gp}/devices/mgmt", f"add {d}",
                               f"add device {d} to device group {dg.name}"))
        tgt_in = {t: g.name for g in rdg.tgroups.values() for t in g.targets}
        for tg in dg.tgroups.values():
            rtg = rdg.tgroups.get(tg.name)
            tp = f"{gp}/target_groups/{tg.name}"
            if rtg is None:
                acts.append(Action(f"{gp}/target_groups/mgmt", f"add {tg.name}",
                                   f"create target group {dg.name}/{tg.name}"))
                rtg = TargetGroup(tg.name, shown=dict(_TG_DEFAULTS))
            for t in tg.targets.values():
                cur = tgt_in.get(t.name)
                if cur != tg.name:
                    if cur is not None:
                        acts.append(Action(f"{gp}/target_groups/{cur}/mgmt", f"del {t.name}",
                                           f"move target {t.name} out of {dg.name}/{cur}"))
                    acts.append(Action(f"{tp}/mgmt", f"add {t.name}",
                                       f"add target {t.name} to {dg.name}/{tg.name}"))
                    have = 0
                else:
                    have = rtg.targets[t.name].rel_tgt_id
                if t.rel_tgt_id != have:
                    acts.append(Action(f"{tp}/{t.name}/rel_tgt_id", str(t.rel_tgt_id),
                                       f"set {dg.name}/{tg.name}/{t.name} rel_tgt_id "
                                       f"{t.rel_tgt_id}"))
            for a in tg.attrs.values():
                have = rtg.shown.get(a.name)
                if have is None:        # not read from a tree: keyed value or default
                    ra = rtg.attrs.get(a.name)
                    have = ra.values[0] if ra is not None else _TG_DEFAULTS[a.name]
                if _norm_tg(a.name, a.values[0]) != _norm_tg(a.name, have):
                    acts.append(Action(f"{tp}/{a.name}", a.values[0],
                                       f"set {dg.name}/{tg.name} {a.name} {a.values[0]}"))
            if force:
                for name in rtg.targets:
                    if name not in tg.targets and not any(
                            name in x.targets for x in dg.tgroups.values()):
                        last.append(Action(f"{tp}/mgmt", f"del {name}",
                                           f"del target {name} from {dg.name}/{tg.name}"))
        if force:
            for d in rdg.devices:
                if d not in dg.devices and d not in recreated and not any(
                        d in x.devices for x in cfg.dgroups.values()):
                    last.append(Action(f"{gp}/devices/mgmt", f"del {d}",
                                       f"del device {d} from device group {dg.name}"))
            for tn in rdg.tgroups:
                if tn not in dg.tgroups:
                    last.append(Action(f"{gp}/target_groups/mgmt", f"del {tn}",
                                       f"del target group {dg.name}/{tn}"))
    if force:
        for gname in running.dgroups:
            if gname not in cfg.dgroups:
                last.append(Action(f"{_DG}/mgmt", f"del {gname}", f"del device group {gname}"))


def _norm_tg(name: str, value: str) -> str:
    try:
        return _check_tg_value(name, Word(value, 0, 0), "")
    except ConfigError:
        return value.strip()


# -- applying ---------------------------------------------------------------------

@dataclass
class ApplyResult:
    changes: int
    actions: list[str]
    applied: int
    error: str = ""


def apply(text: str, filename: str, tree: Tree, schema: dict, *, force: bool = False,
          dry_run: bool = False,
          errmsg: Callable[[int], str] | None = None) -> ApplyResult:
    """Parse, validate, plan and (unless dry_run) apply text. ConfigError
    propagates before anything is changed. DEVICE_GROUP blocks are applied
    through device_groups/ like the rest."""
    cfg = parse(text, filename)
    running = read_running(tree)
    actions = plan(cfg, running, schema, force)
    changes = len(actions)
    descr = [a.what for a in actions]
    if dry_run:
        return ApplyResult(changes, descr, 0)
    for i, a in enumerate(actions):
        ret = tree.write(SCST_ROOT + a.path, a.text)
        if isinstance(ret, int) and ret < 0:
            why = errmsg(ret) if errmsg is not None else str(ret)
            return ApplyResult(changes, descr, i, f"{a.what}: {why}")
    return ApplyResult(changes, descr, len(actions))


def write_running(tree: Tree) -> str:
    """scst.conf text of the running configuration."""
    return write(read_running(tree))
