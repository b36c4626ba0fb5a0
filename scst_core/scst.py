"""SCST's public API: structures shared by the core, target drivers and
dev handlers, and the state/context/direction constants.

Twin of scst/include/scst.h.

Contexts: data definitions only; each function's context is documented
where it is defined (scst_core.main, scst_core.targ, scst_core.lib).

Differs from SCST: structures are attrs classes holding only the fields
uscst uses; callbacks in templates are Python callables (None where a
template does not provide one). Registration of sessions is synchronous
(SCST's result_fn is called before scst_register_session returns).
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim.filemap import file_extent
from kshim.list import list_head
from kshim.module import module
from kshim.mutex import mutex
from kshim.spinlock import spinlock_t
from kshim.wait import wait_queue_head

# Command states (scst.h: SCST_CMD_STATE_*), in processing order.
SCST_CMD_STATE_DEFAULT = 0
SCST_CMD_STATE_INIT = 1
SCST_CMD_STATE_PARSE = 2
SCST_CMD_STATE_PREPARE_SPACE = 3
SCST_CMD_STATE_PREPROCESSING_DONE = 4
SCST_CMD_STATE_RDY_TO_XFER = 5
SCST_CMD_STATE_TGT_PRE_EXEC = 6
SCST_CMD_STATE_EXEC_CHECK_SN = 7
SCST_CMD_STATE_LOCAL_EXEC = 8
SCST_CMD_STATE_REAL_EXEC = 9
SCST_CMD_STATE_EXEC_WAIT = 10
SCST_CMD_STATE_DEV_DONE = 11
SCST_CMD_STATE_PRE_XMIT_RESP = 12
SCST_CMD_STATE_XMIT_RESP = 13
SCST_CMD_STATE_XMIT_WAIT = 14
SCST_CMD_STATE_FINISHED = 15
SCST_CMD_STATE_DATA_WAIT = 16

SCST_CMD_STATE_NAMES = {v: k[len("SCST_CMD_STATE_"):] for k, v in list(globals().items())
                        if k.startswith("SCST_CMD_STATE_") and isinstance(v, int)}

# Processing contexts (scst.h: enum scst_exec_context)
SCST_CONTEXT_DIRECT = 0
SCST_CONTEXT_DIRECT_ATOMIC = 1
SCST_CONTEXT_TASKLET = 2
SCST_CONTEXT_THREAD = 3
SCST_CONTEXT_SAME = 4

# Data directions
SCST_DATA_UNKNOWN = 0
SCST_DATA_WRITE = 1
SCST_DATA_READ = 2
SCST_DATA_BIDI = SCST_DATA_WRITE | SCST_DATA_READ
SCST_DATA_NONE = 4

# dev handler exec() results
SCST_EXEC_COMPLETED = 0
SCST_EXEC_NOT_COMPLETED = 1

# target driver xmit_response()/rdy_to_xfer() results
SCST_TGT_RES_SUCCESS = 0
SCST_TGT_RES_QUEUE_FULL = -1
SCST_TGT_RES_NEED_THREAD_CTX = -2
SCST_TGT_RES_FATAL_ERROR = -3

# scst_rx_data() statuses
SCST_RX_STATUS_SUCCESS = 0
SCST_RX_STATUS_ERROR = 1
SCST_RX_STATUS_ERROR_SENSE_SET = 2
SCST_RX_STATUS_ERROR_FATAL = 3

# cdbprobe op_flags (scst.h: enum scst_cdb_flags)
SCST_TRANSFER_LEN_TYPE_FIXED = 0x0001
SCST_SMALL_TIMEOUT = 0x0002
SCST_LONG_TIMEOUT = 0x0004
SCST_UNKNOWN_LENGTH = 0x0008
SCST_INFO_VALID = 0x0010
SCST_IMPLICIT_HQ = 0x0020
SCST_SKIP_UA = 0x0040
SCST_WRITE_MEDIUM = 0x0080
SCST_LOCAL_CMD = 0x0100
SCST_FULLY_LOCAL_CMD = 0x0200
SCST_REG_RESERVE_ALLOWED = 0x0400
SCST_WRITE_EXCL_ALLOWED = 0x0800
SCST_EXCL_ACCESS_ALLOWED = 0x1000
SCST_SERIALIZED = 0x2000
SCST_STRICTLY_SERIALIZED = 0x4000
SCST_CAN_GEN_3PARTY_COMMANDS = 0x8000
SCST_DESCRIPTOR_SENSE = 0x10000

SCST_MAX_CDB_SIZE = 32
SCST_DEFAULT_DEV_THREADS = 8

# Control mode page (SPC-4 7.5.8) task set type and queue error management
SCST_TST_0_SINGLE_TASK_SET = 0          # one task set for every I_T nexus
SCST_TST_1_SEP_TASK_SETS = 1            # a task set per I_T nexus
SCST_QERR_0_ALL_RESUME = 0              # a CHECK CONDITION leaves other tasks alone
SCST_QERR_1_ABORT_ALL = 1               # ... aborts every other task in the task set
SCST_QERR_3_ABORT_THIS_NEXUS_ONLY = 3   # ... aborts the other tasks of its I_T nexus


@attrs.define(slots=True, eq=False)
class scst_tgt_template:
    """What a target driver gives the core (iscsi_scst registers one)."""
    name: str
    sg_tablesize: int = 0
    threads_num: int = 0
    # Called in the context the core has; must not sleep unless the driver
    # said so: send the response (and data) and later call scst_tgt_cmd_done.
    xmit_response: Callable[["scst_cmd"], int] | None = None
    # Receive the WRITE data, then call scst_rx_data.
    rdy_to_xfer: Callable[["scst_cmd"], int] | None = None
    on_free_cmd: Callable[["scst_cmd"], None] | None = None
    # A command waiting for its data (RDY_TO_XFER) is aborted: stop the transfer.
    on_abort_cmd: Callable[["scst_cmd"], None] | None = None
    task_mgmt_fn_done: Callable[["scst_mgmt_cmd"], None] | None = None
    # Asynchronous event notification: a new unit attention's sense data for
    # one I_T_L nexus, sent to the initiator now (iSCSI: an Async Message).
    report_aen: Callable[["scst_tgt_dev", bytes], None] | None = None
    release: Callable[["scst_tgt"], int] | None = None
    get_initiator_port_transport_id: Callable[["scst_tgt", "scst_session | None"], bytes] | None = None
    # the module implementing the driver: each target holds a reference
    owner: module | None = None
    tgt_list: list = attrs.field(factory=list)


@attrs.define(slots=True, eq=False)
class scst_dev_type:
    """What a dev handler gives the core (vdisk registers several)."""
    name: str
    type: int
    parse: Callable[["scst_cmd"], int] | None = None
    exec: Callable[["scst_cmd"], int] | None = None
    dev_done: Callable[["scst_cmd"], int] | None = None
    attach: Callable[["scst_device"], int] | None = None
    detach: Callable[["scst_device"], None] | None = None
    attach_tgt: Callable[["scst_tgt_dev"], int] | None = None
    detach_tgt: Callable[["scst_tgt_dev"], None] | None = None
    # threads per device; 0: scst_core.main's scst_threads module parameter
    threads_num: int = SCST_DEFAULT_DEV_THREADS
    # uscst: exec() never sleeps, so the core may call it in any context.
    exec_atomic: bool = False
    # uscst: a non-sleeping attempt at exec, for any context: True if it
    # completed the command (scst_cmd_done called), False to go to a thread.
    exec_nowait: Callable[["scst_cmd"], bool] | None = None
    # uscst: read_fast(dev, lba, buf) fills buf from lba on without
    # sleeping, in any context, and returns True, or returns False having
    # changed nothing the full path would see (scst_core.fastpath)
    read_fast: Callable[["scst_device", int, memoryview], bool] | None = None
    # uscst: start_fast(dev, lba, buf, done, priv) starts reading into buf
    # from lba without sleeping, in any context, and returns True;
    # done(priv, sense) then runs in softirq context, sense b"" for GOOD.
    # False: it started nothing (scst_core.fastpath's READ where read_fast
    # declines)
    start_fast: Callable[["scst_device", int, memoryview,
                          Callable[[Any, bytes], None], Any], bool] | None = None
    # uscst: start_fast_list(dev, items, done) starts writing, in order,
    # the longest run it can of items, each (lba, buf, fua, priv), without
    # sleeping, in any context, and returns how many it started; each
    # started one's done(priv, sense) runs in softirq context
    # (scst_core.fastpath's WRITEs)
    start_fast_list: Callable[["scst_device", list, Callable[[Any, bytes], None]],
                              int] | None = None
    # management: add_device(name, params) -> 0/-errno; del_device(name)
    add_device: Callable[[str, dict], int] | None = None
    del_device: Callable[[str], int] | None = None
    add_device_parameters: tuple[str, ...] = ()
    # the module implementing the handler: each LUN of its devices holds a reference
    owner: module | None = None
    dev_list: list = attrs.field(factory=list)


@attrs.define(slots=True, eq=False)
class scst_cmd_threads:
    """A pool of kthreads processing commands that need a sleepable context."""
    name: str
    # protected by cmd_list_lock
    cmd_list_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("cmd_list_lock"))
    active_cmd_list: list_head = attrs.field(factory=list_head)
    cmd_list_waitQ: wait_queue_head = attrs.field(factory=lambda: wait_queue_head("cmd_list_waitQ"))
    threads: list = attrs.field(factory=list)


@attrs.define(slots=True, eq=False)
class scst_device:
    type: int
    handler: scst_dev_type
    virt_name: str
    virt_id: int = 0
    dh_priv: Any = None
    block_shift: int = 9
    block_size: int = 512
    rd_only: bool = False
    # SPC-4 device-wide mode parameters the core acts on
    tst: int = SCST_TST_0_SINGLE_TASK_SET
    queue_alg: int = 1
    qerr: int = SCST_QERR_0_ALL_RESUME
    swp: bool = False
    tas: bool = False
    d_sense: bool = False
    cmd_threads: scst_cmd_threads | None = None
    # shared with other nodes through scst_core.cluster (SCST's
    # dev->cluster_mode); set by the handler, task context
    cluster_mode: bool = False
    # protected by scst_mutex
    dev_tgt_dev_list: list = attrs.field(factory=list)
    dev_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("dev_lock"))
    # task ordering (SAM-5 8.6; scst_targ.c's SN handling) over the
    # device's commands, within each nexus if tst says separate task sets:
    # touched on the command path, one CPU
    sn_next: int = 0                # arrival number of the next command
    ordered_pending: int = 0        # ORDERED commands not yet finished
    deferred_cmds: list = attrs.field(factory=list)   # held back at exec, in order
    dev_cmd_count: int = 0          # commands in the task set(s), INIT done to freed
    # predicted commands (scst_core.fastpath) started and not yet done,
    # and the task management functions waiting for them to be: one CPU
    fast_cmds: int = 0
    fast_waiters: list = attrs.field(factory=list)
    # statistics
    cmd_count: int = 0


@attrs.define(slots=True, eq=False)
class scst_acg_dev:
    dev: scst_device
    lun: int
    acg: "scst_acg"
    rd_only: bool = False


@attrs.define(slots=True, eq=False)
class scst_acg:
    """An access control group: initiator names -> LUN map."""
    tgt: "scst_tgt | None"
    acg_name: str
    # protected by scst_mutex
    acg_dev_list: dict = attrs.field(factory=dict)        # lun -> scst_acg_dev
    acn_list: list = attrs.field(factory=list)            # initiator name patterns
    acg_sess_list: list = attrs.field(factory=list)
    # the group's sysfs attributes (SCST's acg fields); protected by scst_mutex
    addr_method: str = "PERIPHERAL"
    acg_io_grouping_type: str = "auto"
    acg_cpu_mask: int = 1                                 # one emulated CPU
    acg_black_hole_type: int = 0


@attrs.define(slots=True, eq=False)
class scst_tgt:
    tgtt: scst_tgt_template
    tgt_name: str
    tgt_priv: Any = None
    rel_tgt_id: int = 1
    enabled: bool = True
    default_acg: scst_acg | None = None
    tgt_acg_list: list = attrs.field(factory=list)
    sess_list: list = attrs.field(factory=list)
    # I/O of its ended sessions (scst_sess_free_final adds each one's in)
    closed_reads: int = 0
    closed_writes: int = 0
    closed_read_bytes: int = 0
    closed_write_bytes: int = 0


@attrs.define(slots=True, eq=False)
class scst_tgt_dev:
    """A device as seen by one session (I_T_L nexus)."""
    dev: scst_device
    sess: "scst_session"
    lun: int
    acg_dev: scst_acg_dev
    rd_only: bool = False
    dh_priv: Any = None
    # protected by dev.dev_lock
    tgt_dev_cmd_count: int = 0
    UA_list: list = attrs.field(factory=list)
    # I/O counters of this I_T_L nexus (the metrics endpoint): changed only
    # in the command's DEV_DONE state, on the one CPU
    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0


@attrs.define(slots=True, eq=False)
class scst_session:
    tgt: scst_tgt
    initiator_name: str
    tgt_priv: Any = None
    acg: scst_acg | None = None
    # protected by scst_mutex; read locklessly on the command path
    sess_tgt_dev_list: dict = attrs.field(factory=dict)    # lun -> scst_tgt_dev
    sess_cmd_list: list_head = attrs.field(factory=list_head)
    sess_list_lock: spinlock_t = attrs.field(factory=lambda: spinlock_t("sess_list_lock"))
    shut_phase: int = 0
    unreg_done_fn: Callable[["scst_session"], None] | None = None
    cmd_count: int = 0
    # I/O of the commands that had no LUN and of the LUNs gone (their
    # tgt_devs' counters are added in when they are freed): each command
    # counts once, in its tgt_dev or here; scst_sess_io_stats gives the
    # session's totals. Changed only in DEV_DONE and scst_free_tgt_dev.
    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    # error and task-management counters (the metrics endpoint), touched on
    # the response and TMF paths only: (lun, status, sense key) -> n, TMF fn -> n
    sense_errors: dict = attrs.field(factory=dict)
    tmf_count: dict = attrs.field(factory=dict)


@attrs.define(slots=True, eq=False)
class scst_cmd:
    sess: scst_session
    tgt: scst_tgt
    tgtt: scst_tgt_template
    cdb: bytes
    lun: int = 0
    # set by the target driver before scst_cmd_init_done
    tag: int = 0
    queue_type: int = 1
    expected_data_direction: int = SCST_DATA_NONE
    expected_transfer_len: int = 0
    tgt_i_priv: Any = None          # the driver's command (iscsi_cmnd)
    # set by the core and the dev handler
    state: int = SCST_CMD_STATE_INIT
    dev: scst_device | None = None
    tgt_dev: scst_tgt_dev | None = None
    op_name: str = ""
    op_flags: int = 0
    data_direction: int = SCST_DATA_NONE
    bufflen: int = 0                # transfer length the CDB asks for, bytes
    data_len: int = 0               # data the device works on, bytes
    lba: int = 0
    resp_data_len: int = 0          # Data-In actually produced
    # the target driver can send the Data-In from a file's page cache
    # (iscsi: no DataDigest); set before scst_cmd_init_done
    sendfile_ok: bool = False
    # the dev handler left the Data-In in its backing file instead of sg:
    # its range, resp_data_len bytes (only when sendfile_ok; decision
    # 0067); set in exec, read at xmit_response
    data_file: file_extent | None = None
    write_len: int = 0              # Data-Out the initiator sends
    sg: list = attrs.field(factory=list)
    sg_one: list = attrs.field(factory=list)    # reused vector for one-entry buffers
    sg_cnt: int = 0
    sg_pages: list = attrs.field(factory=list)
    status: int = 0
    sense: bytearray | None = None
    sense_valid_len: int = 0
    dh_priv: Any = None
    scst_cmd_done: Callable[["scst_cmd", int, int], None] | None = None
    cmd_list_entry: list_head = attrs.field(default=None)
    sess_cmd_list_entry: list_head = attrs.field(default=None)
    mcmd: Any = None                # the task management function aborting it
    sn: int = 0                     # arrival order on its device
    completed: bool = False
    exec_sync: bool = False         # the handler's exec() is still on the stack
    fault_checked: bool = False     # fail_scsi_cmd has looked at it (once per command)
    aborted: bool = False
    # aborted by another I_T nexus with TAS=1: answered with TASK ABORTED
    # (valid only while aborted is set)
    device_tas: bool = False
    data_buf_alloced: bool = False
    atomic: bool = False

    def __attrs_post_init__(self) -> None:
        self.cmd_list_entry = list_head(self)
        self.sess_cmd_list_entry = list_head(self)


@attrs.define(slots=True, eq=False)
class scst_mgmt_cmd:
    """A task management function in progress (SAM-5 7)."""
    sess: scst_session
    fn: int
    lun: int = 0
    tag: int = 0
    status: int = 0
    tgt_priv: Any = None
    # commands it aborted that have not been freed yet; the response waits
    cmd_wait_count: int = 0
    done: bool = False


scst_mutex = mutex("scst_mutex")
