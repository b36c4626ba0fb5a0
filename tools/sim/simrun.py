"""Run a scenario under the sim engine: boot, drive, stop, judge, hash.

run_sim() makes a Simulation from the seed, boots the target in-process
on it (tools/sim_target.py: LUN 0 on an in-memory disk, one portal at a
sim address), adjusts it for the scenarios (MaxConnections 8 for MC/S,
a second device for config-churn), runs the scenario's actors with the
invariant checkers on, stops the target and asks the engine what was
left behind (kshim.engine_sim.teardown_problems: slab objects, kthreads,
timers, work items, lockdep / debugobjects / oops reports).

SimControl is config-churn's TargetControl under the sim: each change is
a kernel call run in a kthread (management code sleeps), the calling
actor blocked until it returns.

Where it may be called from: the host greenlet that owns the Simulation
(the CLI, the pytest fixture); SimControl's methods from an actor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from iscsi_scst.target import target_list
from kshim import bug, printk
from kshim.engine_sim import Simulation, teardown_problems
from kshim.kthread import kthread_run
from scst_core.main import scst_acg_add_lun, scst_acg_del_lun, scst_find_device
from .runner import MAX_VIRTUAL_S, Outcome, drive
from .scenarios import Context, TargetSpec
from ..sim_target import SimTarget, boot_target, stop_target
from vdisk.vdisk import vdisk_add_device, vdisk_del_device

CHURN_DEVICE = "churn1"
CHURN_DISK = "/sim/churn1"
CHURN_LUN = 1
MAX_CONNECTIONS = 8


def kcall(sim: Simulation, fn: Callable[[], int], name: str) -> int:
    """Run fn() in a new kthread and block the calling actor until it
    returns; its result (0 or a negative errno)."""
    box: list[int] = []
    done: list[bool] = []
    waiter: list[Any] = []

    def body(_: Any) -> int:
        try:
            box.append(fn())
        finally:
            # Even when fn() oopses (the engine reports it), the actor goes on.
            done.append(True)
            for a in waiter:
                sim.wake(a, f"{name} done")
        return 0
    kthread_run(body, None, name)
    # An event, so the engine runs the run queue that now holds the kthread.
    sim.schedule(0, lambda _: None, None, f"kcall {name}")
    sim.wait_for(lambda: bool(done), waiter.append)
    if not box:
        raise RuntimeError(f"{name}: the kernel call oopsed")
    return box[0]


class SimControl:
    """Map and unmap the churn device at a LUN of the sim target."""

    def __init__(self, sim: Simulation, target: SimTarget) -> None:
        self.sim = sim
        self.target = target

    def _acg(self) -> Any:
        tgt = next(t for t in target_list if t.name == self.target.iqn)
        return tgt.scst_tgt.default_acg

    def map_lun(self, lun: int) -> None:
        ret = kcall(self.sim, lambda: scst_acg_add_lun(
            self._acg(), scst_find_device(CHURN_DEVICE), lun, False), "sim-map-lun")
        if ret != 0:
            raise RuntimeError(f"mapping LUN {lun} failed: {ret}")

    def unmap_lun(self, lun: int) -> None:
        ret = kcall(self.sim, lambda: scst_acg_del_lun(self._acg(), lun), "sim-unmap-lun")
        if ret != 0:
            raise RuntimeError(f"unmapping LUN {lun} failed: {ret}")


def _prepare(sim: Simulation, target: SimTarget) -> int:
    """Kernel side (a kthread): what the scenarios need beyond the default
    target. The churn device starts mapped, as config-churn expects."""
    tgt = next(t for t in target_list if t.name == target.iqn)
    tgt.tgt_params.max_connections = MAX_CONNECTIONS
    ret = vdisk_add_device("vdisk_fileio", CHURN_DEVICE,
                           {"filename": CHURN_DISK, "blocksize": str(target.blocksize)})
    if ret != 0:
        return ret
    return scst_acg_add_lun(tgt.scst_tgt.default_acg, scst_find_device(CHURN_DEVICE),
                            CHURN_LUN, False)


def _stop_after_failure(sim: Simulation) -> None:
    """Unload the target after a failed run if it still can be; else just
    stop the engine (the process's kernel state is then not clean, which is
    why explore runs the seeds after a failure in a fresh process)."""
    try:
        stop_target(sim)
    except Exception:        # a stalled or broken target: stop the engine only
        sim.shutdown(None)


def _unprepare(target: SimTarget) -> int:
    """Kernel side (a kthread): undo _prepare, so stop_target leaves
    nothing and the next boot in this process starts clean."""
    tgt = next(t for t in target_list if t.name == target.iqn)
    acg = tgt.scst_tgt.default_acg
    if CHURN_LUN in acg.acg_dev_list:
        ret = scst_acg_del_lun(acg, CHURN_LUN)
        if ret != 0:
            return ret
    return vdisk_del_device(CHURN_DEVICE)


def _kernel_step(sim: Simulation, fn: Callable[[], int], name: str) -> None:
    """Run fn in a kthread to its end from the driving greenlet."""
    got: list[int] = []
    sim.spawn(lambda: got.append(kcall(sim, fn, name)), name)
    sim.run(max_virtual_s=60.0)
    if got != [0]:
        raise RuntimeError(f"{name} failed: {got}")


def run_sim(scenario: str, seed: int, *, trace_path: str | None = None,
            max_virtual_s: float = MAX_VIRTUAL_S,
            body: Callable[[Context], None] | None = None,
            log_level: str = "warning") -> Outcome:
    """One seed of scenario (or of body, named scenario) under the sim
    engine; see the module docstring. Kernel messages up to log_level
    reach stderr."""
    printk.set_console_loglevel(log_level)
    bug.reset_reports()          # reports of an earlier run in this process are not ours
    sim = Simulation(seed, trace=trace_path is not None)
    sim.disks[CHURN_DISK] = bytearray(4 << 20)
    stopped = [False]
    try:
        try:
            target = boot_target(sim)
        except RuntimeError as e:
            return Outcome(scenario, seed, sim.events, sim.now_ns / 1e9, sim.trace_hash(),
                           f"FAIL: boot: {e}")
        spec = TargetSpec(addr=target.addr, iqn=target.iqn, block_size=target.blocksize,
                          max_connections=MAX_CONNECTIONS, nop_in_interval=30.0,
                          nop_in_timeout=30.0, virtual_time=True,
                          control=SimControl(sim, target), churn_lun=CHURN_LUN)
        _kernel_step(sim, lambda: _prepare(sim, target), "sim-setup")

        def teardown() -> list[str]:
            stopped[0] = True
            _kernel_step(sim, lambda: _unprepare(target), "sim-unsetup")
            stop_target(sim)
            return teardown_problems(sim)
        out = drive(scenario, sim, spec, seed, max_virtual_s=max_virtual_s,
                    teardown=teardown, body=body)
    finally:
        if not stopped[0]:
            _stop_after_failure(sim)
    out.trace = sim.trace_hash()
    if trace_path is not None:
        Path(trace_path).write_text("".join(f"{ln}\n" for ln in sim.trace_lines()))
    return out
