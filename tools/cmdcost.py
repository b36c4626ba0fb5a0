#!/usr/bin/env python3
"""cmdcost: Python bytecodes and calls per SCSI command inside uscstd.

Host tool, not kernel idiom. The one measure of the command path's work
that machine load cannot move (docs/performance.md uses it throughout):
uscstd runs in a child process under a `sys.settrace` hook with
`f_trace_opcodes` (set before boot, so the kthreads' greenlets are traced
too); a warm-up of qemu-img bench commands runs untraced by the count,
then SIGUSR1 starts counting, the measured commands run, SIGUSR2 dumps the
counts, and they are divided by the number of commands (calls of
`_scsi_cmd_rx_start`, one per SCSI command PDU). Only uscst's own code
counts (kshim/, scst_core/, iscsi_scst/, vdisk/); the standard library and
trio (tens of bytecodes per command, more under load) are left out.

The load: `qemu-img bench -f raw -t none` (libiscsi, 127.0.0.1) at the
given size and depth, reads by default, on a 256 MiB vdisk_fileio LUN
(write-back) filled with random bytes and read once, so reads hit the
page cache. Tracing makes uscstd about ten times slower; the counts do
not depend on it.

Usage: python -m tools.cmdcost [--count N] [--depth D] [--size BYTES]
                               [--write] [--full-path] [--blockio] [--by-line]
                               [--top K] [--port P]
--full-path turns READ and WRITE prediction off (decisions 0072, 0073),
so every command takes the SCST state machine; --blockio measures a
vdisk_blockio LUN (direct I/O) instead of vdisk_fileio; --by-line lists
source lines instead of functions (a line's calls column is 0: calls
belong to functions).
Prints: commands, bytecodes and Python calls per command, and the top K
functions (or lines) by bytecodes per command. Exit 1 when the load or
uscstd fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Callable, NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
OURS = tuple(str(REPO_ROOT / d) + "/" for d in ("kshim", "scst_core", "iscsi_scst", "vdisk"))
IQN = "iqn.2026-12.org.uscst:cmdcost"
LUN_BYTES = 256 << 20
READY_S = 30.0
STEP_TIMEOUT_S = 600


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("cmdcost: ...", exit 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"cmdcost: {message} (see python -m tools.cmdcost --help)", file=sys.stderr)
        sys.exit(2)


def _child(out: str, full_path: bool, by_line: bool, uscstd_args: list[str]) -> None:
    """Run uscstd in this process with the counting hook (the --child mode)."""
    counts: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    on = [False]

    def local(frame: FrameType, event: str, _arg: object) -> Callable:
        if on[0] and event == "opcode":
            counts[(frame.f_code, frame.f_lineno if by_line else 0)] += 1
        return local

    def call(frame: FrameType, _event: str, _arg: object) -> Callable:
        frame.f_trace_opcodes = True
        if on[0]:
            calls[frame.f_code] += 1
        return local

    def start(*_a: object) -> None:
        counts.clear()
        calls.clear()
        on[0] = True

    def dump(*_a: object) -> None:
        on[0] = False
        # By line, a function's calls are a row of their own (no bytecodes)
        rows = [(c.co_filename, line or c.co_firstlineno, c.co_name, n,
                 0 if by_line else calls[c]) for (c, line), n in counts.items()]
        if by_line:
            rows += [(c.co_filename, c.co_firstlineno, c.co_name, 0, n) for c, n in calls.items()]
        Path(out).write_text(json.dumps(rows))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    sys.path.insert(0, str(REPO_ROOT))
    if full_path:
        from scst_core import fastpath
        fastpath.scst_fast_read = fastpath.scst_fast_write = 0
    sys.argv = ["uscstd", *uscstd_args]
    sys.settrace(call)
    runpy.run_module("tools.uscstd", run_name="__main__", alter_sys=True)


def _qemu_bench(port: int, count: int, depth: int, size: int, write: bool) -> None:
    spec = {"file.driver": "iscsi", "file.transport": "tcp", "file.portal": f"127.0.0.1:{port}",
            "file.target": IQN, "file.lun": 0, "file.initiator-name": f"{IQN}-ini"}
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-d", str(depth), "-c", str(count),
           "-s", str(size), "-S", str(7919 * size)]
    if write:
        cmd.append("-w")
    r = subprocess.run([*cmd, "json:" + json.dumps(spec)], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"qemu-img bench failed: {(r.stderr or r.stdout).strip()[-300:]}")


def _wait_ready(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while "ready at" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"uscstd did not start: {log.read_text(errors='replace')[-300:]}")
        time.sleep(0.1)


def measure(count: int, depth: int, size: int, write: bool, port: int,
            full_path: bool = False, handler: str = "vdisk_fileio", by_line: bool = False) -> list:
    """Run the load; return rows (file, line, function, bytecodes, calls):
    one per function, or (by_line) one per source line that ran and one
    per function for its calls."""
    with tempfile.TemporaryDirectory(prefix="cmdcost-") as tmp:
        w = Path(tmp)
        disk = w / "disk.img"
        with open(disk, "wb") as f:
            for _ in range(LUN_BYTES >> 20):
                f.write(os.urandom(1 << 20))
        disk.read_bytes()
        conf = w / "scst.conf"
        conf.write_text(f"HANDLER {handler} {{\n\tDEVICE d0 {{\n\t\tfilename {disk}\n"
                        f"\t\twrite_through 0\n\t}}\n}}\nTARGET_DRIVER iscsi {{\n\tenabled 1\n"
                        f"\tTARGET {IQN} {{\n\t\tenabled 1\n\t\tLUN 0 d0\n\t}}\n}}\n")
        out = w / "counts.json"
        log = w / "uscstd.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tools.cmdcost", "--child", str(out),
                 ("full" if full_path else "fast") + ("-lines" if by_line else ""), "--",
                 "--portal", f"127.0.0.1:{port}", "--config", str(conf), "--data-dir", str(w),
                 "--log-level", "warning"], cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, log)
            _qemu_bench(port, max(count // 4, 1000), depth, size, write)
            proc.send_signal(signal.SIGUSR1)
            _qemu_bench(port, count, depth, size, write)
            proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not out.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("uscstd wrote no counts")
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return json.loads(out.read_text())


def summarize(rows: list, top: int) -> tuple[int, float, float, list[str]]:
    """(commands, bytecodes per command, calls per command, top lines)."""
    cmds = sum(r[4] for r in rows if r[2] == "_scsi_cmd_rx_start")
    ours = [r for r in rows if r[0].startswith(OURS)]
    if not cmds:
        raise RuntimeError("no SCSI command was counted")
    lines = []
    for f, line, name, n, c in sorted(ours, key=lambda r: -r[3])[:top]:
        lines.append(f"{n / cmds:9.1f} {c / cmds:6.2f}  {name} "
                     f"({os.path.relpath(f, REPO_ROOT)}:{line})")
    return (cmds, sum(r[3] for r in ours) / cmds, sum(r[4] for r in ours) / cmds, lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2].startswith("full"), argv[2].endswith("-lines"), argv[4:])
        return 0
    p = _Parser(prog="cmdcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=20000, help="commands measured (default 20000)")
    p.add_argument("--depth", type=int, default=32, help="queue depth (default 32)")
    p.add_argument("--size", type=int, default=4096, help="bytes per command (default 4096)")
    p.add_argument("--write", action="store_true", help="WRITEs instead of READs")
    p.add_argument("--full-path", action="store_true",
                   help="READ and WRITE prediction off: every command through the state "
                   "machine")
    p.add_argument("--blockio", action="store_true",
                   help="a vdisk_blockio LUN (direct I/O) instead of vdisk_fileio")
    p.add_argument("--by-line", action="store_true",
                   help="list source lines, not functions (each line's bytecodes per command)")
    p.add_argument("--top", type=int, default=15,
                   help="functions (or lines) listed (default 15)")
    p.add_argument("--port", type=int, default=3297, help="uscstd's port on 127.0.0.1")
    args = p.parse_args(argv)
    if args.count < 1 or args.depth < 1 or args.size < 512 or args.size % 512:
        p.error("--count and --depth must be positive, --size a multiple of 512")
    try:
        rows = measure(args.count, args.depth, args.size, args.write, args.port,
                       args.full_path, "vdisk_blockio" if args.blockio else "vdisk_fileio",
                       args.by_line)
        cmds, bc, calls, lines = summarize(rows, args.top)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"cmdcost: {e}", file=sys.stderr)
        return 1
    kind = "WRITE" if args.write else "READ"
    print(f"{cmds} {kind}s of {args.size} bytes at QD{args.depth}: "
          f"{bc:.1f} bytecodes and {calls:.2f} Python calls per command (uscst's code)")
    print(f"bytecodes  calls  per command, by {'source line' if args.by_line else 'function'}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
