"""The iSCSI target driver's part of the management tree: targets/iscsi/
(enabled, version, IncomingUser, OutgoingUser, portal) and each target's
negotiation keys, tid, CHAP users and allowed portals; add_target,
del_target, enabling, and the add_attribute family of the driver's mgmt file.

Twin of iscsi-scst/kernel/config.c (the sysfs attributes and the
add/del_target_attribute handlers) plus the parts of iscsi-scst/usr that
parse what is written there (portals, CHAP users).

Contexts: every show/store and mgmt handler here runs in task context, as
kshim.sysfs calls them; iscsi_sysfs_init/iscsi_sysfs_exit from module
init/exit.

Differs from iscsi-scst: there is no iscsi-scstd to hand the values to, so
IncomingUser/OutgoingUser become the target's chap_credentials directly,
and `portal` adds or removes a kernel listening socket (iscsi_scst.target).
Multi-valued attributes are one file per value (IncomingUser,
IncomingUser1, ...), made by scst_core.sysfs from iscsi_multi_values. The
driver's `portal` (uscst-only: it lists the listening sockets) is one
read-only file without [key], and add_attribute/del_attribute take it
without advertising it, so scstadmin neither writes it back nor clears it;
the last portal cannot be deleted. The driver's `enabled` switch
gates new logins and SendTargets (iscsi_scst.target.iscsi_enabled);
sessions already logged in keep running, as they do in iscsi-scst.
"""
from __future__ import annotations

import re
from typing import Any

from iscsi_scst import target as target_mod
from iscsi_scst.nagle import iscsi_nagle_sess_attrs, iscsi_nagle_tgt_attrs
from iscsi_scst.target import (iscsi_add_portal, iscsi_del_portal, iscsi_target, iscsi_target_add,
                               iscsi_target_del, portal_list, target_list)
from iscsi_scst.conn import conns_waitQ, iscsi_conn_mark_closing
from iscsi_scst.usr.chap import chap_credentials_from_attrs
from iscsi_scst.usr.param import iscsi_tgt_params
from kshim.err import EBUSY, EEXIST, EINVAL, ENOENT
from kshim.jiffies import HZ
from kshim.kobject import kobject
from kshim.printk import pr_err
from kshim.sysfs import S_IRUGO, S_IRUSR, S_IWUSR, __ATTR_RO, __ATTR_RW, kobj_attribute
from kshim.wait import wait_event_timeout
from scst_core.scst import scst_session, scst_tgt, scst_tgt_template
from scst_core.sysfs import (scst_attr_show_key, scst_register_tgtt_sysfs, scst_tgtt_sysfs,
                             scst_unregister_tgtt_sysfs)

# iscsi-scst takes any name of printable characters without blanks (SCST.pm's
# own tests name a target `tgt1`); RFC 3720's 223-byte limit still holds.
ISCSI_NAME_RE = re.compile(r"^[!-~]{1,223}$")
_PORTAL_V6_RE = re.compile(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$")
_PORTAL_V4_RE = re.compile(r"^([^:\[\]]+):(\d+)$")
ISCSI_VERSION_STRING = "0.1.0-uscst"

# Negotiation keys a target carries: name -> (iscsi_tgt_params field, kind);
# kind is "bool", "digest" or the (low, high) range of a number.
iscsi_tgt_keys: dict[str, tuple[str, Any]] = {
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
_TGTT_MULTI = ("IncomingUser", "OutgoingUser")
_TGT_MULTI = ("IncomingUser", "OutgoingUser", "allowed_portal")
# How long del_target waits for the target's sessions to close
_DEL_TARGET_WAIT = 30 * HZ
_iscsi_tgt_defaults = iscsi_tgt_params()

# Values of the multi-valued attributes: the driver's under None, a
# target's under its name (only touched from task context, under the
# sysfs callers' serialisation; no lock).
iscsi_attr_values: dict[str | None, dict[str, list[str]]] = {}


def iscsi_parse_portal(text: str) -> tuple[str, int] | str:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port), or the error text."""
    m = _PORTAL_V6_RE.match(text) or _PORTAL_V4_RE.match(text)
    if not m:
        return f"invalid portal {text!r} (use HOST:PORT or [IPv6]:PORT)"
    port = int(m.group(2))
    if not 0 < port < 65536:
        return f"invalid port in portal {text!r}"
    return m.group(1), port


def _itgt(tgt: scst_tgt) -> iscsi_target:
    return tgt.tgt_priv


def _find_target(name: str) -> iscsi_target | None:
    return next((x for x in target_list if x.name == name), None)


# -- targets ------------------------------------------------------------------

def iscsi_add_target(tgtt: scst_tgt_template, name: str, params: dict) -> int:
    """add_target NAME: a new target, disabled (SCST creates targets
    disabled; they are enabled once configured)."""
    if not ISCSI_NAME_RE.match(name) or "/" in name:
        pr_err(f"iscsi: bad target name '{name}' (printable, no blanks or '/', at most 223 bytes)")
        return -EINVAL
    t = iscsi_target_add(tgtt, name)
    if isinstance(t, int):
        if t == -EEXIST:
            pr_err(f"iscsi: target {name} already exists")
        return t
    t.enabled = False
    t.scst_tgt.enabled = False
    return 0


def iscsi_close_session(sess: scst_session) -> int:
    """Close every connection of sess (force_close, del_target); its
    connections' threads then free it. Any context."""
    isess = sess.tgt_priv
    for conn in list(isess.conn_list):
        iscsi_conn_mark_closing(conn)
    return 0


def iscsi_del_target(name: str) -> int:
    """del_target NAME: close its sessions (as iscsi-scst does), wait for
    them to go, then remove it. 0, -ENOENT, or -EBUSY if a session outlived
    the wait. Task context (sleeps)."""
    t = _find_target(name)
    if t is None:
        return -ENOENT
    stgt = t.scst_tgt
    t.enabled = False                  # no new logins while the old ones end
    for sess in list(stgt.sess_list):
        iscsi_close_session(sess)
    if not wait_event_timeout(conns_waitQ, lambda: not stgt.sess_list, _DEL_TARGET_WAIT):
        pr_err(f"iscsi: target {name}: {len(stgt.sess_list)} sessions did not close")
        return -EBUSY
    iscsi_target_del(t)
    iscsi_attr_values.pop(name, None)
    return 0


def iscsi_enable_target(tgt: scst_tgt, on: bool) -> int:
    _itgt(tgt).enabled = on
    tgt.enabled = on
    return 0


def iscsi_is_target_enabled(tgt: scst_tgt) -> bool:
    return _itgt(tgt).enabled


# -- negotiation keys -----------------------------------------------------------

def _fmt_key(kind: Any, v: Any) -> str:
    if kind == "bool":
        return "Yes" if v else "No"
    if kind == "digest":
        return ",".join(v)
    return str(v)


def iscsi_key_show(kobj: kobject, a: kobj_attribute) -> str:
    field, kind = iscsi_tgt_keys[a.name]
    v = getattr(_itgt(kobj.private).tgt_params, field)
    return scst_attr_show_key(_fmt_key(kind, v), v != getattr(_iscsi_tgt_defaults, field))


def _parse_key(name: str, kind: Any, text: str) -> Any:
    """The value of key `name` written as text, or None after a pr_err."""
    if kind == "bool":
        if text.lower() not in ("yes", "no", "1", "0"):
            pr_err(f"iscsi: {name} takes Yes or No, not '{text}'")
            return None
        return text.lower() in ("yes", "1")
    if kind == "digest":
        vals = tuple(x.strip() for x in text.split(",") if x.strip())
        if not vals or any(x not in ("None", "CRC32C") for x in vals):
            pr_err(f"iscsi: {name} takes None, CRC32C or a list of both, not '{text}'")
            return None
        return vals
    lo, hi = kind
    if not text.isdecimal() or not lo <= int(text) <= hi:
        pr_err(f"iscsi: {name} must be a number in {lo}..{hi}, not '{text}'")
        return None
    return int(text)


def iscsi_key_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    field, kind = iscsi_tgt_keys[a.name]
    val = _parse_key(a.name, kind, buf.strip())
    if val is None:
        return -EINVAL
    setattr(_itgt(kobj.private).tgt_params, field, val)
    return len(buf)


# -- multi-valued attributes (CHAP users, portals, allowed portals) ----------------

def _portal_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def iscsi_portal_show(kobj: kobject, a: kobj_attribute) -> str:
    return "".join(f"{_portal_text(p.host, p.port)}\n" for p in portal_list)


def iscsi_multi_values(tgt: scst_tgt | None) -> dict[str, tuple[int, list[str]]]:
    """The driver's (tgt None) or a target's CHAP users and allowed
    portals with their file modes: accounts 0600 (they hold secrets),
    portals 0644, as iscsi-scst."""
    vals = iscsi_attr_values.get(tgt.tgt_name if tgt is not None else None, {})
    return {n: (S_IRUSR | S_IWUSR if n.endswith("User") else S_IRUGO | S_IWUSR,
                list(vals.get(n, [])))
            for n in (_TGT_MULTI if tgt is not None else _TGTT_MULTI)}


def _apply_allowed_portals(key: str | None) -> None:
    t = _find_target(key) if key is not None else None
    if t is not None:
        t.allowed_portals = tuple(iscsi_attr_values.get(key, {}).get("allowed_portal", []))


def _apply_chap(key: str | None) -> int:
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
        target_mod.iscsi_discovery_chap = creds
    else:
        t = _find_target(key)
        if t is not None:
            t.chap = creds
    return 0


def iscsi_add_attr(key: str | None, name: str, value: str) -> int:
    """add_attribute / add_target_attribute: 0 or -EINVAL/-EEXIST/-errno."""
    if not value:
        pr_err(f"iscsi: {name} needs a value")
        return -EINVAL
    if name in ("IncomingUser", "OutgoingUser") and len(value.split()) != 2:
        pr_err(f"iscsi: {name} takes 'user secret'")    # never echo a secret
        return -EINVAL
    if name == "portal":
        hp = iscsi_parse_portal(value)
        if isinstance(hp, str):
            pr_err(f"iscsi: {hp}")
            return -EINVAL
        if any((p.host, p.port) == hp for p in portal_list):
            return 0                   # already listening: a re-applied config changes nothing
        p = iscsi_add_portal(*hp)
        return p if isinstance(p, int) else 0
    vals = iscsi_attr_values.setdefault(key, {}).setdefault(name, [])
    if name == "OutgoingUser" and vals and value not in vals:
        pr_err(f"iscsi: only one OutgoingUser; delete '{vals[0]}' first")
        return -EEXIST
    if value in vals:
        return 0                       # re-adding a value changes nothing, as iscsi-scst
    vals.append(value)
    if name in ("IncomingUser", "OutgoingUser"):
        ret = _apply_chap(key)
        if ret != 0:
            vals.remove(value)
        return ret
    if name == "allowed_portal":
        _apply_allowed_portals(key)
    return 0


def iscsi_del_attr(key: str | None, name: str, value: str) -> int:
    """del_attribute / del_target_attribute: 0 or -EINVAL/-ENOENT."""
    if name == "portal":
        hp = iscsi_parse_portal(value)
        if isinstance(hp, str):
            return -EINVAL
        p = next((p for p in portal_list if (p.host, p.port) == hp), None)
        if p is None:
            return -ENOENT
        if len(portal_list) == 1:
            pr_err(f"iscsi: {value} is the last portal; add another before deleting it")
            return -EBUSY
        return iscsi_del_portal(p)
    vals = iscsi_attr_values.get(key, {}).get(name, [])
    if value not in vals:
        pr_err(f"iscsi: {name} '{value}' not set")
        return -ENOENT
    vals.remove(value)
    if name in ("IncomingUser", "OutgoingUser"):
        return _apply_chap(key)
    if name == "allowed_portal":
        _apply_allowed_portals(key)
    return 0


# -- the driver's own attributes -----------------------------------------------------

def iscsi_enabled_show(kobj: kobject, a: kobj_attribute) -> str:
    return f"{int(target_mod.iscsi_enabled)}\n"


def iscsi_enabled_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    t = buf.strip()
    if t not in ("0", "1"):
        return -EINVAL
    target_mod.iscsi_enabled = t == "1"
    return len(buf)


def iscsi_zero_copy_show(kobj: kobject, _a: kobj_attribute) -> str:
    """The session's zero_copy attribute: per connection, READs whose
    Data-In went from the page cache (kernel_sendfile), bytes
    kernel_sendfile sent, its short sends, and bytes sent as zeros because
    the file ended (decision 0067)."""
    isess = kobj.private.tgt_priv
    conns = list(isess.conn_list) if isess is not None else []
    return "".join(f"{c.cid} zero_copy_reads {c.tx_zc_reads} "
                   f"sendfile_bytes {c.tx_sendfile_bytes} sendfile_short {c.tx_sendfile_short} "
                   f"eof_zero_bytes {c.tx_sendfile_eof_bytes}\n" for c in conns)


def iscsi_sysfs_init(tgtt: scst_tgt_template) -> None:
    """Register the driver's attributes and mgmt handlers with the core's
    tree (module init, task context)."""
    tgt_attrs = [__ATTR_RW(n, iscsi_key_show, iscsi_key_store) for n in iscsi_tgt_keys]
    tgt_attrs += [__ATTR_RO("tid", lambda k, a: f"{_itgt(k.private).tid}\n")]
    tgt_attrs += iscsi_nagle_tgt_attrs()
    tgtt_attrs = [__ATTR_RW("enabled", iscsi_enabled_show, iscsi_enabled_store),
                  __ATTR_RO("version", lambda k, a: f"{ISCSI_VERSION_STRING}\n"),
                  __ATTR_RO("portal", iscsi_portal_show)]
    scst_register_tgtt_sysfs(tgtt.name, scst_tgtt_sysfs(
        add_target=lambda name, params: iscsi_add_target(tgtt, name, params),
        del_target=iscsi_del_target, enable_target=iscsi_enable_target,
        is_target_enabled=iscsi_is_target_enabled,
        tgtt_attrs=tuple(tgtt_attrs), tgt_attrs=tuple(tgt_attrs),
        sess_attrs=iscsi_nagle_sess_attrs() + (__ATTR_RO("zero_copy", iscsi_zero_copy_show),),
        tgtt_optional_attributes=_TGTT_MULTI, tgt_optional_attributes=_TGT_MULTI,
        tgtt_hidden_attributes=("portal",), multi_values=iscsi_multi_values,
        close_session=iscsi_close_session,
        add_attribute=lambda n, v: iscsi_add_attr(None, n, v),
        del_attribute=lambda n, v: iscsi_del_attr(None, n, v),
        add_target_attribute=lambda t, n, v: iscsi_add_attr(t.tgt_name, n, v),
        del_target_attribute=lambda t, n, v: iscsi_del_attr(t.tgt_name, n, v)))


def iscsi_sysfs_exit(tgtt: scst_tgt_template) -> None:
    scst_unregister_tgtt_sysfs(tgtt.name)
    iscsi_attr_values.clear()
    target_mod.iscsi_discovery_chap = None
    target_mod.iscsi_enabled = True
