"""Invariant checkers for sim runs: on in every run, fed by the initiator.

Invariants is an Observer (tools/sim/initiator.py) of every session of a
scenario. It checks, from the raw PDUs and independently of the
initiator's own task bookkeeping:

  answered-once   every SCSI command is answered exactly once per ITT: by
                  a SCSI Response or a Data-In with status, or by an abort
                  (a completed TMF that covers it, a Reject, the loss of its
                  connection); a second answer, an answer for an ITT never
                  sent, and a command left unanswered at the end are
                  violations.
  sn-monotonic    on each connection, StatSN of status-bearing PDUs goes
                  up by one (serial arithmetic, RFC 1982), PDUs that only
                  carry StatSN never go back, and ExpCmdSN / MaxCmdSN never
                  go back (a MaxCmdSN below ExpCmdSN - 1 is ignored, as RFC
                  7143 11.2.2.2 says).
  read-data       data read back equals, block by block, a value the
                  block may hold: the data of the writes acknowledged last
                  before the read began (a write is superseded only by a
                  GOOD write issued after it ended), or any write in flight
                  while the read was (an aborted or failed write may or may
                  not have landed); zeros, the new disk's content, if no
                  GOOD write ended before the read began. With torn_blocks
                  (a real target on real files: tools/sim/tcp.py), a block
                  that more than one value may hold may also come back as
                  a byte mix of those values: Linux's buffered read does
                  not lock out a concurrent buffered write of the same
                  page, so a READ overlapping a WRITE in flight can see
                  part of each (as with SCST's and LIO's fileio). Bytes
                  from any other value still fail.
  teardown        (judged by tools/sim/runner.py after the target stops:
                  the sim engine's list of slab objects, kthreads, timers
                  and work items left behind and of lockdep, debugobjects
                  and other kernel reports must be empty)

A violation raises InvariantViolation("<name>: detail") at once, so the
run stops where it happened; violations also lists it.

Where it may be called from: the actors of one world (one thread).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from .initiator import Command, InitiatorConnection
from .pdu import (
    DATAIN_FLAG_STATUS,
    OP_ASYNC_MSG,
    OP_DATA_IN,
    OP_LOGIN_RSP,
    OP_LOGOUT_RSP,
    OP_NOP_IN,
    OP_R2T,
    OP_REJECT,
    OP_SCSI_RSP,
    OP_TASK_MGMT_RSP,
    OP_TEXT_RSP,
    RESERVED_TAG,
    Pdu,
    sn_add,
    sn_lt,
)

READ_OPS = {0x28: 10, 0x88: 16}      # opcode -> CDB size
WRITE_OPS = {0x2A: 10, 0x8A: 16}
# A block's history is pruned when a write finds this many entries in it
# (pruning never changes a verdict, only how many entries a check reads).
PRUNE_AT = 4
STATUS_OPS = {OP_SCSI_RSP, OP_TASK_MGMT_RSP, OP_LOGIN_RSP, OP_TEXT_RSP,
              OP_LOGOUT_RSP, OP_REJECT, OP_ASYNC_MSG}


class InvariantViolation(AssertionError):
    """A sim invariant broke; str() starts with the invariant's name."""

    @property
    def invariant(self) -> str:
        return str(self).split(":", 1)[0]


def decode_rw(cdb: bytes) -> tuple[bool, int, int] | None:
    """(is_write, lba, blocks) of a READ/WRITE 10 or 16 CDB, else None."""
    op = cdb[0]
    size = READ_OPS.get(op) or WRITE_OPS.get(op)
    if size == 10:
        lba, blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
    elif size == 16:
        lba, blocks = struct.unpack_from(">Q", cdb, 2)[0], struct.unpack_from(">I", cdb, 10)[0]
    else:
        return None
    return op in WRITE_OPS, lba, blocks


@dataclass(eq=False, slots=True)
class _Write:
    """One WRITE command's timing, shared by every block it wrote."""
    issued: int                      # logical clock ticks
    ended: int | None = None         # response or abort
    good: bool = False


# One block's history entry: the write and the block's bytes in it.
_Entry = tuple[_Write, bytes]


@dataclass(eq=False)
class _ConnSn:
    stat_sn: int | None = None       # last status StatSN
    carried: int | None = None       # highest StatSN seen on any PDU
    exp_cmd_sn: int | None = None
    max_cmd_sn: int | None = None


@dataclass(eq=False, slots=True)
class _Pending:
    cmd: Command
    issued: int
    rw: tuple[bool, int, int] | None


@dataclass(eq=False, slots=True)
class _Recs:
    """Where one WRITE command's block entries live."""
    disk: ShadowDisk
    lba: int
    blocks: int
    w: _Write


@dataclass(eq=False)
class ShadowDisk:
    """What each block of one LUN may hold (see read-data above)."""
    block_size: int
    writes: dict[int, list[_Entry]] = field(default_factory=dict)   # lba -> history

    def candidates(self, lba: int, read_issued: int, read_done: int) -> list[bytes]:
        hist = self.writes.get(lba, [])
        # The newest issue time of a GOOD write that ended before the read
        # began: any write that ended before it was overwritten.
        last = -1
        for g, _ in hist:
            if g.good and g.ended is not None and g.ended < read_issued and g.issued > last:
                last = g.issued
        out: list[bytes] = [] if last >= 0 else [bytes(self.block_size)]
        for w, data in hist:
            if w.issued <= read_done and (w.ended if w.ended is not None else read_done) >= last:
                out.append(data)
        return out

    def allows(self, lba: int, got: bytes, read_issued: int, read_done: int) -> bool:
        """got in candidates(lba, read_issued, read_done), without building
        the list (the check runs for every block read)."""
        hist = self.writes.get(lba)
        if hist is None:
            return got == bytes(self.block_size)
        last = -1
        for g, _ in hist:
            if g.good and g.ended is not None and g.ended < read_issued and g.issued > last:
                last = g.issued
        if last < 0 and got == bytes(self.block_size):
            return True
        for w, data in hist:
            if data == got and w.issued <= read_done \
                    and (w.ended if w.ended is not None else read_done) >= last:
                return True
        return False

    def prune(self, lba: int, horizon: int) -> None:
        """Forget writes no read issued at or after horizon can see."""
        hist = self.writes.get(lba)
        if hist is None or len(hist) < 2:
            return                       # a lone write is always still visible
        last = -1
        for g, _ in hist:
            e = g.ended
            if e is not None and g.good and e < horizon and g.issued > last:
                last = g.issued
        if last >= 0:
            keep = [x for x in hist if x[0].ended is None or x[0].ended >= last]
            if len(keep) != len(hist):
                hist[:] = keep


def _byte_mix(got: bytes, allowed: list[bytes]) -> bool:
    """Each byte of got is that byte of one of two or more allowed values:
    a block torn between writes that overlapped the read."""
    if len(allowed) < 2:
        return False
    return all(any(a[k] == b for a in allowed) for k, b in enumerate(got))


def _where(conn: InitiatorConnection, pdu: Pdu) -> str:
    """A PDU named in a violation (built only when one is reported)."""
    return f"CID {conn.cid} {pdu.name} ITT 0x{pdu.itt:08x}"


class Invariants:
    """The always-on checkers; see the module docstring."""

    def __init__(self, block_size: int = 512, torn_blocks: bool = False) -> None:
        self.block_size = block_size
        self.torn_blocks = torn_blocks      # see read-data above
        self.clock = 0
        self.violations: list[str] = []
        self.disks: dict[int, ShadowDisk] = {}
        self.commands = 0
        self.reads_checked = 0
        self._pending: dict[tuple[int, int], _Pending] = {}       # (session id, itt)
        self._answered: set[tuple[int, int]] = set()
        self._sn: dict[int, _ConnSn] = {}
        self._writes: dict[int, _Recs] = {}      # id(cmd) of a WRITE in flight
        self._limbo: list[_Write] = []       # writes of lost connections
        self.unchecked: set[tuple[int, int]] = set()   # (session id, itt): baseline reads

    def fail(self, name: str, detail: str) -> None:
        msg = f"{name}: {detail}"
        self.violations.append(msg)
        raise InvariantViolation(msg)

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def disk(self, lun: int) -> ShadowDisk:
        d = self.disks.get(lun)
        if d is None:
            d = self.disks[lun] = ShadowDisk(self.block_size)
        return d

    def baseline(self, lun: int, lba: int, data: bytes) -> None:
        """Blocks from lba hold data now, as read back by the scenario
        before any write of its own (a disk that is not new)."""
        disk = self.disk(lun)
        bs = self.block_size
        t = self._tick()
        w = _Write(t, t, True)
        for i in range(len(data) // bs):
            disk.writes.setdefault(lba + i, []).append((w, data[i * bs:(i + 1) * bs]))
        self._tick()

    def forget_lun(self, lun: int) -> None:
        """The LUN now maps a new device: its old history no longer applies.
        Commands in flight to it keep their own records."""
        self.disks.pop(lun, None)

    # -- Observer --

    def command_sent(self, conn: InitiatorConnection, cmd: Command) -> None:
        key = (id(conn.session), cmd.itt)
        if key in self._pending or key in self._answered:
            self.fail("answered-once", f"ITT 0x{cmd.itt:08x} used twice in one session")
        rw = decode_rw(cmd.cdb)
        self.commands += 1
        self._pending[key] = _Pending(cmd, self._tick(), rw)
        if rw is not None and rw[0] and cmd.data_out is not None:
            disk = self.disk(cmd.lun)
            _, lba, blocks = rw
            bs = self.block_size
            w = _Write(self.clock)
            data = cmd.data_out
            hists = disk.writes
            horizon = -1
            for i in range(blocks):
                hist = hists.get(lba + i)
                if hist is None:
                    hist = hists[lba + i] = []
                elif len(hist) >= PRUNE_AT:
                    if horizon < 0:
                        horizon = self._horizon()
                    disk.prune(lba + i, horizon)
                hist.append((w, data[i * bs:(i + 1) * bs]))
            self._writes[id(cmd)] = _Recs(disk, lba, blocks, w)

    def pdu_received(self, conn: InitiatorConnection, pdu: Pdu) -> None:
        op = pdu.opcode
        if op == OP_SCSI_RSP or (op == OP_DATA_IN and pdu.flags & DATAIN_FLAG_STATUS):
            key = (id(conn.session), pdu.itt)
            if key not in self._pending:
                again = "a second" if key in self._answered else "an"
                self.fail("answered-once", f"{again} answer for ITT 0x{pdu.itt:08x} "
                          f"({pdu.name}, StatSN {pdu.stat_sn}) on CID {conn.cid}")
        self._check_sn(conn, pdu)

    def command_done(self, conn: InitiatorConnection, cmd: Command) -> None:
        p = self._answer(conn, cmd, "response")
        end = self._tick()
        good = cmd.good
        recs = self._writes.pop(id(cmd), None)
        if recs is not None:
            recs.w.ended = end
            recs.w.good = good
        if p.rw is not None and not p.rw[0] and good \
                and (id(conn.session), cmd.itt) not in self.unchecked:
            self._check_read(cmd, p, end)

    def _horizon(self) -> int:
        """No read still to be checked was issued before this tick: reads
        in flight were issued at or after the oldest one, later reads after
        now."""
        return min((q.issued for q in self._pending.values()
                    if q.rw is not None and not q.rw[0]), default=self.clock)

    def command_aborted(self, conn: InitiatorConnection, cmd: Command) -> None:
        self._answer(conn, cmd, "abort")
        end = self._tick()
        recs = self._writes.pop(id(cmd), None)
        if recs is None:
            return
        if cmd.lost:
            # The target may still run it until it terminates the old
            # session's tasks (reinstatement, 6.3.5): in flight till then.
            self._limbo.append(recs.w)
            return
        recs.w.ended = end

    def settle_lost(self) -> None:
        """The target has terminated the tasks of lost connections (a
        reinstating login completed): their writes have ended now."""
        end = self._tick()
        for w in self._limbo:
            w.ended = end
        self._limbo.clear()

    def _answer(self, conn: InitiatorConnection, cmd: Command, how: str) -> _Pending:
        key = (id(conn.session), cmd.itt)
        p = self._pending.pop(key, None)
        if p is None:
            self.fail("answered-once", f"{how} for ITT 0x{cmd.itt:08x} that was "
                      f"{'already answered' if key in self._answered else 'never sent'}")
            raise AssertionError("unreachable")
        self._answered.add(key)
        return p

    def _check_read(self, cmd: Command, p: _Pending, done: int) -> None:
        _, lba, blocks = p.rw or (False, 0, 0)
        disk = self.disks.get(cmd.lun)
        bs = self.block_size
        data = bytes(cmd.data)
        if len(data) < blocks * bs:
            data = data.ljust(blocks * bs, b"\0")
        issued = p.issued
        for i in range(blocks):
            got = data[i * bs:(i + 1) * bs]
            if disk is not None and disk.allows(lba + i, got, issued, done):
                continue
            allowed = disk.candidates(lba + i, issued, done) if disk else [bytes(bs)]
            if got not in allowed and not (self.torn_blocks and _byte_mix(got, allowed)):
                self.fail("read-data", f"LUN {cmd.lun} LBA {lba + i} (READ ITT "
                          f"0x{cmd.itt:08x}) returned {got[:8].hex()}..., expected one of "
                          f"{[a[:8].hex() for a in allowed]}")
        self.reads_checked += 1

    def _check_sn(self, conn: InitiatorConnection, pdu: Pdu) -> None:
        st = self._sn.get(id(conn))
        if st is None:
            st = self._sn[id(conn)] = _ConnSn()
        op = pdu.opcode
        status = op in STATUS_OPS or (op == OP_DATA_IN and pdu.flags & DATAIN_FLAG_STATUS) \
            or (op == OP_NOP_IN and pdu.itt != RESERVED_TAG)
        if status:
            if st.stat_sn is not None and pdu.stat_sn != sn_add(st.stat_sn, 1) \
                    and op != OP_LOGIN_RSP:
                self.fail("sn-monotonic", f"{_where(conn, pdu)}: StatSN {pdu.stat_sn} after "
                          f"{st.stat_sn}")
            st.stat_sn = pdu.stat_sn
            st.carried = sn_add(pdu.stat_sn, 1)
        elif op in (OP_R2T, OP_NOP_IN):
            if st.carried is not None and sn_lt(pdu.stat_sn, st.carried):
                self.fail("sn-monotonic", f"{_where(conn, pdu)}: StatSN {pdu.stat_sn} went back "
                          f"from {st.carried}")
        if op == OP_DATA_IN and not pdu.flags & DATAIN_FLAG_STATUS:
            return
        exp, mx = pdu.exp_cmd_sn, pdu.max_cmd_sn
        if sn_lt(mx, sn_add(exp, -1)):
            return
        if st.exp_cmd_sn is not None and sn_lt(exp, st.exp_cmd_sn):
            self.fail("sn-monotonic", f"{_where(conn, pdu)}: ExpCmdSN {exp} after {st.exp_cmd_sn}")
        if st.max_cmd_sn is not None and sn_lt(mx, st.max_cmd_sn):
            self.fail("sn-monotonic", f"{_where(conn, pdu)}: MaxCmdSN {mx} after {st.max_cmd_sn}")
        st.exp_cmd_sn, st.max_cmd_sn = exp, mx

    # -- end of run --

    def finish(self) -> None:
        """Every command sent was answered (call once every actor ended)."""
        if self._pending:
            itts = sorted(f"0x{itt:08x}" for _, itt in self._pending)
            self.fail("answered-once", f"{len(itts)} command(s) never answered: "
                      f"{', '.join(itts[:8])}")

