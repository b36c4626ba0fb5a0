"""The vdisk_rbd dev handler: a virtual disk whose blocks live in a Ceph RBD
image.

Twin of nothing in SCST (its users reached Ceph through tcmu-runner's rbd
handler, and ceph-iscsi configured that); built as scst_vdisk.c's
handlers are: vdisk_io_ops over kshim.libceph, with the SBC command set of
vdisk.vdisk. The kernel's drivers/block/rbd.c is the model for the data
path: requests go to the image asynchronously and complete in softirq
context.

Configured by `image` (required), `pool` (default rbd), `conf` (a
ceph.conf path; default librados' search, /etc/ceph/ceph.conf first),
`user` (the cephx client name without "client.", default admin) and
`op_timeout` (seconds, default 30, 1..100: connecting, and every monitor
and OSD request), plus the vdisk parameters that mean something without a
local file (blocksize, read_only, nv_cache, write_through, rotational,
thin_provisioned, the identity strings). The size is the image's.

Contexts: attach and detach from task context (they connect and
disconnect); the reopen work from a workqueue worker. exec() from a
device kthread: commands other than a plain READ or WRITE sleep until
librbd answered. exec_nowait() from any context: it starts a plain READ
or WRITE and returns; the command completes in softirq context when
librbd has completed the request.

Data path and durability: a READ is one rbd_aio_readv straight into the
command's buffers, a WRITE one rbd_aio_writev from them. With
write_through=1 (the default) the image is opened with librbd's cache off
(rbd_cache=false), so librbd completes a write only once the OSDs have it
on stable storage: GOOD follows that. With write_through=0 librbd's cache
is on (write-back after the first flush, as librbd does by default); a
WRITE with FUA, and SYNCHRONIZE CACHE, are followed by rbd_aio_flush.
UNMAP and WRITE SAME with UNMAP are rbd_aio_write_zeroes: it deallocates
whole objects and zeroes the rest, so they read back zeros as the LBPRZ=1
that vdisk reports promises (rbd_aio_discard may skip partial objects and
leave their data). GET LBA STATUS asks librbd which extents are
allocated (rbd_diff_iterate2): a RADOS object is allocated from its start
to the end of its last write, so a block never written before a written
one in the same object reads as mapped, which is allowed (it reads zeros).

Errors: librbd's error on a read is MEDIUM ERROR, UNRECOVERED READ ERROR
(03/11/00), on a write or flush MEDIUM ERROR, WRITE ERROR (03/0C/00),
-ENOSPC on a thin device SPACE ALLOCATION FAILED (07/27/07); INFORMATION
names the first block of the failed request. A lost cluster is
retryable, never a lost write: a request librbd could not finish within
op_timeout (-ETIMEDOUT), or refused because this client was blocklisted
(-ESHUTDOWN, EBLOCKLISTED) or lost its connection (-ENOTCONN), gets NOT
READY, LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE (02/04/00), which
Linux fails on this path so that dm-multipath can retry elsewhere (as
vdisk_nbd, decision 0050). A fenced (blocklisted) client is replaced:
a work item waits until librbd has failed every request in flight,
closes the image and opens it again as a new client (retrying with a
doubling delay up to 5 s); meanwhile every command, TEST UNIT READY
included, gets NOT READY without reaching librbd.

Shared with another node: as vdisk_nbd, PERSISTENT RESERVE OUT and
RESERVE(6/10) are refused when the device's ALUA group names another
node's port. librbd's exclusive lock passes the image between nodes by
itself.

Differs from SCST's handlers: no resync_size; no snapshots; the device
cannot run under the sim engine (no cluster): add_device fails with
-ENODEV and one log line.
"""
from __future__ import annotations

from typing import Any

import attrs

from kshim.atomic import ATOMIC_INIT, atomic_dec, atomic_inc, atomic_read, atomic_t
from kshim.completion import completion, complete, wait_for_completion
from kshim.err import EINVAL, ENODEV, ENOSPC, ENOTCONN, ESHUTDOWN, ETIMEDOUT, errname
from kshim.host import (RBD_OP_FLUSH, RBD_OP_READ, RBD_OP_WRITE, RBD_OP_WRITE_ZEROES,
                        rbd_request)
from kshim.jiffies import HZ
from kshim.libceph import (rbd_available, rbd_image_close, rbd_image_extent, rbd_image_open,
                           rbd_image_size, rbd_image_submit)
from kshim.printk import pr_err, pr_info, pr_notice, pr_warn_ratelimited
from kshim.workqueue import (INIT_DELAYED_WORK, cancel_delayed_work_sync, delayed_work,
                             schedule_delayed_work, work_struct)
from scst_core.const import (scst_sense_read_error, scst_sense_space_allocation_failed,
                             scst_sense_write_error)
from scst_core.lib import scst_cmd_iov, scst_set_cmd_error
from scst_core.scst import scst_cmd, scst_device
from vdisk.nbd import nbd_refuse_shared_reservation, sense_lu_not_ready
from vdisk.vdisk import (scst_vdisk_dev, vdisk_attach_common,
                         vdisk_cmd_done, vdisk_detach_common, vdisk_do_exec, vdisk_io_ops,
                         vdisk_make_devtype, vdisk_need_sync, vdisk_rbd_only_parameters,
                         vdisk_set_sense_info, vdisk_store_parameters)

RBD_DEFAULT_POOL = "rbd"
RBD_DEFAULT_USER = "admin"
RBD_OP_TIMEOUT = 30                  # seconds: Linux's default command timeout
RBD_OP_TIMEOUT_MAX = 100             # below the hung-task timeout (120 s) waiters would meet
RBD_REOPEN_DELAY_MAX = 5 * HZ        # the longest wait between reopen attempts
RBD_LBA_STATUS_SPAN = 1 << 30        # bytes one GET LBA STATUS looks at

_READ_OPS = frozenset((0x08, 0x28, 0xA8, 0x88))
_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A))
# librbd's answers that say "the cluster, not the medium": retryable
_LOST_CLUSTER = frozenset((-ETIMEDOUT, -ESHUTDOWN, -ENOTCONN))


@attrs.define(slots=True, eq=False)
class rbd_dev:
    """The image behind one vdisk_rbd device (virt_dev.file)."""
    name: str
    # what rbd_image_open takes (conf, user, pool, image, librados options); set once
    open_args: tuple
    cache: bool                      # librbd's cache on (write_through 0): FUA needs a flush
    # The kshim.libceph handle, None while reopening. Replaced only by the
    # reopen work while blocklisted is set, when nothing is in flight.
    image: Any = None
    # Set (softirq or task context) when librbd says the cluster fenced
    # this client, cleared by the reopen work once a new client has the
    # image: while set, commands get NOT READY without reaching librbd.
    # Plain stores on the one CPU: no lock.
    blocklisted: bool = False
    stopping: bool = False           # detach: the reopen work must not re-arm
    reopens: int = 0                 # successful reopens (rbd_state)
    reopen_delay: int = 0            # jiffies before the next reopen attempt
    # requests submitted and not completed (submit and end_io)
    inflight: atomic_t = attrs.field(factory=lambda: ATOMIC_INIT(0))
    reopen: delayed_work = attrs.field(factory=delayed_work)


def _rbd(virt_dev: scst_vdisk_dev) -> rbd_dev:
    return virt_dev.file


def _submit(rdev: rbd_dev, req: rbd_request) -> int:
    """Start req on the device's image, counted in inflight: 0 or -errno
    (-ESHUTDOWN while the image is being reopened)."""
    if rdev.blocklisted:
        return -ESHUTDOWN
    atomic_inc(rdev.inflight)
    ret = rbd_image_submit(rdev.image, req)
    if ret < 0:
        atomic_dec(rdev.inflight)
    return ret


def _rbd_reopen(work: work_struct) -> None:
    """The reopen work (a workqueue worker): once every request to the
    fenced image has completed (librbd fails them with -ESHUTDOWN), close
    it and open the image again as a new client; retried with a doubling
    delay (0.1 s to 5 s) while the cluster refuses. tcmu-runner's rbd
    handler does the same: fencing keeps the old client's writes from
    landing late, and a new client may take the image over."""
    rdev: rbd_dev = work.data
    if rdev.stopping:
        return
    if atomic_read(rdev.inflight):
        schedule_delayed_work(rdev.reopen, HZ // 10)
        return
    if rdev.image is not None:
        rbd_image_close(rdev.image)
        rdev.image = None
    h = rbd_image_open(*rdev.open_args)
    if isinstance(h, tuple):
        rdev.reopen_delay = min(max(rdev.reopen_delay * 2, HZ // 10), RBD_REOPEN_DELAY_MAX)
        pr_warn_ratelimited(f"vdisk_rbd: {rdev.name}: reopening failed: {h[1]}: "
                            f"{errname(h[0])}; again in {rdev.reopen_delay * 1000 // HZ} ms")
        if not rdev.stopping:
            schedule_delayed_work(rdev.reopen, rdev.reopen_delay)
        return
    if rdev.stopping:               # detached meanwhile: its detach closes nothing more
        rbd_image_close(h)
        return
    rdev.image = h
    rdev.reopens += 1
    rdev.reopen_delay = 0
    rdev.blocklisted = False
    pr_notice(f"vdisk_rbd: {rdev.name}: reopened as a new client (reopens={rdev.reopens})")


def _io_failed(virt_dev: scst_vdisk_dev, cmd: scst_cmd, ret: int, op: int, off: int) -> int:
    """Set the sense for a failed request at byte offset off; return ret.
    The first -ESHUTDOWN (fenced) starts the reopen."""
    rdev = _rbd(virt_dev)
    if ret == -ESHUTDOWN and not rdev.blocklisted and rdev.image is not None:
        rdev.blocklisted = True
        pr_err(f"vdisk_rbd: {virt_dev.name}: the cluster blocklisted this client: NOT READY "
               f"until the image is reopened")
        schedule_delayed_work(rdev.reopen, 0)
    write = op != RBD_OP_READ
    what = ("read", "write", "flush", "discard", "write_zeroes")[op]
    pr_warn_ratelimited(f"vdisk_rbd: {virt_dev.name}: {what} at LBA {off >> virt_dev.block_shift} "
                        f"failed: {errname(ret)}")
    if ret in _LOST_CLUSTER:
        scst_set_cmd_error(cmd, sense_lu_not_ready)
    elif ret == -ENOSPC and write and virt_dev.thin_provisioned:
        scst_set_cmd_error(cmd, scst_sense_space_allocation_failed)
    else:
        scst_set_cmd_error(cmd, scst_sense_write_error if write else scst_sense_read_error)
        vdisk_set_sense_info(cmd, off >> virt_dev.block_shift)
    return ret


def _sync_done(req: rbd_request) -> None:
    cmd, done = req.private
    atomic_dec(_rbd(cmd.dev.dh_priv).inflight)
    complete(done)


def _rbd_wait(virt_dev: scst_vdisk_dev, cmd: scst_cmd, op: int, off: int, length: int,
              iov: list) -> int:
    """One request, waited for (a device thread): 0, or the sense set and -errno."""
    done = completion("vdisk_rbd io")
    req = rbd_request(op, off, length, iov, _sync_done, (cmd, done))
    ret = _submit(_rbd(virt_dev), req)
    if ret == 0:
        wait_for_completion(done)
        ret = min(req.result, 0)
    return _io_failed(virt_dev, cmd, ret, op, off) if ret < 0 else 0


def rbd_read(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rbd_wait(virt_dev, cmd, RBD_OP_READ, pos, length, scst_cmd_iov(cmd))


def rbd_write(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rbd_wait(virt_dev, cmd, RBD_OP_WRITE, pos, length, scst_cmd_iov(cmd))


def rbd_read_into(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: bytearray) -> int:
    return _rbd_wait(virt_dev, cmd, RBD_OP_READ, pos, len(buf), [memoryview(buf)])


def rbd_write_buf(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int,
                  buf: "bytes | memoryview") -> int:
    return _rbd_wait(virt_dev, cmd, RBD_OP_WRITE, pos, len(buf), [memoryview(buf)])


def rbd_sync(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    """rbd_aio_flush (the whole image; librbd has no ranged flush)."""
    return _rbd_wait(virt_dev, cmd, RBD_OP_FLUSH, pos, 0, [])


def rbd_unmap(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rbd_wait(virt_dev, cmd, RBD_OP_WRITE_ZEROES, pos, length, [])


def rbd_lba_status(virt_dev: scst_vdisk_dev, lba: int) -> tuple[bool, int]:
    """(mapped, blocks) of the extent at lba, from the image's allocated
    extents (rbd_diff_iterate2) within RBD_LBA_STATUS_SPAN bytes; every
    block mapped while the image is being reopened or when librbd fails."""
    rdev = _rbd(virt_dev)
    shift = virt_dev.block_shift
    left = virt_dev.nblocks - lba
    if rdev.blocklisted:
        return True, left
    r = rbd_image_extent(rdev.image, lba << shift, min(left << shift, RBD_LBA_STATUS_SPAN))
    if isinstance(r, int):
        return True, left
    mapped, n = r
    return mapped, max(1, n >> shift)


rbd_io_ops = vdisk_io_ops(read=rbd_read, write=rbd_write, read_into=rbd_read_into,
                          sync=rbd_sync, unmap=rbd_unmap, lba_status=rbd_lba_status,
                          write_buf=rbd_write_buf)


def _rbd_io_end(req: rbd_request) -> None:
    """end_io of a plain READ or WRITE (softirq context): a FUA write on a
    write-back image flushes first; then the command completes."""
    cmd: scst_cmd = req.private
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    atomic_dec(_rbd(virt_dev).inflight)
    if req.result < 0:
        _io_failed(virt_dev, cmd, req.result, req.op, req.off)
    elif req.op == RBD_OP_READ:
        cmd.resp_data_len = cmd.data_len    # a READ's data_len never exceeds its bufflen
    elif req.length and _flush_after(cmd, virt_dev):
        flush = rbd_request(RBD_OP_FLUSH, req.off, 0, [], _rbd_io_end, cmd)
        ret = _submit(_rbd(virt_dev), flush)
        if ret == 0:
            return
        _io_failed(virt_dev, cmd, ret, RBD_OP_FLUSH, req.off)
    vdisk_cmd_done(cmd)


def _flush_after(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bool:
    """Must a plain WRITE be followed by a flush? Only with librbd's cache
    on (write_through 0) and FUA: without the cache a completed write is
    on the OSDs' stable storage already."""
    fua = cmd.cdb[0] != 0x0A and bool(cmd.cdb[1] & 0x08)
    return _rbd(virt_dev).cache and vdisk_need_sync(cmd, virt_dev, fua)


def rbd_exec_nowait(cmd: scst_cmd) -> bool:
    """Start a plain READ or WRITE (6/10/12/16) without sleeping: one
    asynchronous librbd request on the command's buffers; the command
    completes from softirq context (_rbd_io_end). Declines anything else."""
    op = cmd.cdb[0]
    write = op in _WRITE_OPS
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    if not (write or op in _READ_OPS) or cmd.status or virt_dev.sanitize_state \
            or not cmd.data_len:
        return False
    rop = RBD_OP_WRITE if write else RBD_OP_READ
    pos = cmd.lba << virt_dev.block_shift
    req = rbd_request(rop, pos, cmd.data_len, scst_cmd_iov(cmd), _rbd_io_end, cmd)
    ret = _submit(_rbd(virt_dev), req)
    if ret < 0:
        _io_failed(virt_dev, cmd, ret, rop, pos)
        vdisk_cmd_done(cmd)
    return True


def rbd_exec(cmd: scst_cmd) -> int:
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    if not cmd.status and nbd_refuse_shared_reservation(cmd, virt_dev):
        return vdisk_cmd_done(cmd)
    if not cmd.status and cmd.cdb[0] == 0x00 and _rbd(virt_dev).blocklisted:
        scst_set_cmd_error(cmd, sense_lu_not_ready)       # TEST UNIT READY
        return vdisk_cmd_done(cmd)
    return vdisk_do_exec(cmd)


def _op_timeout(virt_dev: scst_vdisk_dev) -> int:
    """op_timeout in seconds, or -EINVAL after a log line."""
    t = virt_dev.backend_params.get("op_timeout", str(RBD_OP_TIMEOUT)).strip()
    if not t.isdecimal() or not 1 <= int(t) <= RBD_OP_TIMEOUT_MAX:
        pr_err(f"vdisk_rbd: {virt_dev.name}: bad op_timeout '{t}' (seconds, "
               f"1..{RBD_OP_TIMEOUT_MAX})")
        return -EINVAL
    return int(t)


def rbd_attach(dev: scst_device) -> int:
    """Connect to the cluster, open the image and publish its geometry: 0
    or -errno (logged: no librbd or no cluster under this engine, bad
    parameter, unreachable cluster, no such pool or image)."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    who = f"vdisk_rbd: {virt_dev.name}"
    why = rbd_available()
    if why:
        pr_err(f"{who}: cannot use Ceph RBD: {why}")
        return -ENODEV
    timeout = _op_timeout(virt_dev)
    if timeout < 0:
        return timeout
    p = virt_dev.backend_params
    pool, name = p.get("pool", RBD_DEFAULT_POOL), p["image"]
    conf, user = p.get("conf", ""), p.get("user", RBD_DEFAULT_USER)
    cache = not virt_dev.wt_flag and not virt_dev.nv_cache
    t = str(timeout)
    options = {"client_mount_timeout": t, "rados_mon_op_timeout": t, "rados_osd_op_timeout": t,
               "rbd_cache": "true" if cache else "false"}
    h = rbd_image_open(conf, user, pool, name, options)
    if isinstance(h, tuple):
        ret, step = h
        pr_err(f"{who}: {pool}/{name} as client.{user.removeprefix('client.')}: {step} failed: "
               f"{errname(ret)}")
        return ret if ret < 0 else -EINVAL
    size = rbd_image_size(h)
    bs = virt_dev.block_size
    if size < bs:
        pr_err(f"{who}: image {pool}/{name} of {size} bytes is smaller than one block ({bs})")
        rbd_image_close(h)
        return -EINVAL
    rdev = rbd_dev(name=virt_dev.name, open_args=(conf, user, pool, name, options), cache=cache,
                   image=h)
    INIT_DELAYED_WORK(rdev.reopen, _rbd_reopen)
    rdev.reopen.data = rdev
    virt_dev.file = rdev
    virt_dev.file_size = size - size % bs
    if not virt_dev.thin_provisioned_set and not virt_dev.rd_only:
        virt_dev.thin_provisioned = True        # RBD images are thin; write_zeroes deallocates
    virt_dev.io_ops = rbd_io_ops
    vdisk_attach_common(dev, virt_dev)
    pr_info(f"{who}: {pool}/{name}: {size} bytes, librbd cache {'on' if cache else 'off'}")
    return 0


def rbd_detach(dev: scst_device) -> None:
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_detach_common(dev, virt_dev)
    rdev = virt_dev.file
    if isinstance(rdev, rbd_dev):
        rdev.stopping = True
        cancel_delayed_work_sync(rdev.reopen)
        if rdev.image is not None:
            rbd_image_close(rdev.image)
    virt_dev.file = None
    virt_dev.dev = None


rbd_devtype = vdisk_make_devtype("vdisk_rbd", rbd_exec, rbd_attach, rbd_detach,
                                 exec_atomic=False, exec_nowait=rbd_exec_nowait)
rbd_devtype.add_device_parameters = vdisk_store_parameters(vdisk_rbd_only_parameters)
