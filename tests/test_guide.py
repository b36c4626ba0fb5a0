"""docs/guide/ is regenerated from real runs and still says what the code
does: same prose as tools/gen_guide.py's PAGES, same kinds of steps in
every sequence diagram (times, tags and thread ids aside)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not shutil.which("iscsi-inq"), reason="libiscsi-bin needed")
def test_guide_pages_match_a_fresh_run():
    r = subprocess.run([sys.executable, "-m", "tools.gen_guide", "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, ("docs/guide is stale: run python -m tools.gen_guide --write\n"
                               + r.stderr[-4000:])


@pytest.mark.skipif(not shutil.which("iscsi-inq"), reason="libiscsi-bin needed")
def test_guide_check_reports_a_page_whose_steps_or_prose_changed(tmp_path):
    from tools import gen_guide
    guide = tmp_path / "guide"
    shutil.copytree(REPO / "docs" / "guide", guide)
    read = guide / "03-read.md"
    read.write_text(read.read_text().replace("- state PARSE [iscsird]\n", ""))
    login = guide / "02-login.md"
    login.write_text(login.read_text().replace("rd thread", "wr thread", 1))
    problems = gen_guide.check(guide)
    assert any("03-read.md" in p and "step kinds" in p for p in problems), problems
    assert any("02-login.md" in p and "prose" in p for p in problems), problems
