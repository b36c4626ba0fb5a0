"""Stress of the task set with task management, end to end: two sessions
on one LUN pipeline READs and WRITEs (SIMPLE, ORDERED and HEAD OF QUEUE;
WRITEs with immediate data or waiting for R2T) while either of them sends
ABORT TASK, ABORT TASK SET, CLEAR TASK SET or LOGICAL UNIT RESET.

With TAS=1 (set first by MODE SELECT) every task is answered: with its
status, with TASK ABORTED when the other nexus's TMF aborted it, or, when
its own nexus aborted it, by the TMF response that speaks for it. The
property: nothing stays unanswered within the bound, every TMF gets a
response, and the log stays free of Traceback, BUG:, Oops and WARNING:.

Bounded: ROUNDS rounds of at most 10 commands from a fixed seed, each
round answered within ROUND_S seconds.
"""
from __future__ import annotations

import random
import struct
import time

from initiator import (ATTR_HEAD_OF_QUEUE, ATTR_ORDERED, ATTR_SIMPLE, TMF_ABORT_TASK,
                       TMF_ABORT_TASK_SET, TMF_CLEAR_TASK_SET, TMF_LUN_RESET, Initiator,
                       TaskAborted)

SEED = 20261125
ROUNDS = 300
ROUND_S = 20.0
TIMEOUT = 10.0
GOOD, CHECK_CONDITION, TASK_ABORTED = 0x00, 0x02, 0x40


def _login(srv, name: str) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT, initiator_name=name)
    ini.connect()
    ini.login(srv.iqn)
    _clear_uas(ini)
    return ini


def _clear_uas(ini: Initiator) -> None:
    for _ in range(4):                       # resets leave a UA or two
        if ini.test_unit_ready().status == GOOD:
            return


def _set_tas(ini: Initiator) -> None:
    page = bytearray(ini.scsi(bytes((0x1A, 0x08, 0x0A, 0, 255, 0)), read_len=255)
                     .check().data[4:16])
    page[0] &= 0x7F
    page[5] |= 0x40                          # TAS
    ini.scsi(bytes((0x15, 0x10, 0, 0, 16, 0)), data_out=bytes(4) + bytes(page)).check()


def _submit(rng: random.Random, ini: Initiator) -> int:
    attr = rng.choice((ATTR_SIMPLE, ATTR_SIMPLE, ATTR_ORDERED, ATTR_HEAD_OF_QUEUE))
    lba, n = rng.randrange(30000), rng.choice((1, 8, 64))
    if rng.random() < 0.5:
        return ini.submit(struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0),
                          data_out=rng.randbytes(n * 512), attr=attr,
                          immediate=rng.random() < 0.5)
    return ini.submit(struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0), read_len=n * 512, attr=attr)


def test_every_task_is_answered_under_pipelined_io_and_task_management(uscstd) -> None:
    srv = uscstd(size="16M")
    a, b = _login(srv, "iqn.2026-11.test:stress-a"), _login(srv, "iqn.2026-11.test:stress-b")
    _set_tas(a)
    rng = random.Random(SEED)
    seen = {"status": set(), "tmf": 0, "own_aborts": 0}
    for rnd in range(ROUNDS):
        out = []
        for _ in range(rng.randint(1, 10)):
            ini = rng.choice((a, b))
            out.append((ini, _submit(rng, ini)))
        if rng.random() < 0.35:
            ini = rng.choice((a, b))
            fn = rng.choice((TMF_ABORT_TASK, TMF_ABORT_TASK_SET, TMF_CLEAR_TASK_SET,
                             TMF_LUN_RESET))
            mine = [itt for i, itt in out if i is ini]
            ini.task_mgmt(fn, ref_itt=rng.choice(mine) if mine else 0xFFFFFFFF, timeout=TIMEOUT)
            seen["tmf"] += 1
        # Pump both sessions in turn: a task of one may wait (ORDERED) for
        # a WRITE of the other whose R2T only that session answers.
        pending = list(out)
        deadline = time.monotonic() + ROUND_S
        while pending:
            assert time.monotonic() < deadline, \
                f"seed {SEED} round {rnd}: {len(pending)} tasks unanswered"
            ini, itt = pending.pop(0)
            try:
                seen["status"].add(ini.wait(itt, 0.02).status)
            except TaskAborted:
                seen["own_aborts"] += 1
            except TimeoutError:
                pending.append((ini, itt))
        _clear_uas(a)
        _clear_uas(b)
    # The run did reach the cases it is about.
    assert seen["tmf"] > 50 and seen["own_aborts"] > 0, seen
    assert {GOOD, TASK_ABORTED} <= seen["status"] <= {GOOD, CHECK_CONDITION, TASK_ABORTED}, seen
    for ini in (a, b):
        ini.logout()
        ini.close()
    srv.assert_healthy()
