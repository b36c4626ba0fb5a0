"""tools/boot.py, the one boot call, used in-process without uscstd: the
module load order, the unload in reverse at shutdown, the default target
serving a real initiator, and a failed boot unloading what it loaded.

Each boot runs in a child Python process (the boot is in-process there,
no daemon): kshim's machine is per process, and the test process's own
kshim state must not see modules loaded and unloaded by another test."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from uscstd_support import free_port

REPO = Path(__file__).resolve().parents[1]

_BOOT = '''
import json, subprocess, sys, trio
from kshim import engine, module
from tools import boot

port, config_text, inq, runs = int(sys.argv[1]), sys.argv[2] or None, sys.argv[3], int(sys.argv[4])
out = {"reports": [], "lsmod": None, "inq": None, "rets": []}
cfg = boot.BootConfig(iqn="iqn.2026-11.org.uscst:inproc", portals=[("127.0.0.1", port)],
                      nullio=True, size=16 << 20, config_text=config_text,
                      config_filename="inline.conf", report=out["reports"].append)

async def probe() -> None:
    out["lsmod"] = await engine.call_in_task(boot.lsmod_rows)
    if inq:
        p = await trio.run_process([inq, f"iscsi://127.0.0.1:{port}/{cfg.iqn}/0"],
                                   capture_stdout=True, check=False)
        out["inq"] = p.stdout.decode()
    engine.request_shutdown()

for _ in range(runs):               # one process may boot again: exit leaves nothing behind
    out["rets"].append(boot.run(cfg, "trio", services=[probe], handle_signals=False))
out["ret"] = out["rets"][-1]
out["failures"] = boot.failures
out["left"] = [s.name for s in module.statistics()]
print(json.dumps(out))
'''


def boot(config_text: str = "", inq: str = "", runs: int = 1) -> dict:
    port = free_port()
    r = subprocess.run([sys.executable, "-c", _BOOT, str(port), config_text, inq, str(runs)],
                       cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1]) | {"port": port, "stderr": r.stderr}


def test_boot_loads_scst_vdisk_iscsi_in_order_serves_and_unloads_everything() -> None:
    inq = shutil.which("iscsi-inq") or ""
    out = boot(inq=inq)
    assert out["ret"] == 0 and out["failures"] == []
    assert [m["name"] for m in out["lsmod"]] == ["iscsi_scst", "scst_vdisk", "scst"]
    assert out["reports"][0] == "serving iqn.2026-11.org.uscst:inproc LUN 0 (nullio, 16777216 bytes)"
    if inq:
        assert "Product:disk0" in out["inq"], out["inq"]
    assert out["left"] == []                    # target_exit unloaded every module
    assert "BUG" not in out["stderr"] and "Traceback" not in out["stderr"], out["stderr"]


def test_a_failed_boot_names_the_reason_and_unloads_what_it_loaded() -> None:
    out = boot(config_text="HANDLER vdisk_nonesuch {\n\tDEVICE d {\n\t}\n}\n")
    assert out["ret"] < 0
    assert out["failures"] and out["failures"][0].startswith("inline.conf"), out["failures"]
    assert out["lsmod"] is None                 # no service ran
    assert out["left"] == []


def test_one_process_boots_the_default_target_twice() -> None:
    out = boot(runs=2)
    assert out["rets"] == [0, 0], out["failures"]
    assert [m["name"] for m in out["lsmod"]] == ["iscsi_scst", "scst_vdisk", "scst"]
    assert out["reports"].count("serving iqn.2026-11.org.uscst:inproc LUN 0 (nullio, 16777216 bytes)") == 2
    assert out["left"] == []


_SIM = '''
import json
from kshim import module
from kshim.engine_sim import Simulation
from tools import boot

out = []
for seed in (7, 7, 8):
    sim = Simulation(seed)
    sim.disks["/sim/disk0"] = bytearray(16 << 20)
    cfg = boot.BootConfig(iqn="iqn.2026-11.org.uscst:sim", portals=[("10.0.0.1", 3260)],
                          disk="/sim/disk0", disk_exists=True, size=16 << 20)
    seen = {}

    def drive(s):
        seen["lsmod"] = [m.name for m in module.statistics()]
        s.sleep(2.0)                    # two virtual seconds of an idle target

    ret = boot.run(cfg, "sim", sim=sim, drive=drive)
    out.append({"seed": seed, "ret": ret, "failures": list(boot.failures), **seen,
                "left": [m.name for m in module.statistics()], "trace": sim.trace_hash()})
print(json.dumps(out))
'''


def test_the_sim_engine_boots_the_same_modules_in_the_same_order_seeds_7_7_8() -> None:
    r = subprocess.run([sys.executable, "-c", _SIM], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout.splitlines()[-1])
    for run in runs:
        assert run["ret"] == 0, run["failures"]
        assert run["lsmod"] == ["iscsi_scst", "scst_vdisk", "scst"]
        assert run["left"] == []
    assert runs[0]["trace"] == runs[1]["trace"]          # same seed, same boot, byte for byte


def _pattern_sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docs.examples.pattern_sim", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_tutorial_module_under_the_sim_engine_seed_7_replays_and_a_planted_bug_is_caught(
        tmp_path: Path) -> None:
    a, b = _pattern_sim("--seed", "7"), _pattern_sim("--seed", "7")
    assert a.returncode == 0, a.stdout + a.stderr[-3000:]
    last = a.stdout.splitlines()[-1]
    assert last.startswith("seed=7 ") and last.endswith(" verdict=ok") and "read=2048 bad=0" in last
    assert b.stdout.splitlines()[-1] == last
    src = (REPO / "docs" / "examples" / "vdisk_pattern.py").read_text()
    old = "            lba += 1\n    scst_set_resp_data_len("
    assert old in src
    (tmp_path / "vdisk_pattern.py").write_text(src.replace(
        old, "            lba += 1\n    kmem_cache_free(pattern_cmd_cache, pc)\n"
             "    scst_set_resp_data_len("))
    bad = _pattern_sim("--seed", "7", "--module", str(tmp_path / "vdisk_pattern.py"))
    assert bad.returncode == 1
    assert "verdict=FAIL: 32 commands failed" in bad.stdout
    assert "BUG: use after free (cache=vdisk_pattern_cmd object=pattern_cmd attribute=nblocks)" \
        in bad.stderr
