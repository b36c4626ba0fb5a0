"""soak: watch uscstd's memory (RSS from /proc) over many sessions.

The campaign script of issue 16 section 5 / 6.5. It starts its own uscstd
(nullio LUN, a free loopback port, its own control socket) and runs one of:

  login      N back-to-back logins and logouts, one session at a time
             (libiscsi's iscsi-inq: login, INQUIRY, logout);
  discovery  N discovery sessions (iscsi-ls: SendTargets, logout);
  idle       K sessions logged in at once and left idle (a minimal login
             written here), RSS measured while they are held; with --hold S
             they stay logged in for S seconds, answering the target's
             NOP-In pings (--nop-in-interval sets the target's), RSS sampled
             every --sample-every seconds, and the summary gives the slope in
             bytes per second over each half after the warm-up (the first
             tenth) and how many sessions were still up at the end (issue 12:
             "RSS < 150 MB with 64 logged-in sessions, flat over a 10-minute
             run" is `idle --sessions 64 --hold 600`).

It samples VmRSS of the daemon every --every cycles and prints one line per
sample, then a summary: RSS at start, after the warm-up (--warmup cycles,
by default a tenth of the run: the young GC generation and the buffer
caches fill), the highest and the last sample after it, the growth after
warm-up in percent, and the RSS slope in bytes per cycle over the first and
second half of the samples after warm-up (a leak shows as equal slopes; a
flat RSS as a second slope near zero). --json prints the summary as JSON.

--tracemalloc A,B (login and discovery) starts uscstd with
PYTHONTRACEMALLOC=TRACE_FRAMES, has it dump a tracemalloc snapshot of
itself after cycle A and after cycle B (the control op tracemalloc_dump)
and prints where the Python heap grew between them: the TRACE_TOP source
lines with the largest growth, their bytes and block counts. Tracing
slows the daemon and adds its own memory: RSS figures of such a run are
not comparable with an untraced one.

Bounded: every cycle has a timeout, the whole run has --max-seconds.
Where it may run: on the host, as a tool (it is not kernel code). It needs
libiscsi-bin for login and discovery.

Usage:
  python -m tools.soak login --cycles 10000
  python -m tools.soak discovery --cycles 1000
  python -m tools.soak idle --sessions 64
  python -m tools.soak idle --sessions 64 --hold 600
  python -m tools.soak login --cycles 10000 --tracemalloc 1000,10000
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tools.uscstadmin import Ctl, Failed

REPO = Path(__file__).resolve().parent.parent
IQN = "iqn.2026-11.org.uscst:soak"
INITIATOR = "iqn.2026-11.org.uscst:soak-initiator"
CYCLE_TIMEOUT = 30.0
TRACE_FRAMES = 8            # frames tracemalloc keeps per allocation
TRACE_TOP = 15              # source lines the growth report lists


def rss_kib(pid: int) -> int:
    """VmRSS of pid in KiB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """A uscstd started for the soak (stopped with SIGTERM at the end)."""

    def __init__(self, repo: Path, workdir: Path, debug: bool, trace: bool = False) -> None:
        self.port = free_port()
        self.log = workdir / "uscstd.log"
        self.ctl_path = str(workdir / "ctl.sock")
        argv = [sys.executable, "-m", "tools.uscstd", "--nullio", "--size", "64M",
                "--iqn", IQN, "--portal", f"127.0.0.1:{self.port}",
                "--control", self.ctl_path, "--data-dir", str(workdir)]
        if debug:
            argv.append("--debug")
        env = dict(os.environ)
        if trace:
            env["PYTHONTRACEMALLOC"] = str(TRACE_FRAMES)
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(argv, cwd=repo, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        # Bounded by the deadline; polls the log every 50 ms.
        while "ready at" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uscstd did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.url = f"iscsi://127.0.0.1:{self.port}/{IQN}/0"

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    def set_attr(self, path: str, value: str) -> bool:
        """Write one attribute of the live tree (uscstadmin set)."""
        return _run([sys.executable, "-m", "tools.uscstadmin", "--socket", self.ctl_path,
                     "set", path, value])

    def tracemalloc_dump(self, path: Path) -> dict:
        """Have the daemon write a tracemalloc snapshot to path."""
        return Ctl(self.ctl_path).call("tracemalloc_dump", path=str(path))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _run(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=CYCLE_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def login_pdu(isid: int, cmd_sn: int, target: str) -> bytes:
    """One Login Request going straight to full feature phase (CSG 1, NSG 3,
    T set; RFC 7143 11.12) with the keys uscstd needs."""
    keys = (f"InitiatorName={INITIATOR}\0TargetName={target}\0SessionType=Normal\0"
            "HeaderDigest=None\0DataDigest=None\0").encode()
    bhs = bytearray(48)
    bhs[0] = 0x43                                  # Login Request, immediate
    bhs[1] = 0x80 | (1 << 2) | 3                   # T, CSG=1, NSG=3
    bhs[5:8] = len(keys).to_bytes(3, "big")
    bhs[8:14] = (0x80 << 40 | isid).to_bytes(6, "big")
    struct.pack_into(">IHHII", bhs, 16, 0, 0, 0, cmd_sn, 0)
    return bytes(bhs) + keys + bytes(-len(keys) % 4)


def open_idle_session(port: int, isid: int) -> socket.socket:
    """Log one session in and return its socket (left open, idle)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=CYCLE_TIMEOUT)
    s.sendall(login_pdu(isid, 0, IQN))
    bhs = b""
    while len(bhs) < 48:
        chunk = s.recv(48 - len(bhs))
        if not chunk:
            raise RuntimeError("target closed the connection during login")
        bhs += chunk
    if bhs[0] & 0x3F != 0x23 or bhs[36] != 0:
        raise RuntimeError(f"login refused: opcode {bhs[0]:#x} status {bhs[36]}/{bhs[37]}")
    dsl = int.from_bytes(bhs[5:8], "big")
    left = dsl + (-dsl % 4)
    while left > 0:                     # the response's keys (not needed)
        chunk = s.recv(left)
        if not chunk:
            raise RuntimeError("target closed the connection during login")
        left -= len(chunk)
    return s


class held_session:
    """A logged-in session kept alive: answers the target's NOP-In pings."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.up = True
        self.answers = 0
        sock.setblocking(False)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.up = False
            return
        self.buf += data
        while len(self.buf) >= 48:
            dsl = int.from_bytes(self.buf[5:8], "big")
            total = 48 + dsl + (-dsl % 4)
            if len(self.buf) < total:
                return
            bhs, self.buf = self.buf[:48], self.buf[total:]
            if bhs[0] & 0x3F == 0x20 and bhs[20:24] != b"\xff" * 4:
                self._nop_out(bhs)

    def _nop_out(self, nop_in: bytes) -> None:
        """The NOP-Out a NOP-In with a TTT asks for (RFC 7143 11.18.3):
        immediate, ITT 0xffffffff, its LUN and TTT echoed."""
        stat_sn, exp_cmd_sn = struct.unpack_from(">II", nop_in, 24)
        bhs = bytearray(48)
        bhs[0] = 0x40                                  # NOP-Out, immediate
        bhs[1] = 0x80
        bhs[8:16] = nop_in[8:16]                       # LUN
        bhs[16:20] = b"\xff" * 4                       # ITT: a response, not a task
        bhs[20:24] = nop_in[20:24]                     # TTT
        struct.pack_into(">II", bhs, 24, exp_cmd_sn, stat_sn)
        try:
            self.sock.sendall(bytes(bhs))
            self.answers += 1
        except OSError:
            self.up = False


def hold_sessions(tgt: Target, socks: list[socket.socket], seconds: float, every: float,
                  quiet: bool) -> tuple[list[tuple[int, int]], list[held_session]]:
    """Keep the sessions up for `seconds`, sampling RSS every `every` s:
    [(second, KiB)], and the sessions (up, NOP answers)."""
    held = [held_session(s) for s in socks]
    by_fd = {h.sock.fileno(): h for h in held}
    t0 = time.monotonic()
    samples = [(0, tgt.rss())]
    next_sample = every
    # Bounded by `seconds`: every wait ends at the next sample or the end.
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        if now >= next_sample:
            samples.append((int(round(now)), tgt.rss()))
            if not quiet:
                up = sum(h.up for h in held)
                print(f"second {samples[-1][0]} rss_kib {samples[-1][1]} sessions_up {up}",
                      flush=True)
            next_sample += every
        live = [h.sock for h in held if h.up]
        wait = max(0.0, min(next_sample, seconds) - now)
        if not live:
            time.sleep(wait)
            continue
        ready, _, _ = select.select(live, [], [], wait)
        for s in ready:
            by_fd[s.fileno()].on_readable()
    samples.append((int(round(seconds)), tgt.rss()))
    return samples, held


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (cycle, KiB) points, in bytes per cycle."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return 1024 * sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def summarize(samples: list[tuple[int, int]], warmup: int, unit: str = "cycle") -> dict:
    """RSS summary of (x, KiB) samples, x in cycles (or seconds, unit "second")."""
    after = [p for p in samples if p[0] >= warmup]
    base = after[0][1] if after else samples[0][1]
    half = len(after) // 2
    peak = max(y for _, y in after) if after else base
    return {"samples": len(samples), "rss_start_kib": samples[0][1], f"warmup_{unit}s": warmup,
            "rss_after_warmup_kib": base, "rss_peak_after_warmup_kib": peak,
            "rss_end_kib": samples[-1][1],
            "growth_after_warmup_pct": round(100.0 * (peak - base) / base, 2),
            f"slope_first_half_bytes_per_{unit}": round(slope(after[:half + 1]), 1),
            f"slope_second_half_bytes_per_{unit}": round(slope(after[half:]), 1)}


def soak_cycles(tgt: Target, mode: str, cycles: int, every: int, deadline: float,
                quiet: bool, dumps: dict[int, Path] | None = None
                ) -> tuple[list[tuple[int, int]], int]:
    """Run the cycles, sampling RSS every `every`; after cycle N in dumps,
    the daemon dumps a tracemalloc snapshot to dumps[N]."""
    argv = (["iscsi-inq", tgt.url] if mode == "login"
            else ["iscsi-ls", f"iscsi://127.0.0.1:{tgt.port}"])
    samples = [(0, tgt.rss())]
    failures = 0
    for i in range(1, cycles + 1):
        if time.monotonic() > deadline:
            print(f"soak: time limit reached after {i - 1} cycles", file=sys.stderr)
            break
        if not _run(argv):
            failures += 1
        if i % every == 0 or i == cycles:
            samples.append((i, tgt.rss()))
            if not quiet:
                print(f"cycle {i} rss_kib {samples[-1][1]}", flush=True)
        if dumps and i in dumps:
            r = tgt.tracemalloc_dump(dumps[i])
            if not quiet:
                print(f"cycle {i} tracemalloc traced_kib {r['traced'] // 1024} "
                      f"gc_objects {r['gc_objects']}", flush=True)
    return samples, failures


def heap_growth(first: Path, second: Path, top: int = TRACE_TOP) -> list[dict]:
    """Where the traced heap grew from snapshot first to second: the `top`
    source lines by growth (bytes, blocks), uscstd's own allocations only."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    a = tracemalloc.Snapshot.load(str(first)).filter_traces(keep)
    b = tracemalloc.Snapshot.load(str(second)).filter_traces(keep)
    out = []
    for st in b.compare_to(a, "lineno")[:top]:
        frame = st.traceback[0]
        out.append({"where": f"{frame.filename.replace(str(REPO) + '/', '')}:{frame.lineno}",
                    "growth_bytes": st.size_diff, "growth_blocks": st.count_diff,
                    "bytes": st.size, "blocks": st.count})
    return out


def _parse_dumps(text: str, cycles: int) -> tuple[int, int]:
    """--tracemalloc A,B -> (A, B), 1 <= A < B <= cycles; ValueError."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--tracemalloc wants A,B (two cycle numbers), got {text!r}")
    a, b = int(parts[0]), int(parts[1])
    if not 1 <= a < b <= cycles:
        raise ValueError(f"--tracemalloc {text}: need 1 <= A < B <= --cycles ({cycles})")
    return a, b


def soak_idle(tgt: Target, sessions: int, hold: float, every: float, quiet: bool) -> dict:
    before = tgt.rss()
    socks = []
    extra: dict = {}
    try:
        for i in range(sessions):
            socks.append(open_idle_session(tgt.port, i + 1))
        time.sleep(1.0)                 # let every rd thread settle into its sleep
        held = tgt.rss()
        if not quiet:
            print(f"{sessions} sessions logged in: rss_kib {held}", flush=True)
        if hold > 0:
            samples, hs = hold_sessions(tgt, socks, hold, every, quiet)
            extra = {"hold_s": hold, **summarize(samples, int(hold // 10), "second"),
                     "sessions_up_at_end": sum(h.up for h in hs),
                     "nop_in_answered": sum(h.answers for h in hs)}
    finally:
        for s in socks:
            s.close()
    return {"sessions": sessions, "rss_before_kib": before, "rss_with_sessions_kib": held,
            "per_session_kib": round((held - before) / max(sessions, 1), 1), **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("login", "discovery", "idle"))
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--every", type=int, default=0, help="sample RSS every N cycles")
    p.add_argument("--warmup", type=int, default=-1, help="cycles before the baseline sample")
    p.add_argument("--hold", type=float, default=0.0,
                   help="idle: keep the sessions logged in this many seconds, sampling RSS")
    p.add_argument("--sample-every", type=float, default=10.0,
                   help="idle --hold: seconds between RSS samples")
    p.add_argument("--nop-in-interval", type=int, default=0,
                   help="idle: the target's NopInInterval and NopInTimeout in seconds "
                        "(0: its defaults); a session that does not answer is dropped")
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--debug", action="store_true", help="run uscstd --debug")
    p.add_argument("--repo", default=str(REPO), help="tree whose tools.uscstd to run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tracemalloc", default="", metavar="A,B",
                   help="dump the daemon's tracemalloc snapshots after cycles A and B "
                   "and report where the heap grew between them")
    a = p.parse_args(argv)
    if a.mode != "idle" and shutil.which("iscsi-inq") is None:
        print("soak: iscsi-inq/iscsi-ls not found (install libiscsi-bin)", file=sys.stderr)
        return 2
    if a.cycles < 2 or a.sessions < 1:
        print("soak: --cycles must be >= 2 and --sessions >= 1", file=sys.stderr)
        return 2
    if not 0 <= a.hold <= a.max_seconds or a.sample_every <= 0 or a.nop_in_interval < 0:
        print("soak: --hold must be within 0..--max-seconds, --sample-every > 0 and "
              "--nop-in-interval >= 0", file=sys.stderr)
        return 2
    dump_at: tuple[int, int] | None = None
    if a.tracemalloc:
        try:
            if a.mode == "idle":
                raise ValueError("--tracemalloc is for the login and discovery modes")
            dump_at = _parse_dumps(a.tracemalloc, a.cycles)
        except ValueError as e:
            print(f"soak: {e}", file=sys.stderr)
            return 2
    every = a.every or max(1, a.cycles // 50)
    warmup = a.warmup if a.warmup >= 0 else a.cycles // 10
    with tempfile.TemporaryDirectory(prefix="uscst-soak-") as d:
        tgt = Target(Path(a.repo), Path(d), a.debug, trace=dump_at is not None)
        dumps = {n: Path(d) / f"heap-{n}.tracemalloc" for n in dump_at or ()}
        try:
            t0 = time.monotonic()
            if a.nop_in_interval and not all(
                    tgt.set_attr(f"targets/iscsi/{IQN}/{attr}", str(a.nop_in_interval))
                    for attr in ("NopInInterval", "NopInTimeout")):
                print("soak: could not set the target's NopInInterval", file=sys.stderr)
                return 1
            if a.mode == "idle":
                out = soak_idle(tgt, a.sessions, a.hold, a.sample_every, a.json)
            else:
                try:
                    samples, failures = soak_cycles(tgt, a.mode, a.cycles, every,
                                                    t0 + a.max_seconds, a.json, dumps)
                except Failed as e:
                    print(f"soak: tracemalloc_dump over the control socket: {e}",
                          file=sys.stderr)
                    return 1
                out = {"mode": a.mode, "cycles": samples[-1][0], "failures": failures,
                       **summarize(samples, warmup)}
                if dump_at is not None and all(p.exists() for p in dumps.values()):
                    out["heap_growth"] = heap_growth(dumps[dump_at[0]], dumps[dump_at[1]])
            out["seconds"] = round(time.monotonic() - t0, 1)
            out["alive"] = tgt.proc.poll() is None
            log = tgt.log.read_text(errors="replace")
            out["bug_lines"] = len(re.findall(r"Traceback|BUG:|Oops|WARNING:", log))
        finally:
            out_rc = tgt.stop()
        out["exit_status"] = out_rc
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "heap_growth":
                print(f"{k}: {v}")
        for g in out.get("heap_growth", []):
            print(f"heap growth {g['growth_bytes']:+d} B {g['growth_blocks']:+d} blocks "
                  f"(now {g['bytes']} B in {g['blocks']}) at {g['where']}")
    return 0 if out["alive"] and out["bug_lines"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
