"""vdisk_rbd under the sim engine: there is no Ceph cluster in the
simulation, so creating a device is refused with one clear log line and
-ENODEV; nothing crashes, leaks or stays behind, and the target keeps
serving. No cluster and no librbd needed."""
from __future__ import annotations

from kshim import bug
from kshim.engine_sim import SIM_NO_RBD, Simulation, teardown_problems
from kshim.err import ENODEV
from kshim.printk import dmesg, dmesg_clear
from tools.boot import BootConfig, target_exit, target_init
from tools.sim_target import DEFAULT_ADDR, DEFAULT_IQN
from vdisk.vdisk import vdisk_add_device, vdisk_dev_list


def test_vdisk_rbd_add_device_under_the_sim_engine_is_refused_with_one_clear_error_seed_3():
    bug.reset_reports()
    sim = Simulation(3)
    cfg = BootConfig(iqn=DEFAULT_IQN, nullio=True, size=1 << 20, portals=[DEFAULT_ADDR])
    box: list = []

    def init() -> int:
        ret = target_init(cfg)
        if ret == 0:
            dmesg_clear()
            box.append(vdisk_add_device("vdisk_rbd", "r0", {"image": "img", "pool": "rbd"}))
            box.append([m for m in dmesg() if "r0" in m])
            box.append("r0" in vdisk_dev_list)
        return ret
    assert sim.boot(init) == 0
    ret, lines, listed = box
    assert ret == -ENODEV and not listed
    assert [m for m in lines if m.startswith("vdisk_rbd")] == \
        [f"vdisk_rbd: r0: cannot use Ceph RBD: {SIM_NO_RBD}"]
    sim.shutdown(target_exit)
    assert bug.reports == [] and teardown_problems(sim) == []
