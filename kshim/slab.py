"""Slab caches and kmalloc.

Twin of mm/slub.c, mm/slab_common.c, mm/util.c (kmemdup, kstrdup) and
include/linux/slab.h.

Contexts: allocation with a GFP flag that allows blocking (GFP_KERNEL) only
from task context; GFP_ATOMIC from any context. Frees from any context.

Differs from the kernel: a cache holds Python objects made by its
constructor (the `ctor` of kmem_cache_create, called with no argument, or
the class given as `size`; an int size makes bytearrays), not raw bytes;
kmalloc returns a bytearray. As in the kernel, the ctor runs when an object
is first made, not on every allocation: a freed object is kept and handed
out again with the fields its last user left, so callers initialise what
they use (kmem_cache_zalloc always returns a freshly constructed object).
Memory is the host's, so "out of memory" only happens through the
per-cache limit, kmalloc sizes above KMALLOC_MAX_SIZE or fault injection.
Caches with the same name may coexist (slab_caches is a list).

Debug aids (slub_debug, on when `debug_slab` is True):
- every live object is tracked with a cheap snapshot of its allocation
  stack; kmem_cache_destroy() reports leaked objects grouped by those stacks;
- a freed object is poisoned: its class is swapped for a generated subclass
  with empty __slots__ whose attribute access raises KernelBug ("use after
  free") naming the cache and the freeing call site; the class comes back
  when the object is handed out again. bytearray objects cannot change class:
  they are filled with POISON_FREE (0x6b) instead, and a changed byte is
  reported as "Poison overwritten" when the object is reused;
- a free of an object not live in the cache is reported as a double free
  (with the first free's site) or a free to the wrong cache (naming the
  right one), and is not performed;
- freeing an object that holds an active timer, work item, completion with
  waiters or held lock is reported by kshim.debugobjects;
- kmalloc buffers: Python bounds-checks every index, so there is nothing for
  a red zone to catch on reads or in-place writes; the one overflow Python
  allows, a slice assignment that grows the bytearray, is caught at kfree()
  by comparing the length with the allocated size ("kmalloc red zone"). A
  kfree'd buffer is filled with POISON_FREE; double kfree is reported.
- with debug on, freed objects are reused first-in first-out (a quarantine,
  as KASAN's) so a stale pointer stays poisoned longer.
Switching the aids on while objects are live: those objects are untracked,
and their frees are accepted. Switching off unpoisons every free list.
statistics() and slabinfo() give /proc/slabinfo-like counters either way.
Tracepoints: kmem_cache_alloc and kmem_cache_free (cache name, objects live).
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from kshim import debugobjects, sched
from kshim.bug import (KernelBug, WARN_ON_ONCE, caller_site, entry_parts, format_entries,
                       report_bug, stack_capture)
from kshim.failslab import failslab, should_failslab
from kshim.gfp import __GFP_DIRECT_RECLAIM, __GFP_NOWARN
from kshim.tracepoint import TRACE_EVENT

debug_slab = True
SLAB_HWCACHE_ALIGN = 0x2000
SLAB_POISON = 0x800
SLAB_RED_ZONE = 0x400
SLAB_PANIC = 0x40000
SLAB_ACCOUNT = 0x4000000
SLAB_RECLAIM_ACCOUNT = 0x20000
SLAB_TYPESAFE_BY_RCU = 0x80000
POISON_FREE = 0x6B
POISON_END = 0xA5
KMALLOC_MAX_SIZE = 1 << 22        # 4 MiB, as with 4K pages and MAX_ORDER 10

_FREE_KEEP = 1024        # freed objects a cache keeps for reuse, like a slab's free list
_ALLOC_STACK_DEPTH = 8
_POISON_PATTERNS_MAX = 64   # distinct bytearray sizes whose poison pattern is kept
_might_sleep = sched.__dict__["__might_sleep"]

# include/trace/events/kmem.h (the cache's name instead of the call site)
trace_kmem_cache_alloc = TRACE_EVENT("kmem_cache_alloc", ("cache", "active"))
trace_kmem_cache_free = TRACE_EVENT("kmem_cache_free", ("cache", "active"))


class kmem_cache:
    # allocations are not counted: statistics() reports frees + active, so a
    # cache pays two counters per object's life, not three (alloc/free pairs
    # are the hot path of every command)
    __slots__ = ("name", "ctor", "flags", "size", "active", "frees", "failures",
                 "high_water", "live", "limit", "free", "untracked", "destroyed")

    def __init__(self, name: str, ctor: Callable[[], Any], flags: int, size: int = 0) -> None:
        self.name = name
        self.ctor = ctor
        self.flags = flags
        self.size = size
        self.active = 0
        self.frees = 0
        self.failures = 0
        self.high_water = 0
        self.live: dict[int, tuple[Any, tuple]] = {}   # debug: id -> (obj, alloc stack)
        self.limit = 0                                  # 0: unlimited
        self.free: list = []                            # freed objects kept for reuse
        self.untracked = 0       # live objects allocated while debug was off
        self.destroyed = False

    def __repr__(self) -> str:
        return f"<kmem_cache {self.name} active={self.active}>"


slab_caches: list[kmem_cache] = []
# debug: id(obj) -> (cache name, free stack) of poisoned (freed) objects
_freed: dict[int, tuple[str, tuple]] = {}
_poison_classes: dict[type, type | None] = {}
_poisoned_types: set[type] = set()
_poison_patterns: dict[int, bytes] = {}     # n -> a freed bytearray's n bytes


@attrs.frozen
class slab_stats:
    """One cache in statistics() (/proc/slabinfo columns)."""

    name: str
    active_objs: int
    allocs: int
    frees: int
    failures: int
    high_water: int
    free_kept: int


def kmem_cache_create(name: str, size: "int | type", align: int = 0, flags: int = 0,
                      ctor: Callable[[], Any] | None = None) -> kmem_cache:
    """A cache of objects made by ctor() (or by calling `size` if a class;
    an int size without ctor makes bytearrays of that size)."""
    nbytes = size if isinstance(size, int) else 0
    if ctor is None:
        ctor = size if callable(size) else (lambda n=size: bytearray(n))
    c = kmem_cache(name, ctor, flags, nbytes)
    slab_caches.append(c)
    return c


kmem_cache_create_usercopy = kmem_cache_create


def KMEM_CACHE(cls: type, flags: int = 0) -> kmem_cache:
    """A cache named after the struct (class) it holds."""
    return kmem_cache_create(cls.__name__, cls, 0, flags)


def find_cache(name: str) -> kmem_cache | None:
    """The first cache of that name, or None."""
    for c in slab_caches:
        if c.name == name:
            return c
    return None


def kmem_cache_alloc(c: kmem_cache, gfp: int) -> Any:
    """An object, or None when the allocation fails."""
    if debug_slab and gfp & __GFP_DIRECT_RECLAIM:
        _might_sleep()
    if (failslab.armed and should_failslab(c, gfp)) or (c.limit and c.active >= c.limit):
        c.failures += 1
        return None
    free = c.free
    if free:
        # Reuse cannot raise the high water: active + len(free) never
        # exceeds it (it grows only through the ctor below).
        obj = _debug_take(c, free.pop(0)) if debug_slab else free.pop()
        c.active += 1
    else:
        obj = c.ctor()
        c.active += 1
        if c.active > c.high_water:
            c.high_water = c.active
    if debug_slab:
        c.live[id(obj)] = (obj, stack_capture(1, _ALLOC_STACK_DEPTH))
    if trace_kmem_cache_alloc.enabled:
        trace_kmem_cache_alloc(c.name, c.active)
    return obj


kmem_cache_alloc_node = kmem_cache_alloc


def kmem_cache_zalloc(c: kmem_cache, gfp: int) -> Any:
    """A freshly constructed object (the ctor's state is our "zeroed")."""
    if debug_slab and gfp & __GFP_DIRECT_RECLAIM:
        _might_sleep()
    if (failslab.armed and should_failslab(c, gfp)) or (c.limit and c.active >= c.limit):
        c.failures += 1
        return None
    obj = c.ctor()
    if debug_slab:
        c.live[id(obj)] = (obj, stack_capture(1, _ALLOC_STACK_DEPTH))
    c.active += 1
    if c.active > c.high_water:
        c.high_water = c.active
    return obj


def kmem_cache_free(c: kmem_cache, obj: Any) -> None:
    if debug_slab:
        if not _debug_free(c, obj):
            return
    c.active -= 1
    c.frees += 1
    if trace_kmem_cache_free.enabled:
        trace_kmem_cache_free(c.name, c.active)
    if len(c.free) < _FREE_KEEP or debug_slab:
        c.free.append(obj)


def kmem_cache_shrink(c: kmem_cache) -> int:
    """Drop the kept free objects; return 0."""
    for obj in c.free:
        _freed.pop(id(obj), None)
    c.free.clear()
    return 0


def kmem_cache_destroy(c: kmem_cache | None) -> int:
    """Destroy c; return the number of leaked objects (reported, with the
    allocation stacks of the tracked ones)."""
    if c is None:
        return 0
    leaked = c.active
    if leaked:
        groups: dict[tuple, int] = {}
        for _obj, st in c.live.values():
            groups[st] = groups.get(st, 0) + 1
        text = "".join(f"{n} object(s) allocated at:\n{format_entries(st, '    ')}"
                       for st, n in sorted(groups.items(), key=lambda kv: -kv[1]))
        if c.untracked:
            text += f"{c.untracked} object(s) allocated while slab debugging was off\n"
        report_bug(f"kmem_cache_destroy {c.name}: Slab cache still has objects",
                   cache=c.name, leaked=leaked, alloc_stacks=text or "(not recorded)\n",
                   objects=[type(o).__name__ for o, _ in list(c.live.values())[:8]])
    kmem_cache_shrink(c)
    c.destroyed = True
    try:
        slab_caches.remove(c)
    except ValueError:
        pass
    return leaked


# -- the debug half ----------------------------------------------------------------

def _free_site(obj: Any) -> tuple[str, tuple] | None:
    return _freed.get(id(obj))


def _poison_getattribute(self: Any, name: str) -> Any:
    if name == "__class__":
        return type(self)
    info = _freed.get(id(self))
    cache, stack = info if info is not None else ("?", ())
    orig = type(self).__mro__[1].__name__
    report_bug("use after free", cache=cache, object=orig, attribute=name,
               freed_at=format_entries(stack[:4], "    ") if stack else "(not recorded)\n")
    where = "%s:%d (%s)" % entry_parts(stack[0]) if stack else "?"
    raise KernelBug(f"use-after-free: {orig}.{name} of an object freed to cache {cache} "
                    f"at {where}")


def _poison_setattr(self: Any, name: str, value: Any) -> None:
    _poison_getattribute(self, name)


def _poison_repr(self: Any) -> str:
    info = _freed.get(id(self))
    return f"<freed {type(self).__mro__[1].__name__} of cache {info[0] if info else '?'}>"


def _poisoned_class(cls: type) -> type | None:
    try:
        return _poison_classes[cls]
    except KeyError:
        pass
    p: type | None
    try:
        p = type(f"{cls.__name__}<freed>", (cls,), {
            "__slots__": (), "__getattribute__": _poison_getattribute,
            "__setattr__": _poison_setattr, "__delattr__": _poison_getattribute,
            "__repr__": _poison_repr, "__eq__": object.__eq__, "__ne__": object.__ne__,
            "__hash__": object.__hash__, "__module__": cls.__module__})
    except TypeError:
        p = None            # a builtin or final type: cannot be poisoned this way
    _poison_classes[cls] = p
    if p is not None:
        _poisoned_types.add(p)
    return p


def _poison_pattern(n: int) -> bytes:
    """POISON_FREE * (n - 1) + POISON_END, made once per size: the sim frees
    and reuses the same 256 KiB receive buffers thousands of times."""
    pat = _poison_patterns.get(n)
    if pat is None:
        pat = bytes((POISON_FREE,)) * (n - 1) + bytes((POISON_END,))
        if len(_poison_patterns) < _POISON_PATTERNS_MAX:
            _poison_patterns[n] = pat
    return pat


def _poison(c: kmem_cache, obj: Any, stack: tuple) -> None:
    cls = type(obj)
    if cls is bytearray:
        n = len(obj)
        if n:
            obj[:] = _poison_pattern(n)
        _freed[id(obj)] = (c.name, stack)
        return
    p = _poisoned_class(cls)
    if p is None:
        return
    try:
        object.__setattr__(obj, "__class__", p)
    except TypeError:
        _poison_classes[cls] = None
        return
    _freed[id(obj)] = (c.name, stack)


def _unpoison(obj: Any) -> None:
    t = type(obj)
    if t in _poisoned_types:
        object.__setattr__(obj, "__class__", t.__mro__[1])
    _freed.pop(id(obj), None)


def _debug_take(c: kmem_cache, obj: Any) -> Any:
    """A kept free object is handed out again: check and undo its poison."""
    info = _freed.get(id(obj))
    if type(obj) is bytearray and len(obj) and info is not None:
        n = len(obj)
        want = _poison_pattern(n)
        if obj != want:
            first = next((i for i in range(n) if obj[i] != want[i]), n)
            report_bug("Poison overwritten", cache=c.name, offset=first,
                       freed_at=format_entries(info[1][:4], "    ") if info else "(not recorded)\n")
    _unpoison(obj)
    return obj


def _debug_free(c: kmem_cache, obj: Any) -> bool:
    """Check a free; poison the object. False: the free must not happen."""
    key = id(obj)
    if c.live.pop(key, None) is None:
        info = _freed.get(key) if (type(obj) in _poisoned_types or type(obj) is bytearray) else None
        if info is not None:
            report_bug("double free", cache=c.name, object=type(obj).__mro__[1].__name__
                       if type(obj) in _poisoned_types else type(obj).__name__,
                       at=caller_site(2),
                       first_freed_at=format_entries(info[1][:4], "    "))
            return False
        owner = next((o for o in slab_caches if key in o.live), None)
        if owner is not None:
            report_bug(f"kmem_cache_free: Wrong slab cache. {c.name} but object is from "
                       f"{owner.name}", cache=c.name, belongs_to=owner.name,
                       object=type(obj).__name__, at=caller_site(2))
            return False
        if c.untracked <= 0:
            report_bug("kmem_cache_free: object not allocated from this cache",
                       cache=c.name, object=type(obj).__name__, at=caller_site(2))
            return False
        c.untracked -= 1                 # allocated before debugging was switched on
    if debugobjects.debug_objects:
        debugobjects.debug_check_no_obj_freed(obj, f"kmem_cache_free({c.name})")
    _poison(c, obj, stack_capture(2, _ALLOC_STACK_DEPTH))
    return True


def set_debug_slab(on: bool) -> None:
    """Switch slab debugging at run time (kshim.debug calls this)."""
    global debug_slab
    if on == debug_slab:
        return
    if on:
        for c in slab_caches:
            c.untracked = c.active
            c.live.clear()
        _kmalloc_untracked[0] = _kmalloc_cache.active
        _kmalloc_live.clear()
    else:
        for c in slab_caches:
            for obj in c.free:
                _unpoison(obj)
            c.live.clear()
            c.untracked = 0
            del c.free[_FREE_KEEP:]
        _freed.clear()
        _kmalloc_live.clear()
        _kmalloc_freed.clear()
    debug_slab = on


# -- kmalloc -----------------------------------------------------------------------

_kmalloc_cache = kmem_cache("kmalloc", bytearray, 0)
slab_caches.append(_kmalloc_cache)
_kmalloc_live: dict[int, tuple[bytearray, int, tuple]] = {}   # debug: id -> (buf, size, stack)
_kmalloc_freed: dict[int, tuple] = {}       # debug: id -> free stack, the newest 64K
_kmalloc_untracked = [0]


def kmalloc(size: int, gfp: int) -> bytearray | None:
    """A zero-filled bytearray of `size` bytes, or None."""
    c = _kmalloc_cache
    if debug_slab and gfp & __GFP_DIRECT_RECLAIM:
        _might_sleep()
    if (failslab.armed and should_failslab(c, gfp)) or size > KMALLOC_MAX_SIZE:
        c.failures += 1
        if size > KMALLOC_MAX_SIZE and not gfp & __GFP_NOWARN:
            WARN_ON_ONCE(True, f"kmalloc of {size} bytes, more than KMALLOC_MAX_SIZE")
        return None
    buf = bytearray(size)
    c.active += 1
    if c.active > c.high_water:
        c.high_water = c.active
    if debug_slab:
        _kmalloc_track(buf, size)
    return buf


def _kmalloc_track(buf: bytearray, size: int) -> None:
    key = id(buf)
    _kmalloc_freed.pop(key, None)          # an old buffer's id, now reused
    _kmalloc_live[key] = (buf, size, stack_capture(2, _ALLOC_STACK_DEPTH))


def kzalloc(size: int, gfp: int) -> bytearray | None:
    return kmalloc(size, gfp)


def kmalloc_array(n: int, size: int, gfp: int) -> bytearray | None:
    return kmalloc(n * size, gfp)


def kcalloc(n: int, size: int, gfp: int) -> bytearray | None:
    return kmalloc(n * size, gfp)


def kvmalloc(size: int, gfp: int) -> bytearray | None:
    """kmalloc without the KMALLOC_MAX_SIZE limit (vmalloc's job)."""
    if size > KMALLOC_MAX_SIZE:
        c = _kmalloc_cache
        if debug_slab and gfp & __GFP_DIRECT_RECLAIM:
            _might_sleep()
        if failslab.armed and should_failslab(c, gfp):
            c.failures += 1
            return None
        buf = bytearray(size)
        c.active += 1
        if c.active > c.high_water:
            c.high_water = c.active
        if debug_slab:
            _kmalloc_track(buf, size)
        return buf
    return kmalloc(size, gfp)


kvzalloc = kvmalloc
vmalloc = kvmalloc
vzalloc = kvmalloc


def kvcalloc(n: int, size: int, gfp: int) -> bytearray | None:
    return kvmalloc(n * size, gfp)


def kmemdup(src: "bytes | bytearray | memoryview", gfp: int) -> bytearray | None:
    buf = kmalloc(len(src), gfp)
    if buf is not None:
        buf[:] = src
    return buf


def kstrdup(s: str | None, gfp: int) -> str | None:
    """A copy of s (None if s is None or the allocation fails)."""
    if s is None:
        return None
    if failslab.armed and should_failslab(_kmalloc_cache, gfp):
        _kmalloc_cache.failures += 1
        return None
    return str(s)


def kstrndup(s: str | None, n: int, gfp: int) -> str | None:
    return None if s is None else kstrdup(s[:n], gfp)


def krealloc(buf: bytearray | None, size: int, gfp: int) -> bytearray | None:
    new = kmalloc(size, gfp)
    if new is not None and buf is not None:
        n = min(len(buf), size)
        new[:n] = buf[:n]
        kfree(buf)
    return new


def ksize(buf: bytearray) -> int:
    return len(buf)


def kfree(obj: object) -> None:
    """Free a kmalloc buffer (None is fine; strings from kstrdup too)."""
    if obj is None:
        return
    c = _kmalloc_cache
    if debug_slab and type(obj) is bytearray:
        if not _kfree_debug(obj):
            return
    c.frees += 1
    c.active -= 1


def _kfree_debug(buf: bytearray) -> bool:
    ent = _kmalloc_live.pop(id(buf), None)
    if ent is None:
        info = _kmalloc_freed.get(id(buf))
        if info is not None:
            report_bug("double free", cache="kmalloc", at=caller_site(2),
                       first_freed_at=format_entries(info[:4], "    "))
            return False
        if _kmalloc_untracked[0] > 0:
            _kmalloc_untracked[0] -= 1
            return True
        report_bug("kfree of a buffer not from kmalloc (invalid pointer)",
                   size=len(buf), at=caller_site(2))
        return False
    _, size, stack = ent
    if len(buf) != size:
        report_bug("kmalloc red zone: buffer grew past its end", allocated=size, now=len(buf),
                   at=caller_site(2), allocated_at=format_entries(stack[:4], "    "))
    n = len(buf)
    try:
        buf[:] = bytes((POISON_FREE,)) * n
    except BufferError:
        pass
    kf = _kmalloc_freed
    kf[id(buf)] = stack_capture(2, _ALLOC_STACK_DEPTH)
    if len(kf) > 65536:
        del kf[next(iter(kf))]      # bounded: the oldest free site is forgotten
    return True


def kfree_sensitive(obj: object) -> None:
    if type(obj) is bytearray:
        obj[:] = bytes(len(obj))
    kfree(obj)


kzfree = kfree_sensitive
kvfree = kfree
vfree = kfree


# -- statistics ----------------------------------------------------------------------

def statistics() -> list[slab_stats]:
    """Per cache: active objects, allocations, frees, failures, high water."""
    return [slab_stats(c.name, c.active, c.frees + c.active, c.frees, c.failures, c.high_water,
                       len(c.free)) for c in slab_caches]


def slabinfo() -> str:
    """/proc/slabinfo-like text."""
    lines = ["# name                    <active_objs>   <allocs>    <frees> <failures> "
             "<high_water> <free_kept>"]
    for s in statistics():
        lines.append(f"{s.name[:24]:<24} {s.active_objs:>13} {s.allocs:>10} {s.frees:>10} "
                     f"{s.failures:>10} {s.high_water:>12} {s.free_kept:>11}")
    return "\n".join(lines) + "\n"
