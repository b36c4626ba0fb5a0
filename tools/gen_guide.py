"""Generate docs/guide/ from real runs: each page's timeline and sequence
diagram are drawn from a trace recorded while a real initiator does what
the page explains.

Host tool. It starts one uscstd (loopback, a free port, a private control
socket), and for each page: starts tracing, runs the page's scenario with
a real initiator (libiscsi's iscsi-inq for the login; the tests' Python
initiator, tests/initiator.py, where the page needs exact control: a WRITE
with immediate data and R2Ts, an ABORT TASK racing a WRITE, a LUN
RESET), stops, exports the trace (tools/trace_export) and draws it
(tools/trace_html) into docs/guide/img/. The prose is in PAGES below;
the figures and step tables are generated.

    python -m tools.gen_guide --write          regenerate docs/guide/
    python -m tools.gen_guide --check          regenerate into a temporary
        directory and compare each page's skeleton (its prose, and the kinds
        of steps its diagram shows: states, PDUs, calls, lanes; not times,
        tags or thread ids, which differ run to run) with docs/guide/

Real runs differ in their times and thread ids; under the sim engine the
same seed will draw the same pictures.
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tests.initiator import TMF_ABORT_TASK, TMF_LUN_RESET, Initiator, TaskAborted
from tools import trace_export, trace_html

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "guide"
IQN = "iqn.2026-11.org.uscst:guide"
BS = 512
TIMEOUT = 20.0
EVENTS = "scst_*,iscsi_*,block_*,softirq,sched_*"


def _cdb10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


class Daemon:
    """One uscstd for the whole run, and its control socket."""

    def __init__(self, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.sock = work / "ctl.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.uscstd", "--portal", f"127.0.0.1:{self.port}",
             "--disk", str(work / "disk.img"), "--size", "64M", "--iqn", IQN,
             "--control", str(self.sock), "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not self.sock.exists():   # bounded
            if self.proc.poll() is not None:
                raise RuntimeError("uscstd exited before its control socket appeared")
            time.sleep(0.05)
        if not self.sock.exists():
            raise RuntimeError("uscstd's control socket did not appear")
        self.url = f"iscsi://127.0.0.1:{self.port}/{IQN}/0"

    def admin(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(self.sock),
                            *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"uscstadmin {args}: {r.stderr}")
        return r.stdout

    def trace(self, scenario: Callable[["Daemon"], dict]) -> tuple[dict, dict]:
        """Run scenario while tracing; (Perfetto doc, what the scenario chose)."""
        self.admin("trace", "start", "--events", EVENTS, "--buffer-kb", "65536")
        chosen = scenario(self)
        self.admin("trace", "stop")
        raw = json.loads(self.admin("trace", "dump", "--format", "raw"))
        return trace_export.to_perfetto(raw), chosen

    def initiator(self, **keys: str) -> Initiator:
        ini = Initiator(host="127.0.0.1", port=self.port, timeout=TIMEOUT)
        ini.connect()
        ini.login(IQN, keys=keys or None)
        return ini

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- scenarios: each returns {"itt": ...} or {"login": n} -----------------------

def sc_login(d: Daemon) -> dict:
    subprocess.run(["iscsi-inq", d.url], capture_output=True, timeout=60, check=True)
    return {"login": 0}


def sc_read(d: Daemon) -> dict:
    ini = d.initiator()
    try:
        ini.write10(0, bytes(range(256)) * 32)               # 8 KiB, so the READ hits cache
        itts = [ini.submit(_cdb10(0x28, 0, 16), read_len=16 * BS) for _ in range(4)]
        for itt in itts:
            ini.wait(itt)
        ini.logout()
    finally:
        ini.close()
    return {"itt": itts[0]}


def sc_write(d: Daemon) -> dict:
    # ImmediateData=Yes, InitialR2T=Yes: the first MaxRecvDataSegmentLength
    # bytes ride in the command PDU, the rest is solicited by R2Ts.
    ini = d.initiator(ImmediateData="Yes", InitialR2T="Yes", FirstBurstLength="65536",
                      MaxBurstLength="65536", MaxRecvDataSegmentLength="65536")
    try:
        itt = ini.submit(_cdb10(0x2A, 64, 512), data_out=b"\x5a" * (256 * 1024))
        ini.wait(itt)
        ini.logout()
    finally:
        ini.close()
    return {"itt": itt}


def _write_waiting_for_r2t(ini: Initiator, lba: int, n: int) -> int:
    itt = ini.submit(_cdb10(0x2A, lba, n // BS), data_out=b"\x77" * n, immediate=False)
    pdu = ini.recv_pdu(TIMEOUT)              # take the R2T so no data is sent
    if pdu.itt != itt:
        raise RuntimeError(f"expected the R2T of ITT {itt:#x}, got {pdu!r}")
    return itt


def sc_abort(d: Daemon) -> dict:
    ini = d.initiator(InitialR2T="Yes")
    try:
        itt = _write_waiting_for_r2t(ini, 100, 128 * 1024)
        ini.task_mgmt(TMF_ABORT_TASK, ref_itt=itt)
        try:
            ini.wait(itt)
        except TaskAborted:
            pass
        ini.logout()
    finally:
        ini.close()
    return {"itt": itt}


def sc_reset(d: Daemon) -> dict:
    ini = d.initiator(InitialR2T="Yes")
    try:
        itt = _write_waiting_for_r2t(ini, 600, 128 * 1024)
        ini.task_mgmt(TMF_LUN_RESET)
        try:
            ini.wait(itt)
        except TaskAborted:
            pass
        ini.test_unit_ready()                # reports the reset's unit attention
        ini.logout()
    finally:
        ini.close()
    return {"itt": itt}


# -- pages -------------------------------------------------------------------------

PAGES: list[tuple[str, str, Callable[[Daemon], dict], str]] = [
    ("01-layers-and-one-cpu", "The layers and the one CPU", sc_read, """\
uscst is three kernel-style layers on kshim: the iSCSI driver
(iscsi_scst/: PDUs, login, the rd and wr threads of each connection), the
SCSI target core (scst_core/: the command state machine, LUNs, task
management) and the dev handlers (vdisk/). Below them kshim emulates the
kernel API on ONE CPU: every kthread is a greenlet and switches only in
schedule(); socket readiness, timers and I/O completions run as softirqs
between kthread runs.

The timeline shows that machine as it ran four READs: the CPU track has
one slice per kthread run (only one runs at a time, and a run ends only
when the kthread sleeps), the softirq track the socket callbacks
(iscsi_data_ready wakes the rd thread), and each kthread its work. The rd
thread parses the SCSI Command PDUs and runs each command through
SCST's states in its own context; a READ whose data the page cache holds
finishes there (the handler's exec_nowait), and the rd thread sends the
responses itself before it sleeps.
"""),
    ("02-login", "A login", sc_login, """\
A login runs on the connection's rd thread: each Login Request's keys go
to the login state machine (iscsi_scst/usr/iscsid.py, `login_transitions`),
which answers with the keys it accepts. CSG/NSG say the stage (0 security,
1 operational, 3 full feature); T (transit) moves on. The last response
brings the connection into full feature phase, where SCSI commands flow.
The steps table lists the keys each side sent (CHAP values are never
traced).
"""),
    ("03-read", "A READ", sc_read, """\
A READ(10) of 16 blocks, traced from its PDU to its Data-In. The rd thread
receives the SCSI Command PDU (`iscsi_rx_hdr`), allocates the iscsi_cmnd
and scst_cmd (`kmem_cache_alloc`, GFP_KERNEL: the rd thread may sleep) and
calls `scst_cmd_init_done`. SCST runs PARSE (the CDB decoded by
cdbprobe), PREPARE_SPACE (pages for the data) and REAL_EXEC in the same
context: vdisk_fileio's exec_nowait reads from the page cache with
RWF_NOWAIT, so no device thread is needed. DEV_DONE and XMIT_RESP queue
the response; StatSN is assigned when it is built, and the data and status
leave in one Data-In PDU. `scst_tgt_cmd_done` frees the command. This is
the full path, which a trace always shows: with nothing traced, a plain
READ like this one is answered before any scst_cmd exists (READ
prediction, docs/architecture.md 5.4).
"""),
    ("04-write-r2t", "A WRITE with immediate data and R2T", sc_write, """\
A 256 KiB WRITE with ImmediateData=Yes, InitialR2T=Yes, 64 KiB bursts:
the first 64 KiB ride in the SCSI Command PDU as immediate data; the rest
the target solicits. RDY_TO_XFER calls the driver's rdy_to_xfer, which
sends an R2T per burst (MaxOutstandingR2T at a time); each Data-Out
sequence lands straight in the command's pages. When the last byte is in,
`scst_rx_data` moves the command to REAL_EXEC, and exec runs right there
on the rd thread: a plain WRITE never sleeps, it starts an asynchronous
pwritev on a kiocb (block_rq_issue; io_uring, or the host's worker pool
where io_uring is refused) and returns; with write-through (the default)
the write and an fdatasync of its range are that one I/O
(file_pwritev_sync: on io_uring a write linked to a ranged fsync). The
completion comes back in softirq context (block_rq_complete) once the data
is stable, and the command finishes in softirq: scst_exec_done, DEV_DONE, XMIT_RESP, then the wr thread sends
the response. No device thread is involved. With nothing traced, a WRITE
of up to 32 KiB whose data all came in its PDU is started with no
scst_cmd at all, and its response queued from that completion (WRITE
prediction, docs/architecture.md 5.4).
"""),
    ("05-abort-task", "An ABORT TASK racing a WRITE", sc_abort, """\
The WRITE is in DATA_WAIT: its R2T went out, its data never comes. The
initiator sends ABORT TASK for its ITT. The rd thread hands it to SCST
(`scst_rx_mgmt_fn`), which marks the command aborted and, since it waits
for data, asks the driver to stop waiting (`on_abort_cmd`): the command
goes on to XMIT_RESP without reaching the device, sends no response (the
TMF response speaks for it) and is freed. Only then does
`task_mgmt_fn_done` let the TMF response go out: SAM wants the response to
follow the aborted task's end.
"""),
    ("06-lun-reset", "A LUN reset", sc_reset, """\
LUN RESET aborts every task of the LUN's task set (here the WRITE waiting
for its data, which ends as an aborted task does), then queues the unit
attention BUS DEVICE RESET FUNCTION OCCURRED (06/29/03) on every I_T
nexus of the LUN, the one that asked included, and releases RESERVE(6)
reservations (scst_pr_dev_reset). The TMF response leaves only after the
aborted task is freed. The next command of each nexus gets CHECK
CONDITION with that unit attention before anything else.
"""),
]


def _skeleton(svg: str) -> list[str]:
    """The kinds of steps a sequence diagram shows, without the numbers
    and thread ids that differ run to run, deduplicated in order."""
    out: list[str] = []
    for label in re.findall(r'font-size="11" fill="#111">([^<]*)</text>', svg):
        label = re.sub(r"^\+[\d.]+ us\s+", "", label)
        label = re.sub(r"\[([A-Za-z_]+)[^\]]*\]", r"[\1]", label)
        label = re.sub(r"\([^)]*\)", "", label)
        label = re.sub(r"\b0x[0-9a-f]+\b|(?<![\w.])-?\d+\b", "N", label)
        label = re.sub(r"\s+", " ", label).strip()
        if label not in out:
            out.append(label)
    return out


def render_page(name: str, title: str, prose: str, doc: dict, chosen: dict,
                out: Path) -> str:
    """Write name's figures into out/img and return its markdown."""
    tr = trace_html.Trace(doc)
    steps = tr.login(chosen["login"]) if "login" in chosen else tr.command(chosen["itt"])
    if not steps:
        raise RuntimeError(f"{name}: the trace has no steps for {chosen}")
    t0 = steps[0]["ts"] - 30
    t1 = max(x["ts"] + x.get("dur", 0) for x in steps) + 30
    what = "Login" if "login" in chosen else f"Command ITT {steps[0]['args'].get('itt', 0):#x}"
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    (img / f"{name}-timeline.svg").write_text(trace_html.timeline_svg(tr, t0, t1, steps))
    seq = trace_html.sequence_svg(tr, steps, what)
    (img / f"{name}-sequence.svg").write_text(seq)
    rows = "\n".join(
        f"| +{x['ts'] - steps[0]['ts']:.1f} | {tr.names.get(x['tid'], x['tid'])} | "
        f"{x['name']} |" for x in steps)
    skel = "\n".join(f"- {s}" for s in _skeleton(seq))
    return (f"# {title}\n\n<!-- generated by tools/gen_guide.py from a real run: "
            f"do not edit; edit PAGES there -->\n\n{prose}\n"
            f"## Timeline\n\n![timeline](img/{name}-timeline.svg)\n\n"
            f"## Sequence\n\n![sequence](img/{name}-sequence.svg)\n\n"
            f"## Steps\n\n| us | thread | step |\n|---|---|---|\n{rows}\n\n"
            f"## Step kinds (what `--check` compares)\n\n{skel}\n")


def generate(out: Path) -> dict[str, str]:
    """Run every scenario against one uscstd; write pages and figures into out."""
    out.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="uscst-guide-") as work:
        d = Daemon(Path(work))
        try:
            for name, title, scenario, prose in PAGES:
                doc, chosen = d.trace(scenario)
                pages[name] = render_page(name, title, prose, doc, chosen, out)
                (out / f"{name}.md").write_text(pages[name])
        finally:
            d.stop()
    index = "# The guide: the target as it really runs\n\n" + "".join(
        f"{i + 1}. [{title}]({name}.md)\n" for i, (name, title, _s, _p) in enumerate(PAGES)) + (
        "\nEvery figure is drawn from a trace of a real run by tools/gen_guide.py; "
        "tests/test_guide.py regenerates them and checks the pages still say what "
        "the code does.\n\nTo write a module of your own: "
        "[writing a module](writing-a-module.md).\n")
    (out / "README.md").write_text(index)
    return pages


def _page_skeleton(md: str) -> tuple[str, str]:
    prose = md.split("## Timeline", 1)[0]
    kinds = md.split("## Step kinds", 1)[-1]
    return prose, kinds


def check(guide: Path) -> list[str]:
    """Differences between guide/ and a fresh generation ([] if none)."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="uscst-guide-check-") as tmp:
        fresh = generate(Path(tmp))
        for name, text in fresh.items():
            committed = guide / f"{name}.md"
            if not committed.exists():
                problems.append(f"{committed} is missing")
                continue
            old_prose, old_kinds = _page_skeleton(committed.read_text())
            new_prose, new_kinds = _page_skeleton(text)
            if old_prose != new_prose:
                problems.append(f"{committed}: its prose differs from PAGES")
            if old_kinds != new_kinds:
                problems.append(f"{committed}: a fresh run shows other step kinds:\n"
                                f"committed:{old_kinds}\nfresh:{new_kinds}")
            for fig in ("timeline", "sequence"):
                if not (guide / "img" / f"{name}-{fig}.svg").exists():
                    problems.append(f"{name}: img/{name}-{fig}.svg is missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gen_guide", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="regenerate docs/guide/")
    g.add_argument("--check", action="store_true", help="exit 1 if docs/guide/ is stale")
    args = p.parse_args(argv)
    if args.write:
        generate(GUIDE)
        print(f"gen_guide: wrote {GUIDE}")
        return 0
    problems = check(GUIDE)
    for pr in problems:
        print(f"gen_guide: {pr}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
