"""fail_mempool: make a mempool act as if it were exhausted.

Ours: mm/mempool.c has no fault point. The framework is
kshim/fault_inject.py; kshim/mempool.py tests the point at the top of
mempool_alloc.

Contexts: any (a non-sleeping mempool_alloc may be failed in softirq).

The fault: the pool's allocator and its reserve both look empty. A
non-sleeping allocation gets None; a sleeping one is failed only while an
element is out (it then waits for its return, as mempool_alloc does), since
with none out it would wait forever.
"""
from __future__ import annotations

from typing import Any

from kshim.fault_inject import DECLARE_FAULT_ATTR, should_fail
from kshim.gfp import __GFP_DIRECT_RECLAIM

fail_mempool = DECLARE_FAULT_ATTR("fail_mempool", {})


def should_fail_mempool(pool: Any, gfp: int) -> bool:
    """Should this mempool_alloc act as if the pool were exhausted?"""
    if gfp & __GFP_DIRECT_RECLAIM and not pool.out:
        return False
    return should_fail(fail_mempool, 1)
