"""fail_function: make marked kernel-layer functions return an error.

Twin of kernel/fail_function.c (the fail_function point, its inject and
injectable files, per-function retval), lib/error-inject.c's list and
include/asm-generic/error-injection.h's ALLOW_ERROR_INJECTION and EI_ETYPE_*.
The framework is kshim/fault_inject.py.

Contexts: a marked function's check runs wherever the function is called;
the debugfs callbacks in task context.

Differs from the kernel: ALLOW_ERROR_INJECTION is a decorator that wraps
the function (no kprobe overrides its return); the list holds the
functions of modules imported so far. `inject` may also be set on the
command line (`--fault fail_function:inject=NAME,...`). Enumerate mode
(and fail-nth) walk every injectable function, listed in inject or not,
each its own site ("fail_function:NAME").

Marked today: iscsi_conn_alloc, iscsi_session_create,
scst_register_session, scst_register_virtual_device, fileio_attach,
blockio_attach (kernel-layer allocation and setup paths).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import attrs

from kshim.err import EINVAL, ENOMEM
from kshim.fault_inject import DECLARE_FAULT_ATTR, fault_overridden, should_fail
from kshim.kobject import kobj_type, kobject, kobject_create_and_add, kobject_put
from kshim.sysfs import S_IRUGO, S_IWUSR, __ATTR, kobj_attribute, sysfs_create_file


EI_ETYPE_NULL = "NULL"
EI_ETYPE_ERRNO = "ERRNO"
EI_ETYPE_ERRNO_NULL = "ERRNO_NULL"
EI_ETYPE_TRUE = "TRUE"


@attrs.define(slots=True, eq=False)
class fei_attr:
    """One injectable function: kernel/fail_function.c's fei_attr."""
    name: str
    etype: str
    retval: Any
    inject: bool = False            # listed in fail_function/inject


# every injectable function by name (lib/error-inject.c's list); marked at import
error_injection_list: dict[str, fei_attr] = {}
F = TypeVar("F", bound=Callable[..., Any])


def _default_retval(etype: str) -> Any:
    return {EI_ETYPE_NULL: None, EI_ETYPE_ERRNO: -ENOMEM, EI_ETYPE_ERRNO_NULL: -ENOMEM,
            EI_ETYPE_TRUE: 1}[etype]


def ALLOW_ERROR_INJECTION(etype: str) -> Callable[[F], F]:
    """Mark a kernel-layer function injectable: once named in
    debug/fail_function/inject, a call may return `retval` instead of
    running (the kernel overrides the function's return the same way).
    Enumerate mode walks every injectable function, listed or not."""
    def mark(fn: F) -> F:
        ent = error_injection_list[fn.__name__] = fei_attr(fn.__name__, etype,
                                                           _default_retval(etype))
        label = f"fail_function:{fn.__name__}"

        @functools.wraps(fn)
        def injectable(*args: Any, **kwargs: Any) -> Any:
            if fail_function.armed and (ent.inject or fault_overridden()) \
                    and should_fail(fail_function, 1, label):
                return ent.retval
            return fn(*args, **kwargs)
        return injectable  # type: ignore[return-value]
    return mark


def fei_inject(name: str, on: bool = True) -> int:
    """Add (or remove) a function to the injected set: 0 or -EINVAL."""
    ent = error_injection_list.get(name)
    if ent is None:
        return -EINVAL
    ent.inject = on
    return 0


def _show_fei_inject(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{e.name}\n" for e in error_injection_list.values() if e.inject)


def _store_fei_inject(_k: kobject, _a: kobj_attribute, buf: str) -> int:
    """kernel/fail_function.c's inject file: NAME adds, !NAME removes, an
    empty write clears."""
    name = buf.strip()
    if not name:
        for e in error_injection_list.values():
            e.inject = False
        return len(buf)
    if fei_inject(name.lstrip("!"), not name.startswith("!")) < 0:
        return -EINVAL
    return len(buf)


def _show_fei_list(_k: kobject, _a: kobj_attribute) -> str:
    return "".join(f"{e.name}\t{e.etype}\t{e.retval}\n" for e in error_injection_list.values())


def _show_retval(kobj: kobject, _a: kobj_attribute) -> str:
    return f"{error_injection_list[kobj.name].retval}\n"


def _store_retval(kobj: kobject, _a: kobj_attribute, buf: str) -> int:
    ent = error_injection_list[kobj.name]
    text = buf.strip()
    try:
        v: Any = None if text in ("NULL", "None") else int(text, 0)
    except ValueError:
        return -EINVAL
    if ent.etype == EI_ETYPE_ERRNO and (v is None or not -4095 <= v < 0):
        return -EINVAL
    if ent.etype == EI_ETYPE_NULL and v is not None:
        return -EINVAL
    ent.retval = v
    return len(buf)


def _fei_refresh(kobj: kobject) -> None:
    """fail_function/<func>/ exists while func is in inject, as the kernel
    creates it when the name is written to inject."""
    for name, ent in error_injection_list.items():
        if ent.inject and name not in kobj.entries:
            d = kobject_create_and_add(name, kobj)
            if d is not None:
                sysfs_create_file(d, __ATTR("retval", S_IRUGO | S_IWUSR, _show_retval,
                                            _store_retval))
        elif not ent.inject and isinstance(kobj.entries.get(name), kobject):
            kobject_put(kobj.entries[name])


def _set_extra(name: str, value: str) -> bool:
    """`inject` set by name (--fault, fault_attr_set): NAME adds, !NAME
    removes; ValueError for a function that is not injectable."""
    if name != "inject":
        return False
    text = value.strip()
    if fei_inject(text.lstrip("!"), not text.startswith("!")) < 0:
        raise ValueError(f"fail_function: {text!r} is not an injectable function "
                         f"(known: {', '.join(error_injection_list)})")
    return True


def _reset() -> None:
    for ent in error_injection_list.values():
        ent.inject = False
        ent.retval = _default_retval(ent.etype)


def _debugfs(d: kobject) -> None:
    """The point's own files in debug/fail_function/."""
    d.ktype = kobj_type(refresh=_fei_refresh)
    rw = S_IRUGO | S_IWUSR
    sysfs_create_file(d, __ATTR("inject", rw, _show_fei_inject, _store_fei_inject))
    sysfs_create_file(d, __ATTR("injectable", S_IRUGO, _show_fei_list, None))


fail_function = DECLARE_FAULT_ATTR("fail_function", {}, set_extra=_set_extra, reset=_reset,
                                   debugfs=_debugfs)
