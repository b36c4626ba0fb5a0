"""The vcdrom dev handler: a CD/DVD-ROM drive (MMC-6 device type 5)
backed by an ISO image file, with a removable medium.

Twin of the cdrom half of scst/src/dev_handlers/scst_vdisk.c
(vcdrom_attach, vcdrom_exec, vcdrom_change, the READ TOC and GET EVENT
STATUS NOTIFICATION emulation).

Contexts: attach, detach and vcdrom_change from task context (they open
and close the image). exec() from a device kthread (reads sleep in vfs
calls); exec_nowait() from any context, as for vdisk_fileio.

Differs from SCST: one data track, always reported as a finished disc; no
audio, no multisession. GET CONFIGURATION reports the Profile List and
Core features only. An empty drive (no filename, or after an eject)
answers medium commands NOT READY, MEDIUM NOT PRESENT; a new image is
loaded with vcdrom_change(), which queues NOT READY TO READY CHANGE,
MEDIUM MAY HAVE CHANGED on every nexus (SCST reports it once per device,
to whichever nexus asks first). An eject queues nothing: the next medium
command gets NOT READY, MEDIUM NOT PRESENT, as in SCST.

Management: the device's filename attribute is writable, as in SCST's
vcdrom: a path loads that image, an empty value ejects (-EBUSY while a
nexus prevents medium removal). The attribute record is registered with
scst_core.sysfs when this module is imported (vdisk_init imports it).
"""
from __future__ import annotations

from kshim.err import EBUSY
from kshim.fs import O_LARGEFILE, O_RDONLY, file, file_inode, filp_close, filp_open, i_size_read
from kshim.kobject import kobject
from kshim.printk import pr_err, pr_info
from kshim.sysfs import __ATTR_RO, __ATTR_RW, kobj_attribute
from scst_core.const import TYPE_ROM, scst_sense_medium_changed_UA, scst_sense_medium_removal_prevented
from scst_core.lib import scst_set_cmd_error, scst_set_invalid_field_in_cdb
from scst_core.scst import scst_cmd, scst_device
from scst_core.sysfs import scst_attr_show_key, scst_devt_sysfs, scst_register_devt_sysfs
from scst_core.ua import scst_queue_ua
from vdisk.fileio import fileio_exec_nowait, fileio_io_ops
from vdisk.vdisk import (scst_vdisk_dev, vdisk_attach_common, vdisk_copy_resp,
                         vdisk_cdrom_exec_table, vdisk_detach_common, vdisk_do_exec,
                         vdisk_make_devtype)

# Design notes:
# - The medium is the backing file: loading opens it read-only, ejecting
#   closes it. The drive keeps its PREVENT state and reservations across
#   medium changes; only the geometry changes.

PROFILE_CD_ROM = 0x0008
PROFILE_DVD_ROM = 0x0010
_CD_MAX_BYTES = 900 << 20


def _open_image(virt_dev: scst_vdisk_dev) -> int:
    if not virt_dev.filename:
        virt_dev.file, virt_dev.file_size, virt_dev.media_present = None, 0, False
        return 0
    f = filp_open(virt_dev.filename, O_RDONLY | O_LARGEFILE)
    if isinstance(f, int):
        pr_err(f"vcdrom: {virt_dev.name}: cannot open {virt_dev.filename}: {f}")
        return f
    virt_dev.file = f
    virt_dev.file_size = i_size_read(file_inode(f))
    virt_dev.media_present = True
    return 0


def _close_image(virt_dev: scst_vdisk_dev) -> None:
    f = virt_dev.file
    if isinstance(f, file):
        filp_close(f)
    virt_dev.file = None


def cdrom_attach(dev: scst_device) -> int:
    virt_dev: scst_vdisk_dev = dev.dh_priv
    ret = _open_image(virt_dev)
    if ret < 0:
        return ret
    virt_dev.io_ops = fileio_io_ops
    vdisk_attach_common(dev, virt_dev)
    return 0


def cdrom_detach(dev: scst_device) -> None:
    virt_dev: scst_vdisk_dev = dev.dh_priv
    vdisk_detach_common(dev, virt_dev)
    _close_image(virt_dev)
    virt_dev.dev = None


def vcdrom_change(virt_dev: scst_vdisk_dev, filename: str) -> int:
    """Load another image ("" ejects). 0, -EBUSY while removal is
    prevented, or the open's -errno. Task context."""
    if virt_dev.prevent_medium_removal:
        return -EBUSY
    _close_image(virt_dev)
    old = virt_dev.filename
    virt_dev.filename = filename
    ret = _open_image(virt_dev)
    if ret < 0:
        virt_dev.filename = old
        _open_image(virt_dev)
        return ret
    virt_dev.nblocks = virt_dev.file_size >> virt_dev.block_shift
    dev = virt_dev.dev
    if dev is not None and virt_dev.media_present:
        for tgt_dev in list(dev.dev_tgt_dev_list):
            scst_queue_ua(tgt_dev, scst_sense_medium_changed_UA)
    pr_info(f"vcdrom: {virt_dev.name}: medium {'ejected' if not filename else filename}")
    return 0


# ---------------------------------------------------------------- MMC commands

def _lba_to_msf(lba: int) -> bytes:
    lba += 150
    return bytes((0, (lba // 75) // 60 & 0xFF, (lba // 75) % 60, lba % 75))


def vcdrom_exec_read_toc(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """READ TOC/PMA/ATIP (MMC-6 6.40) formats 0 (TOC) and 1 (session
    info) for one data track."""
    cdb = cmd.cdb
    msf = bool(cdb[1] & 0x02)
    fmt = cdb[2] & 0x0F
    track = cdb[6]
    addr = (lambda lba: _lba_to_msf(lba)) if msf else (lambda lba: lba.to_bytes(4, "big"))
    if fmt == 0:
        if track > 1 and track != 0xAA:
            scst_set_invalid_field_in_cdb(cmd, 6)
            return
        body = b""
        if track <= 1:
            body += bytes((0, 0x14, 1, 0)) + addr(0)          # data track 1
        body += bytes((0, 0x14, 0xAA, 0)) + addr(virt_dev.nblocks)   # lead-out
        data = (len(body) + 2).to_bytes(2, "big") + bytes((1, 1)) + body
    elif fmt == 1:
        body = bytes((0, 0x14, 1, 0)) + addr(0)
        data = (len(body) + 2).to_bytes(2, "big") + bytes((1, 1)) + body
    else:
        scst_set_invalid_field_in_cdb(cmd, 2, 3)
        return
    vdisk_copy_resp(cmd, data)


def vcdrom_exec_get_configuration(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """GET CONFIGURATION (MMC-6 6.6): Profile List and Core features."""
    cdb = cmd.cdb
    rt = cdb[1] & 0x03
    start = int.from_bytes(cdb[2:4], "big")
    if rt == 3:
        scst_set_invalid_field_in_cdb(cmd, 1, 1)
        return
    dvd = virt_dev.file_size > _CD_MAX_BYTES
    cur = (PROFILE_DVD_ROM if dvd else PROFILE_CD_ROM) if virt_dev.media_present else 0
    profiles = b""
    for p in (PROFILE_DVD_ROM, PROFILE_CD_ROM):
        profiles += p.to_bytes(2, "big") + bytes((0x01 if p == cur else 0, 0))
    feats = {0x0000: bytes((0, 0, 0x03, len(profiles))) + profiles,
             0x0001: bytes((0, 1, 0x0B, 8)) + (0x0002).to_bytes(4, "big") + bytes((0x01, 0, 0, 0))}
    out = b""
    for code in sorted(feats):
        if code < start and rt != 0:
            continue
        if rt == 2 and code != start:
            continue
        if rt == 0 and code < start:
            continue
        out += feats[code]
    hdr = (len(out) + 4).to_bytes(4, "big") + bytes(2) + cur.to_bytes(2, "big")
    vdisk_copy_resp(cmd, hdr + out)


def vcdrom_exec_get_event_status(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """GET EVENT STATUS NOTIFICATION (MMC-6 6.7), polled only, media class."""
    cdb = cmd.cdb
    if not cdb[1] & 0x01:               # asynchronous notification: not supported
        scst_set_invalid_field_in_cdb(cmd, 1, 0)
        return
    if cdb[4] & 0x10:
        status = 0x02 if virt_dev.media_present else 0x01   # MEDIA PRESENT / TRAY OPEN
        desc = bytes((0, status, 0, 0))
        data = (len(desc) + 2).to_bytes(2, "big") + bytes((0x04, 0x10)) + desc
    else:
        data = (2).to_bytes(2, "big") + bytes((0x80, 0x10))     # NEA
    vdisk_copy_resp(cmd, data)


def vcdrom_exec_start_stop(cmd: scst_cmd, virt_dev: scst_vdisk_dev) -> None:
    """Eject closes the image; load reopens the last one."""
    b4 = cmd.cdb[4]
    if b4 >> 4 or not b4 & 0x02:
        return
    if virt_dev.prevent_medium_removal:
        scst_set_cmd_error(cmd, scst_sense_medium_removal_prevented)
        return
    if b4 & 0x01:
        if not virt_dev.media_present and virt_dev.filename:
            if _open_image(virt_dev) == 0:
                virt_dev.nblocks = virt_dev.file_size >> virt_dev.block_shift
    else:
        _close_image(virt_dev)
        virt_dev.media_present = False


vdisk_cdrom_exec_table.update({
    0x1B: vcdrom_exec_start_stop,
    0x43: vcdrom_exec_read_toc,
    0x46: vcdrom_exec_get_configuration,
    0x4A: vcdrom_exec_get_event_status,
})


# ---------------------------------------------------------------- management

def vcdrom_filename_show(kobj: kobject, a: kobj_attribute) -> str:
    virt_dev: scst_vdisk_dev = kobj.private.dh_priv
    return scst_attr_show_key(virt_dev.filename, bool(virt_dev.filename))


def vcdrom_filename_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    """Load the image named in buf, or eject with an empty buf. Task
    context. len(buf), -EBUSY while removal is prevented, or the open's
    -errno."""
    virt_dev: scst_vdisk_dev = kobj.private.dh_priv
    fn = buf.strip()
    if fn == virt_dev.filename and virt_dev.media_present == bool(fn):
        return len(buf)
    ret = vcdrom_change(virt_dev, fn)
    if ret == -EBUSY:
        pr_err(f"vcdrom: {virt_dev.name}: medium removal is prevented, "
               f"cannot {'load ' + fn if fn else 'eject'}")
    return ret if ret < 0 else len(buf)


def _show_blocksize(kobj: kobject, a: kobj_attribute) -> str:
    return scst_attr_show_key(kobj.private.dh_priv.block_size, False)


def _show_size_mb(kobj: kobject, a: kobj_attribute) -> str:
    return f"{kobj.private.dh_priv.file_size >> 20}\n"


scst_register_devt_sysfs("vcdrom", scst_devt_sysfs(
    dev_attrs=(__ATTR_RW("filename", vcdrom_filename_show, vcdrom_filename_store),
               __ATTR_RO("blocksize", _show_blocksize), __ATTR_RO("size_mb", _show_size_mb)),
    dev_live_attrs=("filename",)))


def cdrom_exec(cmd: scst_cmd) -> int:
    return vdisk_do_exec(cmd)


cdrom_devtype = vdisk_make_devtype("vcdrom", cdrom_exec, cdrom_attach, cdrom_detach,
                                   exec_atomic=False, exec_nowait=fileio_exec_nowait,
                                   dev_type=TYPE_ROM)
