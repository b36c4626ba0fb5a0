"""iSCSI targets and network portals: listening sockets and the accept
thread that turns new TCP connections into connections in login.

Twin of iscsi-scst/kernel/target.c plus the listening part of
iscsi-scst/usr/isns.c/iscsid.c (portals live in the daemon there).

Contexts: iscsi_target_add, iscsi_add_portal and iscsi_del_portal from task
context (module init, management). The listening socket's sk_data_ready
runs in softirq context and only wakes the accept thread.

Differs from iscsi-scst: portals are kernel sockets here (there is no
usermode daemon to own them); one accept kthread per portal.
"""
from __future__ import annotations

from typing import Any

import attrs

from iscsi_scst.conn import iscsi_conn_alloc, iscsi_conn_count
from iscsi_scst.usr.chap import chap_credentials
from iscsi_scst.usr.iscsid import target_portal
from iscsi_scst.usr.param import iscsi_tgt_params
from kshim.err import EAGAIN, EEXIST, EINVAL, ENOENT, IS_ERR
from kshim.kthread import kthread_run, kthread_should_stop, kthread_stop
from kshim.sched import task_struct
from kshim.net import (AF_INET, AF_INET6, SOCK_STREAM, kernel_accept, kernel_bind,
                       kernel_listen, sock_create_kern, sock_release, socket)
from kshim.printk import pr_err, pr_info, pr_warn
from kshim.wait import wait_event_interruptible, wait_queue_head, wake_up
from scst_core.main import scst_register_target, scst_unregister_target
from scst_core.scst import scst_tgt

# Connections accepted at most at once, logged in or not (a flood guard).
iscsi_max_conns = 1024
# The driver's switch (targets/iscsi/enabled): while False no target is
# found for a login or listed by SendTargets; running sessions go on.
iscsi_enabled = True


@attrs.define(slots=True, eq=False)
class iscsi_target:
    name: str
    tid: int
    scst_tgt: scst_tgt
    tgt_params: iscsi_tgt_params = attrs.field(factory=iscsi_tgt_params)
    alias: str = ""
    portal_group_tag: int = 1
    enabled: bool = True
    # CHAP users for this target (IncomingUser/OutgoingUser); None: no CHAP
    chap: chap_credentials | None = None
    # allowed_portal patterns (shell wildcards on the portal's address);
    # empty: every portal may reach the target
    allowed_portals: tuple = ()
    # transmit Nagle mode of connections that set none (iscsi_scst/nagle.py)
    nagle_mode: int = 0


@attrs.define(slots=True, eq=False)
class iscsi_portal:
    host: str
    port: int
    family: int
    sock: socket | None = None
    accept_thread: task_struct | None = None
    ready: bool = False
    waitq: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("portal"))


target_list: list[iscsi_target] = []
# CHAP users for discovery sessions (the driver's IncomingUser/OutgoingUser)
iscsi_discovery_chap: Any = None
portal_list: list[iscsi_portal] = []
_next_tid = 0


def iscsi_target_find(name: str) -> iscsi_target | None:
    if not iscsi_enabled:
        return None
    return next((t for t in target_list if t.name == name and t.enabled), None)


def iscsi_target_add(tgtt: Any, name: str, params: iscsi_tgt_params | None = None) -> iscsi_target | int:
    global _next_tid
    if any(t.name == name for t in target_list):
        return -EEXIST
    scst_tgt = scst_register_target(tgtt, name)
    if isinstance(scst_tgt, int):
        return scst_tgt
    _next_tid += 1
    tgt = iscsi_target(name, _next_tid, scst_tgt, params or iscsi_tgt_params())
    scst_tgt.tgt_priv = tgt
    target_list.append(tgt)
    return tgt


def iscsi_target_del(tgt: iscsi_target) -> None:
    if tgt in target_list:
        target_list.remove(tgt)
    scst_unregister_target(tgt.scst_tgt)


def iscsi_list_targets() -> list[tuple[str, list[target_portal]]]:
    """(name, portals) of every enabled target, for SendTargets."""
    portals = [target_portal(p.host, p.port, 1) for p in portal_list]
    return [(t.name, [target_portal(p.address, p.port, t.portal_group_tag) for p in portals])
            for t in target_list if t.enabled and iscsi_enabled]


def _portal_data_ready(sk: Any) -> None:
    portal = sk.sk_user_data
    portal.ready = True
    wake_up(portal.waitq)


def _accept_thread(portal: iscsi_portal) -> int:
    while not kthread_should_stop():
        new = kernel_accept(portal.sock)
        if new == -EAGAIN:
            portal.ready = False
            wait_event_interruptible(portal.waitq, lambda: portal.ready or kthread_should_stop())
            continue
        if isinstance(new, int):
            pr_warn(f"iscsi: accept on {portal.host}:{portal.port} failed: {new}")
            continue
        if iscsi_conn_count() >= iscsi_max_conns:
            pr_warn(f"iscsi: {iscsi_max_conns} connections open: refusing a new one")
            sock_release(new)
            continue
        if IS_ERR(iscsi_conn_alloc(new, portal)):
            pr_warn(f"iscsi: no memory for a connection on {portal.host}:{portal.port}")
            sock_release(new)
    return 0


def iscsi_add_portal(host: str, port: int) -> iscsi_portal | int:
    """Listen on host:port (IPv4 or IPv6 literal); the portal or -errno."""
    if any(p.host == host and p.port == port for p in portal_list):
        return -EEXIST
    family = AF_INET6 if ":" in host else AF_INET
    if not 0 < port < 65536:
        return -EINVAL
    sock = sock_create_kern(family, SOCK_STREAM, 0)
    if isinstance(sock, int):
        return sock
    ret = kernel_bind(sock, (host, port))
    if ret == 0:
        ret = kernel_listen(sock, 128)
    if ret != 0:
        pr_err(f"iscsi: cannot listen on {host}:{port}: error {ret}")
        sock_release(sock)
        return ret
    portal = iscsi_portal(host, port, family, sock)
    sock.sk.sk_user_data = portal
    sock.sk.sk_data_ready = _portal_data_ready
    portal.accept_thread = kthread_run(_accept_thread, portal, f"iscsi_accept/{port}")
    portal_list.append(portal)
    pr_info(f"iscsi: listening on {host}:{port}")
    return portal


def iscsi_del_portal(portal: iscsi_portal) -> int:
    if portal not in portal_list:
        return -ENOENT
    portal_list.remove(portal)
    kthread_stop(portal.accept_thread)
    sock_release(portal.sock)
    return 0
