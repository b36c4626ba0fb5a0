"""Under the sim engine a trace is a function of the seed: the same seed
records the same Perfetto trace, byte for byte (virtual ktime, seeded
choices), so the guide's pictures can be made stable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One sim run with every command, PDU, block and scheduling event recorded:
# prints "<verdict> <records> <format problems> <sha256 of the export>".
PROGRAM = """
import hashlib, json, sys
import kshim.fs, scst_core.targ, iscsi_scst.iscsi   # declare their events
from kshim import trace, tracepoint
from tools import trace_export
from tools.sim.simrun import run_sim
tracepoint.set_buffer_size_kb(65536)
assert tracepoint.set_event(["scst_*", "iscsi_*", "block_*", "softirq", "sched_*"]) == 0
tracepoint.tracing_on()
out = run_sim("login-io", int(sys.argv[1]))
tracepoint.tracing_off()
doc = trace_export.to_perfetto(json.loads(trace.trace_raw()))
print(out.verdict, len(doc["traceEvents"]), len(trace_export.check_trace(doc)),
      hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
"""


def _run(seed: int) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROGRAM, str(seed)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()


def test_same_seed_records_the_same_trace_seed_7():
    first, again, other = _run(7), _run(7), _run(8)
    assert first[0] == "ok" and int(first[1]) > 1000 and first[2] == "0"
    assert first == again
    assert other[3] != first[3]
