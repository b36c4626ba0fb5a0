"""Boot our iSCSI target in-process under the sim engine (kshim.engine_sim).

Host tool, not kernel idiom: it builds the default target (vdisk_fileio on
an in-memory disk, LUN 0, one portal at a sim address) on a Simulation, so
a scenario, the `uscst-sim` CLI or a pytest fixture can drive it with outside
actors (SimPeer connections). The boot is the public, engine-agnostic one
(tools/boot.py target_init/target_exit: the same module load order and
default target as uscstd), run in the Simulation's kthreads.

Contexts: boot_target() and stop_target() from the greenlet driving the
Simulation; _target_init() runs in a kthread.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from iscsi_scst.target import target_list
from kshim.engine_sim import Simulation
from kshim.err import errname
from .boot import BootConfig, failures, target_exit, target_init

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


def _target_init(t: SimTarget, cfg: BootConfig) -> int:
    ret = target_init(cfg)
    if ret != 0:
        return ret
    tgt = next(x for x in target_list if x.name == t.iqn)
    for key, value in t.tgt_params.items():
        setattr(tgt.tgt_params, key, value)
    return 0


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
    cfg = BootConfig(iqn=iqn, portals=[addr], disk=disk_path, disk_exists=True,
                     size=len(disk), blocksize=blocksize)
    ret = sim.boot(lambda: _target_init(t, cfg))
    if ret != 0:
        sim.shutdown(None)          # target_init unloaded what it loaded
        raise RuntimeError(f"seed {sim.seed}: target boot failed: "
                           f"{'; '.join(failures) or errname(ret)}")
    return t


def stop_target(sim: Simulation) -> None:
    """Unload the modules (in a kthread) and stop the simulation."""
    sim.shutdown(target_exit)
