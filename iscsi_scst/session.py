"""iSCSI sessions: creation at the end of a leading login, lookup by
ISID/TSIH, and freeing after the last connection is gone.

Twin of iscsi-scst/kernel/session.c.

Contexts: task context (the rd thread of a connection in login, or one
closing); takes no sleeping lock itself.

Differs from iscsi-scst: created straight from the login state machine's
result instead of an ioctl from the usermode daemon. Reinstatement (same
ISID and initiator, TSIH 0) and MC/S joins are decided at the end of login
(iscsi.py, _login_rx_done); at ErrorRecoveryLevel 0 a lost connection ends
its whole session (conn.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from iscsi_scst.usr.param import iscsi_sess_params
from kshim.err import ENOMEM
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO
from kshim.printk import pr_info
from kshim.spinlock import spinlock_t
from scst_core.main import scst_register_session, scst_unregister_session
from scst_core.scst import scst_session

if TYPE_CHECKING:
    from iscsi_scst.conn import iscsi_conn
    from iscsi_scst.target import iscsi_target


@attrs.define(slots=True, eq=False)
class iscsi_session:
    target: "iscsi_target | None"
    isid: bytes
    tsih: int
    initiator_name: str
    sess_params: iscsi_sess_params
    discovery: bool = False
    scst_sess: scst_session | None = None
    # protected by sn_lock (shared by the session's connections)
    sn_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("sess.sn_lock"))
    exp_cmd_sn: int = 0
    max_queued_cmnds: int = 32
    pending_cmnds: dict = attrs.field(factory=dict)    # CmdSN -> held header
    max_cmd_sn: int = -1             # the MaxCmdSN last sent
    cmdsn_window_full: int = 0       # commands that used the window's last CmdSN
    # touched only with the target's session list
    conn_list: list = attrs.field(factory=list)


_next_tsih = 0
session_list: list[iscsi_session] = []
# Sessions (normal and discovery) at most at once; more are refused 03/02.
iscsi_max_sessions = 256


def iscsi_alloc_tsih() -> int:
    global _next_tsih
    _next_tsih = (_next_tsih % 0xFFFF) + 1
    return _next_tsih


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def iscsi_session_create(target: "iscsi_target | None", isid: bytes, tsih: int,
                         initiator_name: str, params: iscsi_sess_params, exp_cmd_sn: int,
                         queued_cmnds: int) -> "iscsi_session | int":
    """A new session (with its SCST session for a normal one), or -ENOMEM."""
    sess = iscsi_session(target, isid, tsih, initiator_name, params, discovery=target is None,
                         exp_cmd_sn=exp_cmd_sn, max_queued_cmnds=queued_cmnds)
    if target is not None:
        sess.scst_sess = scst_register_session(target.scst_tgt, False, initiator_name, sess)
        if sess.scst_sess is None:
            return -ENOMEM
    session_list.append(sess)
    pr_info(f"iscsi: session {tsih:#x} of {initiator_name} "
            f"{'discovery' if target is None else 'to ' + target.name} created")
    return sess


def iscsi_session_find(isid: bytes, tsih: int, initiator_name: str) -> iscsi_session | None:
    for s in session_list:
        if s.tsih == tsih and s.isid == isid and s.initiator_name == initiator_name:
            return s
    return None


def iscsi_max_cmd_sn(sess: iscsi_session) -> int:
    return (sess.exp_cmd_sn + sess.max_queued_cmnds - 1) & 0xFFFFFFFF


def iscsi_session_conn_gone(sess: iscsi_session, conn: "iscsi_conn") -> None:
    """conn has closed; free the session after its last connection."""
    if conn in sess.conn_list:
        sess.conn_list.remove(conn)
    if sess.conn_list:
        return
    if sess in session_list:
        session_list.remove(sess)
    if sess.scst_sess is not None:
        scst_unregister_session(sess.scst_sess, False)
        sess.scst_sess = None
    pr_info(f"iscsi: session {sess.tsih:#x} of {sess.initiator_name} freed")
