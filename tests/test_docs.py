"""The generated parts of docs/architecture.md match the code's tables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_doc_tables_match_the_code():
    r = subprocess.run([sys.executable, "tools/gen_docs.py", "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
