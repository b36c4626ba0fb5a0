"""The vdisk_nullio dev handler: a virtual disk with no backing store.

Twin of the nullio half of scst/src/dev_handlers/scst_vdisk.c
(vdisk_attach for nullio, nullio_exec).

Contexts: attach and detach from task context; exec() from any context
(exec_atomic: nothing here sleeps).

Differs from SCST: reads return zeros instead of whatever the buffer held
(buffers are recycled pages, which must not leak another command's data);
VERIFY with BYTCHK compares against zeros. Writes, flushes and UNMAP are
dropped.
"""
from __future__ import annotations

from scst_core.lib import scst_cmd_iov
from scst_core.scst import scst_cmd, scst_device
from vdisk.vdisk import (scst_vdisk_dev, vdisk_attach_common, vdisk_detach_common,
                         vdisk_add_device_parameters, vdisk_do_exec, vdisk_io_ops,
                         vdisk_make_devtype, vdisk_nullio_only_parameters)

_ZEROS = bytes(1 << 20)


def nullio_read(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    for v in scst_cmd_iov(cmd):
        off = 0
        n = len(v)
        while off < n:                  # bounded: n / 1 MiB iterations
            k = min(n - off, len(_ZEROS))
            v[off:off + k] = _ZEROS[:k]
            off += k
    return 0


def nullio_write(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return 0


def nullio_read_into(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: bytearray) -> int:
    buf[:] = bytes(len(buf))
    return 0


def nullio_sync(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return 0


def nullio_write_buf(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, buf: object) -> int:
    return 0


def nullio_unmap(virt_dev: scst_vdisk_dev, cmd: scst_cmd, pos: int, length: int) -> int:
    return 0


nullio_io_ops = vdisk_io_ops(read=nullio_read, write=nullio_write, read_into=nullio_read_into,
                             sync=nullio_sync, unmap=nullio_unmap, write_buf=nullio_write_buf)


def nullio_attach(dev: scst_device) -> int:
    """Publish the geometry from the size parameter (file_size). Always 0."""
    virt_dev: scst_vdisk_dev = dev.dh_priv
    virt_dev.io_ops = nullio_io_ops
    vdisk_attach_common(dev, virt_dev)
    return 0


def nullio_detach(dev: scst_device) -> None:
    vdisk_detach_common(dev, dev.dh_priv)
    dev.dh_priv.dev = None


def nullio_exec(cmd: scst_cmd) -> int:
    return vdisk_do_exec(cmd)


nullio_devtype = vdisk_make_devtype("vdisk_nullio", nullio_exec, nullio_attach, nullio_detach,
                                    exec_atomic=True)
# nullio's own create parameters (SCST's per-handler list): no backing
# file, so none of the file and cache options
nullio_devtype.add_device_parameters = tuple(
    p for p in vdisk_add_device_parameters
    if p not in ("filename", "nv_cache", "write_through", "o_direct", "o_dsync")
) + vdisk_nullio_only_parameters
