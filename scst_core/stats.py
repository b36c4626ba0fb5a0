"""The SCST core's counters, gathered for monitoring (the metrics endpoint).

Twin of nothing in SCST (whose counters are sysfs files only: a session's
read_io_count_kb, a device's commands); this gathers the same counters and
a few more into metric families: per target, session and LUN commands and
bytes, responses that were not GOOD by status and sense key, task
management functions by kind, commands outstanding, and the per-stage
latency histograms of scst_core.latency.

A family is (name, kind, help, samples): kind is "counter", "gauge" or
"histogram"; a sample is (labels, value), a histogram's value being
(cumulative buckets [(upper bound in seconds, count)], sum in seconds,
count). Formatting (the Prometheus text format) is the engine service's
job (kshim/engine_metrics.py), since the kernel layers use no host library.

Contexts: task context (it reads lists scst_mutex guards, without
sleeping); the engine's metrics service calls it through call_in_task.
"""
from __future__ import annotations


from scst_core import const, fastpath, latency
from scst_core.main import scst_sess_io_stats, scst_template_list
from scst_core.scst import scst_session, scst_tgt

Family = tuple[str, str, str, list]
_Samples = list[tuple[dict[str, str], int]]     # (labels, value) of one family

# SCST_ABORT_TASK ... as the label value of a TMF counter
TMF_NAMES = {getattr(const, n): n[len("SCST_"):].lower() for n in (
    "SCST_ABORT_TASK", "SCST_ABORT_TASK_SET", "SCST_CLEAR_ACA", "SCST_CLEAR_TASK_SET",
    "SCST_LUN_RESET", "SCST_TARGET_RESET", "SCST_NEXUS_LOSS_SESS",
    "SCST_ABORT_ALL_TASKS_SESS", "SCST_NEXUS_LOSS", "SCST_ABORT_ALL_TASKS")}


def _targets() -> list[scst_tgt]:
    return [tgt for tgtt in scst_template_list for tgt in tgtt.tgt_list]


def scst_metrics() -> list[Family]:
    """Every counter family of the SCST core, sampled now."""
    cmds: _Samples = []
    byts: _Samples = []
    lun_cmds: _Samples = []
    lun_bytes: _Samples = []
    errs: _Samples = []
    tmfs: _Samples = []
    active: _Samples = []
    tgt_cmds: _Samples = []
    tgt_bytes: _Samples = []
    for tgt in _targets():
        sessions = list(tgt.sess_list)
        t = {"target": tgt.tgt_name}
        io = [scst_sess_io_stats(s) for s in sessions]
        tgt_cmds += [({**t, "direction": "read"},
                      tgt.closed_reads + sum(s[0] for s in io)),
                     ({**t, "direction": "write"},
                      tgt.closed_writes + sum(s[1] for s in io))]
        tgt_bytes += [({**t, "direction": "read"},
                       tgt.closed_read_bytes + sum(s[2] for s in io)),
                      ({**t, "direction": "write"},
                       tgt.closed_write_bytes + sum(s[3] for s in io))]
        seen: dict[str, int] = {}
        for sess, sio in zip(sessions, io, strict=True):
            # One initiator may hold several sessions (ISIDs): "instance"
            # tells them apart, in the target's session order.
            n = seen[sess.initiator_name] = seen.get(sess.initiator_name, -1) + 1
            base = {"target": tgt.tgt_name, "session": sess.initiator_name, "instance": str(n)}
            _session(base, sess, sio, cmds, byts, lun_cmds, lun_bytes, errs, tmfs, active)
    return [
        ("uscst_target_commands", "counter", "commands with data completed GOOD, per target "
         "(ended sessions included)", tgt_cmds),
        ("uscst_target_bytes", "counter", "data bytes moved, per target", tgt_bytes),
        ("uscst_session_commands", "counter", "commands with data completed GOOD, per session",
         cmds),
        ("uscst_session_bytes", "counter", "data bytes moved, per session", byts),
        ("uscst_lun_commands", "counter", "commands with data completed GOOD, per session "
         "and LUN", lun_cmds),
        ("uscst_lun_bytes", "counter", "data bytes moved, per session and LUN", lun_bytes),
        ("uscst_errors", "counter", "responses other than GOOD, by SCSI status and sense key",
         errs),
        ("uscst_tmf", "counter", "task management functions received, by function", tmfs),
        ("uscst_session_commands_outstanding", "gauge", "commands in the SCST core now",
         active),
        ("uscst_latency_seconds", "histogram", "per-stage command latency (measure_latency "
         "must be 1)", _latency_samples()),
        ("uscst_fast_reads", "counter", "READs answered by READ prediction, without an "
         "scst_cmd (decision 0072)", [({}, fastpath.fast_reads)]),
        ("uscst_fast_writes", "counter", "WRITEs started by WRITE prediction, without an "
         "scst_cmd (decision 0073)", [({}, fastpath.fast_writes)]),
    ]


def _session(base: dict, sess: scst_session, sio: tuple[int, int, int, int], cmds: list,
             byts: list, lun_cmds: list, lun_bytes: list, errs: list, tmfs: list,
             active: list) -> None:
    """Append one session's samples (labelled base + ...) to the families'
    lists; sio is its scst_sess_io_stats."""
    reads, writes, read_bytes, write_bytes = sio
    for d, n, b in (("read", reads, read_bytes), ("write", writes, write_bytes)):
        cmds.append(({**base, "direction": d}, n))
        byts.append(({**base, "direction": d}, b))
    active.append((base, sess.cmd_count))
    for lun, td in sorted(sess.sess_tgt_dev_list.items()):
        lb = {**base, "lun": str(lun)}
        for d, n, b in (("read", td.reads, td.read_bytes),
                        ("write", td.writes, td.write_bytes)):
            lun_cmds.append(({**lb, "direction": d}, n))
            lun_bytes.append(({**lb, "direction": d}, b))
    for (lun, status, key), n in sorted(sess.sense_errors.items()):
        errs.append(({**base, "lun": str(lun), "status": f"0x{status:02x}",
                      "sense_key": "none" if key < 0 else f"0x{key:x}"}, n))
    for fn, n in sorted(sess.tmf_count.items()):
        tmfs.append(({**base, "function": TMF_NAMES.get(fn, str(fn))}, n))


# The fixed bucket bounds exported: 2**10 ns (1 us) to 2**35 ns (34 s);
# the slower rest is in +Inf, which the formatter adds.
_LAT_LOW = 10
_LAT_HIGH = 35


def _latency_samples() -> list:
    out = []
    for key, st in latency.stats.items():
        labels = {"session": key[0], "lun": str(key[1]) if len(key) > 1 else "all"}
        for stage, v in st.items():
            if not v.count:
                continue
            buckets = []
            acc = 0
            for b, n in enumerate(v.hist):
                acc += n                      # bucket b holds t < 2**b ns
                if _LAT_LOW <= b <= _LAT_HIGH:
                    buckets.append(((1 << b) / 1e9, acc))
            out.append(({**labels, "stage": stage}, (buckets, v.sum / 1e9, v.count)))
    return out
