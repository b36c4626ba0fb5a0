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

port, config_text, inq = int(sys.argv[1]), sys.argv[2] or None, sys.argv[3]
out = {"reports": [], "lsmod": None, "inq": None}
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

out["ret"] = boot.run(cfg, "trio", services=[probe], handle_signals=False)
out["failures"] = boot.failures
out["left"] = [s.name for s in module.statistics()]
print(json.dumps(out))
'''


def boot(config_text: str = "", inq: str = "") -> dict:
    port = free_port()
    r = subprocess.run([sys.executable, "-c", _BOOT, str(port), config_text, inq], cwd=REPO,
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
