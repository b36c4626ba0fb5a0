"""Boot our iSCSI target in-process under the sim engine (kshim.engine_sim).

Host tool, not kernel idiom: it builds the default target (vdisk_fileio on
an in-memory disk, LUN 0, one portal at a sim address) on a Simulation, so
a scenario, the `uscst-sim` CLI or a pytest fixture can drive it with outside
actors (SimPeer connections).

The module-init sequence is a private copy of what tools/uscstd.py serve()
does for the default target (vdisk_init, iscsi_init, vdisk_add_device,
iscsi_target_add, scst_acg_add_lun, iscsi_add_portal), until the public,
engine-agnostic boot call (tools/boot.py target_init/target_exit, issue 15
section 2) lands; then this calls that instead.

Contexts: boot_target() and stop_target() from the greenlet driving the
Simulation; _target_init()/_target_exit() run in a kthread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from iscsi_scst.iscsi import iscsi_exit, iscsi_init, iscsi_template
from iscsi_scst.target import iscsi_add_portal, iscsi_target_add, iscsi_target_del, target_list
from kshim.engine_sim import Simulation
from kshim.err import errname
from scst_core.main import scst_acg_add_lun, scst_find_device
from vdisk.vdisk import (vdisk_add_device, vdisk_del_device, vdisk_dev_list, vdisk_exit,
                         vdisk_init)

DEFAULT_ADDR = ("10.0.0.1", 3260)
DEFAULT_IQN = "iqn.2026-01.org.uscst.sim:disk0"
DEFAULT_DISK = "/sim/disk0"


@dataclass
class SimTarget:
    """What boot_target built: where it listens and its disk's bytes."""
    sim: Simulation
    addr: tuple[str, int]
    iqn: str
    disk: bytearray
    blocksize: int
    tgt_params: dict[str, int] = field(default_factory=dict)
    failure: list[str] = field(default_factory=list)


def _target_init(t: SimTarget, path: str) -> int:
    ret = vdisk_init()
    if ret == 0:
        ret = iscsi_init()
    if ret != 0:
        t.failure.append(f"module init failed: {errname(ret)}")
        return ret
    ret = vdisk_add_device("vdisk_fileio", "disk0",
                           {"filename": path, "blocksize": str(t.blocksize)})
    if ret != 0:
        t.failure.append(f"cannot open backing store {path}: {errname(ret)}")
        return ret
    tgt = iscsi_target_add(iscsi_template, t.iqn)
    if isinstance(tgt, int):
        t.failure.append(f"cannot add target {t.iqn}: {errname(tgt)}")
        return tgt
    for key, value in t.tgt_params.items():
        setattr(tgt.tgt_params, key, value)
    ret = scst_acg_add_lun(tgt.scst_tgt.default_acg, scst_find_device("disk0"), 0, False)
    if ret != 0:
        t.failure.append(f"cannot map LUN 0: {errname(ret)}")
        return ret
    p = iscsi_add_portal(t.addr[0], t.addr[1])
    if isinstance(p, int):
        t.failure.append(f"cannot listen on {t.addr[0]}:{t.addr[1]}: {errname(p)}")
        return p
    return 0


def _target_exit() -> None:
    iscsi_exit()
    # iscsi_exit() keeps target_list, and vdisk_exit() forgets a device only
    # while it is still attached: remove both first, so that the next boot
    # in this process starts clean (a daemon never boots twice).
    for tgt in list(target_list):
        iscsi_target_del(tgt)
    for name in list(vdisk_dev_list):
        vdisk_del_device(name)
    vdisk_exit()


def boot_target(sim: Simulation, *, size: int = 16 << 20, blocksize: int = 512,
                iqn: str = DEFAULT_IQN, addr: tuple[str, int] = DEFAULT_ADDR,
                disk_path: str = DEFAULT_DISK,
                tgt_params: dict[str, int] | None = None) -> SimTarget:
    """Boot kshim on sim with the default target; raise RuntimeError naming
    what failed. The disk is sim.disks[disk_path] (zeroed, size bytes);
    tgt_params sets target parameters by field name (iscsi_tgt_params:
    nop_in_interval=1, ...)."""
    disk = sim.disks.setdefault(disk_path, bytearray(size))
    t = SimTarget(sim, addr, iqn, disk, blocksize, dict(tgt_params or {}))
    ret = sim.boot(lambda: _target_init(t, disk_path))
    if ret != 0:
        raise RuntimeError(f"seed {sim.seed}: target boot failed: "
                           f"{'; '.join(t.failure) or errname(ret)}")
    return t


def stop_target(sim: Simulation) -> None:
    """Unload the modules (in a kthread) and stop the simulation."""
    sim.shutdown(_target_exit)
