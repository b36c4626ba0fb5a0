"""The fault campaign of issue 16 (items 6.1 and 6.2), bounded in time.

    python -m tools.fault_campaign soak [--tests ALL.Read10,ALL.Write10] [--rounds 3]
    python -m tools.fault_campaign enumerate [--max-sites 400]

soak (6.1): one uscstd --debug with `--fault failslab:probability=2,times=-1
--fault fail_sock_recv:probability=1,times=-1` on a 64 MiB file LUN while
libiscsi's iscsi-test-cu runs the chosen suites. Then the faults are
switched off through debugfs and the target must: still run, answer
iscsi-inq, show the faults it injected (debug/*/injected), have no live
scst_cmd or iscsi_cmnd (slab counts back to the baseline of 0), and have
logged no BUG, WARNING, lockdep report, Oops or traceback.

enumerate (6.2): the scenario login + WRITE (512 KiB, so R2Ts) + READ +
ABORT TASK + logout runs once to record every injection site it reaches
(debug/fault-inject/enumerate = record), then once per site with that site
failed the first time it is reached. After each run: the server lives, a
fresh login and TEST UNIT READY work, no command object is live, the log
has no new report. Sites found only on error paths join the list.

Both print a Markdown summary (the figures docs/reliability.md keeps) and
exit 1 if a check failed. The scenario drives tools/sim's sans-IO initiator
(tools/sim/initiator.py, through tools/sim/channel.py's Channel) over a
blocking loopback socket. Loopback only; every wait is bounded.
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.sim.channel import Channel, ChannelError
from tools.sim.initiator import InitiatorSession, ProtocolViolation
from tools.sim.pdu import TMF_ABORT_TASK
from tools.uscstadmin import Ctl, Failed

REPO = Path(__file__).resolve().parent.parent

IQN = "iqn.2026-11.org.uscst:campaign"
INITIATOR = "iqn.2026-11.org.uscst:campaign-ini"
BAD_RE = re.compile(r"Traceback|BUG:|Oops|WARNING:|Kernel panic|possible circular|"
                    r"inconsistent lock state|lockdep")
STEP_TIMEOUT = 10.0
CLEANUP_WAIT = 15.0
ISID = bytes([0x80, 0x16, 0, 0, 0, 1])
# how a scenario step can fail: the target closed or refused, the stream
# broke the protocol, the socket failed or a step outlived STEP_TIMEOUT
STEP_ERRORS = (ChannelError, ProtocolViolation, OSError)


class _SocketPeer:
    """A blocking loopback socket as a Channel's peer; each receive waits
    STEP_TIMEOUT at most (TimeoutError, an OSError)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def close(self) -> None:
        self.sock.close()


def _channel(port: int) -> Channel:
    """A new session's leading connection, logged in (ChannelError if refused)."""
    sess = InitiatorSession(IQN, isid=ISID, initiator_name=INITIATOR)
    ch = Channel(sess.connection(0), _SocketPeer(port))
    try:
        ch.login()
    except BaseException:
        ch.peer.close()
        raise
    return ch


class Target:
    """One uscstd --debug on a free loopback port, with a control socket."""

    def __init__(self, workdir: Path, faults: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.ctl_path = str(workdir / "ctl.sock")
        self.err = workdir / "uscstd.err"
        argv = [sys.executable, "-m", "tools.uscstd", "--portal", f"127.0.0.1:{self.port}",
                "--disk", str(workdir / "disk.img"), "--size", "64M", "--iqn", IQN, "--debug",
                "--control", self.ctl_path, "--log-level", "warning"]
        for f in faults:
            argv += ["--fault", f]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.err, "wb"))
        deadline = time.monotonic() + 30
        while True:                 # until the control socket answers
            try:
                Ctl(self.ctl_path).call("ping")
                break
            except Failed:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"uscstd did not start:\n{self.err.read_text()[-2000:]}") from None
                time.sleep(0.1)
        self.url = f"iscsi://127.0.0.1:{self.port}/{IQN}/0"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ctl(self) -> Ctl:
        """A fresh control connection (the daemon drops idle ones)."""
        return Ctl(self.ctl_path)

    def read(self, rel: str) -> str:
        return self.ctl().read(rel).strip()

    def write(self, rel: str, value: str) -> None:
        self.ctl().write(rel, value)

    def live_commands(self) -> dict[str, int]:
        text = self.ctl().call("proc", name="slabinfo")["value"]
        out = {}
        for cache in ("scst_cmd", "iscsi_cmnd"):
            m = re.search(rf"^{cache}\s+(\d+)", text, re.M)
            out[cache] = int(m.group(1)) if m else -1
        return out

    def wait_commands_freed(self) -> dict[str, int]:
        deadline = time.monotonic() + CLEANUP_WAIT
        live = self.live_commands()
        while any(live.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
            live = self.live_commands()
        return live

    def bad_lines(self) -> list[str]:
        return [ln for ln in self.err.read_text(errors="replace").splitlines() if BAD_RE.search(ln)]

    def stop(self) -> int:
        if self.alive():
            self.proc.terminate()
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        return self.proc.returncode


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        return -1, f"timed out after {timeout:.0f} s\n{out or ''}"


# -- 6.1 -----------------------------------------------------------------------------

def _suite_tests(pattern: str) -> list[str]:
    """The leaf tests of iscsi-test-cu whose names start with one of the
    comma-separated prefixes."""
    _rc, out = _run(["iscsi-test-cu", "-l"], 30)
    names = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("ALL.")]
    leaves = [n for n in names if not any(m.startswith(n + ".") for m in names)]
    prefixes = [p.strip() for p in pattern.split(",") if p.strip()]
    return [n for n in leaves if any(n == p or n.startswith(p + ".") for p in prefixes)]


def soak(args: argparse.Namespace) -> int:
    faults = ["failslab:probability=2,times=-1", "fail_sock_recv:probability=1,times=-1"]
    tests = _suite_tests(args.tests)
    if not tests:
        print(f"fault_campaign: no iscsi-test-cu tests match {args.tests}", file=sys.stderr)
        return 1
    results = {"OK": 0, "FAILED": 0, "client hung": 0}
    log = []
    with tempfile.TemporaryDirectory(prefix="uscst-campaign-") as d:
        t = Target(Path(d), faults)
        seeds = {p: t.read(f"debug/{p}/seed") for p in ("failslab", "fail_sock_recv")}
        t0 = time.monotonic()
        deadline = t0 + args.time_limit
        runs = 0
        for rnd in range(args.rounds):
            for name in tests:
                if time.monotonic() > deadline or not t.alive():
                    break
                rc, out = _run(["iscsi-test-cu", "-d", "-t", name, "-i", INITIATOR, t.url],
                               args.test_timeout)
                runs += 1
                verdict = ("client hung" if rc == -1 else
                           "OK" if rc == 0 and "[FAILED]" not in out else "FAILED")
                results[verdict] += 1
                log.append(f"== round {rnd + 1} {name}: {verdict}\n{out}")
        elapsed = time.monotonic() - t0
        if args.log_dir:
            Path(args.log_dir, "iscsi-test-cu.log").write_text("\n".join(log))
        alive_after_suite = t.alive()
        for p in ("failslab", "fail_sock_recv"):
            t.write(f"debug/{p}/probability", "0")
        injected = {p: int(t.read(f"debug/{p}/injected")) for p in ("failslab", "fail_sock_recv")}
        live = t.wait_commands_freed()
        inq_rc, inq = _run(["iscsi-inq", "-i", INITIATOR, t.url], 30)
        live_after = t.wait_commands_freed()
        bad = t.bad_lines()
        rc_stop = t.stop()
        if args.log_dir:
            Path(args.log_dir, "uscstd.err").write_text(t.err.read_text(errors="replace"))
    checks = {
        "server up after the suite": alive_after_suite,
        "iscsi-inq works after": inq_rc == 0 and "DIRECT_ACCESS" in inq,
        "failslab injected faults": injected["failslab"] > 0,
        "fail_sock_recv injected faults": injected["fail_sock_recv"] > 0,
        "no live scst_cmd / iscsi_cmnd (baseline 0)": not any(live_after.values()),
        "log clean (no BUG, WARNING, lockdep, Oops, traceback)": not bad,
        "exit 0 on SIGTERM": rc_stop == 0,
    }
    print(f"## Fault campaign 6.1: iscsi-test-cu -t {args.tests} under faults\n")
    print(f"- faults: `--fault {faults[0]} --fault {faults[1]}` (uscstd --debug); seeds "
          f"failslab={seeds['failslab']}, fail_sock_recv={seeds['fail_sock_recv']}")
    print(f"- {len(tests)} tests x {args.rounds} rounds, one iscsi-test-cu per test "
          f"({args.test_timeout:.0f} s bound each): {runs} runs in {elapsed:.0f} s; "
          f"OK {results['OK']}, FAILED {results['FAILED']}, client hung "
          f"{results['client hung']} (failures are expected: the faults hit the suite's "
          f"own commands and connections)")
    print(f"- injected: failslab {injected['failslab']}, fail_sock_recv "
          f"{injected['fail_sock_recv']}")
    print(f"- live command objects right after the suite: {live}; after iscsi-inq: {live_after}")
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")
    for ln in bad[:10]:
        print(f"    {ln}")
    return 0 if all(checks.values()) else 1


# -- 6.2 -----------------------------------------------------------------------------

def _classify(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:80]}"


def scenario(port: int) -> str:
    """login + WRITE (R2T) + READ + ABORT TASK + logout; how it ended."""
    steps = []
    ch: Channel | None = None
    try:
        ch = _channel(port)
        steps.append("login")
        data = bytes(range(256)) * 2048                         # 512 KiB: R2Ts
        blocks = len(data) // 512
        w = ch.submit(bytes([0x2A, 0, 0, 0, 0, 0, 0, blocks >> 8, blocks & 0xFF, 0]),
                      data_out=data)
        ch.wait([w])
        steps.append("write" if w.good else f"write status {w.status}")
        r = ch.submit(bytes([0x28, 0, 0, 0, 0, 0, 0, blocks >> 8, blocks & 0xFF, 0]),
                      read_len=len(data))
        ch.wait([r])
        steps.append("read" if r.good and bytes(r.data) == data else
                     f"read status {r.status}" if not r.good else "read MISMATCH")
        a = ch.submit(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), read_len=4096)
        ch.task_mgmt(TMF_ABORT_TASK, ref_itt=a.itt)
        steps.append("abort")
        ch.logout()
        steps.append("logout")
    except STEP_ERRORS as e:
        steps.append(_classify(e))
    finally:
        if ch is not None:
            ch.peer.close()
    return ", ".join(steps)


def _health(t: Target, log_mark: int) -> tuple[bool, str]:
    if not t.alive():
        return False, "server died"
    live = t.wait_commands_freed()
    if any(live.values()):
        return False, f"leaked {live}"
    ch: Channel | None = None
    try:
        ch = _channel(t.port)
        # A new nexus first sees the target's unit attentions: a few tries.
        for _ in range(4):
            tur = ch.submit(bytes(6))
            ch.wait([tur])
            if tur.good:
                break
        else:
            return False, "TEST UNIT READY failed after"
        ch.logout()
    except STEP_ERRORS as e:
        return False, f"fresh login failed: {_classify(e)}"
    finally:
        if ch is not None:
            ch.peer.close()
    bad = t.bad_lines()[log_mark:]
    if bad:
        return False, f"log: {bad[0][:100]}"
    return True, "ok"


def _sites(t: Target) -> list[tuple[int, str]]:
    out = []
    for ln in t.read("debug/fault-inject/sites").splitlines():
        idx, _hits, _inj, point, where = ln.split(" ", 4)
        out.append((int(idx), f"{point} {where}"))
    return out


def enumerate_cmd(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="uscst-campaign-") as d:
        t = Target(Path(d), ["failslab:verbose=1", "fail_page_alloc:verbose=1"])
        t.write("debug/fault-inject/enumerate", " ".join(["record", *args.points]))
        base = scenario(t.port)
        t.write("debug/fault-inject/enumerate", "off")
        if "logout" not in base:
            print(f"the fault-free scenario did not end well: {base}")
            return 1
        rows = []
        done: set[int] = set()
        deadline = time.monotonic() + args.time_limit
        while time.monotonic() < deadline and t.alive():
            todo = [(i, s) for i, s in _sites(t) if i not in done][:1]
            if not todo or len(done) >= args.max_sites:
                break
            idx, site = todo[0]
            done.add(idx)
            mark = len(t.bad_lines())
            t.write("debug/fault-inject/enumerate", str(idx))
            outcome = scenario(t.port)
            reached = "injected" in t.read("debug/fault-inject/enumerate")
            t.write("debug/fault-inject/enumerate", "off")
            good, why = _health(t, mark)
            rows.append((idx, site, reached, outcome, good, why))
        total_sites = len(_sites(t)) if t.alive() else len(rows)
        rc_stop = t.stop()
    reached = [r for r in rows if r[2]]
    good = [r for r in reached if r[4]]
    print("## Fault campaign 6.2: enumerate mode over login + WRITE (R2T) + READ + "
          "ABORT TASK + logout\n")
    print(f"- points: {' '.join(args.points) or 'the default set (failures, not delays)'}")
    print(f"- fault-free scenario: {base}")
    print(f"- sites known: {total_sites}; tried: {len(rows)}; reached and failed once: "
          f"{len(reached)}; ended well: {len(good)} of {len(reached)}; server exit on "
          f"SIGTERM: {rc_stop}\n")
    print("| # | site | failed | scenario outcome | after |")
    print("|---|---|---|---|---|")
    for idx, site, hit, outcome, ok, why in rows:
        print(f"| {idx} | `{site}` | {'yes' if hit else 'not reached'} | {outcome} | "
              f"{'ok' if ok else 'FAIL: ' + why} |")
    all_good = len(good) == len(reached) and rc_stop == 0 and len(rows) == total_sites
    return 0 if all_good else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fault_campaign", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak", help="6.1: iscsi-test-cu under failslab and socket faults")
    s.add_argument("--tests", default="ALL.Read10,ALL.Write10",
                   help="comma-separated test prefixes (ALL for the whole suite)")
    s.add_argument("--rounds", type=int, default=3, help="times each test runs")
    s.add_argument("--test-timeout", type=float, default=60.0,
                   help="seconds one iscsi-test-cu may take (libiscsi can spin on a reset "
                        "socket)")
    s.add_argument("--time-limit", type=float, default=1200.0, help="seconds for all runs")
    s.add_argument("--log-dir", help="keep iscsi-test-cu.log and uscstd.err here")
    e = sub.add_parser("enumerate", help="6.2: fail every reached site once")
    e.add_argument("--max-sites", type=int, default=400)
    e.add_argument("--points", nargs="*", default=[],
                   help="points to walk (default: every point whose fault is a failure)")
    e.add_argument("--time-limit", type=float, default=900.0, help="seconds for all runs")
    args = p.parse_args(argv)
    try:
        return soak(args) if args.cmd == "soak" else enumerate_cmd(args)
    except Failed as e:
        print(f"fault_campaign: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
