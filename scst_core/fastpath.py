"""READ and WRITE prediction: a plain READ or WRITE done, or started,
without a command object.

Mirrors no SCST file: a uscst design (decisions 0072, 0073), modelled on
TCP's header prediction (tcp_rcv_established's fast path). TCP checks a
few header fields against what it predicts for an established
connection and, when they match, handles the segment in a few lines;
anything unexpected takes the full path. Here the target driver offers a
READ(10)/(16) CDB to scst_cmd_fast before it allocates anything, and
the WRITE(10)/(16) CDBs of one receive pass, whose data came with them,
to scst_cmds_fast_write as one list (as the kernel's listified receive,
netif_receive_skb_list, carries a batch through each layer in one call:
the nexus is checked once per list and the handler starts the list in
one call, decision 0077). When a command and its I_T_L nexus are in the
predicted state, the core has it done with no scst_cmd. Anything else
is declined (FAST_DECLINED; for a list, the run started stops before
it) and the driver takes the full path (scst_rx_cmd and the state
machine of scst_core.targ), which gives the same answer the slow way:
that path stays the reference, and every error, sense and ordering rule
lives there alone.

Predicted state (each test is one the full path would make; the first
that fails declines):
- nothing watches: the switch is 1 (/sys/kernel/scst_tgt/fast_read,
  fast_write), no tracepoint is enabled (tracing, measure_latency: a
  trace shows every command's states), and none of the fault points the
  full path's command passes (fail_scsi_cmd, failslab for its scst_cmd,
  fail_page_alloc for its buffer) is armed;
- the CDB: of the direction the driver expects (write), no RDPROTECT
  and no FUA for a READ, no WRPROTECT for a WRITE (its FUA is the
  handler's: a durable write), no LINK bit, a transfer of 1 block or
  more that is exactly the expected length and at most FAST_READ_MAX
  (FAST_WRITE_MAX) bytes;
- the nexus: the LUN exists for the session (and its field was decoded
  before), which is not shutting down; no unit attention is pending for
  it; no ALUA state filters commands; the device holds no reservation or
  persistent reservation, no ORDERED command, no command held back, and
  fewer than SCST_MAX_DEV_COMMANDS commands; the task attribute is SIMPLE
  or untagged; for a WRITE, the LUN is not read-only;
- the dev handler does it: read_fast(dev, lba, buf) reads a READ whole
  without sleeping (vdisk_fileio: in range, medium present, from the
  page cache): FAST_DONE; or start_fast(dev, lba, buf, done, priv)
  starts a READ (vdisk_blockio: direct I/O), or start_fast_list(dev,
  items, done) a run of WRITEs (vdisk_fileio, vdisk_blockio), which end
  later, in softirq: FAST_STARTED.

A READ done at once never enters the task set: it has finished before
the driver sees the answer, whose response is the only thing left; a
task management function that arrives later finds the task done, as it
would a slow READ answered just before it. A started command is in flight
while other commands arrive, so it is started only on a device whose
QErr is 00b (a CHECK CONDITION would have to abort it) and no task
management function waits on, and the core keeps of it what the full
path needs:
- the task set counts it (dev_cmd_count, the session's cmd_count: a
  session being unregistered is freed only after its last one ends);
- an ORDERED command waits for the device's predicted commands in flight
  (dev.fast_cmds), as for the older commands it would wait for;
- a task management function's response waits for those of the devices
  it covers (dev.fast_waiters); they cannot be aborted, so they are
  answered before it, as commands that finished first (none is started
  on the device while one waits: it cannot be starved);
- its end (_fast_cmd_done) counts it as DEV_DONE would and passes the
  handler's sense, the one the full path's end_io would set, to the
  driver's done.
A started command is not aborted by PREEMPT AND ABORT, which ends its
victims asynchronously on the full path too: a command already at the
device finishes either way; here its status is sent.

Both paths count what the full path counts: the I_T_L nexus's read and
write counters (scst_core.stats, the session's sysfs) for GOOD
commands, the device's command count, and fast_reads / fast_writes.

The data is in the driver's buffer, as SCST lets a target driver
allocate a command's buffer itself (tgt_data_buf_alloced): the driver
keeps it until the command has ended and been answered, and reuses it
for its next command, with no page allocation.

Contexts: scst_cmd_fast and scst_cmds_fast_write from any context (they
never sleep: the driver's receive path, softirq); a started command's
done in softirq context; the switches from task context (sysfs store).
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
from scst_core.targ import SCST_MAX_DEV_COMMANDS, scst_fast_cmds_drained, scst_lun_cache

# The largest READ answered here: 256 KiB, the MaxRecvDataSegmentLength
# open-iscsi and libiscsi offer, so that one Data-In PDU carries it (the
# full path's states were a quarter of a 128K READ's CPU, decision 0074).
# vdisk_fileio still sends what its sendfile band holds from the page
# cache on the full path (decision 0067).
FAST_READ_MAX = 262144

# The largest WRITE predicted (all of its data in the command's PDU)
FAST_WRITE_MAX = 32768

# 1: offer READs to the fast path; 0: every command takes the full path
scst_fast_read = 1
# READs answered here since boot (/sys/kernel/scst_tgt/fast_reads)
fast_reads = 0
# the same for WRITEs (/sys/kernel/scst_tgt/fast_write, fast_writes)
scst_fast_write = 1
fast_writes = 0

_cdb10 = struct.Struct(">xBIxHB")       # flags, LBA, blocks, control
_cdb16 = struct.Struct(">xBQIxB")
_READ_10 = 0x28
_READ_16 = 0x88
_WRITE_10 = 0x2A
_WRITE_16 = 0x8A

# scst_cmd_fast's answers
FAST_DECLINED = 0
FAST_DONE = 1
FAST_STARTED = 2
_SIMPLE_OR_UNTAGGED = 1                 # SCST_CMD_QUEUE_SIMPLE (1), UNTAGGED (0)


def _fast_watched(sess: scst_session) -> bool:
    """Something watches every command, or the session is going: the
    checks of every predicted command, READ or WRITE, that do not depend
    on its LUN."""
    return bool(tracepoint.nr_enabled or scst_tg.scst_alua_filters or fail_scsi_cmd.armed
                or failslab.armed or fail_page_alloc.armed or sess.shut_phase)


def _fast_nexus(sess: scst_session, lun: bytes) -> Any:
    """The LUN's tgt_dev when the nexus is in the predicted state (the LUN
    field decoded before, no unit attention, no ORDERED or held command,
    no reservation), else None. A LUN field not yet decoded (a session's
    first command to it) goes the full path, which decodes it."""
    tgt_dev = sess.sess_tgt_dev_list.get(scst_lun_cache.get(lun))
    if tgt_dev is None or tgt_dev.UA_list:
        return None
    dev = tgt_dev.dev
    if dev.ordered_pending or dev.deferred_cmds:
        return None
    prd = scst_pr_devs.get(dev)
    if prd is not None and (prd.reserved_by is not None or prd.pr_is_set):
        return None
    return tgt_dev


def scst_cmd_fast(sess: scst_session, lun: bytes, cdb: bytes, queue_type: int,
                  buf: memoryview, done: Callable[[Any, bytes], None], priv: Any) -> int:
    """Offer a plain READ (10/16) whose expected transfer is len(buf) bytes
    (1 to FAST_READ_MAX). FAST_DONE: its data is in buf and it is done
    (GOOD). FAST_STARTED: the command runs, done(priv, sense) comes in
    softirq context when it ends (sense b"" for GOOD, else the CHECK
    CONDITION's sense bytes; the data is then in buf), and the driver
    keeps buf until then. FAST_DECLINED, having changed nothing, when the
    caller must take the full path."""
    global fast_reads
    # The checks of _fast_watched and _fast_nexus, inline: this is the
    # path of every predicted READ, and their two calls cost more than
    # their tests
    if tracepoint.nr_enabled or queue_type > _SIMPLE_OR_UNTAGGED or not scst_fast_read:
        return FAST_DECLINED
    tgt_dev = sess.sess_tgt_dev_list.get(scst_lun_cache.get(lun))
    if tgt_dev is None:
        return FAST_DECLINED
    op = cdb[0]
    if op == _READ_10:
        flags, lba, n, control = _cdb10.unpack_from(cdb)
    elif op == _READ_16:
        flags, lba, n, control = _cdb16.unpack_from(cdb)
    else:
        return FAST_DECLINED
    # RDPROTECT and FUA (vdisk's parse and the FUA read's device thread),
    # the LINK bit (cdbprobe's error)
    if (flags & 0xE8 or control & 1 or tgt_dev.UA_list or scst_tg.scst_alua_filters
            or fail_scsi_cmd.armed or failslab.armed or fail_page_alloc.armed or sess.shut_phase):
        return FAST_DECLINED
    dev = tgt_dev.dev
    nbytes = len(buf)
    if (n << dev.block_shift != nbytes or dev.ordered_pending or dev.deferred_cmds
            or dev.dev_cmd_count >= SCST_MAX_DEV_COMMANDS):
        return FAST_DECLINED
    prd = scst_pr_devs.get(dev)
    if prd is not None and (prd.reserved_by is not None or prd.pr_is_set):
        return FAST_DECLINED
    read_fast = dev.handler.read_fast
    if read_fast is not None and read_fast(dev, lba, buf):
        dev.cmd_count += 1
        tgt_dev.reads += 1
        tgt_dev.read_bytes += nbytes
        fast_reads += 1
        return FAST_DONE
    # A TMF waiting for the device's commands in flight is not kept
    # waiting by more of them; with QErr other than 00b a CHECK CONDITION
    # aborts the task set, which a started command cannot join.
    start_fast = dev.handler.start_fast
    if (start_fast is None or dev.fast_waiters or dev.qerr
            or not start_fast(dev, lba, buf, _fast_cmd_done, (tgt_dev, nbytes, 0, done, priv))):
        return FAST_DECLINED
    # In the task set until it ends: the session and the device count it.
    sess.cmd_count += 1
    dev.dev_cmd_count += 1
    dev.fast_cmds += 1
    return FAST_STARTED


def scst_cmds_fast_write(sess: scst_session, cmds: list, start: int,
                         done: Callable[[Any, bytes], None]) -> int:
    """Offer the plain WRITEs (10/16) cmds[start:], in order, each a
    (priv, lun, cdb, queue_type, buf) whose buf holds all its data (1 to
    FAST_WRITE_MAX bytes, the expected transfer). Starts the longest run
    of them from cmds[start] on that prediction allows, as scst_cmd_fast
    would start each (done(priv, sense) in softirq when it ends), and
    returns how many it started. The first one not started, and the rest,
    stay the caller's: that one takes the full path, and the rest may be
    offered again, so commands start in the order they came. The checks
    that hold for the whole run (the nexus) are made once."""
    n = len(cmds)
    if not scst_fast_write or _fast_watched(sess):
        return 0
    lun0 = cmds[start][1]
    tgt_dev = _fast_nexus(sess, lun0)
    if tgt_dev is None or tgt_dev.rd_only:
        return 0
    dev = tgt_dev.dev
    # as for a started READ (scst_cmd_fast)
    if dev.fast_waiters or dev.qerr:
        return 0
    start_list = dev.handler.start_fast_list
    if start_list is None:
        return 0
    shift = dev.block_shift
    room = SCST_MAX_DEV_COMMANDS - dev.dev_cmd_count
    items = []
    for i in range(start, min(n, start + room)):
        priv, lun, cdb, queue_type, buf = cmds[i]
        if lun != lun0 or queue_type > _SIMPLE_OR_UNTAGGED:
            break
        op = cdb[0]
        if op == _WRITE_10:
            flags, lba, nblocks, control = _cdb10.unpack_from(cdb)
        elif op == _WRITE_16:
            flags, lba, nblocks, control = _cdb16.unpack_from(cdb)
        else:
            break
        # WRPROTECT (vdisk's parse), the LINK bit (cdbprobe's error); FUA
        # is the handler's (a durable write)
        nbytes = len(buf)
        if flags & 0xE0 or control & 1 or nblocks << shift != nbytes:
            break
        items.append((lba, buf, flags & 0x08, (tgt_dev, nbytes, 1, done, priv)))
    if not items:
        return 0
    k = start_list(dev, items, _fast_cmd_done)
    # In the task set until they end: the session and the device count them.
    sess.cmd_count += k
    dev.dev_cmd_count += k
    dev.fast_cmds += k
    return k


def _fast_cmd_done(ctx: tuple, sense: bytes) -> None:
    """A predicted command started by the handler has ended (softirq):
    count it as DEV_DONE would, answer it, and let go what waited for the
    device's last one."""
    global fast_reads, fast_writes
    tgt_dev, nbytes, write, done, priv = ctx
    dev = tgt_dev.dev
    dev.cmd_count += 1
    if write:
        fast_writes += 1
        if not sense:
            tgt_dev.writes += 1
            tgt_dev.write_bytes += nbytes
    else:
        fast_reads += 1
        if not sense:
            tgt_dev.reads += 1
            tgt_dev.read_bytes += nbytes
    done(priv, sense)
    dev.dev_cmd_count -= 1
    dev.fast_cmds -= 1
    if not dev.fast_cmds and (dev.fast_waiters or dev.deferred_cmds):
        scst_fast_cmds_drained(dev)
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
