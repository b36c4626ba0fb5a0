"""vdisk_pattern: a read-only SCSI disk whose every block is a generated
pattern, so an initiator can check what it reads without a backing file.

The worked example of docs/guide/writing-a-module.md: a dev handler written
outside the uscst tree, in kernel idiom, loaded into a running target with
`uscstadmin insmod docs/examples/vdisk_pattern.py`.

Block `lba` of a device holds the 16-byte record
    lba (8 bytes, big-endian) + seed (8 bytes, big-endian)
repeated to fill the block; `seed` is a device attribute
(devices/<name>/seed), writable at run time.

What it shows:
- module_init/module_exit, a module parameter (dev_size_mb: the size of
  the devices add_device creates unless it is given blocks=),
- an scst_dev_type with parse, exec and dev_done,
- a slab cache (one pattern_cmd per command, from parse to dev_done),
- sysfs attributes (seed, writable; blocks) through the core's device
  attribute table, marked "[key]" so write-config saves them.

Contexts: parse and exec run in any context (exec_atomic: they never
sleep); dev_done where the core finishes the command. add_device,
del_device and the module's init and exit in task context.
"""
from __future__ import annotations

import attrs

from kshim.err import EEXIST, EINVAL, ENOMEM, IS_ERR
from kshim.gfp import GFP_ATOMIC
from kshim.kobject import kobject
from kshim.module import (MODULE_DESCRIPTION, MODULE_LICENSE, MODULE_PARM_DESC, THIS_MODULE,
                          module_exit, module_init, module_param)
from kshim.printk import pr_err, pr_info
from kshim.scatterlist import sg_copy_from_buffer
from kshim.slab import kmem_cache, kmem_cache_alloc, kmem_cache_create, kmem_cache_destroy, \
    kmem_cache_free
from kshim.sysfs import __ATTR_RO, __ATTR_RW, kobj_attribute
from scst_core.const import (SAM_STAT_BUSY, TYPE_DISK, scst_sense_block_out_range_error,
                             scst_sense_invalid_opcode)
from scst_core.lib import (scst_cmd_iov, scst_set_cmd_error, scst_set_cmd_error_status,
                           scst_set_invalid_field_in_cdb, scst_set_resp_data_len)
from scst_core.main import (scst_register_virtual_dev_driver, scst_register_virtual_device,
                            scst_unregister_virtual_dev_driver, scst_unregister_virtual_device)
from scst_core.scst import (SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME, SCST_EXEC_COMPLETED,
                            scst_cmd, scst_dev_type, scst_device)
from scst_core.sysfs import (scst_attr_show_key, scst_devt_sysfs, scst_register_devt_sysfs,
                             scst_unregister_devt_sysfs)

MODULE_LICENSE("GPL")
MODULE_DESCRIPTION("SCSI disk serving a generated pattern (the uscst tutorial's example)")

dev_size_mb = 64
module_param("dev_size_mb", "int", 0o644)
MODULE_PARM_DESC("dev_size_mb", "size of a new device in MiB, unless add_device says blocks=")

BLOCK_SIZE = 512
READ_6, READ_10, READ_12, READ_16 = 0x08, 0x28, 0xA8, 0x88
TEST_UNIT_READY, INQUIRY, MODE_SENSE, MODE_SENSE_10 = 0x00, 0x12, 0x1A, 0x5A
READ_CAPACITY, SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16 = 0x25, 0x9E, 0x10


@attrs.define(slots=True, eq=False)
class pattern_dev:
    """One device; fields set at add_device, seed changed through sysfs."""
    name: str
    nblocks: int
    seed: int = 0


@attrs.define(slots=True, eq=False)
class pattern_cmd:
    """What parse works out for exec and dev_done (one per command)."""
    lba: int = 0
    nblocks: int = 0


# The cache of pattern_cmd (created by init, destroyed by exit).
pattern_cmd_cache: kmem_cache | None = None
# device name -> pattern_dev (task context only: add/del_device)
pattern_devs: dict[str, pattern_dev] = {}


# -- the data path ---------------------------------------------------------------

def pattern_block(pdev: pattern_dev, lba: int) -> bytes:
    return (lba.to_bytes(8, "big") + pdev.seed.to_bytes(8, "big")) * (BLOCK_SIZE // 16)


def pattern_parse(cmd: scst_cmd) -> int:
    """Range checks for the READs, before the core allocates the buffer."""
    pdev: pattern_dev = cmd.dev.dh_priv
    op = cmd.cdb[0]
    if op in (READ_10, READ_12, READ_16) and cmd.cdb[1] & 0xE0:
        scst_set_invalid_field_in_cdb(cmd, 1, 7)      # RDPROTECT: no protection info
        return SCST_CMD_STATE_DEFAULT
    if op in (READ_6, READ_10, READ_12, READ_16):
        n = cmd.data_len // BLOCK_SIZE
        if cmd.lba >= pdev.nblocks or cmd.lba + n > pdev.nblocks:
            scst_set_cmd_error(cmd, scst_sense_block_out_range_error)
            return SCST_CMD_STATE_DEFAULT
        pc = kmem_cache_alloc(pattern_cmd_cache, GFP_ATOMIC)
        if pc is None:
            scst_set_cmd_error_status(cmd, SAM_STAT_BUSY)   # the initiator retries
            return SCST_CMD_STATE_DEFAULT
        pc.lba = cmd.lba
        pc.nblocks = n
        cmd.dh_priv = pc
    return SCST_CMD_STATE_DEFAULT


def _copy_resp(cmd: scst_cmd, data: bytes) -> None:
    """Data-In, cut to the initiator's allocation length."""
    n = min(len(data), cmd.bufflen)
    if n:
        sg_copy_from_buffer(cmd.sg, cmd.sg_cnt or len(cmd.sg), memoryview(data)[:n])
    scst_set_resp_data_len(cmd, n)


def _exec_read(cmd: scst_cmd, pdev: pattern_dev) -> None:
    pc: pattern_cmd = cmd.dh_priv
    lba = pc.lba
    for v in scst_cmd_iov(cmd):
        off = 0
        while off < len(v):            # bounded: one block per turn
            v[off:off + BLOCK_SIZE] = pattern_block(pdev, lba)
            off += BLOCK_SIZE
            lba += 1
    scst_set_resp_data_len(cmd, pc.nblocks * BLOCK_SIZE)


def _exec_inquiry(cmd: scst_cmd, pdev: pattern_dev) -> None:
    if cmd.cdb[1] & 0x01:                                   # EVPD
        page = cmd.cdb[2]
        if page == 0x00:                                    # supported pages
            body = bytes((0x00, 0x80, 0xB0, 0xB1))
        elif page == 0x80:                                  # unit serial number
            body = pdev.name.encode()[:32]
        elif page == 0xB0:                                  # block limits: none stated
            body = bytes(0x3C)
        elif page == 0xB1:                                  # characteristics: no rotation
            body = bytes((0, 1)) + bytes(0x3A)
        else:
            scst_set_invalid_field_in_cdb(cmd, 2)
            return
        _copy_resp(cmd, bytes((TYPE_DISK, page)) + len(body).to_bytes(2, "big") + body)
        return
    buf = bytearray(36)
    buf[0] = TYPE_DISK
    buf[2] = 0x06                                           # SPC-4
    buf[3] = 0x02                                           # response data format 2
    buf[4] = len(buf) - 5
    buf[7] = 0x02                                           # CMDQUE
    buf[8:16] = b"USCST   "
    buf[16:32] = b"PATTERN".ljust(16)
    buf[32:36] = b"0001"
    _copy_resp(cmd, bytes(buf))


def _exec_mode_sense(cmd: scst_cmd, pdev: pattern_dev) -> None:
    # A header only, no pages. Device-specific parameter: WP (the pattern
    # cannot be written) and DPOFUA (READ's DPO and FUA bits are accepted).
    if cmd.cdb[0] == MODE_SENSE:
        _copy_resp(cmd, bytes((3, 0, 0x90, 0)))
    else:
        _copy_resp(cmd, bytes((0, 6, 0, 0x90, 0, 0, 0, 0)))


def _exec_read_capacity(cmd: scst_cmd, pdev: pattern_dev) -> None:
    last = min(pdev.nblocks - 1, 0xFFFFFFFF)
    _copy_resp(cmd, last.to_bytes(4, "big") + BLOCK_SIZE.to_bytes(4, "big"))


def _exec_service_action_in(cmd: scst_cmd, pdev: pattern_dev) -> None:
    if cmd.cdb[1] & 0x1F != SAI_READ_CAPACITY_16:
        scst_set_invalid_field_in_cdb(cmd, 1, 4)
        return
    data = (pdev.nblocks - 1).to_bytes(8, "big") + BLOCK_SIZE.to_bytes(4, "big")
    _copy_resp(cmd, data + bytes(20))


pattern_exec_table = {
    READ_6: _exec_read, READ_10: _exec_read, READ_12: _exec_read, READ_16: _exec_read,
    TEST_UNIT_READY: lambda cmd, pdev: None, INQUIRY: _exec_inquiry,
    MODE_SENSE: _exec_mode_sense, MODE_SENSE_10: _exec_mode_sense,
    READ_CAPACITY: _exec_read_capacity, SERVICE_ACTION_IN_16: _exec_service_action_in,
}


def pattern_exec(cmd: scst_cmd) -> int:
    """Answer the command from the table; anything else is an invalid opcode."""
    fn = pattern_exec_table.get(cmd.cdb[0])
    if fn is None:
        scst_set_cmd_error(cmd, scst_sense_invalid_opcode)
    elif not cmd.status:
        fn(cmd, cmd.dev.dh_priv)
    cmd.scst_cmd_done(cmd, SCST_CMD_STATE_DEFAULT, SCST_CONTEXT_SAME)
    return SCST_EXEC_COMPLETED


def pattern_dev_done(cmd: scst_cmd) -> int:
    """The command is answered: give its pattern_cmd back to the cache."""
    pc = cmd.dh_priv
    if pc is not None:
        cmd.dh_priv = None
        kmem_cache_free(pattern_cmd_cache, pc)
    return SCST_CMD_STATE_DEFAULT


# -- devices and management ---------------------------------------------------------

def pattern_attach(dev: scst_device) -> int:
    dev.block_size = BLOCK_SIZE
    dev.block_shift = 9
    dev.rd_only = True                  # the core refuses writes with DATA PROTECT
    return 0


def pattern_add_device(name: str, params: dict[str, str]) -> int:
    """handlers/vdisk_pattern/mgmt: add_device NAME [blocks=N; seed=N]."""
    if name in pattern_devs:
        return -EEXIST
    try:
        nblocks = int(params.get("blocks", str((dev_size_mb << 20) // BLOCK_SIZE)), 0)
        seed = int(params.get("seed", "0"), 0)
    except ValueError:
        pr_err(f"vdisk_pattern: bad blocks or seed for {name}")
        return -EINVAL
    if nblocks < 1 or not 0 <= seed < 1 << 64:
        pr_err(f"vdisk_pattern: blocks must be >= 1 and seed 0..2^64-1 for {name}")
        return -EINVAL
    pdev = pattern_dev(name, nblocks, seed)
    dev = scst_register_virtual_device(pattern_devtype, name, pdev)
    if IS_ERR(dev):
        return dev
    pattern_devs[name] = pdev
    pr_info(f"vdisk_pattern: device {name}: {pdev.nblocks} blocks, seed {seed:#x}")
    return 0


def pattern_del_device(name: str) -> int:
    dev = next((d for d in pattern_devtype.dev_list if d.virt_name == name), None)
    if dev is None:
        return -EINVAL
    ret = scst_unregister_virtual_device(dev)
    if ret == 0:
        del pattern_devs[name]
    return ret


def seed_show(kobj: kobject, a: kobj_attribute) -> str:
    seed = kobj.private.dh_priv.seed
    return scst_attr_show_key(seed, seed != 0)      # "[key]": write-config saves it


def blocks_show(kobj: kobject, a: kobj_attribute) -> str:
    return scst_attr_show_key(kobj.private.dh_priv.nblocks, True)


def seed_store(kobj: kobject, a: kobj_attribute, buf: str) -> int:
    try:
        seed = int(buf.strip(), 0)
    except ValueError:
        return -EINVAL
    if not 0 <= seed < 1 << 64:
        return -EINVAL
    kobj.private.dh_priv.seed = seed
    return len(buf)


pattern_devtype = scst_dev_type(
    name="vdisk_pattern", type=TYPE_DISK, parse=pattern_parse, exec=pattern_exec,
    dev_done=pattern_dev_done, attach=pattern_attach, exec_atomic=True,
    add_device=pattern_add_device, del_device=pattern_del_device,
    add_device_parameters=("blocks", "seed"))


@module_init
def pattern_init() -> int:
    global pattern_cmd_cache
    if dev_size_mb < 1:
        pr_err(f"vdisk_pattern: dev_size_mb {dev_size_mb} must be at least 1")
        return -EINVAL
    pattern_cmd_cache = kmem_cache_create("vdisk_pattern_cmd", pattern_cmd)
    if pattern_cmd_cache is None:
        return -ENOMEM
    pattern_devtype.owner = THIS_MODULE()
    ret = scst_register_virtual_dev_driver(pattern_devtype)
    if ret != 0:
        kmem_cache_destroy(pattern_cmd_cache)
        return ret
    scst_register_devt_sysfs("vdisk_pattern", scst_devt_sysfs(
        dev_attrs=(__ATTR_RW("seed", seed_show, seed_store), __ATTR_RO("blocks", blocks_show)),
        dev_live_attrs=("seed",), dev_create_only_attrs=("blocks",)))
    pr_info(f"vdisk_pattern: loaded, {dev_size_mb} MiB devices by default")
    return 0


@module_exit
def pattern_exit() -> None:
    scst_unregister_devt_sysfs("vdisk_pattern")
    scst_unregister_virtual_dev_driver(pattern_devtype)
    pattern_devs.clear()
    kmem_cache_destroy(pattern_cmd_cache)
