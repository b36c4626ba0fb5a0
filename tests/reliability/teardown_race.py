"""Teardown races (issue 16 campaign 6.4): connections dropped, reset,
logged out or aborted at random points while I/O is in flight, against one
uscstd --debug; afterwards no slab-debug report and every kmem cache's
active count back to its baseline (no leaked command).

Each iteration (drawn from one seeded random.Random, so a failing run
replays): log in (InitialR2T Yes or No), submit 1-8 commands without
waiting (READ(10), WRITE(10) of up to 128 KiB, TEST UNIT READY), wait a
random 0-3 ms, then end in one of five ways:
  drop     close the socket (FIN);
  reset    SO_LINGER 0 and close (RST);
  partial  send part of a WRITE's PDU (BHS and some of its data), then RST;
  logout   send a Logout Request without waiting, close 0-2 ms later;
  abort    send ABORT TASK for a submitted task (and maybe LUN RESET),
           then log out or drop.
Every check_every iterations and at the end it waits (bounded) until the
target has no session, then compares /proc slabinfo's active objects with
the baseline and scans the daemon's log for reports.

Run as a campaign (bounded by --iterations and --max-seconds):
  python tests/reliability/teardown_race.py --iterations 10000 --seed 1604
Test code (it uses tests/initiator.py and ctl_support.py); the CI test is
tests/reliability/test_teardown_races.py.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import socket
import struct
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from ctl_support import Daemon, RawCtl  # noqa: E402
from initiator import (TMF_ABORT_TASK, TMF_LUN_RESET, Initiator, InitiatorError,  # noqa: E402
                       pack_logout_req, pack_scsi_cmd, pack_task_mgmt_req)

IQN = "iqn.2026-11.org.uscst:default"
SESSIONS = f"/kernel/scst_tgt/targets/iscsi/{IQN}/sessions"
REPORT_RE = re.compile(r"BUG:|Oops|WARNING:|use.after.free|[Pp]oison|double free|leak|"
                       r"Traceback|ODEBUG")
ENDINGS = ("drop", "reset", "partial", "logout", "abort")


def slab_active(ctl: RawCtl) -> dict[str, int]:
    text = ctl.call("proc", name="slabinfo")["value"]
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def wait_no_sessions(ctl: RawCtl, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    # Bounded by the deadline; polls every 20 ms.
    while time.monotonic() < deadline:
        r = ctl.call("ls", path=SESSIONS)
        if r["ok"] and not [e for e in r["entries"] if e["kind"] == "dir"]:
            return True
        time.sleep(0.02)
    return False


def _rst(ini: Initiator) -> None:
    if ini.sock is not None:
        ini.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ini.close()


def one_iteration(port: int, rng: random.Random, counts: dict[str, int],
                  endings: tuple[str, ...] = ENDINGS) -> None:
    ini = Initiator(port=port, timeout=10.0, strict=False)
    try:
        ini.connect()
        ini.login(IQN, keys={"InitialR2T": rng.choice(("Yes", "No")),
                             "ImmediateData": rng.choice(("Yes", "No"))})
        itts = []
        for _ in range(rng.randint(1, 8)):
            kind = rng.randrange(3)
            lba = rng.randrange(0, 30000)
            blocks = rng.randint(1, 256)
            if kind == 0:
                cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
                itts.append(ini.submit(cdb, read_len=blocks * 512))
            elif kind == 1:
                cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)
                itts.append(ini.submit(cdb, data_out=bytes([lba & 0xFF]) * (blocks * 512)))
            else:
                itts.append(ini.submit(bytes(6)))
        time.sleep(rng.random() * 0.003)
        ending = rng.choice(endings)
        counts[ending] += 1
        if ending == "drop":
            ini.close()
        elif ending == "reset":
            _rst(ini)
        elif ending == "partial":
            data = bytes(4096)
            bhs = pack_scsi_cmd(itt=0x7000 + rng.randrange(256), cmd_sn=ini.cmd_sn,
                                exp_stat_sn=ini.exp_stat_sn,
                                cdb=struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 8, 0), edtl=4096,
                                lun=0, read=False, write=True, final=True, dsl=len(data))
            ini.send_raw((bhs + data)[:rng.randint(1, 48 + len(data) - 1)])
            _rst(ini)
        elif ending == "logout":
            ini.send_pdu(pack_logout_req(itt=ini._alloc_itt(), cmd_sn=ini.cmd_sn,
                                         exp_stat_sn=ini.exp_stat_sn))
            time.sleep(rng.random() * 0.002)
            ini.close()
        else:
            ref = rng.choice(itts)
            ini.send_pdu(pack_task_mgmt_req(itt=ini._alloc_itt(), function=TMF_ABORT_TASK,
                                            cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
                                            ref_itt=ref, ref_cmd_sn=ini.tasks[ref].cmd_sn))
            if rng.random() < 0.3:
                ini.send_pdu(pack_task_mgmt_req(itt=ini._alloc_itt(), function=TMF_LUN_RESET,
                                                cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn))
            time.sleep(rng.random() * 0.002)
            if rng.random() < 0.5:
                ini.send_pdu(pack_logout_req(itt=ini._alloc_itt(), cmd_sn=ini.cmd_sn,
                                             exp_stat_sn=ini.exp_stat_sn))
            ini.close()
    except (InitiatorError, OSError, TimeoutError):
        counts["client_errors"] += 1      # the target may close first: part of the race
    finally:
        ini.close()


def run(workdir: Path, iterations: int, seed: int, check_every: int = 500,
        max_seconds: float = 3600.0, endings: tuple[str, ...] = ENDINGS) -> dict:
    """Run the campaign against a fresh uscstd --debug; return the figures."""
    d = Daemon(workdir, "--disk", str(workdir / "disk.img"), "--size", "16M")
    counts = {e: 0 for e in ENDINGS} | {"client_errors": 0}
    result: dict = {"seed": seed, "iterations": 0, "checks": 0, "leaks": [], "stuck": 0}
    t0 = time.monotonic()
    try:
        d.wait_ready()
        with RawCtl(d.ctl) as ctl:
            base = slab_active(ctl)
            rng = random.Random(seed)
            for i in range(1, iterations + 1):
                if time.monotonic() - t0 > max_seconds or d.proc.poll() is not None:
                    break
                one_iteration(d.port, rng, counts, endings)
                result["iterations"] = i
                if i % check_every == 0 or i == iterations:
                    result["checks"] += 1
                    if not wait_no_sessions(ctl):
                        result["stuck"] += 1
                    now = slab_active(ctl)
                    diff = {k: now.get(k, 0) - v for k, v in base.items() if now.get(k, 0) != v}
                    diff |= {k: v for k, v in now.items() if k not in base and v}
                    if diff:
                        result["leaks"].append({"after": i, "active_minus_baseline": diff})
            result["slab_final"] = slab_active(ctl)
            result["slab_baseline"] = base
        result["alive"] = d.proc.poll() is None
    finally:
        result["exit_status"] = d.stop()
        result["reports"] = [ln for ln in d.output().splitlines() if REPORT_RE.search(ln)][:50]
        result["seconds"] = round(time.monotonic() - t0, 1)
        result["endings"] = counts
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1604)
    p.add_argument("--check-every", type=int, default=500)
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--endings", default=",".join(ENDINGS), help="comma-separated subset")
    a = p.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory(prefix="uscst-teardown-") as tmp:
        r = run(Path(a.workdir or tmp), a.iterations, a.seed, a.check_every, a.max_seconds,
                tuple(a.endings.split(",")))
    print(json.dumps(r, indent=1))
    ok = r["alive"] and r["exit_status"] == 0 and not r["leaks"] and not r["reports"] \
        and not r["stuck"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
