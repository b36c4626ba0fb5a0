"""Campaign item 6.2 as a test: tools/fault_campaign.py enumerate fails
every injection site the scenario login + WRITE (R2T) + READ + ABORT TASK
+ logout reaches, once each, and every run ends well (server up, fresh
login works, no command object live, log clean)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_enumerate_mode_fails_every_reached_site_once_and_each_ends_well() -> None:
    r = subprocess.run([sys.executable, "-m", "tools.fault_campaign", "enumerate",
                        "--time-limit", "240"], cwd=REPO, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"sites known: (\d+); tried: (\d+); reached and failed once: (\d+); "
                  r"ended well: (\d+) of (\d+)", r.stdout)
    assert m, r.stdout
    known, tried, reached, good, of = map(int, m.groups())
    assert known == tried == reached == good == of >= 8, r.stdout
    for point in ("failslab", "fail_page_alloc", "fail_sock_recv", "fail_sock_send",
                  "fail_file_read", "fail_file_write", "fail_file_fsync", "fail_function"):
        assert f"`{point}" in r.stdout, f"no site of {point}:\n{r.stdout}"
