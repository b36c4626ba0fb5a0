"""The layer boundaries of DESIGN.md, checked on the source with the ast module.

1. scst_core/, iscsi_scst/ and vdisk/ (the "kernel code") import only kshim,
   each other, and a short list of pure standard-library modules. Host
   modules (threading, socket, os, time, trio, ...) are named in the report
   as host access; randomness must come through kshim (so `random` and
   `secrets` are out); anything else is reported as not on the allowlist.
   Dynamic imports (__import__, importlib.import_module) are reported too.
2. kshim is an allowlist too. Only the named engine modules (ENGINE_MODULES:
   engine_posix, engine_trio, engine_ctl, engine_uring (the io_uring
   binding), engine_rbd (the librbd binding), engine_sim and its
   engine_sim_* parts) import host modules;
   they fill the host-ops table (kshim.host, like LKL's
   lkl_host_operations) through which every other kshim module
   reaches the host. Those others import kshim, the pure stdlib list and
   KSHIM_EXTRA only, so a new module importing random or subprocess is
   reported. trio and pyfuse3 stay in the trio engine's modules.

The kernel-layer rule itself lives in tools/modcheck.py, so `uscstadmin
insmod --check` applies the same rule to a developer's outside module.

check_layers(root) is a plain function over a source tree, so the tests can
point it at a temporary copy with a deliberately bad module and prove it
reports it (a checker that cannot fail proves nothing).
"""
from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from tools.modcheck import KERNEL_LAYERS, PURE_STDLIB, kernel_import_problem
from tools.modcheck import imports as _imports

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# kshim modules that may touch the host: they fill kshim.host.ops.
ENGINE_MODULES = frozenset({"engine_posix.py", "engine_trio.py", "engine_ctl.py",
                            "engine_metrics.py", "engine_uring.py", "engine_rbd.py",
                            "engine_sim.py"})
ENGINE_MODULE_PREFIXES = ("engine_sim_",)      # parts of the sim engine
TRIO_ENGINE_MODULES = frozenset({"engine_trio.py", "engine_ctl.py", "engine_metrics.py"})
TRIO_ONLY = frozenset({"trio", "pyfuse3"})
# What other kshim modules may import besides kshim and PURE_STDLIB: the
# emulated CPU's context switch, traceback formatting for reports, the
# crc32c library (pure computation, no host state), and json (the tracefs
# and /proc views that tools read: formatting only).
KSHIM_EXTRA = frozenset({"greenlet", "traceback", "types", "crc32c", "json"})


@dataclass(frozen=True)
class Violation:
    path: str          # relative to the checked root
    line: int
    module: str        # top-level module imported
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}: {self.why}"


def _py_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def _is_engine_module(path: Path, kshim_dir: Path) -> bool:
    rel = path.relative_to(kshim_dir)
    return len(rel.parts) == 1 and (rel.name in ENGINE_MODULES
                                    or rel.name.startswith(ENGINE_MODULE_PREFIXES))


def _parse(path: Path, rel: str, found: list[Violation]) -> ast.AST | None:
    """The file's tree, or None after recording that it does not parse."""
    try:
        return ast.parse(path.read_text(), filename=rel)
    except SyntaxError as e:
        found.append(Violation(rel, e.lineno or 0, "?", f"does not parse: {e.msg}"))
        return None


def check_layers(root: Path) -> list[Violation]:
    """Every boundary violation under root (a checkout or a copy of one).
    Layers missing under root are skipped; a file that does not parse is a
    violation of its own."""
    root = Path(root)
    found: list[Violation] = []
    for layer in KERNEL_LAYERS:
        d = root / layer
        if not d.is_dir():
            continue
        for path in _py_files(d):
            rel = str(path.relative_to(root))
            tree = _parse(path, rel, found)
            if tree is None:
                continue
            for line, mod, dynamic in _imports(tree):
                why = kernel_import_problem(mod, dynamic)
                if why is not None:
                    found.append(Violation(rel, line, mod, why))
    kd = root / "kshim"
    if kd.is_dir():
        found += _check_kshim(root, kd)
    return found


def _check_kshim(root: Path, kd: Path) -> list[Violation]:
    found: list[Violation] = []
    allowed = {"kshim", ".", *KSHIM_EXTRA} | PURE_STDLIB
    for path in _py_files(kd):
        rel = str(path.relative_to(root))
        engine = _is_engine_module(path, kd)
        tree = _parse(path, rel, found)
        if tree is None:
            continue
        for line, mod, dynamic in _imports(tree):
            if engine:
                if mod in TRIO_ONLY and path.name not in TRIO_ENGINE_MODULES:
                    found.append(Violation(rel, line, mod,
                                           "trio outside the trio engine's modules "
                                           "(engine_trio.py, engine_ctl.py)"))
            elif dynamic:
                found.append(Violation(rel, line, mod, "dynamic import in kshim"))
            elif mod not in allowed:
                found.append(Violation(rel, line, mod,
                                       "kshim module outside the engine modules imports "
                                       "something not on the allowlist (reach the host "
                                       "through kshim.host.ops)"))
    return found


# --- the real tree ---------------------------------------------------------------

def test_kernel_layers_and_kshim_respect_the_boundaries() -> None:
    for layer in (*KERNEL_LAYERS, "kshim"):
        assert (REPO_ROOT / layer).is_dir(), f"{layer}/ missing: checker would see nothing"
    bad = check_layers(REPO_ROOT)
    assert not bad, "layer boundary violations:\n" + "\n".join(map(str, bad))


def test_checker_sees_every_kernel_layer_file() -> None:
    # Guard against a checker that silently checks nothing.
    n = sum(len(_py_files(REPO_ROOT / layer)) for layer in KERNEL_LAYERS)
    assert n >= 10


# --- the checker catches what it must --------------------------------------------

def _copy_layers(tmp_path: Path) -> tuple[Path, set[Violation]]:
    """A copy of the four layers and the violations it starts with (the
    real tree's, if any: these tests judge the checker, not the tree)."""
    root = tmp_path / "tree"
    for layer in (*KERNEL_LAYERS, "kshim"):
        shutil.copytree(REPO_ROOT / layer, root / layer,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root, set(check_layers(root))


def _new_violations(root: Path, baseline: set[Violation]) -> list[Violation]:
    return [v for v in check_layers(root) if v not in baseline]


def test_checker_reports_socket_import_added_to_a_layer_copy(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "iscsi_scst" / "sneaky.py").write_text(
        '"""A module that breaks the boundary."""\nimport socket\n')
    bad = _new_violations(root, baseline)
    assert [(v.path, v.line, v.module) for v in bad] == [("iscsi_scst/sneaky.py", 2, "socket")]
    assert "host module" in bad[0].why


def test_checker_reports_host_imports_in_every_form(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "vdisk" / "bad.py").write_text(
        "from __future__ import annotations\n"
        "from os import path\n"                                  # 2
        "import os.path as p\n"                                  # 3
        "def f():\n"
        "    import time\n"                                      # 5
        "    return __import__('threading')\n"                   # 6
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import trio\n"                                      # 9
        "import random\n"                                        # 10
        "import secrets\n"                                       # 11
        "import json\n"                                          # 12
        "import importlib\n"                                     # 13
        "m = importlib.import_module('select')\n")               # 14
    (root / "scst_core" / "sub").mkdir()
    (root / "scst_core" / "sub" / "deep.py").write_text("import greenlet\n")
    got = {(v.path, v.line, v.module) for v in _new_violations(root, baseline)}
    assert got == {
        ("vdisk/bad.py", 2, "os"), ("vdisk/bad.py", 3, "os"), ("vdisk/bad.py", 5, "time"),
        ("vdisk/bad.py", 6, "threading"), ("vdisk/bad.py", 9, "trio"),
        ("vdisk/bad.py", 10, "random"), ("vdisk/bad.py", 11, "secrets"),
        ("vdisk/bad.py", 12, "json"), ("vdisk/bad.py", 13, "importlib"),
        ("vdisk/bad.py", 14, "select"),
        ("scst_core/sub/deep.py", 1, "greenlet"),
    }


def test_checker_allows_kshim_each_other_and_pure_stdlib(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "scst_core" / "fine.py").write_text(
        "from __future__ import annotations\n"
        "import struct, enum, hashlib, hmac, binascii\n"
        "from collections import deque\n"
        "import attrs\n"
        "from kshim.wait import wait_event\n"
        "from iscsi_scst import hdr\n"
        "from vdisk.vdisk import vdisk_init\n"
        "from . import const\n")
    assert _new_violations(root, baseline) == []


def test_checker_keeps_kshim_host_access_in_engine_modules(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "kshim" / "engine_sim_net.py").write_text("import time\nimport socket\n")
    (root / "kshim" / "leaky.py").write_text("import os\nfrom threading import Lock\n"
                                             "import queue\nimport sys\n")
    got = {(v.path, v.line, v.module) for v in _new_violations(root, baseline)}
    assert got == {("kshim/leaky.py", 1, "os"), ("kshim/leaky.py", 2, "threading"),
                   ("kshim/leaky.py", 3, "queue"), ("kshim/leaky.py", 4, "sys")}


def test_checker_reports_random_imported_by_a_kshim_module_outside_the_engine(
        tmp_path: Path) -> None:
    # The allowlist, not a list of known host modules: random is reported in
    # a plain kshim module, and so is a name nobody thought of listing.
    root, baseline = _copy_layers(tmp_path)
    wait = root / "kshim" / "wait.py"
    wait.write_text(wait.read_text() + "import random\n")
    n = len(wait.read_text().splitlines())
    (root / "kshim" / "fancy.py").write_text("import subprocess\nimport pickle\n")
    (root / "kshim" / "engine.py").write_text("import time\n")    # the front door is no engine
    got = {(v.path, v.line, v.module) for v in _new_violations(root, baseline)}
    assert got == {("kshim/wait.py", n, "random"), ("kshim/fancy.py", 1, "subprocess"),
                   ("kshim/fancy.py", 2, "pickle"), ("kshim/engine.py", 1, "time")}


def test_checker_keeps_trio_in_the_trio_engine(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "kshim" / "engine_sim_clock.py").write_text("import os\nimport trio\n")
    got = {(v.path, v.line, v.module) for v in _new_violations(root, baseline)}
    assert got == {("kshim/engine_sim_clock.py", 2, "trio")}


def test_checker_reports_a_file_that_does_not_parse(tmp_path: Path) -> None:
    root, baseline = _copy_layers(tmp_path)
    (root / "vdisk" / "broken.py").write_text("def (:\n")
    bad = _new_violations(root, baseline)
    assert len(bad) == 1 and bad[0].path == "vdisk/broken.py" and "parse" in bad[0].why
