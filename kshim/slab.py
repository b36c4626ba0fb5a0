"""Slab caches and kmalloc.

Twin of mm/slub.c, mm/slab_common.c and include/linux/slab.h.

Contexts: allocation with a GFP flag that allows blocking (GFP_KERNEL) only
from task context; GFP_ATOMIC from any context. Frees from any context.

Differs from the kernel: a cache holds Python objects made by its
constructor (the `ctor` of kmem_cache_create, called with no argument, or
the class given as `size`), not raw bytes; kmalloc returns a bytearray.
As in the kernel, the ctor runs when an object is first made, not on every
allocation: a freed object is kept and handed out again with the fields its
last user left, so callers initialise what they use (kmem_cache_zalloc
always returns a freshly constructed object).
Memory is the host's, so "out of memory" only happens through the
per-cache limit or fault injection.

Debug aids (slub_debug, on when `debug_slab` is True): every live object is
tracked with its allocation site, a free of an object not allocated from
the cache (double free or wrong cache) is reported, kmem_cache_destroy()
reports leaked objects with their allocation stacks. statistics() gives
/proc/slabinfo-like counters.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

import attrs

from kshim.bug import report_bug
from kshim.gfp import __GFP_ZERO, gfpflags_allow_blocking
from kshim.sched import might_sleep

debug_slab = True
SLAB_HWCACHE_ALIGN = 0x2000
SLAB_PANIC = 0x40000

fault_hook: Callable[["kmem_cache", int], bool] | None = None   # kshim.fault_inject
_FREE_KEEP = 1024        # freed objects a cache keeps for reuse, like a slab's free list


class kmem_cache:
    __slots__ = ("name", "ctor", "flags", "active", "allocs", "frees", "failures",
                 "high_water", "live", "limit", "free")

    def __init__(self, name: str, ctor: Callable[[], Any], flags: int) -> None:
        self.name = name
        self.ctor = ctor
        self.flags = flags
        self.active = 0
        self.allocs = 0
        self.frees = 0
        self.failures = 0
        self.high_water = 0
        self.live: dict[int, tuple[Any, str]] = {}   # id -> (obj, alloc stack)
        self.limit = 0                                # 0: unlimited
        self.free: list = []                          # freed objects kept for reuse


caches: dict[str, kmem_cache] = {}


@attrs.frozen
class slab_stats:
    name: str
    active_objs: int
    allocs: int
    frees: int
    failures: int
    high_water: int


def kmem_cache_create(name: str, size: "int | type", align: int = 0, flags: int = 0,
                      ctor: Callable[[], Any] | None = None) -> kmem_cache:
    """A cache of objects made by ctor() (or by calling `size` if a class)."""
    if ctor is None:
        ctor = size if callable(size) else (lambda n=size: bytearray(n))
    c = kmem_cache(name, ctor, flags)
    caches[name] = c
    return c


def kmem_cache_alloc(c: kmem_cache, gfp: int) -> Any:
    """A new object, or None when the allocation fails."""
    if gfpflags_allow_blocking(gfp):
        might_sleep()
    if (fault_hook is not None and fault_hook(c, gfp)) or (c.limit and c.active >= c.limit):
        c.failures += 1
        return None
    free = c.free
    obj = free.pop() if free else c.ctor()
    c.active += 1
    c.allocs += 1
    if c.active > c.high_water:
        c.high_water = c.active
    if debug_slab:
        c.live[id(obj)] = (obj, "".join(traceback.format_stack(limit=6)[:-1]))
    return obj


def kmem_cache_zalloc(c: kmem_cache, gfp: int) -> Any:
    """A freshly constructed object (the ctor's state is our "zeroed")."""
    if c.free:
        c.free.pop()
    return kmem_cache_alloc(c, gfp | __GFP_ZERO)


def kmem_cache_free(c: kmem_cache, obj: Any) -> None:
    if debug_slab:
        if c.live.pop(id(obj), None) is None:
            owner = next((o.name for o in caches.values() if id(obj) in o.live), None)
            report_bug("kmem_cache_free: double free or object from another cache",
                       cache=c.name, belongs_to=owner, obj=type(obj).__name__)
            return
    c.active -= 1
    c.frees += 1
    if len(c.free) < _FREE_KEEP:
        c.free.append(obj)


def kmem_cache_destroy(c: kmem_cache) -> int:
    """Destroy c; return the number of leaked objects (each reported)."""
    leaked = c.active
    if leaked:
        first = next(iter(c.live.values()), (None, "(stack not recorded: debug_slab off)"))
        report_bug(f"kmem_cache_destroy {c.name}: Slab cache still has objects",
                   cache=c.name, leaked=leaked, first_alloc_stack=first[1])
    caches.pop(c.name, None)
    return leaked


def kmalloc(size: int, gfp: int) -> bytearray | None:
    if gfpflags_allow_blocking(gfp):
        might_sleep()
    if fault_hook is not None and fault_hook(_kmalloc_cache, gfp):
        _kmalloc_cache.failures += 1
        return None
    _kmalloc_cache.allocs += 1
    _kmalloc_cache.active += 1
    return bytearray(size)


def kzalloc(size: int, gfp: int) -> bytearray | None:
    return kmalloc(size, gfp)


def kcalloc(n: int, size: int, gfp: int) -> bytearray | None:
    return kmalloc(n * size, gfp)


def kvmalloc(size: int, gfp: int) -> bytearray | None:
    return kmalloc(size, gfp)


def kmemdup(src: "bytes | bytearray | memoryview", gfp: int) -> bytearray | None:
    buf = kmalloc(len(src), gfp)
    if buf is not None:
        buf[:] = src
    return buf


def kstrdup(s: str, gfp: int) -> str | None:
    return None if kmalloc(0, gfp) is None else str(s)


def krealloc(buf: bytearray | None, size: int, gfp: int) -> bytearray | None:
    new = kmalloc(size, gfp)
    if new is not None and buf is not None:
        n = min(len(buf), size)
        new[:n] = buf[:n]
        kfree(buf)
    return new


def kfree(obj: object) -> None:
    if obj is None:
        return
    _kmalloc_cache.frees += 1
    _kmalloc_cache.active -= 1


kvfree = kfree
_kmalloc_cache = kmem_cache("kmalloc", bytearray, 0)
caches["kmalloc"] = _kmalloc_cache


def statistics() -> list[slab_stats]:
    return [slab_stats(c.name, c.active, c.allocs, c.frees, c.failures, c.high_water)
            for c in caches.values()]


def slabinfo() -> str:
    """/proc/slabinfo-like text."""
    lines = ["# name            <active_objs> <allocs> <frees> <failures> <high_water>"]
    for s in statistics():
        lines.append(f"{s.name:<18} {s.active_objs:>8} {s.allocs:>10} {s.frees:>10} "
                     f"{s.failures:>6} {s.high_water:>8}")
    return "\n".join(lines) + "\n"
