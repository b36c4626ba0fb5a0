"""SCST's trace_level attribute, mapped onto kshim's tracepoints.

Twin of the trace-level parts of scst/include/scst_debug.h (the TRACE_*
bits) and scst/src/scst_sysfs.c (scst_trace_level_show,
scst_write_trace: `add|del TOKEN`, `value N`, `all|none|default`).

Contexts: the show/store callbacks run in task context (sysfs).

Differs from SCST: a bit does not switch printk output on; it selects
tracepoints for the recorder (kshim.trace's set_event), which records
them while /sys/kernel/tracing/tracing_on is 1. TRACE_TOKENS says which
events each token selects; tokens with no event here (line, pid, function,
entryexit, ...: printk decorations) are kept in the mask and select
nothing. Writing trace_level and writing set_event are two views of one
selection: trace_level shows the mask last written.
"""
from __future__ import annotations

from kshim import tracepoint
from kshim.err import EINVAL
from kshim.kobject import kobject
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, kobj_attribute, sysfs_create_file

# scst_debug.h's bits, with the events each selects here.
TRACE_TOKENS: dict[str, tuple[int, tuple[str, ...]]] = {
    "out_of_mem": (0x00000001, ()),
    "minor": (0x00000002, ("scst_ua",)),
    "sg": (0x00000004, ("iscsi_r2t",)),
    "mem": (0x00000008, ("kmem_cache_alloc", "kmem_cache_free")),
    "buff": (0x00000010, ("block_rq_issue", "block_rq_complete")),
    "entryexit": (0x00000020, ()),
    "pid": (0x00000040, ()),
    "line": (0x00000080, ()),
    "function": (0x00000100, ()),
    "debug": (0x00000200, ("iscsi_login",)),
    "special": (0x00000400, ("softirq",)),
    "scsi": (0x00000800, ("scst_cmd_init_done", "scst_cmd_state", "scst_handler_exec",
                          "scst_exec_done", "scst_rx_data", "scst_tgt_cmd_done")),
    "mgmt": (0x00001000, ("scst_tmf", "scst_tmf_done", "scst_ua")),
    "mgmt_dbg": (0x00002000, ("scst_tmf", "scst_tmf_done")),
    "flow_control": (0x00004000, ("iscsi_r2t",)),
    "pr": (0x00008000, ()),
    "block": (0x08000000, ("sched_wakeup", "sched_stat_runtime", "lock_contended",
                           "lock_acquired")),
    "data_received": (0x10000000, ("iscsi_pdu_rx",)),
    "data_send": (0x20000000, ("iscsi_pdu_tx",)),
    "scsi_serializing": (0x40000000, ()),
    "retry": (0x80000000, ()),
}
TRACE_ALL_MASK = 0
for _bit, _evs in TRACE_TOKENS.values():
    TRACE_ALL_MASK |= _bit
# SCST_DEFAULT_LOG_FLAGS-like: errors, management and special events
TRACE_DEFAULT_MASK = 0x00000001 | 0x00000002 | 0x00000040 | 0x00000100 | 0x00000400 \
    | 0x00001000 | 0x00002000 | 0x00004000

USAGE = ("Usage:\n"
         "       echo \"all|none|default\" >trace_level\n"
         "       echo \"value DEC|0xHEX|0OCT\" >trace_level\n"
         "       echo \"add|del TOKEN\" >trace_level\n"
         "\nwhere TOKEN is one of [" + ", ".join(TRACE_TOKENS) + "]\n")

# the mask last applied (guarded by running in sysfs store only); nothing is
# selected at boot, so it starts empty rather than at SCST's default
trace_flag = 0


def scst_trace_events(mask: int) -> list[str]:
    """The event names a trace_level mask selects, in declaration order."""
    want = {e for bit, evs in TRACE_TOKENS.values() if mask & bit for e in evs}
    return [e.name for e in tracepoint.events if e.name in want]


def scst_write_trace(buf: str, level: int) -> int:
    """Apply one trace_level command to level: the new mask, or -EINVAL."""
    words = buf.split()
    if not words:
        return -EINVAL
    cmd = words[0]
    if cmd in ("all", "none", "default") and len(words) == 1:
        return {"all": TRACE_ALL_MASK, "none": 0, "default": TRACE_DEFAULT_MASK}[cmd]
    if cmd == "value" and len(words) == 2:
        try:
            v = int(words[1], 0)
        except ValueError:
            return -EINVAL
        return v & 0xFFFFFFFF if v >= 0 else -EINVAL
    if cmd in ("add", "del") and len(words) == 2:
        tok = TRACE_TOKENS.get(words[1])
        if tok is None:
            return -EINVAL
        return level | tok[0] if cmd == "add" else level & ~tok[0]
    return -EINVAL


def scst_trace_level_show(mask: int) -> str:
    names = [t for t, (bit, _e) in TRACE_TOKENS.items() if mask & bit]
    return " | ".join(names) + "\n\n" + USAGE


def _store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    global trace_flag
    v = scst_write_trace(buf, trace_flag)
    if v < 0:
        return v
    ret = tracepoint.set_event(scst_trace_events(v))
    if ret < 0:
        return ret
    trace_flag = v
    return len(buf)


def scst_debug_sysfs_init(root: kobject) -> int:
    """Create trace_level under root (/sys/kernel/scst_tgt)."""
    return sysfs_create_file(root, __ATTR("trace_level", S_IRUGO | S_IWUSR,
                                          lambda k, a: scst_trace_level_show(trace_flag), _store))
