"""The wheel: what `pip install uscst` puts into site-packages (decision 0046).

Builds the wheel offline from a copy of the source (pip wheel --no-deps
--no-build-isolation --no-index, the setuptools and wheel of this venv), then
checks its top-level names, that tools/ ships as uscst_tools without the
dev-only scripts, and that the shipped tools import and start with no
`tools` package anywhere on the path.
"""
from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL_LAYERS = ("kshim", "scst_core", "iscsi_scst", "vdisk")
SOURCES = (*KERNEL_LAYERS, "tools", "pyproject.toml", "setup.py", "README.md")
BUILD_TIMEOUT = 300


def _setup_constant(name: str) -> object:
    """A constant of setup.py, read without running it."""
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py defines no {name}")


DEV_ONLY = _setup_constant("DEV_ONLY")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("uscst-*.whl")
    return zipfile.ZipFile(whl)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def _repo_modules(top: str) -> set[str]:
    return {str(p.relative_to(REPO / top)) for p in (REPO / top).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_wheel_top_level_names_are_ours_and_not_tools(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {*KERNEL_LAYERS, "uscst_tools"}
    assert sorted(_dist_info(wheel, "top_level.txt").split()) == sorted([*KERNEL_LAYERS, "uscst_tools"])


def test_wheel_ships_every_kernel_module_and_tools_without_dev_scripts(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for top in KERNEL_LAYERS:
        assert {f"{top}/{m}" for m in _repo_modules(top)} <= names
    shipped = {n.removeprefix("uscst_tools/") for n in names if n.startswith("uscst_tools/")}
    assert shipped == {m for m in _repo_modules("tools") if Path(m).stem not in DEV_ONLY or "/" in m}
    assert not {f"{m}.py" for m in DEV_ONLY} & shipped


def test_wheel_console_scripts_point_into_uscst_tools(wheel: zipfile.ZipFile) -> None:
    ep = configparser.ConfigParser()
    ep.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(ep["console_scripts"]) == {"uscstd": "uscst_tools.uscstd:main",
                                           "uscstadmin": "uscst_tools.uscstadmin:main",
                                           "uscst-sim": "uscst_tools.sim.cli:main"}


def test_shipped_tools_never_import_tools_by_name(wheel: zipfile.ZipFile) -> None:
    for n in wheel.namelist():
        if not (n.startswith("uscst_tools/") and n.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(wheel.read(n), n)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            assert not [m for m in mods if m.split(".")[0] == "tools"], f"{n}:{node.lineno}"


def test_installed_tools_import_and_start_without_a_tools_package(
        wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    """Every shipped module imports from the unpacked wheel alone; a planted
    `tools` package first on the path fails any import of the old name."""
    site = tmp_path / "site"
    wheel.extractall(site)
    poison = tmp_path / "poison" / "tools"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('a shipped module imported tools')\n")
    mods = sorted(n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                  for n in wheel.namelist() if n.startswith("uscst_tools/") and n.endswith(".py")
                  and not n.endswith("__main__.py"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison.parent), str(site)])}
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "assert sys.modules['uscst_tools.uscstd'].__file__.startswith(sys.argv[1])\n"
            "from uscst_tools import module_argv; print(' '.join(module_argv('uscstd')[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-m", "uscst_tools.uscstd"]
    for tool in ("uscst_tools.uscstd", "uscst_tools.uscstadmin", "uscst_tools.sim"):
        r = subprocess.run([sys.executable, "-m", tool, "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (tool, r.stderr)
