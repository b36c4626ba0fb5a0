"""What a cluster_mode device's events do on each node: the device side
of the cluster link (scst_core.cluster carries the messages).

Mirrors scst/src/scst_dlm.c, which keeps a shared device's persistent
reservation state coherent between SCST nodes through the kernel's DLM;
here the nodes send each other events and state over the link instead
(decision 0054).

A peer's events (scst_cluster_apply_event, the link's receive thread):
a LUN or TARGET RESET (its unit attention on every nexus of the device,
then the device reset actions: SPC-2 reservation released, PREVENT
cleared), changed mode pages (taken through scst_cluster_mode_hook, then
MODE PARAMETERS CHANGED), a capacity change (the size re-read through
scst_cluster_resync_hook, then CAPACITY DATA HAS CHANGED), and
persistent reservation state.

Persistent reservations (scst_cluster_pr_out, what scst_dlm.c does under
the device's cluster lock): a PR OUT that changes the state is sent to
every peer as the whole state, with the number of the agreed state it
started from; a peer takes it only if it is at that same state, and the
command completes GOOD only if every peer took it. Otherwise (a peer
unreachable before, refusing or silent after) the change is undone here
and the command ends with ABORTED COMMAND, LOGICAL UNIT COMMUNICATION
FAILURE, so an initiator never believes it holds a reservation another
node does not enforce. Two PR OUTs through two nodes at once both fail
that way (each node refuses the other's); the initiators retry. When a
link comes up (scst_cluster_link_up), and when a shared device is
created (scst_cluster_dev_registered), the nodes offer each other their
state and the newer (higher number) wins: a restarted node takes the
reservations its peer kept.

Contexts: scst_cluster_pr_out from the dev handler's exec (it sleeps);
the rest from task context (the link's threads, device registration).

Differs from SCST: no lock manager, so concurrent changes through two
nodes fail instead of queueing. Not carried: the unit attentions a PR
OUT raises for other registrants (they reach the nexuses of the node
that ran it only), the aborts of PREEMPT AND ABORT on the other node,
SPC-2 RESERVE/RELEASE (vdisk_nbd still refuses them on a shared device);
a restarted node enforces no reservation until its link is up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kshim.completion import wait_for_completion_timeout
from kshim.err import EBUSY, ENODEV, EOPNOTSUPP
from kshim.jiffies import HZ
from kshim.mutex import mutex_lock, mutex_unlock
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.sched import in_atomic
from kshim.spinlock import spin_lock_bh, spin_unlock_bh
from kshim.wait import wake_up_all
from scst_core import cluster as scst_cluster
from scst_core.cluster import (CLUSTER_ACK_TIMEOUT, scst_cluster_conn, scst_cluster_dev_event,
                               scst_cluster_event, scst_cluster_msg, scst_cluster_peer)
from scst_core.cluster_proto import (CL_EV_CAPACITY, CL_EV_MODE, CL_EV_NAMES, CL_EV_PR_STATE,
                                     CL_EV_PR_SYNC, CL_EV_RESET, clm_dev_event, pack_pr_state,
                                     parse_mode_pages, unpack_pr_state)
from scst_core.lib import scst_set_cmd_error
from scst_core.pres import (scst_pr_dev_reset, scst_pr_devs, scst_pr_exec_out, scst_pr_restore,
                            scst_pr_snapshot)
from scst_core.ua import scst_queue_ua

if TYPE_CHECKING:
    from scst_core.scst import scst_cmd, scst_device

# Called for a peer's CL_EV_CAPACITY before the UA, to re-read the size
# (scst_core.sysfs sets it to the handler's resync_size). Task context.
scst_cluster_resync_hook: "Callable[[scst_device], int] | None" = None
# Called for a peer's CL_EV_MODE before the UA, to take its mode pages:
# 0 or -errno (vdisk sets it). Task context.
scst_cluster_mode_hook: "Callable[[scst_device, list[tuple[int, bytes]]], int] | None" = None


# ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE: the nodes could not
# agree; nothing changed, the initiator may retry
scst_sense_lu_communication_failure = (0x0B, 0x08, 0x00)


def _pr_state(dev: "scst_device") -> str:
    return scst_pr_snapshot(dev) or ""


def scst_cluster_pr_out(cmd: "scst_cmd") -> None:
    """PERSISTENT RESERVE OUT on a cluster_mode device (the dev handler's
    exec, task context). With peers, the change is made here, then sent
    to every peer, and stands only if each took it: otherwise it is
    undone here and the command ends with ABORTED COMMAND, LOGICAL UNIT
    COMMUNICATION FAILURE (0B/08/00). A peer that is unreachable fails
    the command the same way before anything changes. So GOOD means
    every node enforces the new state (mirrors scst_dlm.c, which updates
    the PR state under the device's cluster lock)."""
    dev = cmd.dev
    prd = scst_pr_devs.get(dev)
    peers = list(scst_cluster.cluster_peers)
    if prd is None or not peers:
        scst_pr_exec_out(cmd)
        return
    who = f"scst_cluster: {dev.virt_name}: PERSISTENT RESERVE OUT"
    down = [p.name for p in peers if not p.connected]
    if down or in_atomic():
        pr_err(f"{who} refused: " + (f"peer {', '.join(down)} unreachable, its node would "
                                     f"not enforce the change" if down else
                                     "cannot wait for the peers in atomic context"))
        scst_set_cmd_error(cmd, scst_sense_lu_communication_failure)
        return
    mutex_lock(prd.cluster_mutex)
    before, base = _pr_state(dev), prd.cluster_seq
    # A peer's change that started from base is refused from now on: this
    # node's own may be on its way.
    prd.cluster_seq = base + 1
    scst_pr_exec_out(cmd)
    after = _pr_state(dev)
    if after == before:
        prd.cluster_seq = base
        mutex_unlock(prd.cluster_mutex)
        return
    ev = scst_cluster_dev_event(dev, CL_EV_PR_STATE, (0, 0, 0),
                                data=pack_pr_state(base, base + 1, after))
    ok = ev is not None and bool(wait_for_completion_timeout(
        ev.comp, CLUSTER_ACK_TIMEOUT + HZ)) and not ev.failed
    if not ok:
        failed = ", ".join(ev.failed) if ev is not None and ev.failed else "no answer"
        pr_err(f"{who} undone: not applied by {failed}")
        scst_pr_restore(dev, before)
        prd.cluster_seq = base
        scst_set_cmd_error(cmd, scst_sense_lu_communication_failure)
    mutex_unlock(prd.cluster_mutex)


def _peer_queue_pr_sync(peer: scst_cluster_peer, devs: "list[scst_device]") -> None:
    """Offer the peer this node's reservation state of each shared device
    in devs; it takes what is newer than its own, and offers its own back
    when that is newer (so a restarted node, or a device created after
    the link came up, gets the state the other node enforces)."""
    for dev in devs:
        prd = scst_pr_devs.get(dev)
        if not dev.cluster_mode or prd is None:
            continue
        ev = scst_cluster_event(
            msg=clm_dev_event(CL_EV_PR_SYNC, (0, 0, 0), dev.virt_name,
                              pack_pr_state(prd.cluster_seq, prd.cluster_seq,
                                            _pr_state(dev))),
            pending=1, done=None)
        spin_lock_bh(peer.lock)
        peer.tx_queue.append(scst_cluster_msg(ev))
        spin_unlock_bh(peer.lock)
    wake_up_all(peer.wq)


def _all_devs() -> "list[scst_device]":
    # cycle: scst_core.main imports this file
    from scst_core.main import scst_dev_list
    return list(scst_dev_list)


def scst_cluster_dev_registered(dev: "scst_device") -> None:
    """A device was created: if shared, swap reservation states with the
    peers already linked (scst_register_virtual_device, task context)."""
    if dev.cluster_mode:
        for peer in list(scst_cluster.cluster_peers):
            if peer.connected:
                _peer_queue_pr_sync(peer, [dev])


def scst_cluster_apply_event(conn: scst_cluster_conn, ev: clm_dev_event) -> int:
    """Do on this node what a peer's event asks (scst_cluster_apply_hook,
    the link's receive thread): 0 or -errno."""
    # cycle: scst_core.main imports this file
    from scst_core.main import scst_find_device
    dev = scst_find_device(ev.dev_name)
    if dev is None:
        return -ENODEV
    if not dev.cluster_mode:
        return -EOPNOTSUPP
    if ev.event in (CL_EV_PR_STATE, CL_EV_PR_SYNC):
        return _apply_pr_state(conn, dev, ev)
    if ev.event == CL_EV_CAPACITY and scst_cluster_resync_hook is not None:
        scst_cluster_resync_hook(dev)
    if ev.event == CL_EV_MODE:
        ret = scst_cluster_mode_hook(dev, parse_mode_pages(ev.data)) \
            if scst_cluster_mode_hook is not None else -EOPNOTSUPP
        if ret < 0:
            return ret
    tgt_devs = list(dev.dev_tgt_dev_list)
    for td in tgt_devs:
        scst_queue_ua(td, ev.sense)
    if ev.event == CL_EV_RESET:
        scst_pr_dev_reset(dev)
    pr_info(f"scst_cluster: peer {conn.peer_node}: {CL_EV_NAMES[ev.event]} of {ev.dev_name}: "
            "unit attention {:x}/{:02x}/{:02x}".format(*ev.sense)
            + f" on {len(tgt_devs)} nexus(es)")
    return 0


def _apply_pr_state(conn: scst_cluster_conn, dev: "scst_device", ev: clm_dev_event) -> int:
    """A peer's reservation state: a change (taken only if it started from
    the state this node has, else -EBUSY: two nodes changed it at once)
    or, after a (re)connect, its state (taken if newer than ours)."""
    prd = scst_pr_devs.get(dev)
    if prd is None:
        return -ENODEV
    base, seq, text = unpack_pr_state(ev.data)
    if ev.event == CL_EV_PR_STATE and prd.cluster_seq != base:
        pr_warn(f"scst_cluster: peer {conn.peer_node}: reservation change {seq} of "
                f"{ev.dev_name} started from {base}, this node is at {prd.cluster_seq}: "
                f"refused (changed through two nodes at once)")
        return -EBUSY
    if ev.event == CL_EV_PR_SYNC and seq <= prd.cluster_seq:
        if seq < prd.cluster_seq:       # ours is newer: the peer gets it back
            for p in list(scst_cluster.cluster_peers):
                if p.name == conn.peer_node and p.connected:
                    _peer_queue_pr_sync(p, [dev])
        return 0
    ret = scst_pr_restore(dev, text)
    if ret == 0:
        prd.cluster_seq = seq
        pr_info(f"scst_cluster: peer {conn.peer_node}: {CL_EV_NAMES[ev.event]} {seq} of "
                f"{ev.dev_name}: {len(prd.registrants)} registration(s)"
                + (f", reservation type {prd.pr_type}" if prd.pr_is_set else ""))
    return ret


def scst_cluster_link_up(peer: scst_cluster_peer) -> None:
    """A link to a peer is (back) up (scst_cluster_link_up_hook): offer it
    the reservation state of every shared device."""
    _peer_queue_pr_sync(peer, _all_devs())


def scst_cluster_dev_init() -> None:
    """Plug the device side into the link (the core's module init)."""
    scst_cluster.scst_cluster_apply_hook = scst_cluster_apply_event
    scst_cluster.scst_cluster_link_up_hook = scst_cluster_link_up


def scst_cluster_dev_exit() -> None:
    scst_cluster.scst_cluster_apply_hook = None
    scst_cluster.scst_cluster_link_up_hook = None
