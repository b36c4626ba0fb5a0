"""Adaptive Nagle: per connection, TCP_NODELAY or Nagle in the transmit
path, switched by how busy the connection's reader is.

Twin of nothing in iscsi-scst: the seed (SCST adapted to usermode) added
this to nthread.c's transmit path. Modes: off (TCP_NODELAY, iscsi-scst's
behaviour), on (Nagle always), adaptive:

- A busy cycle is one run of the rd thread from its first input to "no
  more input" (-EAGAIN); it counts the PDUs received in it.
- Nagle mode is entered (TCP_NODELAY cleared) when the cycle reaches
  nagle_T PDUs and the mean of the last 4 cycles is >= (T + M) / 2.
- At idle, after the rd thread flushed its responses, TCP_NODELAY is set
  again, which pushes a partial segment out at once; Nagle mode is
  re-entered at once if this cycle or either of the two before reached
  T + M.
- TCP_QUICKACK at idle when the cycle was <= Q PDUs.

Nothing sends a PDU in pieces across sendmsg calls, so no TCP_CORK and no
per-piece MSG_MORE are needed: nthread's iscsi_tx_flush sends every queued
PDU, header, data and digests, in one sendmsg (only a short send splits
it, and the rest follows at once or at sk_write_space).

Contexts: iscsi_nagle_rx_check and iscsi_nagle_idle run on the connection's
rd thread only; iscsi_nagle_set (the live tree's store) from task context.
The mode applies at the connection's next idle. Statistics:
iscsi_nagle_show.

Where the mode comes from: a connection's own mode if one was set
(conn.nagle.mode >= 0), else its target's nagle_mode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kshim.err import EINVAL, ENOENT
from kshim.kobject import kobject
from kshim.net import SOL_TCP, TCP_NODELAY, TCP_QUICKACK, kernel_setsockopt
from kshim.printk import pr_err
from kshim.sysfs import __ATTR_RO, __ATTR_RW, kobj_attribute
from scst_core.sysfs import scst_attr_show_key

if TYPE_CHECKING:
    from iscsi_scst.conn import iscsi_conn

NAGLE_OFF = 0
NAGLE_ON = 1
NAGLE_ADAPTIVE = 2
NAGLE_MODES = ("off", "on", "adaptive")
NAGLE_FOLLOW_TARGET = -1

# Thresholds (the seed's defaults): module parameters of iscsi_scst
# (/sys/module/iscsi_scst/parameters/nagle_{T,M,Q}), read at each idle.
nagle_T = 96
nagle_M = 40
nagle_Q = 0

_HIST_BUCKETS = 10          # busy-at-idle: 0, 1, 2-3, 4-7, ..., >= 256


@attrs.define(slots=True, eq=False)
class iscsi_nagle:
    """A connection's Nagle state; touched by its rd thread only, except
    `mode`, which the live tree sets (read once per idle)."""
    mode: int = NAGLE_FOLLOW_TARGET
    applied: int = NAGLE_OFF        # the mode the socket is set for
    nodelay: bool = True            # TCP_NODELAY is set now
    busy: int = 0                   # PDUs of the current busy cycle
    enter_at: int = -1              # busy count at which to test entry (adaptive)
    entered: int = 0                # busy count when Nagle mode was entered
    last: list = attrs.field(factory=lambda: [0, 0, 0, 0])   # the last 4 cycles, newest first
    busy_max: int = 0
    idle_count: int = 0
    pdus: int = 0
    pdus_nagle: int = 0             # PDUs received while Nagle mode was on
    hist: list = attrs.field(factory=lambda: [0] * _HIST_BUCKETS)


def _nodelay(conn: "iscsi_conn", on: bool) -> None:
    kernel_setsockopt(conn.sock, SOL_TCP, TCP_NODELAY, 1 if on else 0)
    conn.nagle.nodelay = on


def iscsi_nagle_rx_check(conn: "iscsi_conn") -> None:
    """The busy cycle reached nagle_T PDUs (adaptive mode): enter Nagle mode
    if the last 4 cycles were busy enough."""
    ng = conn.nagle
    if ng.nodelay and sum(ng.last) >= 4 * (nagle_T + nagle_M) / 2:
        ng.entered = ng.busy
        _nodelay(conn, False)


def _effective_mode(conn: "iscsi_conn") -> int:
    mode = conn.nagle.mode
    if mode >= 0:
        return mode
    sess = conn.session
    tgt = sess.target if sess is not None else None
    return tgt.nagle_mode if tgt is not None else NAGLE_OFF


def iscsi_nagle_idle(conn: "iscsi_conn") -> None:
    """The rd thread found no more input (its responses are flushed): end
    the busy cycle."""
    ng = conn.nagle
    b = ng.busy
    ng.busy = 0
    ng.idle_count += 1
    ng.pdus += b
    if b > ng.busy_max:
        ng.busy_max = b
    ng.hist[min(b.bit_length(), _HIST_BUCKETS - 1)] += 1
    last = ng.last
    if not ng.nodelay:
        ng.pdus_nagle += b - ng.entered
        ng.entered = 0
    mode = _effective_mode(conn)
    ng.enter_at = nagle_T if mode == NAGLE_ADAPTIVE else -1
    if mode != ng.applied:
        ng.applied = mode
        _nodelay(conn, mode != NAGLE_ON)
    elif mode == NAGLE_ADAPTIVE and not ng.nodelay:
        hi = nagle_T + nagle_M
        _nodelay(conn, True)                # push the partial segment now
        if b >= hi or last[0] >= hi or last[1] >= hi:
            _nodelay(conn, False)
    last.insert(0, b)
    last.pop()
    if mode == NAGLE_ADAPTIVE and b <= nagle_Q:
        kernel_setsockopt(conn.sock, SOL_TCP, TCP_QUICKACK, 1)


def iscsi_nagle_parse_mode(text: str) -> int:
    """A mode name (off, on, adaptive) -> its number, or -1."""
    t = text.strip()
    return NAGLE_MODES.index(t) if t in NAGLE_MODES else -1


def iscsi_nagle_show(conn: "iscsi_conn") -> str:
    """One connection's mode and statistics, one `key value` per line."""
    ng = conn.nagle
    avg = ng.pdus / ng.idle_count if ng.idle_count else 0.0
    share = ng.pdus_nagle / ng.pdus if ng.pdus else 0.0
    own = NAGLE_MODES[ng.mode] if ng.mode >= 0 else "target"
    return (f"cid {conn.cid}\nmode {NAGLE_MODES[_effective_mode(conn)]} (set: {own})\n"
            f"nagle_now {int(not ng.nodelay)}\nbusy {ng.busy}\nbusy_max {ng.busy_max}\n"
            f"busy_avg_per_idle {avg:.1f}\nidle_count {ng.idle_count}\n"
            f"pdus {ng.pdus}\nnagle_share {share:.3f}\n"
            f"busy_at_idle_hist {' '.join(map(str, ng.hist))}\n")


# -- the live tree ------------------------------------------------------------
# targets/iscsi/<target>/nagle_mode: the mode of connections that set none.
# sessions/<session>/nagle_mode: set every connection of the session
# ("<mode>"), one connection ("<cid> <mode>"), or back to the target's
# ("target"); reading shows each connection's mode. sessions/<session>/nagle:
# each connection's statistics (iscsi_nagle_show), blank-line separated.

def _tgt_mode_show(kobj: kobject, _a: kobj_attribute) -> str:
    mode = kobj.private.tgt_priv.nagle_mode
    return scst_attr_show_key(NAGLE_MODES[mode], mode != NAGLE_OFF)   # [key]: write-config keeps it


def _tgt_mode_store(kobj: kobject, _a: kobj_attribute, buf: str) -> int:
    mode = iscsi_nagle_parse_mode(buf)
    if mode < 0:
        pr_err(f"iscsi: bad nagle_mode '{buf.strip()}' (off, on or adaptive)")
        return -EINVAL
    kobj.private.tgt_priv.nagle_mode = mode
    return len(buf)


def _sess_conns(kobj: kobject) -> list:
    isess = kobj.private.tgt_priv
    return list(isess.conn_list) if isess is not None else []


def _sess_mode_show(kobj: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{c.cid} {NAGLE_MODES[_effective_mode(c)]}"
                   f"{'' if c.nagle.mode >= 0 else ' (target)'}\n" for c in _sess_conns(kobj))


def _sess_mode_store(kobj: kobject, _a: kobj_attribute, buf: str) -> int:
    words = buf.split()
    conns = _sess_conns(kobj)
    if len(words) == 2:
        conns = [c for c in conns if str(c.cid) == words[0]]
        if not conns:
            pr_err(f"iscsi: no connection {words[0]} in this session")
            return -ENOENT
    if len(words) not in (1, 2):
        return -EINVAL
    mode = NAGLE_FOLLOW_TARGET if words[-1] == "target" else iscsi_nagle_parse_mode(words[-1])
    if mode == -1 and words[-1] != "target":
        pr_err(f"iscsi: bad nagle_mode '{words[-1]}' (off, on, adaptive or target)")
        return -EINVAL
    for c in conns:
        c.nagle.mode = mode
    return len(buf)


def iscsi_nagle_tgt_attrs() -> tuple:
    return (__ATTR_RW("nagle_mode", _tgt_mode_show, _tgt_mode_store),)


def iscsi_nagle_sess_attrs() -> tuple:
    return (__ATTR_RW("nagle_mode", _sess_mode_show, _sess_mode_store),
            __ATTR_RO("nagle", lambda k, a: "\n".join(iscsi_nagle_show(c) for c in _sess_conns(k))))
