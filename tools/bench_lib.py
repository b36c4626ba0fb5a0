"""The benchmark: uscstd against Debian's tgtd, same machine, same run.

Host tool, not kernel idiom: this module runs on the host and may use
subprocess, os, socket and time freely. It is the engine behind tools/bench;
docs/perf.md and DESIGN.md ("Performance principles", "Why this model")
describe the method.

What one run does:
  1. creates two backing files of the same size, filled with real data (a
     random 1 MiB block repeated, each copy stamped with its index, so no
     page is a hole and no two MiB are equal), and reads each once so both
     sit in the page cache;
  2. starts tgtd on 127.0.0.1:3261 (foreground, its own control port,
     target configured with tgtadm, LUN 1) and uscstd on 127.0.0.1:3262
     (--disk on the other file, LUN 0), and waits, bounded, until each
     answers a READ CAPACITY(16) after a full login;
  3. runs libiscsi's iscsi-perf for each workload, alternating the two
     servers (the order flips every round to cancel drift), each run for a
     fixed time under a hard timeout; a read row first reads its server's
     file again, so it starts from a warm page cache whatever row ran
     before it (a direct-I/O write drops the cached pages it overwrites);
  4. samples the server's CPU time (utime+stime of the process and its
     descendants, from /proc) before and after each run;
  5. stops both servers whatever happened (tgtadm shutdown / SIGTERM, then
     SIGKILL) and removes its temporary directory.

Numbers are reported as medians over rounds and as the ratio uscst/tgtd
measured in the same run; absolute numbers depend on the machine.

Only 127.0.0.1 is ever contacted. Every wait is bounded in count and time.

Public API:
  main(argv: list[str] | None = None) -> int      the CLI (tools/bench)
  parse_perf_output(text: str) -> PerfResult       iscsi-perf output parser
  parse_readcapacity16(text: str) -> tuple[int, int]  (block_length, size)
  proc_tree_cpu_ticks(pid: int) -> int             utime+stime of a tree
  WORKLOADS: tuple[Workload, ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

# XXX: iscsi-perf counts completions from its first submission to its last
# progress line; it ends a timed run only from inside a completion callback,
# so a target that stops answering hangs it. Hence the hard timeout, then
# SIGINT (iscsi-perf drains and prints), then SIGKILL.

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TGTD_IQN = "iqn.2026-11.org.uscst:bench-tgtd"
USCSTD_IQN = "iqn.2026-11.org.uscst:default"
STANDIN_IQN = "iqn.2026-11.org.uscst:bench-standin"
INITIATOR_IQN = "iqn.2026-11.org.uscst:bench-initiator"
MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
TGTD_RUN_DIR = Path("/var/run/tgtd")

SERVER_STOP_GRACE = 10.0       # seconds between polite stop and SIGKILL
PERF_GRACE = 30.0              # seconds beyond --seconds before SIGINT
PROBE_TIMEOUT = 5.0            # one iscsi-readcapacity16 attempt
TOOL_TIMEOUT = 10.0            # one tgtadm call


class BenchError(Exception):
    """A setup failure reported as one line, exit status 2."""


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    io_bytes: int
    queue_depth: int
    random: bool
    write: bool = False        # qemu-img bench -w instead of iscsi-perf
    lun: str = "wb"            # which LUN pair (LUN_VARIANTS)
    sessions: int = 1          # initiators at once; results are summed
    nagle: str = ""            # uscst's nagle_mode for this row ("" leaves it)
    idle: bool = False         # log in `sessions` idle sessions, report RSS


# LUN pairs compared in a row: uscst's LUN against tgtd's, same backing file.
# wb: uscst write-back fileio (write_through 0) / tgtd's default rdwr
#     (write-back); the read rows use it too (no flush on reads).
# wt: uscst write-through fileio (the default) / tgtd rdwr with bsoflags=sync.
# bio: uscst vdisk_blockio (O_DIRECT) / tgtd's aio backing store (O_DIRECT).
LUN_VARIANTS = ("wb", "wt", "bio")
USCST_LUNS = {"wb": 0, "wt": 1, "bio": 2}
TGTD_LUNS = {"wb": 1, "wt": 2, "bio": 3}

# qemu-img bench writes go forward by this stride (it wraps at the end of the
# image): a prime number of 4 KiB blocks scatters the 4K writes over the file
# (qemu-img bench has no random mode). Sequential rows use the I/O size.
SCATTER_STRIDE = 7919 * 4096
NAGLE_QDS = (1, 2, 4, 8, 16, 32, 64, 128)
NAGLE_MODES = ("off", "adaptive", "on")

WORKLOADS: tuple[Workload, ...] = (
    Workload("randread4k-qd32", "4K random read QD32", 4096, 32, True),
    Workload("randread4k-qd1", "4K random read QD1", 4096, 1, True),
    Workload("seqread128k-qd32", "128K seq read QD32", 128 * 1024, 32, False),
    Workload("write4k-qd32-wb", "4K scattered write QD32 write-back", 4096, 32, True, True),
    Workload("write4k-qd32-wt", "4K scattered write QD32 write-through/sync", 4096, 32, True,
             True, "wt"),
    Workload("seqwrite128k-qd32-wb", "128K seq write QD32 write-back", 128 * 1024, 32, False,
             True),
    Workload("seqwrite128k-qd32-wt", "128K seq write QD32 write-through/sync", 128 * 1024, 32,
             False, True, "wt"),
    Workload("blockio-randread4k-qd32", "4K random read QD32 blockio/aio", 4096, 32, True,
             lun="bio"),
    Workload("blockio-write4k-qd32", "4K scattered write QD32 blockio/aio", 4096, 32, True,
             True, "bio"),
    Workload("sessions8-randread4k-qd16", "8 sessions x 4K random read QD16", 4096, 16, True,
             sessions=8),
    Workload("idle64", "64 idle sessions (RSS)", 512, 1, False, sessions=64, idle=True),
    *(Workload(f"randread512-qd{qd}-nagle-{m}", f"512B random read QD{qd} Nagle {m}", 512, qd,
               True, nagle=m)
      for qd in NAGLE_QDS for m in NAGLE_MODES),
)


@dataclass
class PerfResult:
    iops: int                  # iscsi-perf's final "iops average"
    mb_s_printed: int          # iscsi-perf's own MB/s (MiB/s, truncated)
    block_size: int | None     # from "capacity is N blocks or B byte"
    io_bytes: int | None       # from "transfer size of N blocks (B byte)"


@dataclass
class RunRecord:
    round: int                     # 1-based
    workload: str
    server: str
    ok: bool
    error: str = ""
    iops: float = 0.0
    mib_s: float = 0.0
    seconds: float = 0.0           # requested duration
    wall_s: float = 0.0            # iscsi-perf wall time, login included
    server_cpu_s: float = 0.0
    cpu_s_per_100k: float = 0.0
    rss_mib: float = 0.0           # server's resident set after the run
    client_cpu_s: float = 0.0      # iscsi-perf's own user+sys time
    loadavg_before: str = ""
    perf_cmd: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Parsers (pure; tests feed them captured text)

_AVG_RE = re.compile(r"iops average (\d+) \((\d+) MB/s\)")
_CAP_RE = re.compile(r"capacity is (\d+) blocks or (\d+) byte")
_XFER_RE = re.compile(r"transfer size of (\d+) blocks \((\d+) byte\)", re.I)


def parse_perf_output(text: str) -> PerfResult:
    """Parse iscsi-perf's stdout. Its progress lines are separated by '\\r'
    and each carries a running "iops average N (M MB/s)"; the summary after
    the run is the same phrase alone. The last occurrence wins.
    Raises ValueError if no average was printed (run shorter than 1 s, or
    iscsi-perf failed before its first completion second)."""
    avgs = _AVG_RE.findall(text)
    if not avgs:
        tail = " | ".join(ln.strip() for ln in re.split(r"[\r\n]+", text)
                          if ln.strip())[-300:]
        raise ValueError(f"no 'iops average' in iscsi-perf output: {tail!r}")
    iops, mbs = avgs[-1]
    block_size = None
    m = _CAP_RE.search(text)
    if m and int(m.group(1)):
        block_size = int(m.group(2)) // int(m.group(1))
    io_bytes = None
    m = _XFER_RE.search(text)
    if m:
        io_bytes = int(m.group(2))
    return PerfResult(int(iops), int(mbs), block_size, io_bytes)


def parse_readcapacity16(text: str) -> tuple[int, int]:
    """Return (block_length, total_size_bytes) from iscsi-readcapacity16's
    output. Raises ValueError if either is missing."""
    bl = re.search(r"LOGICAL BLOCK LENGTH IN BYTES:\s*(\d+)", text)
    rlba = re.search(r"RETURNED LOGICAL BLOCK ADDRESS:\s*(\d+)", text)
    if not bl or not rlba:
        raise ValueError(f"unexpected iscsi-readcapacity16 output: {text[-200:]!r}")
    block = int(bl.group(1))
    return block, (int(rlba.group(1)) + 1) * block


def parse_size(text: str) -> int:
    """'1G', '64M', '512K', '1GiB', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (try 1G, 64M)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    n = int(m.group(1)) * mult[m.group(2).upper()]
    if n < MiB or n % MiB:
        raise argparse.ArgumentTypeError("size must be a whole number of MiB, at least 1M")
    return n


def format_size(n: int) -> str:
    """Bytes -> the '1G' / '64M' form uscstd's --size takes."""
    if n % GiB == 0:
        return f"{n // GiB}G"
    if n % MiB == 0:
        return f"{n // MiB}M"
    return str(n)


# --------------------------------------------------------------------------
# /proc helpers

def proc_tree_cpu_ticks(pid: int) -> int:
    """utime+stime, in clock ticks, of pid and every live descendant.
    A process's line in /proc/<pid>/stat already sums all its threads.
    Returns 0 for a pid that no longer exists."""
    stats: dict[int, tuple[int, int]] = {}     # pid -> (ppid, ticks)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # comm may hold spaces and parentheses: split after the last ')'
        rest = raw[raw.rfind(")") + 2:].split()
        # rest[0] is state (field 3); ppid is field 4, utime 14, stime 15
        stats[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    if pid not in stats:
        return 0
    children: dict[int, list[int]] = {}
    for p, (pp, _) in stats.items():
        children.setdefault(pp, []).append(p)
    total, todo, seen = 0, [pid], set()
    while todo and len(seen) < len(stats):
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += stats[p][1]
        todo.extend(children.get(p, ()))
    return total


def lockf_holders(path: Path) -> set[int]:
    """Pids holding a POSIX (lockf/fcntl) lock on path, from /proc/locks.
    Empty if the file does not exist or nobody holds a lock on it."""
    try:
        st = os.stat(path)
    except OSError:
        return set()
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: set[int] = set()
    try:
        with open("/proc/locks") as f:
            lines = f.readlines()
    except OSError:
        return pids
    for line in lines:
        parts = line.replace("->", " ").split()
        # id: TYPE ADVISORY|MANDATORY READ|WRITE pid maj:min:ino start end
        if len(parts) >= 6 and parts[5].lower() == key and parts[4].isdigit():
            pids.add(int(parts[4]))
    return pids


def machine_info() -> dict[str, object]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem_avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_available": mem_avail,
        "loadavg": loadavg(),
    }


def proc_rss_mib(pid: int) -> float:
    """VmRSS of pid in MiB (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# Backing files

def make_backing_file(path: Path, size: int, seed_block: bytes) -> None:
    """Write size bytes of real data: seed_block repeated, each MiB stamped
    with its index in its first 16 bytes; then settle it (settle_file)."""
    buf = bytearray(seed_block)
    with open(path, "wb", buffering=0) as f:
        for i in range(size // MiB):
            buf[0:16] = i.to_bytes(8, "little") * 2
            f.write(buf)
    settle_file(path)


def settle_file(path: Path, drop: bool = False) -> None:
    """Write the file's dirty pages back now, outside any measured run, and
    with drop, evict its pages from the page cache (decision 0076). Left
    to the kernel's writeback, a gigabyte written by setup or by a
    write-back row is flushed during the next runs, taking CPU and the
    disk from whichever server runs then. A direct write (blockio, tgtd's
    aio) of a range with dirty pages waits for their writeback, and one
    over clean cached pages must evict them first; a real blockio device
    has neither."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_file(path: Path) -> float:
    """Read the whole file once; return seconds taken."""
    t0 = time.monotonic()
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.monotonic() - t0


# --------------------------------------------------------------------------
# Processes

def run_tool(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short helper (tgtadm, iscsi-readcapacity16) with a timeout;
    a timeout becomes a CompletedProcess with returncode -9."""
    try:
        return subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.output if isinstance(e.output, str) else (e.output or b"").decode("utf-8", "replace")
        return subprocess.CompletedProcess(list(cmd), -9, out + "\n(timed out)", None)


def port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def log_tail(path: Path, n: int = 400) -> str:
    try:
        data = path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in data.splitlines() if ln.strip())


class Server:
    """One target daemon we started. Subclasses know how to configure and
    stop it politely; stop() always ends with the process gone."""

    label = "server"

    def __init__(self, name: str, port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.iqn = ""
        self.lun = 0
        self.block_size = 512
        self.nagle_changed = False      # a row left nagle_mode other than off

    @property
    def url(self) -> str:
        return f"iscsi://{HOST}:{self.port}/{self.iqn}/{self.lun}"

    luns: dict[str, int] = {}

    def url_for(self, variant: str) -> str:
        """The URL of the LUN this server serves for a LUN_VARIANTS entry."""
        return f"iscsi://{HOST}:{self.port}/{self.iqn}/{self.luns.get(variant, self.lun)}"

    def set_nagle(self, mode: str) -> str:
        """Switch the transmit path's Nagle mode; '' or an error text."""
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, cmd: list[str], cwd: Path | None = None) -> None:
        if not port_free(self.port):
            raise BenchError(f"port {HOST}:{self.port} is already in use "
                             f"(another target running? pick another with --{self.name}-port)")
        with open(self.log_path, "wb") as log:
            try:
                # own session: a terminal's ^C reaches only us; we stop it
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=cwd,
                                             start_new_session=True)
            except OSError as e:
                raise BenchError(f"cannot start {self.name} ({shlex.join(cmd)}): {e}") from e
        self.cmd = cmd

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}: "
                             f"{log_tail(self.log_path)}")

    def wait_ready(self, deadline_s: float) -> None:
        """Poll with READ CAPACITY(16) after a full login until it answers;
        learn the block size. Bounded by deadline_s and by attempt count."""
        t_end = time.monotonic() + deadline_s
        last = ""
        for _ in range(int(deadline_s / 0.2) + 2):
            self.check_alive()
            r = run_tool(["iscsi-readcapacity16", "-i", INITIATOR_IQN, self.url],
                         PROBE_TIMEOUT)
            if r.returncode == 0:
                try:
                    self.block_size, size = parse_readcapacity16(r.stdout)
                except ValueError as e:
                    raise BenchError(f"{self.name}: {e}") from e
                self.capacity = size
                return
            last = r.stdout.strip().replace("\n", " | ")
            if time.monotonic() >= t_end:
                break
            time.sleep(0.2)
        self.check_alive()
        raise BenchError(f"{self.name} did not accept a login at {self.url} within "
                         f"{deadline_s:.0f} s: {last[-300:]}")

    def polite_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop politely, wait, then SIGKILL the process and its group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.polite_stop()
            except Exception as e:        # keep going: SIGKILL below
                print(f"bench: warning: polite stop of {self.name} failed: {e}",
                      file=sys.stderr)
            try:
                self.proc.wait(timeout=SERVER_STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.proc.poll() is None:
            print(f"bench: warning: {self.name} (pid {self.pid}) ignored SIGTERM; SIGKILL",
                  file=sys.stderr)
        # the group is ours (start_new_session): take any leftover child too
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"bench: warning: {self.name} (pid {self.pid}) did not die", file=sys.stderr)
        self.after_stop()

    def after_stop(self) -> None:
        pass


class TgtdServer(Server):
    """Debian's tgtd in the foreground on its own control port; the target
    has the controller at LUN 0 and our file at LUN 1."""

    label = "tgtd"
    luns = TGTD_LUNS

    def __init__(self, name: str, port: int, workdir: Path, control_port: int,
                 iqn: str) -> None:
        super().__init__(name, port, workdir)
        self.control_port = control_port
        self.iqn = iqn
        self.lun = 1
        self.sock_path = TGTD_RUN_DIR / f"socket.{control_port}"
        self.lock_path = TGTD_RUN_DIR / f"socket.{control_port}.lock"
        self.owned_lock_ino: int | None = None

    def tgtadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_tool(["tgtadm", "-C", str(self.control_port), *args], TOOL_TIMEOUT)

    def start(self, backing: Path) -> None:
        holders = lockf_holders(self.lock_path)
        if holders:
            raise BenchError(f"tgtd control port {self.control_port} is in use by pid "
                             f"{', '.join(map(str, sorted(holders)))} (--tgtd-control-port, "
                             "or the port option of this server, picks another)")
        self._spawn(["tgtd", "-f", "-C", str(self.control_port),
                     "--iscsi", f"portal={HOST}:{self.port}"])
        # tgtd takes a lockf lock on socket.N.lock, then listens on socket.N.
        # Talk to the control port only once the lock is held by OUR pid, so
        # tgtadm never reaches somebody else's tgtd on the same port.
        t_end = time.monotonic() + 10.0
        for _ in range(100):
            self.check_alive()
            holders = lockf_holders(self.lock_path)
            if holders and holders != {self.pid}:
                raise BenchError(f"{self.name}: control port {self.control_port} is held by "
                                 f"pid {', '.join(map(str, sorted(holders)))}, not ours")
            if holders == {self.pid}:
                r = self.tgtadm("--mode", "system", "--op", "show")
                if r.returncode == 0:
                    self.owned_lock_ino = os.stat(self.lock_path).st_ino
                    break
            if time.monotonic() >= t_end:
                raise BenchError(f"{self.name}: control port {self.control_port} did not "
                                 f"come up within 10 s: {log_tail(self.log_path)[-200:]}")
            time.sleep(0.1)
        r = self.tgtadm("--lld", "iscsi", "--mode", "target", "--op", "show")
        if r.returncode != 0 or r.stdout.strip():
            raise BenchError(f"{self.name}: fresh tgtd on control port {self.control_port} "
                             f"is not empty: {r.stdout.strip()[-200:]}")
        steps = [
            ("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "1",
             "--targetname", self.iqn),
            ("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
             "--lun", str(TGTD_LUNS["wb"]), "--backing-store", str(backing)),
            ("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
             "--lun", str(TGTD_LUNS["wt"]), "--backing-store", str(backing),
             "--bsoflags", "sync"),
            ("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
             "--lun", str(TGTD_LUNS["bio"]), "--backing-store", str(backing),
             "--bstype", "aio"),
            ("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1",
             "--initiator-address", "ALL"),
        ]
        for step in steps:
            r = self.tgtadm(*step)
            if r.returncode != 0:
                raise BenchError(f"{self.name}: tgtadm {' '.join(step)} failed: "
                                 f"{r.stdout.strip()[-200:]}")

    def owns_control_port(self) -> bool:
        """True while our live tgtd holds the control port's lock."""
        return (self.owned_lock_ino is not None and self.proc is not None
                and self.proc.poll() is None
                and lockf_holders(self.lock_path) == {self.pid})

    def polite_stop(self) -> None:
        # tgtd ignores SIGTERM: shut it down the tgtadm way, but only while
        # the control port is provably ours; else SIGTERM/SIGKILL follow
        if not self.owns_control_port():
            return
        for step in (("--lld", "iscsi", "--mode", "target", "--op", "delete",
                      "--tid", "1", "--force"),
                     ("--mode", "system", "--op", "delete")):
            r = self.tgtadm(*step)
            if r.returncode != 0:
                raise RuntimeError(f"tgtadm {' '.join(step)}: {r.stdout.strip()[-200:]}")

    def after_stop(self) -> None:
        # tgtd leaves its control socket behind. Remove it only if our tgtd
        # created it (same lock inode as when we verified), our tgtd is dead
        # and nobody holds the lock now.
        if self.owned_lock_ino is None or self.proc is None or self.proc.poll() is None:
            return
        try:
            if os.stat(self.lock_path).st_ino != self.owned_lock_ino:
                return
        except OSError:
            return
        if lockf_holders(self.lock_path):
            return
        for p in (self.sock_path, self.lock_path):
            try:
                p.unlink()
            except OSError:
                pass


class UscstdServer(Server):
    """uscstd serving one target from a generated scst.conf: the LUNs of
    USCST_LUNS, all on the same backing file."""

    label = "uscst"
    luns = USCST_LUNS

    def __init__(self, name: str, port: int, workdir: Path, cmd: list[str],
                 iqn: str, log_level: str, extra: list[str]) -> None:
        super().__init__(name, port, workdir)
        self.base_cmd = cmd
        self.iqn = iqn
        self.lun = 0
        self.log_level = log_level
        self.extra = extra

    def start(self, backing: Path, size: int) -> None:
        data_dir = self.workdir / "uscstd-data"
        data_dir.mkdir(exist_ok=True)
        conf = self.workdir / "uscstd.conf"
        conf.write_text(uscstd_config(self.iqn, backing))
        self.control = self.workdir / "uscstd.sock"
        cmd = [*self.base_cmd, "--portal", f"{HOST}:{self.port}", "--config", str(conf),
               "--control", str(self.control), "--data-dir", str(data_dir)]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        cmd += self.extra
        self._spawn(cmd, cwd=REPO_ROOT)


    def _set(self, attr: str, value: str) -> str:
        r = run_tool([sys.executable, "-m", "tools.uscstadmin", "--socket", str(self.control),
                      "set", f"targets/iscsi/{self.iqn}/{attr}", value], TOOL_TIMEOUT)
        return "" if r.returncode == 0 else f"{attr} {value}: {r.stdout.strip()[-200:]}"

    def set_nagle(self, mode: str) -> str:
        return self._set("nagle_mode", mode)

    def wait_ready(self, deadline_s: float) -> None:
        super().wait_ready(deadline_s)
        # A command window of 128, as tgtd's: a session's queue depth is
        # capped by it, and the QD 64 and 128 rows need it. Set live, so a
        # --uscstd of any version with the attribute gets it.
        err = self._set("QueuedCommands", "128")
        if err:
            raise BenchError(f"uscstd: {err}")


def uscstd_config(iqn: str, backing: Path) -> str:
    """scst.conf for the bench: USCST_LUNS on one backing file."""
    return f"""HANDLER vdisk_fileio {{
\tDEVICE wb {{
\t\tfilename {backing}
\t\twrite_through 0
\t}}
\tDEVICE wt {{
\t\tfilename {backing}
\t\twrite_through 1
\t}}
}}
HANDLER vdisk_blockio {{
\tDEVICE bio {{
\t\tfilename {backing}
\t\twrite_through 0
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {iqn} {{
\t\tenabled 1
\t\tLUN {USCST_LUNS['wb']} wb
\t\tLUN {USCST_LUNS['wt']} wt
\t\tLUN {USCST_LUNS['bio']} bio
\t}}
}}
"""


def default_uscstd_cmd() -> list[str]:
    exe = shutil.which("uscstd")
    if exe:
        return [exe]
    if (REPO_ROOT / "tools" / "uscstd.py").exists() or \
            (REPO_ROOT / "tools" / "uscstd" / "__main__.py").exists():
        return [sys.executable, "-m", "tools.uscstd"]
    raise BenchError("uscstd not found: not on PATH and no tools/uscstd.py in "
                     f"{REPO_ROOT} (install the package or pass --uscstd CMD)")


# --------------------------------------------------------------------------
# One measured run

def _communicate_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> tuple[list[str], bool]:
    """Collect the output of every process within timeout (then SIGINT, then
    SIGKILL); (texts, timed_out). No process outlives this call."""
    outs: list[str] = []
    timed_out = False
    t_end = time.monotonic() + timeout
    try:
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=max(0.1, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.send_signal(signal.SIGINT)        # iscsi-perf drains and prints
                try:
                    out, _ = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate(timeout=5)
            outs.append(out.decode("utf-8", "replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:                # interrupted: no orphan initiator
                proc.kill()
                proc.wait(timeout=5)
    return outs, timed_out


def _spawn_clients(cmds: list[list[str]]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT) for c in cmds]


_QEMU_DONE_RE = re.compile(r"Run completed in ([0-9.]+) seconds")


def qemu_write_cmd(url: str, wl: Workload, count: int) -> list[str]:
    step = SCATTER_STRIDE if wl.random else wl.io_bytes
    return ["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-d", str(wl.queue_depth),
            "-c", str(count), "-s", str(wl.io_bytes), "-S", str(step), url]


def write_count(wl: Workload, iops_guess: float, seconds: int) -> int:
    """How many writes make a run of about `seconds` (qemu-img bench counts
    requests, not time)."""
    return max(200, min(int(iops_guess * seconds), 5_000_000))


def run_perf(server: Server, wl: Workload, seconds: int, rnd: int,
             guess: dict[tuple[str, str], float] | None = None) -> RunRecord:
    """One measured run of wl against server: iscsi-perf (reads, one
    process per session), qemu-img bench -w (writes) or idle sessions."""
    rec = RunRecord(round=rnd, workload=wl.name, server=server.label, ok=False,
                    seconds=seconds)
    if wl.io_bytes % server.block_size:
        rec.error = f"block size {server.block_size} does not divide {wl.io_bytes}"
        return rec
    url = server.url_for(wl.lun)
    blocks = wl.io_bytes // server.block_size
    key = (server.label, wl.name)
    count = 0
    if wl.idle:
        # qemu-io logs in and sleeps: a logged-in session with nothing to do
        cmd = ["qemu-io", "-f", "raw", "-c", f"sleep {seconds * 1000}", url]
    elif wl.write:
        count = write_count(wl, (guess or {}).get(key, 2000.0), seconds)
        cmd = qemu_write_cmd(url, wl, count)
    else:
        cmd = ["iscsi-perf", "-i", INITIATOR_IQN, "-m", str(wl.queue_depth),
               "-b", str(blocks), "-t", str(seconds)]
        if wl.random:
            cmd.append("-r")
        cmd.append(url)
    rec.perf_cmd = cmd
    try:
        server.check_alive()
    except BenchError as e:
        rec.error = str(e)
        return rec
    # A Nagle row leaves its mode set: put "off" back before any other row.
    mode = wl.nagle or ("off" if server.nagle_changed else "")
    if mode:
        err = server.set_nagle(mode)
        if err:
            rec.error = err
            return rec
        server.nagle_changed = mode != "off"
    rec.loadavg_before = loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = proc_tree_cpu_ticks(server.pid)
    t0 = time.monotonic()
    procs = _spawn_clients([cmd] * wl.sessions)
    if wl.idle:
        time.sleep(min(seconds, 5) / 2)
        rec.rss_mib = proc_rss_mib(server.pid)
    texts, timed_out = _communicate_all(procs, seconds * (4 if wl.write else 1) + PERF_GRACE)
    rec.wall_s = time.monotonic() - t0
    cpu1 = proc_tree_cpu_ticks(server.pid)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec.client_cpu_s = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
    rec.server_cpu_s = round((cpu1 - cpu0) / CLK_TCK, 3)
    if not wl.idle:
        rec.rss_mib = proc_rss_mib(server.pid)
    if timed_out:
        rec.error = f"the initiator did not finish within {rec.wall_s:.0f} s"
        return rec
    for proc, text in zip(procs, texts, strict=True):
        if proc.returncode != 0:
            tail = " | ".join(ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip())
            rec.error = f"{cmd[0]} exit {proc.returncode}: {tail[-300:]}"
            return rec
    if wl.idle:
        rec.ok = True
        return rec
    total_iops = 0.0
    busy_s = float(seconds)
    for text in texts:
        if wl.write:
            m = _QEMU_DONE_RE.search(text)
            if not m or float(m.group(1)) <= 0:
                rec.error = f"no 'Run completed' in qemu-img output: {text[-200:]!r}"
                return rec
            busy_s = float(m.group(1))
            total_iops += count / busy_s
            continue
        try:
            res = parse_perf_output(text)
        except ValueError as e:
            rec.error = str(e)
            return rec
        if res.io_bytes is not None and res.io_bytes != wl.io_bytes:
            rec.error = f"iscsi-perf used {res.io_bytes}-byte I/Os, wanted {wl.io_bytes}"
            return rec
        total_iops += res.iops
    rec.ok = True
    rec.iops = round(total_iops, 1)
    if guess is not None:
        guess[key] = total_iops
    rec.mib_s = round(total_iops * wl.io_bytes / MiB, 2)
    ios = total_iops * busy_s
    rec.cpu_s_per_100k = round(rec.server_cpu_s / ios * 1e5, 4) if ios else 0.0
    return rec


# --------------------------------------------------------------------------
# Summary and table

def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(records: list[RunRecord], workloads: Sequence[Workload]) -> list[dict[str, object]]:
    rows = []
    for wl in workloads:
        row: dict[str, object] = {"workload": wl.name, "title": wl.title}
        per_round: dict[int, dict[str, float]] = {}
        for label in ("tgtd", "uscst"):
            ok = [r for r in records if r.workload == wl.name and r.server == label and r.ok]
            row[f"{label}_runs"] = len(ok)
            row[f"{label}_iops"] = _median([r.iops for r in ok])
            row[f"{label}_mib_s"] = _median([r.mib_s for r in ok])
            row[f"{label}_cpu_s_per_100k"] = _median([r.cpu_s_per_100k for r in ok])
            row[f"{label}_rss_mib"] = _median([r.rss_mib for r in ok])
            if wl.idle:
                row[f"{label}_iops"] = row[f"{label}_mib_s"] = None
                row[f"{label}_cpu_s_per_100k"] = None
            for r in ok:
                per_round.setdefault(r.round, {})[label] = r.iops
        t, u = row["tgtd_iops"], row["uscst_iops"]
        row["ratio_iops"] = (u / t) if isinstance(t, float) and isinstance(u, float) and t else None
        ratios = [d["uscst"] / d["tgtd"] for d in per_round.values()
                  if "uscst" in d and d.get("tgtd")]
        row["ratio_per_round"] = [round(x, 3) for x in ratios]
        rows.append(row)
    return rows


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_table(rows: list[dict[str, object]]) -> str:
    head = ["workload", "tgtd IOPS", "uscst IOPS", "tgtd MiB/s", "uscst MiB/s",
            "tgtd CPU s/100k", "uscst CPU s/100k", "tgtd RSS MiB", "uscst RSS MiB",
            "uscst/tgtd IOPS"]
    body = []
    for r in rows:
        ratio = _fmt(r["ratio_iops"], ".2f")
        if ratio != "-":
            ratio += "x"
            pr = r["ratio_per_round"]
            if isinstance(pr, list) and len(pr) > 1:
                ratio += f" ({min(pr):.2f}-{max(pr):.2f})"
        body.append([str(r["title"]), _fmt(r["tgtd_iops"], ",.0f"), _fmt(r["uscst_iops"], ",.0f"),
                     _fmt(r["tgtd_mib_s"], ".1f"), _fmt(r["uscst_mib_s"], ".1f"),
                     _fmt(r["tgtd_cpu_s_per_100k"], ".2f"),
                     _fmt(r["uscst_cpu_s_per_100k"], ".2f"), _fmt(r["tgtd_rss_mib"], ".0f"),
                     _fmt(r["uscst_rss_mib"], ".0f"), ratio])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=False)))
             for row in [head, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def render_nagle(rows: list[dict[str, object]]) -> str:
    """uscst's 512 B sweep as ratios to Nagle off, per QD (same run): the
    Adaptive Nagle goal is >= 1.3x at its best QD and >= 0.97x at every
    QD <= 16. '' when the sweep did not run."""
    by = {str(r["workload"]): r.get("uscst_iops") for r in rows}
    lines = []
    for qd in NAGLE_QDS:
        off = by.get(f"randread512-qd{qd}-nagle-off")
        if not isinstance(off, float) or not off:
            continue
        cells = []
        for m in ("adaptive", "on"):
            v = by.get(f"randread512-qd{qd}-nagle-{m}")
            cells.append(f"{v / off:.2f}x" if isinstance(v, float) else "-")
        lines.append(f"{qd:>4} | {off:>9,.0f} | {cells[0]:>13} | {cells[1]:>7}")
    if not lines:
        return ""
    return "\n".join(["512B random read, uscst Nagle modes against off (same run)",
                      "  QD | off IOPS  | adaptive/off  | on/off", *lines])


# --------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench",
        description="Compare uscstd with Debian's tgtd on 127.0.0.1 using libiscsi's "
                    "iscsi-perf: alternating rounds, medians, server CPU per 100k I/Os.")
    p.add_argument("--uscstd", metavar="CMD",
                   help="command that starts uscstd (split like a shell); default: "
                        "'uscstd' on PATH, else 'python -m tools.uscstd' from the repo root")
    p.add_argument("--size", type=parse_size, default=None,
                   help="size of each backing file (default 1G; --quick: 64M)")
    p.add_argument("--seconds", type=int, default=None,
                   help="duration of each run (default 10; --quick: 3)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of alternating runs (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 3 s each, 64 MiB files")
    p.add_argument("--only", choices=("tgtd", "uscstd"),
                   help="run one server only")
    p.add_argument("--workloads", metavar="LIST",
                   help="comma-separated subset (default: all, about 40 min for a full "
                        "run) of: " + ", ".join(w.name for w in WORKLOADS))
    p.add_argument("--json", metavar="FILE", help="also save raw results as JSON")
    p.add_argument("--tgtd-port", type=int, default=3261)
    p.add_argument("--tgtd-control-port", type=int, default=None,
                   help="tgtd -C value (default: same as --tgtd-port)")
    p.add_argument("--uscstd-port", type=int, default=3262)
    p.add_argument("--uscstd-iqn", default=USCSTD_IQN)
    p.add_argument("--uscstd-log-level", default="warning",
                   help="passed as --log-level ('' to pass nothing)")
    p.add_argument("--uscstd-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for uscstd (repeatable)")
    p.add_argument("--ready-timeout", type=float, default=30.0,
                   help="seconds to wait for each server to accept a login")
    p.add_argument("--tmpdir", help="where to put the backing files (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (logs, backing files)")
    # debugging aid: the "uscst" side is a second tgtd, to test the harness
    p.add_argument("--standin-tgtd", action="store_true", help=argparse.SUPPRESS)
    return p


def resolve_args(args: argparse.Namespace) -> None:
    if args.size is None:
        args.size = 64 * MiB if args.quick else GiB
    if args.seconds is None:
        args.seconds = 3 if args.quick else 10
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.seconds < 2 or args.seconds > 3600:
        raise BenchError("--seconds must be between 2 and 3600 "
                         "(iscsi-perf prints its average once a second)")
    if args.rounds < 1 or args.rounds > 100:
        raise BenchError("--rounds must be between 1 and 100")
    if args.tgtd_control_port is None:
        args.tgtd_control_port = args.tgtd_port
    if args.workloads:
        names = [n.strip() for n in args.workloads.split(",") if n.strip()]
        known = {w.name: w for w in WORKLOADS}
        bad = [n for n in names if n not in known]
        if bad:
            raise BenchError(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(known)}")
        args.workload_list = [known[n] for n in names]
    else:
        args.workload_list = list(WORKLOADS)


def check_tools(need_tgtd: bool) -> None:
    for tool, pkg in (("iscsi-perf", "libiscsi-bin"), ("iscsi-readcapacity16", "libiscsi-bin"),
                      ("qemu-img", "qemu-utils"), ("qemu-io", "qemu-utils")):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found on PATH (Debian package {pkg})")
    if need_tgtd:
        for tool in ("tgtd", "tgtadm"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found on PATH (Debian package tgt)")


def print_machine(info: dict[str, object]) -> None:
    mem = info.get("mem_available")
    mem_s = f", {int(mem) / GiB:.1f} GiB available" if isinstance(mem, int) else ""
    print(f"machine: {info['cpu_model']}, {info['cpus_usable']} usable of "
          f"{info['cpus_online']} CPUs, kernel {info['kernel']}, Python {info['python']}"
          f"{mem_s}, load {info['loadavg']}")


def _install_signal_handlers() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into SystemExit so cleanup runs."""
    old = {}

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(f"bench: interrupted by signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        old[s] = signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)
    return restore


def bench(args: argparse.Namespace) -> int:
    want_tgtd = args.only in (None, "tgtd")
    want_uscstd = args.only in (None, "uscstd")
    check_tools(want_tgtd or (want_uscstd and args.standin_tgtd))
    uscstd_cmd: list[str] = []
    if want_uscstd and not args.standin_tgtd:
        uscstd_cmd = shlex.split(args.uscstd) if args.uscstd else default_uscstd_cmd()
        if not uscstd_cmd:
            raise BenchError("--uscstd is empty")

    info = machine_info()
    print_machine(info)
    mem = info.get("mem_available")
    nfiles = int(want_tgtd) + int(want_uscstd)
    if isinstance(mem, int) and nfiles * args.size > mem * 0.8:
        print(f"bench: warning: {nfiles} x {format_size(args.size)} may not stay in the "
              f"page cache ({mem / GiB:.1f} GiB available); reads may hit the disk",
              file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="uscst-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    records: list[RunRecord] = []
    restore = _install_signal_handlers()
    try:
        free = shutil.disk_usage(workdir).free
        if nfiles * args.size > free - 64 * MiB:
            raise BenchError(f"not enough space in {workdir.parent} for {nfiles} x "
                             f"{format_size(args.size)} ({free / GiB:.1f} GiB free); "
                             "use --size or --tmpdir")
        seed = os.urandom(MiB)
        t0 = time.monotonic()
        files = {}
        for label, want in (("tgtd", want_tgtd), ("uscst", want_uscstd)):
            if want:
                f = workdir / f"{label}.img"
                make_backing_file(f, args.size, seed)
                files[label] = f
        warm = sum(warm_file(f) for f in files.values())
        print(f"backing files: {nfiles} x {format_size(args.size)} in {workdir} "
              f"(written and read in {time.monotonic() - t0:.1f} s, warm read {warm:.2f} s)")

        if want_tgtd:
            s = TgtdServer("tgtd", args.tgtd_port, workdir, args.tgtd_control_port, TGTD_IQN)
            servers.append(s)
            s.start(files["tgtd"])
        if want_uscstd:
            if args.standin_tgtd:
                s = TgtdServer("uscstd", args.uscstd_port, workdir, args.uscstd_port,
                               STANDIN_IQN)
                s.label = "uscst"
                servers.append(s)
                s.start(files["uscst"])
                print("NOTE: stand-in mode: the 'uscst' column is a second tgtd")
            else:
                s = UscstdServer("uscstd", args.uscstd_port, workdir, uscstd_cmd,
                                 args.uscstd_iqn, args.uscstd_log_level, args.uscstd_arg)
                servers.append(s)
                s.start(files["uscst"], args.size)
        for s in servers:
            s.wait_ready(args.ready_timeout)
            cap = getattr(s, "capacity", None)
            if cap is not None and cap != args.size:
                print(f"bench: warning: {s.name} reports {cap} bytes, file has {args.size}",
                      file=sys.stderr)
            print(f"{s.name}: pid {s.pid}, {s.url}, block size {s.block_size}")

        print(f"runs: {args.rounds} round(s) x {len(args.workload_list)} workload(s) x "
              f"{len(servers)} server(s), {args.seconds} s each")
        by_label = {s.label: s for s in servers}
        order = [label for label in ("tgtd", "uscst") if label in by_label]
        guess: dict[tuple[str, str], float] = {}
        for rnd in range(1, args.rounds + 1):
            for wl in args.workload_list:
                seq = order if rnd % 2 == 1 else order[::-1]
                for label in seq:
                    if not wl.write and not wl.idle:
                        # A read row starts from a warm page cache whatever
                        # ran before it: a direct-I/O write row (blockio,
                        # tgtd's aio) drops the cached pages it overwrites.
                        warm_file(files[label])
                    elif wl.write and wl.lun == "bio":
                        settle_file(files[label], drop=True)     # direct I/O only
                    if wl.write and (label, wl.name) not in guess:
                        # qemu-img bench counts requests: a short unrecorded
                        # run learns the rate that makes a run of --seconds
                        run_perf(by_label[label], wl, 1, 0, guess)
                        settle_file(files[label])
                    rec = run_perf(by_label[label], wl, args.seconds, rnd, guess)
                    if wl.write:
                        settle_file(files[label])   # the next run starts clean
                    records.append(rec)
                    if rec.ok:
                        print(f"  round {rnd} {wl.title:<20} {label:<5} "
                              f"{rec.iops:>9,.0f} IOPS {rec.mib_s:>8.1f} MiB/s  "
                              f"server CPU {rec.server_cpu_s:.2f} s "
                              f"({rec.cpu_s_per_100k:.2f} s/100k) RSS {rec.rss_mib:.0f} MiB",
                              flush=True)
                    else:
                        print(f"  round {rnd} {wl.title:<20} {label:<5} FAILED: "
                              f"{rec.error}", flush=True)
    finally:
        # cleanup is bounded (about 20 s per server); a second ^C or
        # SIGTERM must not cut it short and leave a daemon behind
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            for s in reversed(servers):
                s.stop()
        finally:
            signal.signal(signal.SIGINT, old_int)
            restore()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(records, args.workload_list)
    print()
    print(f"medians over {args.rounds} round(s), {args.seconds} s per run; "
          "CPU = server utime+stime per 100k I/Os; ratio in parentheses: per-round range")
    print(render_table(rows))
    nagle = render_nagle(rows)
    if nagle:
        print()
        print(nagle)
    if args.json:
        doc = {
            "machine": info,
            "config": {"size": args.size, "seconds": args.seconds, "rounds": args.rounds,
                       "standin_tgtd": bool(args.standin_tgtd), "only": args.only,
                       "servers": {s.label: {"cmd": getattr(s, "cmd", []), "url": s.url,
                                             "block_size": s.block_size} for s in servers}},
            "runs": [asdict(r) for r in records],
            "summary": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"raw results: {args.json}")
    failed = [r for r in records if not r.ok]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_args(args)
        return bench(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
