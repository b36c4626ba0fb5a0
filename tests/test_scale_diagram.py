"""tools/scale_diagram: docs/scale-out.md's two-node diagram is its output for
the example files, it names groups, states, backing and link, and a bad file
gives one error line and exit 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = [REPO / "docs/examples/two-nodes-a.conf", REPO / "docs/examples/two-nodes-b.conf"]
MARK = "<!-- scale_diagram two-nodes-a.conf two-nodes-b.conf -->\n```\n"


def _run(*files: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.scale_diagram", *map(str, files)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _doc_diagram() -> str:
    doc = (REPO / "docs/scale-out.md").read_text()
    start = doc.index(MARK) + len(MARK)
    return doc[start:doc.index("```\n", start)]


def test_scale_out_doc_diagram_equals_the_tools_output_for_the_examples():
    r = _run(*EXAMPLES)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _doc_diagram()


def test_scale_diagram_names_both_port_groups_states_shared_backing_and_link():
    out = _run(*EXAMPLES).stdout
    assert "rel_tgt_id 1, tpg node-a group_id 1 state active" in out
    assert "rel_tgt_id 2, tpg node-b group_id 2 state nonoptimized" in out
    assert ("[1] nbd://storage.example:10809/export: device shared0, "
            "shared by two-nodes-a, two-nodes-b") in out
    assert out.count("-> store [1]") == 2
    assert "two-nodes-a 192.0.2.1:7260 <--> two-nodes-b 192.0.2.2:7260" in out


def test_scale_diagram_follows_a_changed_state_so_a_stale_doc_is_caught(tmp_path):
    text = EXAMPLES[1].read_text()
    changed = tmp_path / "two-nodes-b.conf"
    changed.write_text(text.replace("state nonoptimized", "state standby"))
    out = _run(EXAMPLES[0], changed).stdout
    assert "tpg node-b group_id 2 state standby" in out
    assert out != _doc_diagram()


def test_scale_diagram_bad_file_gives_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("HANDLER vdisk_nbd {\n    shared0\n}\n")
    r = _run(bad)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"scale_diagram: {bad}:2:5: expected DEVICE in HANDLER vdisk_nbd, found 'shared0'\n"


def test_scale_diagram_bad_command_line_gives_one_line_and_nonzero_exit(tmp_path):
    for args in ([], [tmp_path / "missing.conf"]):
        r = _run(*args)
        assert r.returncode != 0
        assert len(r.stderr.splitlines()) == 1 and re.match(r"scale_diagram: ", r.stderr), r.stderr
