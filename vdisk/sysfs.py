"""The vdisk handlers' device attributes in the management tree
(devices/<name>/{blocksize, size, filename, read_only, t10_dev_id, ...}),
which of them scst.conf may change on a running device, and resync_size.

Twin of the sysfs part of scst/src/dev_handlers/scst_vdisk.c (its
vdisk_*_attrs tables, the vdev_sysfs_*_show/store functions and
vdisk_sysfs_resync_size); vdisk.py holds the rest of that file.

Contexts: show/store run in task context (kshim.sysfs's callers);
vdisk_sysfs_init/vdisk_sysfs_exit from the module's init/exit.

Differs from SCST: an attribute shows "[key]" when its value differs from
what a device of the same name would get with no parameters (SCST decides
per attribute in code); that default device is built once per name and
cached in vdisk_defaults.
"""
from __future__ import annotations

from kshim.err import EINVAL
from kshim.fs import vfs_getsize
from kshim.jiffies import HZ
from kshim.kobject import kobject
from kshim.printk import pr_err
from kshim.sysfs import __ATTR_RO, __ATTR_RW, kobj_attribute
from scst_core.scst import scst_device
from scst_core.sysfs import (scst_attr_show_key, scst_devt_sysfs, scst_register_devt_sysfs,
                             scst_unregister_devt_sysfs)
from scst_core.ua import scst_capacity_data_changed
from vdisk.nbd_client import NBD_RECONNECT_TIMEOUT
from vdisk.vdisk import (VDISK_SANITIZE_RATE, VDISK_SANITIZE_RATE_MAX, scst_vdisk_dev,
                         vdisk_alloc_dev, vdisk_parse_size)

# attribute name -> scst_vdisk_dev field
VDISK_BOOL_ATTRS = {"read_only": "rd_only", "nv_cache": "nv_cache", "write_through": "wt_flag",
                    "o_direct": "o_direct", "o_dsync": "o_dsync", "removable": "removable",
                    "rotational": "rotational", "thin_provisioned": "thin_provisioned",
                    "cluster_mode": "cluster_mode"}
# string attributes writable on a running device, with their byte limits
VDISK_STR_LIVE_ATTRS = {"t10_dev_id": 24, "usn": 252, "t10_vend_id": 8, "vend_specific_id": 128,
                        "prod_id": 16, "prod_rev_lvl": 4}
VDISK_HANDLERS = ("vdisk_fileio", "vdisk_blockio", "vdisk_nullio", "vdisk_nbd")

# (handler, device name) -> the device those would get with no parameters
# (task context only: no lock)
vdisk_defaults: dict[tuple[str, str], scst_vdisk_dev] = {}


def _vd(kobj: kobject) -> scst_vdisk_dev:
    return kobj.private.dh_priv


def vdisk_default(dev: scst_device) -> scst_vdisk_dev:
    """The scst_vdisk_dev the same name would get with no parameters."""
    key = (dev.handler.name, dev.virt_name)
    d = vdisk_defaults.get(key)
    if d is None:
        params = {"vdisk_nullio": {}, "vdisk_nbd": {"uri": "-"}}.get(dev.handler.name,
                                                                     {"filename": "-"})
        r = vdisk_alloc_dev(dev.handler.name, dev.virt_name, params)
        assert not isinstance(r, int), r        # no parameters: nothing to refuse
        d = r[0]
        vdisk_defaults[key] = d
    return d


def vdev_sysfs_bool_show(kobj: kobject, a: kobj_attribute) -> str:
    field = VDISK_BOOL_ATTRS[a.name]
    v = _vd(kobj)
    val = getattr(v, field)
    if a.name == "thin_provisioned":
        # [key] only when given as a parameter, as SCST; a detected value is not
        return scst_attr_show_key(int(val), v.thin_provisioned_set and not v.cdrom)
    return scst_attr_show_key(int(val), val != getattr(vdisk_default(kobj.private), field))


def vdev_sysfs_dummy_show(kobj: kobject, a: kobj_attribute) -> str:
    d = _vd(kobj).dummy
    return scst_attr_show_key(int(d), d)


def vdev_sysfs_str_show(kobj: kobject, a: kobj_attribute) -> str:
    val = getattr(_vd(kobj), a.name)
    return scst_attr_show_key(val, val != getattr(vdisk_default(kobj.private), a.name))


def vdev_sysfs_str_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    text = buf.strip()
    limit = VDISK_STR_LIVE_ATTRS[a.name]
    if len(text.encode()) > limit or not text.isascii() or not text:
        pr_err(f"vdisk: {kobj.name}: {a.name} '{text}' must be 1..{limit} ASCII characters")
        return -EINVAL
    setattr(_vd(kobj), a.name, text)
    return len(buf)


def vdev_sysfs_sanitize_rate_show(kobj: kobject, a: kobj_attribute) -> str:
    v = _vd(kobj)
    return scst_attr_show_key(v.sanitize_rate, v.sanitize_rate != VDISK_SANITIZE_RATE)


def vdev_sysfs_sanitize_rate_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    text = buf.strip()
    rate = int(text) if text.isdecimal() else 0
    if not 1 <= rate <= VDISK_SANITIZE_RATE_MAX:
        pr_err(f"vdisk: {kobj.name}: sanitize_rate '{text}' must be 1..{VDISK_SANITIZE_RATE_MAX} "
               f"(MiB/s)")
        return -EINVAL
    _vd(kobj).sanitize_rate = rate       # paces the next sanitize operation
    return len(buf)


def vdev_sysfs_filename_show(kobj: kobject, a: kobj_attribute) -> str:
    v = _vd(kobj)
    return scst_attr_show_key(v.filename, not v.nullio)


def vdev_sysfs_nbd_param_show(kobj: kobject, a: kobj_attribute) -> str:
    """vdisk_nbd's uri and reconnect_timeout: as given at creation ([key]),
    else the default."""
    val = _vd(kobj).backend_params.get(a.name)
    if val is not None:
        return scst_attr_show_key(val, True)
    return f"{NBD_RECONNECT_TIMEOUT // HZ}\n" if a.name == "reconnect_timeout" else "\n"


def vdev_sysfs_nbd_state_show(kobj: kobject, a: kobj_attribute) -> str:
    """vdisk_nbd's link: connected, reconnecting or unreachable (failing
    commands), and how often it reconnected."""
    nbd = _vd(kobj).file
    if nbd is None:
        return "detached\n"
    state = "connected" if nbd.connected else "unreachable" if nbd.dead else "reconnecting"
    return f"{state} reconnects={nbd.reconnects}\n"


def vdev_sysfs_blocksize_show(kobj: kobject, a: kobj_attribute) -> str:
    v = _vd(kobj)
    return scst_attr_show_key(v.block_size, v.block_size != 512)


def vdev_sysfs_physical_blocksize_show(kobj: kobject, a: kobj_attribute) -> str:
    v = _vd(kobj)
    return scst_attr_show_key(v.block_size << v.lbppbe, v.lbppbe != 0)


def vdev_sysfs_size_show(kobj: kobject, a: kobj_attribute) -> str:
    v = _vd(kobj)
    return scst_attr_show_key(v.file_size, v.nullio and v.file_size != 1 << 40)


def vdev_sysfs_size_mb_show(kobj: kobject, a: kobj_attribute) -> str:
    return f"{_vd(kobj).file_size >> 20}\n"


def vdev_sysfs_size_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    """nullio only: a new size, announced with a capacity-changed UA."""
    v = _vd(kobj)
    if not v.nullio:
        pr_err(f"vdisk: {kobj.name}: resize the file and write 1 to resync_size instead")
        return -EINVAL
    n = vdisk_parse_size(buf.strip())
    if n < v.block_size:
        pr_err(f"vdisk: {kobj.name}: bad size '{buf.strip()}'")
        return -EINVAL
    if n != v.file_size:
        v.file_size = n
        v.nblocks = n >> v.block_shift
        scst_capacity_data_changed(kobj.private)
    return len(buf)


def vdisk_sysfs_resync_size(dev: scst_device) -> int:
    """Re-read the backing file's size: 1 if it changed, 0 if not, -errno."""
    v = dev.dh_priv
    if v.nullio or v.file is None:
        return 0
    n = vfs_getsize(v.file)
    if n < 0:
        return n
    if n == v.file_size:
        return 0
    v.file_size = n
    v.nblocks = n >> v.block_shift
    return 1


def vdisk_sysfs_init() -> None:
    """Register the fileio, blockio, nullio and nbd attribute tables (module init)."""
    common = [__ATTR_RO("blocksize", vdev_sysfs_blocksize_show),
              __ATTR_RO("physical_blocksize", vdev_sysfs_physical_blocksize_show),
              __ATTR_RO("size_mb", vdev_sysfs_size_mb_show)]
    common += [__ATTR_RO(n, vdev_sysfs_bool_show) for n in VDISK_BOOL_ATTRS]
    common += [__ATTR_RW(n, vdev_sysfs_str_show, vdev_sysfs_str_store)
               for n in VDISK_STR_LIVE_ATTRS]
    common += [__ATTR_RW("sanitize_rate", vdev_sysfs_sanitize_rate_show,
                         vdev_sysfs_sanitize_rate_store)]
    fileio = tuple(common + [__ATTR_RO("filename", vdev_sysfs_filename_show),
                             __ATTR_RO("size", vdev_sysfs_size_show)])
    nullio = tuple(common + [__ATTR_RW("size", vdev_sysfs_size_show, vdev_sysfs_size_store),
                             __ATTR_RO("dummy", vdev_sysfs_dummy_show)])
    live = (*VDISK_STR_LIVE_ATTRS, "sanitize_rate")
    scst_register_devt_sysfs("vdisk_fileio", scst_devt_sysfs(
        dev_attrs=fileio, dev_live_attrs=live, dev_create_only_attrs=("size", "size_mb"),
        resync_size=vdisk_sysfs_resync_size))
    # vdisk_blockio: fileio's attributes but o_direct (always direct)
    scst_register_devt_sysfs("vdisk_blockio", scst_devt_sysfs(
        dev_attrs=tuple(a for a in fileio if a.name != "o_direct"), dev_live_attrs=live,
        dev_create_only_attrs=("size", "size_mb"), resync_size=vdisk_sysfs_resync_size))
    scst_register_devt_sysfs("vdisk_nullio", scst_devt_sysfs(
        dev_attrs=nullio, dev_live_attrs=(*live, "size")))
    # vdisk_nbd: no local file; the export decides the size
    nbd = tuple(a for a in common if a.name not in ("o_direct", "o_dsync")) + (
        __ATTR_RO("size", vdev_sysfs_size_show), __ATTR_RO("uri", vdev_sysfs_nbd_param_show),
        __ATTR_RO("reconnect_timeout", vdev_sysfs_nbd_param_show),
        __ATTR_RO("nbd_state", vdev_sysfs_nbd_state_show))
    scst_register_devt_sysfs("vdisk_nbd", scst_devt_sysfs(dev_attrs=nbd, dev_live_attrs=live))


def vdisk_sysfs_exit() -> None:
    for name in VDISK_HANDLERS:
        scst_unregister_devt_sysfs(name)
    vdisk_defaults.clear()
