"""The Prometheus endpoint (uscstd --metrics): scraped with curl while
iscsi-perf runs, the per-LUN command counter rises and the text parses with
prometheus-client's parser."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from uscstd_support import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("iscsi-perf") and shutil.which("curl")),
                                reason="libiscsi-bin and curl needed")


def _scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    r = subprocess.run(["curl", "-s", "-X", method, "-o", "-", "-w", "\n%{http_code}",
                        f"http://127.0.0.1:{port}{path}"],
                       capture_output=True, text=True, timeout=30)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def _wait_listening(srv, port: int) -> None:
    """The services start after "ready at": wait (bounded) for the metrics line."""
    line = f"metrics at http://127.0.0.1:{port}/metrics"
    for _ in range(200):
        if line in srv.stdout_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {line!r} in uscstd's output: {srv.stdout_text()}")


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _lun_reads(text: str) -> float:
    return sum(s.value for s in _samples(text).get("uscst_lun_commands_total", [])
               if s.labels["direction"] == "read" and s.labels["lun"] == "0")


def test_metrics_counter_rises_during_iscsi_perf_and_parses(uscstd, tmp_path):
    port = free_port()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), "--metrics", str(port))
    _wait_listening(srv, port)
    subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(sock), "set",
                    "measure_latency", "1"], cwd=REPO, check=True, capture_output=True)
    perf = subprocess.Popen(["iscsi-perf", "-t", "20", "-m", "4", srv.url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = []                                  # from the first scrape with I/O counted
        for _ in range(200):                       # bounded: about 20 s at most
            code, text = _scrape(port)
            assert code == 200
            reads = _lun_reads(text)
            if reads > 0:
                seen.append(reads)
            if len(seen) >= 3 and seen[-1] > seen[0]:
                break
            time.sleep(0.1)
        assert len(seen) >= 2 and seen[-1] > seen[0] > 0, seen
    finally:
        perf.kill()
        perf.wait(10)
    s = _samples(text)
    logins = [x for x in s["uscst_iscsi_logins_total"] if x.labels["result"] == "success"]
    assert logins and logins[0].labels["target"] == srv.iqn
    assert any(x.labels["stage"] == "exec" for x in s["uscst_latency_seconds_bucket"])
    assert {x.labels["le"] for x in s["uscst_latency_seconds_bucket"]} >= {"+Inf"}
    assert "uscst_target_commands_total" in s and "uscst_session_bytes_total" in s
    assert "uscst_iscsi_cmdsn_window_stalls_total" in s
    # Counters survive the session's end (the target total keeps them).
    for _ in range(100):
        code, after = _scrape(port)
        if "uscst_lun_commands_total" not in _samples(after):
            break
        time.sleep(0.1)
    total = [x for x in _samples(after)["uscst_target_commands_total"]
             if x.labels["direction"] == "read"]
    assert total[0].value >= seen[-1]


@pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils needed")
def test_metrics_count_the_reads_and_writes_prediction_took(uscstd, tmp_path):
    port = free_port()
    sock = tmp_path / "ctl.sock"
    srv = uscstd("--control", str(sock), "--metrics", str(port))
    _wait_listening(srv, port)
    r = subprocess.run(["qemu-io", "-f", "raw", *[a for i in range(8)
                                                  for a in ("-c", f"write {i * 4}k 4k",
                                                            "-c", f"read {i * 4}k 4k")],
                        srv.url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code, text = _scrape(port)
    assert code == 200
    for kind in ("reads", "writes"):
        fast = _samples(text)[f"uscst_fast_{kind}_total"][0].value
        got = subprocess.run([sys.executable, "-m", "tools.uscstadmin", "--socket", str(sock),
                              "get", f"fast_{kind}"], cwd=REPO, check=True, capture_output=True,
                             text=True)
        assert 0 < fast == int(got.stdout), kind


def test_metrics_endpoint_answers_only_get_metrics(uscstd):
    port = free_port()
    _wait_listening(uscstd("--metrics", f"127.0.0.1:{port}"), port)
    assert _scrape(port, "/nothing")[0] == 404
    assert _scrape(port, "/metrics", "POST")[0] == 405
    assert _scrape(port, "/")[0] == 200


def test_bad_metrics_address_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.uscstd", "--metrics", "127.0.0.1:99999",
                        "--disk", str(tmp_path / "d.img"), "--size", "1M"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "99999" in r.stderr


def test_metrics_count_errors_by_sense_key_tmfs_and_failed_logins(uscstd):
    from initiator import TMF_LUN_RESET, Initiator, LoginError
    port = free_port()
    srv = uscstd("--metrics", str(port))
    _wait_listening(srv, port)
    bad = Initiator(host=srv.host, port=srv.port, timeout=20)
    bad.connect()
    with pytest.raises(LoginError):
        bad.login("iqn.2026-11.org.uscst:no-such-target")
    bad.close()
    ini = Initiator(host=srv.host, port=srv.port, timeout=20)
    ini.connect()
    ini.login(srv.iqn)
    try:
        res = ini.read10(0, 1, lun=9)                  # no LUN 9: ILLEGAL REQUEST
        assert not res.ok and res.sense_key == 5
        ini.task_mgmt(TMF_LUN_RESET)
        s = _samples(_scrape(port)[1])
    finally:
        ini.logout()
        ini.close()
    errs = [x for x in s["uscst_errors_total"] if x.labels["lun"] == "9"]
    assert [(x.labels["sense_key"], x.labels["status"], x.value) for x in errs] == \
        [("0x5", "0x02", 1.0)]
    tmfs = {x.labels["function"]: x.value for x in s["uscst_tmf_total"]}
    assert tmfs == {"lun_reset": 1.0}
    logins = {(x.labels["result"], x.labels["reason"]): x.value
              for x in s["uscst_iscsi_logins_total"]}
    assert logins[("failure", "target_not_found")] == 1.0
    assert logins[("success", "-")] == 1.0
