"""READ and WRITE prediction: a plain READ answered, a plain WRITE
started, without a command object.

Mirrors no SCST file: a uscst design (decisions 0072, 0073), modelled on TCP's
header prediction (tcp_rcv_established's fast path). TCP checks a few
header fields against what it predicts for an established connection and,
when they match, handles the segment in a few lines; anything unexpected
takes the full path. Here the target driver offers a READ(10)/(16) CDB
before it allocates anything; when the command and its I_T_L nexus are
in the predicted state, the core answers with the data at once, in the
driver's context, and no scst_cmd exists. Anything else returns False
and the driver takes the full path (scst_rx_cmd and the state machine of
scst_core.targ), which gives the same answer the slow way: that path
stays the reference, and every error, sense and ordering rule lives
there alone.

Predicted state (each test is one the full path would make; the first
that fails declines):
- nothing watches: scst_fast_read is 1 (/sys/kernel/scst_tgt/fast_read),
  no tracepoint is enabled (tracing, measure_latency: a trace shows every
  command's states), and none of the fault points the full path's
  command passes (fail_scsi_cmd, failslab for its scst_cmd,
  fail_page_alloc for its buffer) is armed;
- the CDB: READ(10) or READ(16), no RDPROTECT, no FUA, no LINK bit, a
  transfer of 1 block or more that is exactly the expected length and at
  most FAST_READ_MAX bytes;
- the nexus: the LUN exists for the session (and its field was decoded
  before), which is not shutting down; no unit attention is pending for
  it; no ALUA state filters commands; the device holds no reservation or
  persistent reservation, no ORDERED command and no command held back,
  and fewer than SCST_MAX_DEV_COMMANDS commands; the task attribute is
  SIMPLE or untagged;
- the dev handler's read_fast(dev, lba, buf) reads it, whole, without
  sleeping (vdisk_fileio: in range, medium present, from the page cache).

What the full path would have done and this does too: the I_T_L nexus's
read counters (scst_core.stats, the session's sysfs) and the device's
command count. What it skips: the command's states, its tracepoints (off
by the test above) and the task set's bookkeeping: the command never
enters the task set, since it has finished before the driver sees the
answer. Its response is the only thing left, which the driver sends in
order with the others; a task management function that arrives later
finds the task done, as it would a slow READ answered just before it.

The data goes into the driver's buffer, as SCST lets a target driver
allocate a command's buffer itself (tgt_data_buf_alloced): the driver
sends it and reuses it for its next command, with no page allocation.

WRITE prediction (decision 0073) makes the same offer for a WRITE(10)/(16)
whose data all came with it: the same predicted state, with WRPROTECT in
place of RDPROTECT (FUA is allowed: the handler makes the write durable),
and a LUN that is not read-only, a device whose QErr is 00b and no task
management function waiting on it. The dev handler's write_fast starts
the write and it ends later, in softirq, so unlike a READ it is in flight
while other commands arrive. What the full path keeps of it:
- the task set counts it (dev_cmd_count, the session's cmd_count: a
  session being unregistered is freed only after its last one ends);
- an ORDERED command waits for the device's predicted WRITEs in flight
  (dev.fast_writes), as for the older commands it would wait for;
- a task management function's response waits for those of the devices it
  covers (dev.fast_waiters); they cannot be aborted, so they are answered
  before it, as commands that finished first; while one waits, WRITEs
  take the full path, so it cannot be starved;
- the error a failed write gives (vdisk's sense) and the write counters
  (the device's command count, the nexus's writes when GOOD).
A predicted WRITE is not aborted by QErr (declined when QErr is not
00b) nor by PREEMPT AND ABORT, which ends its victims asynchronously on
the full path too: the data of a WRITE already at the device lands either
way; here its GOOD status is sent.

Contexts: scst_read_fast and scst_write_fast from any context (they
never sleep: the driver's receive path, softirq); the done function of a
predicted WRITE in softirq context; the switches from task context
(sysfs store).
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from kshim import tracepoint
from kshim.err import EINVAL
from kshim.fail_page_alloc import fail_page_alloc
from kshim.failslab import failslab
from kshim.kobject import kobject
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, __ATTR_RO, kobj_attribute, sysfs_create_file
from scst_core import tg as scst_tg
from scst_core.fault import fail_scsi_cmd
from scst_core.pres import scst_pr_devs
from scst_core.scst import scst_session
from scst_core.targ import SCST_MAX_DEV_COMMANDS, scst_fast_writes_drained, scst_lun_cache

# The largest READ answered here: larger ones are bound by copying their
# data, not by the command's work (and vdisk_fileio may send them from the
# page cache without reading them, decision 0067, on the full path).
FAST_READ_MAX = 32768

# The largest WRITE predicted (all of its data in the command's PDU)
FAST_WRITE_MAX = 32768

# 1: offer READs to the fast path; 0: every command takes the full path
scst_fast_read = 1
# READs answered here since boot (/sys/kernel/scst_tgt/fast_reads)
fast_reads = 0
# the same for WRITEs (/sys/kernel/scst_tgt/fast_write, fast_writes)
scst_fast_write = 1
fast_writes = 0

_read10 = struct.Struct(">xBIxHB")      # flags, LBA, blocks, control
_read16 = struct.Struct(">xBQIxB")
_READ_10 = 0x28
_READ_16 = 0x88
_WRITE_10 = 0x2A
_WRITE_16 = 0x8A
_SIMPLE_OR_UNTAGGED = 1                 # SCST_CMD_QUEUE_SIMPLE (1), UNTAGGED (0)


def scst_read_fast(sess: scst_session, lun: bytes, cdb: bytes, queue_type: int,
                   buf: memoryview) -> bool:
    """Answer a predicted READ whose expected transfer is len(buf) bytes,
    1 to FAST_READ_MAX: True when buf holds its data and the command is
    done (GOOD); False, having changed nothing, when the caller must take
    the full path."""
    global fast_reads
    if not scst_fast_read or tracepoint.nr_enabled or queue_type > _SIMPLE_OR_UNTAGGED:
        return False
    # A LUN field not yet decoded (a session's first command to it) goes
    # the full path, which decodes it into the cache. A device whose
    # handler cannot read this way (blockio: O_DIRECT) declines first.
    tgt_dev = sess.sess_tgt_dev_list.get(scst_lun_cache.get(lun))
    if tgt_dev is None:
        return False
    dev = tgt_dev.dev
    read_fast = dev.handler.read_fast
    if read_fast is None or tgt_dev.UA_list or scst_tg.scst_alua_filters:
        return False
    op = cdb[0]
    if op == _READ_10:
        flags, lba, n, control = _read10.unpack_from(cdb)
    elif op == _READ_16:
        flags, lba, n, control = _read16.unpack_from(cdb)
    else:
        return False
    # RDPROTECT and FUA (vdisk's parse and the FUA read's device thread),
    # the LINK bit (cdbprobe's error)
    if flags & 0xE8 or control & 1 or fail_scsi_cmd.armed or failslab.armed \
            or fail_page_alloc.armed or sess.shut_phase:
        return False
    if (n << dev.block_shift != len(buf) or dev.ordered_pending or dev.deferred_cmds
            or dev.dev_cmd_count >= SCST_MAX_DEV_COMMANDS):
        return False
    prd = scst_pr_devs.get(dev)
    if prd is not None and (prd.reserved_by is not None or prd.pr_is_set):
        return False
    if not read_fast(dev, lba, buf):
        return False
    dev.cmd_count += 1
    tgt_dev.reads += 1
    tgt_dev.read_bytes += len(buf)
    fast_reads += 1
    return True


def scst_write_fast(sess: scst_session, lun: bytes, cdb: bytes, queue_type: int,
                    buf: memoryview, done: Callable[[Any, bytes], None], priv: Any) -> bool:
    """Start a predicted WRITE of buf, its whole data (1 to FAST_WRITE_MAX
    bytes, the expected length): True when it is started, and done(priv,
    sense) runs in softirq context when it ends (sense b"" for GOOD, else
    the CHECK CONDITION's sense bytes); the driver keeps buf until then.
    False, having started nothing, when the caller must take the full
    path."""
    if not scst_fast_write or tracepoint.nr_enabled or queue_type > _SIMPLE_OR_UNTAGGED:
        return False
    tgt_dev = sess.sess_tgt_dev_list.get(scst_lun_cache.get(lun))
    if tgt_dev is None:
        return False
    dev = tgt_dev.dev
    write_fast = dev.handler.write_fast
    if (write_fast is None or tgt_dev.UA_list or scst_tg.scst_alua_filters or tgt_dev.rd_only
            or dev.qerr):
        return False
    op = cdb[0]
    if op == _WRITE_10:
        flags, lba, n, control = _read10.unpack_from(cdb)
    elif op == _WRITE_16:
        flags, lba, n, control = _read16.unpack_from(cdb)
    else:
        return False
    # WRPROTECT (vdisk's parse), the LINK bit (cdbprobe's error); FUA is
    # the handler's (a durable write)
    if flags & 0xE0 or control & 1 or fail_scsi_cmd.armed or failslab.armed \
            or fail_page_alloc.armed or sess.shut_phase:
        return False
    if (n << dev.block_shift != len(buf) or dev.ordered_pending or dev.deferred_cmds
            or dev.fast_waiters or dev.dev_cmd_count >= SCST_MAX_DEV_COMMANDS):
        return False
    prd = scst_pr_devs.get(dev)
    if prd is not None and (prd.reserved_by is not None or prd.pr_is_set):
        return False
    if not write_fast(dev, lba, buf, bool(flags & 0x08), _write_fast_done,
                      (tgt_dev, len(buf), done, priv)):
        return False
    # In the task set until it ends: the session and the device count it.
    sess.cmd_count += 1
    dev.dev_cmd_count += 1
    dev.fast_writes += 1
    return True


def _write_fast_done(ctx: tuple, sense: bytes) -> None:
    """A predicted WRITE has ended (softirq): count it as DEV_DONE would,
    answer it, and let go what waited for the device's last one."""
    global fast_writes
    tgt_dev, nbytes, done, priv = ctx
    dev = tgt_dev.dev
    dev.cmd_count += 1
    if not sense:
        tgt_dev.writes += 1
        tgt_dev.write_bytes += nbytes
    fast_writes += 1
    done(priv, sense)
    dev.dev_cmd_count -= 1
    dev.fast_writes -= 1
    if not dev.fast_writes and (dev.fast_waiters or dev.deferred_cmds):
        scst_fast_writes_drained(dev)
    sess = tgt_dev.sess
    sess.cmd_count -= 1
    if sess.shut_phase and sess.cmd_count == 0:
        from scst_core.main import scst_sess_free_final  # cycle: main imports targ
        scst_sess_free_final(sess)


def _switch_store(name: str) -> Callable[[kobject, kobj_attribute, str], int]:
    """The sysfs store of the 0/1 switch held in this module's global name."""
    def store(_k: kobject, _a: kobj_attribute, buf: str) -> int:
        v = buf.strip()
        if v not in ("0", "1"):
            return -EINVAL
        globals()[name] = int(v)
        return len(buf)
    return store


def scst_fastpath_sysfs_init(root: kobject) -> int:
    """fast_read and fast_write (the switches), fast_reads and fast_writes
    (the counts) under root (/sys/kernel/scst_tgt)."""
    return (sysfs_create_file(root, __ATTR("fast_read", S_IRUGO | S_IWUSR,
                                           lambda k, a: f"{scst_fast_read}\n",
                                           _switch_store("scst_fast_read")))
            or sysfs_create_file(root, __ATTR_RO("fast_reads", lambda k, a: f"{fast_reads}\n"))
            or sysfs_create_file(root, __ATTR("fast_write", S_IRUGO | S_IWUSR,
                                              lambda k, a: f"{scst_fast_write}\n",
                                              _switch_store("scst_fast_write")))
            or sysfs_create_file(root, __ATTR_RO("fast_writes",
                                                 lambda k, a: f"{fast_writes}\n")))
