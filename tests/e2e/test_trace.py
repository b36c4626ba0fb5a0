"""Tracing a real run: libiscsi (qemu-img, qemu-io) reads and
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
from uscstd_support import uscstadmin_ok

from png_support import count_color, hex_rgb, read_png, runs_in_row
from tools.trace_export import SCST_STATE_ORDER, check_trace, command_states
from tools.trace_html import COLORS

REPO = Path(__file__).resolve().parents[2]
needs = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                           reason="qemu-utils (with libiscsi) needed")


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
        uscstadmin_ok(sock, "trace", "start", "--events", "scst_*,iscsi_*,block_*,softirq,sched_*",
               "--buffer-kb", "65536")
        url = srv.url
        src = tmp / "src.img"
        src.write_bytes(os.urandom(2 << 20))
        # A 2 MiB write: beyond FirstBurstLength, so R2Ts and Data-Out.
        _run("qemu-img", "convert", "-n", "-O", "raw", str(src), url)
        # A 4 KiB write with immediate data, read back.
        _run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4k", "-c", "read -P 0xab 0 4k", url)
        # 150 4 KiB READs: a bounded count, so the ring never overflows
        reads = [a for k in range(150) for a in ("-c", f"read {k * 8192} 4k")]
        _run("qemu-io", "-f", "raw", *reads, url)
        uscstadmin_ok(sock, "trace", "stop")
        out = tmp / "run.json"
        uscstadmin_ok(sock, "trace", "dump", "-o", str(out))
        raw = json.loads(uscstadmin_ok(sock, "trace", "dump", "--format", "raw"))
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
            # write-through (the default): the write and its fdatasync are one I/O
            "rq_issue file_pwritev_sync", "rq_complete file_pwritev_sync"} <= names
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


needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="chromium needed")


def _screenshot(page: Path, png: Path, height: int) -> tuple[int, int, list[bytes]]:
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={png}",
                        f"--window-size=1280,{height}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot: {r.stderr[-2000:]}"
    return read_png(png.read_bytes())


@needs
@needs_chromium
def test_html_page_renders_the_timeline_and_the_lanes(traced_run, tmp_path):
    trace_file = tmp_path / "run.json"
    trace_file.write_text(json.dumps(traced_run["doc"]))
    page = tmp_path / "run.html"
    r = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "trace", "html",
                        str(trace_file), "-o", str(page)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    # Self-contained: no script, no fetched resource; the only URL is SVG's namespace.
    assert "<script" not in text and "src=" not in text and "href=" not in text
    assert {u for u in text.split('"') if u.startswith("http")} == {"http://www.w3.org/2000/svg"}
    assert "RDY_TO_XFER" in text and "R2T TTT" in text      # the richest command: a large WRITE
    width, height, rows = _screenshot(page, tmp_path / "shot.png", 1600)
    assert (width, height) == (1280, 1600)
    white = hex_rgb("#ffffff")
    ink = sum(1 for row in rows for k in range(0, len(row), 3)
              if (row[k], row[k + 1], row[k + 2]) != white)
    assert ink > width * height // 20, "the page is (nearly) blank"
    # The timeline (upper part): SCST state slices and a handler's exec.
    assert count_color(rows, hex_rgb(COLORS["scst_cmd_state"]), 0, 500) > 200
    # exec slices can be a pixel wide (a WRITE's exec only submits it,
    # decision 0029): an exec slice is drawn in the page, beyond the legend
    from tools.trace_html import render_html   # as the other screenshot tests do
    legend = render_html({"traceEvents": []}).count(COLORS["scst_handler_exec"])
    assert text.count(COLORS["scst_handler_exec"]) > legend
    # The sequence diagram: a row crosses six lane headers (wide boxes).
    lane = hex_rgb("#2f4f6f")
    assert max(runs_in_row(row, lane, min_len=100) for row in rows) == 6


@needs_chromium
def test_screenshot_checks_fail_on_a_page_without_a_trace(tmp_path):
    from tools.trace_html import render_html
    page = tmp_path / "empty.html"
    page.write_text(render_html({"traceEvents": []}))
    _w, _h, rows = _screenshot(page, tmp_path / "empty.png", 1600)
    assert count_color(rows, hex_rgb(COLORS["scst_cmd_state"]), 0, 500) < 200
    assert count_color(rows, hex_rgb(COLORS["scst_handler_exec"]), 0, 500) < 200


@needs
def test_html_page_draws_a_login(traced_run, tmp_path):
    from tools.trace_html import render_html
    page = render_html(traced_run["doc"], login=0)
    assert "Sequence: Login #0" in page
    assert "Login Response" in page and "HeaderDigest" in page
    assert "Login" in render_html(traced_run["doc"], login=99)     # none such: an empty diagram
