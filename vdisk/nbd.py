"""The vdisk_nbd dev handler: a virtual disk whose blocks live on an NBD
server (nbdkit, qemu-nbd, qemu-storage-daemon, nbd-server...).

Twin of nothing in SCST (its users reached NBD through tcmu-runner); built
as scst_vdisk.c's handlers are: vdisk_io_ops over vdisk.nbd_client, the
kernel NBD client's twin, with the SBC command set of vdisk.vdisk.

Configured by `uri` (nbd://host[:port]/export, port 10809 by default, an
IPv6 host in brackets; or nbd+unix:///export?socket=/path) and
`reconnect_timeout` (seconds, default 30), plus the vdisk parameters that
mean something without a local file (blocksize, read_only, nv_cache,
write_through, rotational, thin_provisioned, the identity strings).

Contexts: attach and detach from task context (they connect and
disconnect). exec() from a device kthread only: its data commands sleep
until the server has answered. exec_nowait() from any context: it queues
a plain READ or WRITE and returns; the command completes in the NBD
connection thread.

Data path and durability: a READ is one NBD_CMD_READ per max_payload
bytes, straight into the command's buffers. A WRITE is answered only after
the server replied to it, and with write_through=1 (the default) or FUA
only after it is stable there: NBD_CMD_WRITE with NBD_CMD_FLAG_FUA when
the server offers FUA, else the WRITE followed by NBD_CMD_FLUSH.
SYNCHRONIZE CACHE is NBD_CMD_FLUSH (nothing when the server offers no
flush: its writes are then stable when answered). UNMAP and WRITE SAME
with UNMAP are NBD_CMD_WRITE_ZEROES, which may punch holes but reads back
zeros, as the LBPRZ=1 that vdisk reports promises; NBD_CMD_TRIM is not
used, its blocks read back unspecified data. GET LBA STATUS is
NBD_CMD_BLOCK_STATUS in the base:allocation context. thin_provisioned
defaults to 1 when the server offers both WRITE_ZEROES and that context
(as fileio detects hole punching); without block status every block would
read as mapped even just after UNMAP, so it stays 0 unless asked for.

Errors: a server error on a read is MEDIUM ERROR, UNRECOVERED READ ERROR
(03/11/00), on a write MEDIUM ERROR, WRITE ERROR (03/0C/00), -ENOSPC on a
thin device SPACE ALLOCATION FAILED (07/27/07); the INFORMATION field
names the failing block when the server says (a structured
NBD_REPLY_TYPE_ERROR_OFFSET chunk), else the first block of the NBD
request that failed. A lost connection holds commands while
vdisk.nbd_client reconnects; after reconnect_timeout they, and new ones
until the server is back, get NOT READY, LOGICAL UNIT NOT READY, CAUSE
NOT REPORTABLE (02/04/00): Linux fails such a command rather than
retrying it on the same path, so dm-multipath moves to another path (a
second node, docs/scale-out.md), and a single-path initiator gets an error
now instead of a hang. TEST UNIT READY says the same while the server is
unreachable.

Shared with another node (docs/scale-out.md): when the device's ALUA
device group names a target port this process does not serve, PERSISTENT
RESERVE OUT (unless cluster_mode is 1: scst_core.cluster then keeps the
nodes' reservations alike) and RESERVE(6/10) are refused with INVALID
COMMAND OPERATION CODE, since the other node would not enforce a
reservation made here.

Differs from SCST's handlers: no resync_size (the export's size is read
at connect), and the device cannot run under the sim engine (it has no
outgoing connections).
"""
from __future__ import annotations

from typing import cast

import attrs

from kshim.err import EINVAL, ENOSPC, ENOTCONN, ESHUTDOWN
from kshim.host import iov_advance, iov_head
from kshim.jiffies import HZ
from kshim.net import AF_UNIX
from kshim.printk import pr_err, pr_info, pr_warn_once
from scst_core.const import (NOT_READY, scst_sense_invalid_opcode, scst_sense_read_error,
                             scst_sense_space_allocation_failed, scst_sense_write_error)
from scst_core.lib import scst_cmd_iov, scst_set_cmd_error
from scst_core.scst import scst_cmd, scst_device
from scst_core.tg import scst_tg_dev_peer_ports
from vdisk.nbd_client import (NBD_RECONNECT_TIMEOUT, nbd_cmd, nbd_dev_start, nbd_dev_stop,
                              nbd_device, nbd_family_of, nbd_queue, nbd_submit)
from vdisk.nbd_proto import (NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_REQ_ONE,
                             NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES,
                             NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA,
                             NBD_FLAG_SEND_WRITE_ZEROES, NBD_STATE_HOLE)
from vdisk.vdisk import (scst_vdisk_dev, vdisk_attach_common,
                         vdisk_cmd_done, vdisk_detach_common, vdisk_do_exec, vdisk_io_ops,
                         vdisk_make_devtype, vdisk_nbd_only_parameters, vdisk_need_sync,
                         vdisk_set_sense_info, vdisk_store_parameters)

NBD_DEFAULT_PORT = 10809
NBD_MAX_BLOCK_STATUS_BYTES = 0xFFFFFFFF   # one request's length field
NBD_RECONNECT_TIMEOUT_MAX = 100      # seconds: below the hung-task timeout (120 s) the waiters would meet
sense_lu_not_ready = (NOT_READY, 0x04, 0x00)    # LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE

_READ_OPS = frozenset((0x08, 0x28, 0xA8, 0x88))
_RESERVATION_OPS = frozenset((0x5F, 0x16, 0x56))     # PR OUT, RESERVE(6), RESERVE(10)
_WRITE_OPS = frozenset((0x0A, 0x2A, 0xAA, 0x8A))


def _unquote(s: str) -> "str | None":
    """Percent-decoding of a URI component (UTF-8), or None if malformed."""
    out = bytearray()
    i = 0
    while i < len(s):                    # bounded: i moves forward each pass
        if s[i] == "%":
            h = s[i + 1:i + 3]
            if len(h) != 2 or any(c not in "0123456789abcdefABCDEF" for c in h):
                return None
            out.append(int(h, 16))
            i += 3
        else:
            out += s[i].encode("utf-8")
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _host_port(netloc: str) -> "tuple[str, int] | str":
    """(host, port) of HOST, HOST:PORT, [V6] or [V6]:PORT, or a reason."""
    if netloc.startswith("["):
        host, br, rest = netloc[1:].partition("]")
        if not br or not host:
            return f"bad host '{netloc}'"
    else:
        host, colon, port_s = netloc.partition(":")
        rest = colon + port_s
    if not rest:
        return host, NBD_DEFAULT_PORT
    if not rest.startswith(":") or not rest[1:].isdecimal() or not 0 < int(rest[1:]) < 65536:
        return f"bad port in '{netloc}' (1..65535)"
    return host, int(rest[1:])


def nbd_parse_uri(uri: str) -> "tuple[int, tuple | str, str] | str":
    """(family, address, export) of an nbd:// or nbd+unix:// URI (the NBD
    URI spec, nbd's doc/uri.md), or the reason it is not one."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "not a URI (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    export = _unquote(path)
    if export is None:
        return f"bad percent-encoding in '{path}'"
    if scheme == "nbd":
        if not netloc:
            return "nbd:// needs a host (nbd://HOST[:PORT]/EXPORT)"
        if query:
            return f"unexpected query '{query}' in an nbd:// URI"
        hp = _host_port(netloc)
        if isinstance(hp, str):
            return hp
        return nbd_family_of(hp[0]), hp, export
    if scheme == "nbd+unix":
        if netloc:
            return "nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)"
        items = [q.partition("=") for q in query.split("&")] if query else []
        paths = [_unquote(v) for k, eq, v in items if k == "socket" and eq]
        if len(items) != 1 or len(paths) != 1 or not paths[0]:
            return "nbd+unix:// needs exactly one ?socket=PATH"
        return AF_UNIX, paths[0], export
    return f"scheme '{scheme}' is not nbd or nbd+unix (TLS schemes nbds:// are not supported)"


def _nbd(virt_dev: scst_vdisk_dev) -> nbd_device:
    return virt_dev.file


def _chunks(nbd: nbd_device, virt_dev: scst_vdisk_dev, type_: int, flags: int, pos: int,
            length: int, iov: list) -> list[nbd_cmd]:
    """The NBD requests for [pos, pos+length): at most max_payload each
    (whole blocks), the data views sliced, not copied."""
    step = max(virt_dev.block_size, nbd.info.max_payload & ~(virt_dev.block_size - 1))
    cmds = []
    done = 0
    while done < length:                 # bounded: length / step requests
        n = min(step, length - done)
        cmds.append(nbd_cmd(type=type_, flags=flags, offset=pos + done, length=n,
                            iov=iov_head(iov_advance(iov, done), n) if iov else []))
        done += n
    return cmds


def _io_failed(virt_dev: scst_vdisk_dev, cmd: scst_cmd, cmds: list[nbd_cmd], ret: int,
               write: bool) -> int:
    """Set the sense for the first failed request; return ret."""
    bad = next((c for c in cmds if c.error), cmds[0])
    if ret in (-ENOTCONN, -ESHUTDOWN):
        scst_set_cmd_error(cmd, sense_lu_not_ready)
        return ret
    if ret == -ENOSPC and write and virt_dev.thin_provisioned:
        scst_set_cmd_error(cmd, scst_sense_space_allocation_failed)
        return ret
    scst_set_cmd_error(cmd, scst_sense_write_error if write else scst_sense_read_error)
    at = bad.err_offset if bad.offset <= bad.err_offset < bad.offset + bad.length else bad.offset
    vdisk_set_sense_info(cmd, at >> virt_dev.block_shift)
    return ret


def _rw(virt_dev: scst_vdisk_dev, cmd: scst_cmd, type_: int, flags: int, pos: int,
        length: int, iov: list) -> int:
    nbd = _nbd(virt_dev)
    cmds = _chunks(nbd, virt_dev, type_, flags, pos, length, iov)
    if not cmds:
        return 0
    ret = nbd_submit(nbd, cmds)
    if ret < 0:
        return _io_failed(virt_dev, cmd, cmds, ret, type_ != NBD_CMD_READ)
    return 0


def nbd_read(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rw(virt_dev, cmd, NBD_CMD_READ, 0, pos, length, scst_cmd_iov(cmd))


def nbd_write(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rw(virt_dev, cmd, NBD_CMD_WRITE, 0, pos, length, scst_cmd_iov(cmd))


def nbd_read_into(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: bytearray) -> int:
    return _rw(virt_dev, cmd, NBD_CMD_READ, 0, pos, len(buf), [memoryview(buf)])


def nbd_write_buf(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int,
                  buf: "bytes | memoryview") -> int:
    return _rw(virt_dev, cmd, NBD_CMD_WRITE, 0, pos, len(buf), [memoryview(buf)])


def nbd_sync(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    """NBD_CMD_FLUSH (the whole export; NBD has no ranged flush)."""
    nbd = _nbd(virt_dev)
    if not nbd.info.flags & NBD_FLAG_SEND_FLUSH:
        return 0
    flush = nbd_cmd(type=NBD_CMD_FLUSH, flags=0, offset=0, length=0, iov=[])
    ret = nbd_submit(nbd, [flush])
    if ret < 0:
        _io_failed(virt_dev, cmd, [flush], ret, True)
        vdisk_set_sense_info(cmd, pos >> virt_dev.block_shift)
    return ret


def nbd_unmap(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return _rw(virt_dev, cmd, NBD_CMD_WRITE_ZEROES, 0, pos, length, [])


def nbd_lba_status(virt_dev: scst_vdisk_dev, lba: int) -> tuple[bool, int]:
    """(mapped, blocks) of the extent at lba: NBD_CMD_BLOCK_STATUS with
    NBD_CMD_FLAG_REQ_ONE in the base:allocation context; every block
    mapped when the server has no block status or the request fails."""
    nbd = _nbd(virt_dev)
    shift = virt_dev.block_shift
    left = virt_dev.nblocks - lba
    if nbd.info.alloc_ctx < 0:
        return True, left
    length = min(left << shift, NBD_MAX_BLOCK_STATUS_BYTES & ~(virt_dev.block_size - 1))
    bs = nbd_cmd(type=NBD_CMD_BLOCK_STATUS, flags=NBD_CMD_FLAG_REQ_ONE, offset=lba << shift,
                 length=length, iov=[])
    if nbd_submit(nbd, [bs]) < 0 or not bs.extents:
        return True, left
    ext_len, flags = bs.extents[0]
    return not flags & NBD_STATE_HOLE, max(1, ext_len >> shift)


nbd_io_ops = vdisk_io_ops(read=nbd_read, write=nbd_write, read_into=nbd_read_into,
                          sync=nbd_sync, unmap=nbd_unmap, lba_status=nbd_lba_status,
                          write_buf=nbd_write_buf)


def _write_mode(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> tuple[int, bool]:
    """(NBD request flags, flush after) for a plain WRITE (6/10/12/16): FUA
    on the request when it must be stable and the server offers FUA,
    otherwise a FLUSH after it when the server has one."""
    info = _nbd(virt_dev).info
    fua = cmd.cdb[0] != 0x0A and bool(cmd.cdb[1] & 0x08)
    if not vdisk_need_sync(cmd, virt_dev, fua):
        return 0, False
    if info.flags & NBD_FLAG_SEND_FUA:
        return NBD_CMD_FLAG_FUA, False
    return 0, bool(info.flags & NBD_FLAG_SEND_FLUSH)


def nbd_exec_write(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """A plain WRITE on the device's threads (see _write_mode)."""
    pos = cmd.lba << virt_dev.block_shift
    flags, then_flush = _write_mode(cmd, virt_dev)
    if _rw(virt_dev, cmd, NBD_CMD_WRITE, flags, pos, cmd.data_len, scst_cmd_iov(cmd)) == 0 \
            and then_flush:
        nbd_sync(virt_dev, cmd, pos, cmd.data_len)


@attrs.define(slots=True, eq=False)
class nbd_io:
    """One SCSI READ or WRITE in flight asynchronously: its NBD requests
    and what follows them. Touched by exec_nowait (before any request is
    queued) and then only by end_io in the connection thread: no lock."""
    cmd: scst_cmd
    virt_dev: scst_vdisk_dev
    cmds: list
    pending: int
    then_flush: bool                 # write-through without server FUA: FLUSH after the writes


def _nbd_io_end(c: nbd_cmd) -> None:
    """end_io of one request of an nbd_io (the connection thread): when the
    last one is in, flush if the write needs it, else complete the command."""
    io = cast(nbd_io, c.private)
    io.pending -= 1
    if io.pending:
        return
    cmd, virt_dev = io.cmd, io.virt_dev
    failed = next((x for x in io.cmds if x.error), None)
    if failed is not None:
        _io_failed(virt_dev, cmd, io.cmds, failed.error, failed.type != NBD_CMD_READ)
    elif io.then_flush:
        io.then_flush = False
        flush = nbd_cmd(type=NBD_CMD_FLUSH, flags=0, offset=0, length=0, iov=[],
                        end_io=_nbd_io_end, private=io)
        io.cmds, io.pending = [flush], 1
        ret = nbd_queue(_nbd(virt_dev), [flush])
        if ret == 0:
            return
        _io_failed(virt_dev, cmd, [flush], ret, True)
    elif io.cmds[0].type == NBD_CMD_READ:
        cmd.resp_data_len = cmd.data_len    # a READ's data_len never exceeds its bufflen
    vdisk_cmd_done(cmd)


def nbd_exec_nowait(cmd: scst_cmd) -> bool:
    """Start a plain READ or WRITE (6/10/12/16) without sleeping: its NBD
    requests are queued for the send thread and the command completes in
    the connection thread when the server has answered (and, for a write
    that must be stable, after FUA or FLUSH). So the device's threads stay
    free for the rest (TEST UNIT READY, INQUIRY...) while the server is
    slow or being reconnected. Declines anything else."""
    op = cmd.cdb[0]
    write = op in _WRITE_OPS
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    if not (write or op in _READ_OPS) or cmd.status or virt_dev.sanitize_state \
            or not cmd.data_len:
        return False
    nbd = _nbd(virt_dev)
    pos = cmd.lba << virt_dev.block_shift
    flags, then_flush = _write_mode(cmd, virt_dev) if write else (0, False)
    cmds = _chunks(nbd, virt_dev, NBD_CMD_WRITE if write else NBD_CMD_READ, flags, pos,
                   cmd.data_len, scst_cmd_iov(cmd))
    io = nbd_io(cmd=cmd, virt_dev=virt_dev, cmds=cmds, pending=len(cmds), then_flush=then_flush)
    for c in cmds:
        c.end_io, c.private = _nbd_io_end, io
    ret = nbd_queue(nbd, cmds)
    if ret < 0:
        for c in cmds:
            c.error = ret
        _io_failed(virt_dev, cmd, cmds, ret, write)
        vdisk_cmd_done(cmd)
    return True


def nbd_refuse_shared_reservation(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> bool:
    """PERSISTENT RESERVE OUT, RESERVE(6) and RESERVE(10) on a device
    whose device group names another node's ports: refused with INVALID
    COMMAND OPERATION CODE, since reservations live in this process only
    and the other node would not enforce them (docs/scale-out.md); in
    cluster_mode PERSISTENT RESERVE OUT goes through (scst_core.cluster
    agrees on it with the other nodes), the SPC-2 RESERVEs are still
    refused. True if refused."""
    op = cmd.cdb[0]
    if op not in _RESERVATION_OPS or (op == 0x5F and virt_dev.cluster_mode):
        return False
    peers = scst_tg_dev_peer_ports(cmd.dev)
    if not peers:
        return False
    what = "RESERVE(6)/(10) refused" if virt_dev.cluster_mode else "reservations refused"
    # also vdisk_rbd's: name the device's own handler
    pr_warn_once(f"{cmd.dev.handler.name}: {virt_dev.name}: {what}: the device is shared with "
                 f"{', '.join(peers)}, which would not enforce them")
    scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
    return True


def nbd_exec(cmd: scst_cmd) -> int:
    virt_dev: scst_vdisk_dev = cmd.dev.dh_priv
    op = cmd.cdb[0]
    if not cmd.status and nbd_refuse_shared_reservation(cmd, virt_dev):
        return vdisk_cmd_done(cmd)
    if not cmd.status and not virt_dev.sanitize_state:
        if op == 0x00 and _nbd(virt_dev).dead:      # TEST UNIT READY
            scst_set_cmd_error(cmd, sense_lu_not_ready)
            return vdisk_cmd_done(cmd)
        if op in _WRITE_OPS and cmd.data_len:
            nbd_exec_write(cmd, virt_dev)
            return vdisk_cmd_done(cmd)
    return vdisk_do_exec(cmd)


def nbd_dev_from_params(virt_dev: scst_vdisk_dev) -> "nbd_device | int":
    """The nbd_device the uri and reconnect_timeout parameters describe, or
    -EINVAL after a log line."""
    who = f"vdisk_nbd: {virt_dev.name}"
    params = virt_dev.backend_params
    r = nbd_parse_uri(params.get("uri", ""))
    if isinstance(r, str):
        pr_err(f"{who}: uri '{params.get('uri', '')}': {r}")
        return -EINVAL
    family, addr, export = r
    timeout = NBD_RECONNECT_TIMEOUT
    if "reconnect_timeout" in params:
        t = params["reconnect_timeout"].strip()
        if not t.isdecimal() or not 1 <= int(t) <= NBD_RECONNECT_TIMEOUT_MAX:
            pr_err(f"{who}: bad reconnect_timeout '{t}' (seconds, 1..{NBD_RECONNECT_TIMEOUT_MAX})")
            return -EINVAL
        timeout = int(t) * HZ
    return nbd_device(name=virt_dev.name, family=family, addr=addr, export=export,
                      reconnect_timeout=timeout)


def nbd_attach(dev: scst_device) -> int:
    """Connect, negotiate the export and publish its geometry: 0 or -errno
    (logged: bad uri, unreachable server, refused export, block sizes
    that do not fit)."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    nbd = nbd_dev_from_params(virt_dev)
    if isinstance(nbd, int):
        return nbd
    ret = nbd_dev_start(nbd)
    if ret < 0:
        return ret
    info = nbd.info
    who = f"vdisk_nbd: {virt_dev.name}"
    bs = virt_dev.block_size
    if bs % info.min_block or info.max_payload < bs or info.size < bs:
        pr_err(f"{who}: export of {info.size} bytes wants blocks of {info.min_block}.."
               f"{info.max_payload} bytes; blocksize {bs} does not fit (set blocksize)")
        nbd_dev_stop(nbd)
        return -EINVAL
    virt_dev.file = nbd
    virt_dev.file_size = info.size - info.size % bs
    uri = virt_dev.backend_params["uri"]
    if info.flags & NBD_FLAG_READ_ONLY and not virt_dev.rd_only:
        pr_info(f"{who}: the server exports {uri} read-only")
        virt_dev.rd_only = True
    if not virt_dev.thin_provisioned_set and not virt_dev.rd_only:
        # As fileio detects hole punching: thin when the server can both
        # make holes that read as zeros and say where they are.
        virt_dev.thin_provisioned = bool(info.flags & NBD_FLAG_SEND_WRITE_ZEROES) \
            and info.alloc_ctx >= 0
    if virt_dev.thin_provisioned and not info.flags & NBD_FLAG_SEND_WRITE_ZEROES:
        pr_err(f"{who}: thin_provisioned needs NBD_CMD_WRITE_ZEROES, which the server does "
               f"not offer")
        nbd_dev_stop(nbd)
        return -EINVAL
    virt_dev.io_ops = nbd_io_ops
    vdisk_attach_common(dev, virt_dev)
    pr_info(f"{who}: {uri}: {info.size} bytes, flags {info.flags:#x}, blocks "
            f"{info.min_block}/{info.pref_block}/{info.max_payload}")
    return 0


def nbd_detach(dev: scst_device) -> None:
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_detach_common(dev, virt_dev)
    nbd = virt_dev.file
    if isinstance(nbd, nbd_device):
        nbd_dev_stop(nbd)
    virt_dev.file = None
    virt_dev.dev = None


nbd_devtype = vdisk_make_devtype("vdisk_nbd", nbd_exec, nbd_attach, nbd_detach,
                                 exec_atomic=False, exec_nowait=nbd_exec_nowait)
nbd_devtype.add_device_parameters = vdisk_store_parameters(vdisk_nbd_only_parameters)
