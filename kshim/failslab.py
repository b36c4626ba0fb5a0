"""failslab: fail slab allocations on purpose.

Twin of mm/failslab.c (the failslab fault_attr and should_failslab). The
framework is kshim/fault_inject.py; kshim/slab.py tests the point at the
top of kmem_cache_alloc and its friends (kmalloc, kvmalloc, kstrdup).

Contexts: any (an atomic allocation may be failed in softirq).

Differs from the kernel: ignore-gfp-wait defaults to N (the kernel's is
Y), so the GFP_KERNEL allocations, nearly all of ours, can fail;
cache-filter takes the cache names in the `cache` knob instead of
/sys/kernel/slab/<cache>/failslab. Enumerate mode names each cache as its
own site ("failslab:<cache>").
"""
from __future__ import annotations

from typing import Any

from kshim.fault_inject import DECLARE_FAULT_ATTR, should_fail
from kshim.gfp import __GFP_DIRECT_RECLAIM, __GFP_NOFAIL

failslab = DECLARE_FAULT_ATTR("failslab", {"ignore-gfp-wait": (bool, False, None),
                                           "cache-filter": (bool, False, None),
                                           "cache": (str, "", None)})


def should_failslab(cache: Any, gfp: int) -> bool:
    """failslab for one allocation from `cache` (a kshim.slab.kmem_cache)."""
    p = failslab.params
    if gfp & __GFP_NOFAIL:
        return False
    if p["ignore-gfp-wait"] and gfp & __GFP_DIRECT_RECLAIM:
        return False
    if p["cache-filter"] and cache.name not in p["cache"].split():
        return False
    return should_fail(failslab, cache.size or 1, f"failslab:{cache.name}")
