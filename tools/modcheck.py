"""The kernel layers' import rule, checked on source with the ast module: a
kernel-style module (scst_core/, iscsi_scst/, vdisk/, or a developer's own
module loaded with `uscstadmin insmod`) imports only kshim, the kernel
layers and a short list of pure standard-library modules; host modules
(threading, socket, os, time, trio, ...) are named as host access,
randomness must come through kshim, dynamic imports are reported.

tests/boundary/test_layers.py applies this rule to the tree;
`uscstadmin insmod --check PATH` applies it to one outside file.
Host side only (reads files); nothing here runs in the emulated kernel.
"""
from __future__ import annotations

import ast
from pathlib import Path

KERNEL_LAYERS = ("scst_core", "iscsi_scst", "vdisk")
# What the kernel layers may import besides kshim and each other.
PURE_STDLIB = frozenset({
    "__future__", "typing", "enum", "struct", "attrs", "hashlib", "fnmatch",
    "collections", "functools", "itertools", "math", "re", "dataclasses",
    "string", "abc", "bisect", "heapq", "binascii", "base64", "hmac", "operator",
})
# Named explicitly so the report says why (all are outside PURE_STDLIB anyway).
HOST_MODULES = frozenset({
    "threading", "socket", "select", "selectors", "trio", "asyncio", "greenlet",
    "os", "time", "subprocess", "multiprocessing", "ctypes", "cffi", "signal",
    "io", "shutil", "pathlib", "random", "secrets",
})
_ALLOWED = {"kshim", ".", *KERNEL_LAYERS} | PURE_STDLIB


def imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, top-level module, dynamic) for every import in tree;
    relative imports give '.' (same package)."""
    out: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name.split(".")[0], False))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((node.lineno, ".", False))
            else:
                out.append((node.lineno, (node.module or "").split(".")[0], False))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                arg = node.args[0] if node.args else None
                mod = arg.value.split(".")[0] if isinstance(arg, ast.Constant) and \
                    isinstance(arg.value, str) else "<dynamic>"
                out.append((node.lineno, mod, True))
    return out


def kernel_import_problem(mod: str, dynamic: bool) -> str | None:
    """Why kernel code may not import `mod` (None: it may)."""
    if dynamic:
        return "dynamic import in kernel code"
    if mod in HOST_MODULES:
        return "host module in kernel code (go through kshim)"
    if mod not in _ALLOWED:
        return "not kshim, a kernel layer, or allowed pure stdlib"
    return None


def check_module_file(path: Path) -> list[str]:
    """Every boundary problem of one kernel-style module file, as
    'PATH:LINE: imports MOD: why' lines (a file that does not parse or
    cannot be read is one problem)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError) as e:
        return [f"{path}: cannot read: {e}"]
    except SyntaxError as e:
        return [f"{path}:{e.lineno or 0}: does not parse: {e.msg}"]
    out = []
    for line, mod, dynamic in imports(tree):
        why = kernel_import_problem(mod, dynamic)
        if why is not None:
            out.append(f"{path}:{line}: imports {mod}: {why}")
    return out
