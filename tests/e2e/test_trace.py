"""Tracing a real run: libiscsi (iscsi-perf, qemu-img, qemu-io) reads and
writes against uscstd while `uscstadmin trace` records; the Perfetto JSON
export must be valid trace-event format (fields, nesting, flows) and show
each command's states in SCST's order, one flow per command."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.trace_export import SCST_STATE_ORDER, check_trace, command_states

REPO = Path(__file__).resolve().parents[2]
needs = pytest.mark.skipif(not (shutil.which("iscsi-perf") and shutil.which("qemu-img")
                                and shutil.which("qemu-io")),
                           reason="libiscsi-bin and qemu-utils needed")


def _admin(sock: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(sock), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"uscstadmin {args}: {r.stderr}"
    return r.stdout


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv[0]}: {r.stdout}{r.stderr}"


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory) -> dict:
    """One uscstd, one recorded trace of reads, small and large writes."""
    from uscstd_support import finish_uscstd, start_uscstd
    tmp = tmp_path_factory.mktemp("trace")
    sock = tmp / "ctl.sock"
    srv = start_uscstd(tmp / "srv", "--control", str(sock))
    try:
        _admin(sock, "trace", "start", "--events", "scst_*,iscsi_*,block_*,softirq,sched_*",
               "--buffer-kb", "65536")
        url = srv.url
        src = tmp / "src.img"
        src.write_bytes(os.urandom(2 << 20))
        # A 2 MiB write: beyond FirstBurstLength, so R2Ts and Data-Out.
        _run("qemu-img", "convert", "-n", "-O", "raw", str(src), url)
        # A 4 KiB write with immediate data, read back.
        _run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4k", "-c", "read -P 0xab 0 4k", url)
        _run("iscsi-perf", "-t", "1", "-m", "4", url)
        _admin(sock, "trace", "stop")
        out = tmp / "run.json"
        _admin(sock, "trace", "dump", "-o", str(out))
        raw = json.loads(_admin(sock, "trace", "dump", "--format", "raw"))
        srv.assert_healthy()
    finally:
        finish_uscstd(srv)
    return {"doc": json.loads(out.read_text()), "raw": raw}


@needs
def test_trace_of_a_libiscsi_run_is_valid_trace_event_json(traced_run):
    doc = traced_run["doc"]
    assert check_trace(doc) == []
    phases = {e["ph"] for e in doc["traceEvents"]}
    assert {"X", "M", "C", "s", "t", "f"} <= phases
    names = {e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"CPU 0", "softirq"} <= names
    assert any(n.startswith("iscsird/") for n in names)
    assert any(n.startswith("iscsiwr/") for n in names)


@needs
def test_each_command_has_one_flow_from_its_pdu_to_its_response(traced_run):
    doc, raw = traced_run["doc"], traced_run["raw"]
    assert raw["overrun"] == 0
    done = [r for r in raw["records"] if r[1] == "scst_tgt_cmd_done"]
    flows: dict[int, list[dict]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] in ("s", "t", "f"):
            flows.setdefault(e["id"], []).append(e)
    assert len(flows) == len(done) > 100
    x_at = {(e["tid"], e["ts"]): e for e in doc["traceEvents"] if e["ph"] == "X"}
    for fl in flows.values():
        fl.sort(key=lambda e: e["ts"])
        assert x_at[(fl[0]["tid"], fl[0]["ts"])]["name"] == "rx SCSI Command"
        assert x_at[(fl[-1]["tid"], fl[-1]["ts"])]["name"] == "scst_tgt_cmd_done"


@needs
def test_each_command_runs_its_states_in_scst_order(traced_run):
    states = command_states(traced_run["doc"])
    assert states
    for seq in states.values():
        order = [SCST_STATE_ORDER[s] for s in seq]
        assert order == sorted(order), seq
        assert seq[0] == "PARSE" and seq[-1] == "XMIT_RESP", seq
    seqs = {tuple(s) for s in states.values()}
    assert any("RDY_TO_XFER" in s for s in seqs)           # the large write solicited data
    assert any("RDY_TO_XFER" not in s and "REAL_EXEC" in s for s in seqs)


@needs
def test_trace_shows_r2t_data_out_and_backing_io(traced_run):
    names = {e["name"] for e in traced_run["doc"]["traceEvents"] if e["ph"] == "X"}
    assert {"tx R2T", "rx Data-Out", "rx SCSI Command", "tx SCSI Response", "tx Data-In",
            "rq_issue file_pwritev", "rq_complete file_pwritev"} <= names
    counters = {e["name"].split(" iqn")[0] for e in traced_run["doc"]["traceEvents"]
                if e["ph"] == "C"}
    assert counters == {"queue depth", "R2T outstanding"}


@needs
def test_trace_checker_catches_a_crossing_slice_and_a_broken_flow(traced_run):
    doc = copy.deepcopy(traced_run["doc"])
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["name"] == "PARSE"]
    parent = next(e for e in doc["traceEvents"] if e["ph"] == "X"
                  and e["name"] == "rx SCSI Command" and e["tid"] == xs[0]["tid"]
                  and e["ts"] <= xs[0]["ts"] <= e["ts"] + e["dur"])
    xs[0]["dur"] = parent["ts"] + parent["dur"] - xs[0]["ts"] + 5
    assert any("crosses its parent" in p for p in check_trace(doc))
    doc = copy.deepcopy(traced_run["doc"])
    fin = next(e for e in doc["traceEvents"] if e["ph"] == "f")
    doc["traceEvents"].remove(fin)
    assert any("0 ends" in p for p in check_trace(doc))
    doc = copy.deepcopy(traced_run["doc"])
    step = next(e for e in doc["traceEvents"] if e["ph"] == "t")
    step["ts"] += 0.0005
    assert any("binds to no slice" in p for p in check_trace(doc))
