"""Object lifetime checks: freeing or re-initialising an object still in use.

Twin of lib/debugobjects.c and include/linux/debugobjects.h
(CONFIG_DEBUG_OBJECTS_TIMERS, _WORK, _COMPLETION) and of lockdep's
debug_check_no_locks_freed ("held lock freed").

Contexts: any; called by kshim.slab when an object is freed and by the init
calls of timers, work items and completions.

Differs from the kernel: the kernel tracks every object's state in a hash
and checks the freed address range. Here each module registers its type
with a function that says whether an instance is active (a pending timer, a
queued or running work item, a completion with waiters, a held lock), and
the slab checks the fields of the freed object, one level deep: a timer
embedded in a command is a field of it. Objects reached through a field of a
field are not checked (that would follow pointers, not embedding).

Debug aids: this is one (debug_objects). Reports are "ODEBUG: free active
object type: timer_list hint: <callback>" and "ODEBUG: init active ...";
the registered fixup then makes the object safe (a freed pending timer is
deleted, as the kernel's fixup_free does).
"""
from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable

from kshim.bug import report_bug

debug_objects = True

# type -> (type name, active hint or None, fixup or None)
_registry: dict[type, tuple[str, Callable[[Any], str | None], Callable[[Any], object] | None]] = {}
_fields_cache: dict[type, tuple[str, ...]] = {}
# type -> its slot values in one C call (attrgetter), or None: _values() only
_getters: dict[type, Callable[[Any], tuple] | None] = {}


def debug_object_register(cls: type, name: str, active_hint: Callable[[Any], str | None],
                          fixup_free: Callable[[Any], object] | None = None) -> None:
    """Watch instances of cls: active_hint(obj) returns a hint (the callback
    name) while obj is active, None when it may be freed."""
    _registry[cls] = (name, active_hint, fixup_free)


def _fields(cls: type) -> tuple[str, ...]:
    names = _fields_cache.get(cls)
    if names is None:
        seen: list[str] = []
        for k in cls.__mro__:
            slots = k.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            for s in slots:
                if s not in ("__weakref__", "__dict__") and s not in seen:
                    seen.append(s)
        names = _fields_cache[cls] = tuple(seen)
    return names


def _slot_getter(cls: type) -> Callable[[Any], tuple] | None:
    if cls in _getters:
        return _getters[cls]
    names = _fields(cls)
    g: Callable[[Any], tuple] | None = None
    # Not for a class that reads its attributes its own way (an unset slot
    # must raise, not reach a __getattr__), nor one too small to matter.
    if cls.__getattribute__ is object.__getattribute__ and not hasattr(cls, "__getattr__") \
            and len(names) >= 2:
        g = attrgetter(*names)
    _getters[cls] = g
    return g


def _values(obj: Any) -> list[Any] | tuple:
    """The values of obj's fields (slots and __dict__), unset slots skipped."""
    out: list[Any] | tuple | None = None
    g = _slot_getter(type(obj))
    if g is not None:
        try:
            out = g(obj)            # every slot in one C call
        except AttributeError:      # a slot never set: name by name below
            out = None
    if out is None:
        out = []
        for name in _fields(type(obj)):
            try:
                out.append(object.__getattribute__(obj, name))
            except AttributeError:
                pass
    d = None
    if type(obj).__dictoffset__:        # else slots only: no failed lookup to pay for
        try:
            d = object.__getattribute__(obj, "__dict__")
        except (AttributeError, TypeError):
            d = None
    if d:
        out = [*out, *d.values()]
    return out


def _check(v: Any) -> tuple[str, str, Callable[[Any], object] | None] | None:
    ent = _registry.get(type(v))
    if ent is None:
        return None
    name, hint_fn, fixup = ent
    hint = hint_fn(v)
    if hint is None:
        return None
    return name, hint, fixup


def debug_check_no_obj_freed(obj: Any, where: str) -> int:
    """Report every active watched object that obj is, or holds in a field;
    fix each up. Return how many were found."""
    if not debug_objects:
        return 0
    reg = _registry
    vals = _values(obj)
    if type(obj) not in reg and reg.keys().isdisjoint(map(type, vals)):
        return 0                    # the common case, decided at C speed
    found = 0
    for v in (obj, *vals):
        if type(v) not in reg:
            continue
        hit = _check(v)
        if hit is None:
            continue
        name, hint, fixup = hit
        found += 1
        report_bug(f"ODEBUG: free active (active state 0) object type: {name} hint: {hint}",
                   object_type=name, hint=hint, freed_with=type(obj).__name__, where=where)
        if fixup is not None:
            fixup(v)
    return found


def debug_object_init(obj: Any, call: str) -> bool:
    """Report re-initialising an active watched object (`call` is the init
    function's name). Return True if it was active."""
    if not debug_objects:
        return False
    hit = _check(obj)
    if hit is None:
        return False
    name, hint, _ = hit
    report_bug(f"ODEBUG: init active (active state 0) object type: {name} hint: {hint}",
               object_type=name, hint=hint, call=call)
    return True
