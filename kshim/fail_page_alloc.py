"""fail_page_alloc: fail page allocations on purpose.

Twin of mm/fail_page_alloc.c (the fail_page_alloc fault_attr and
should_fail_alloc_page). The framework is kshim/fault_inject.py;
kshim/page_alloc.py tests the point at the top of alloc_pages, so
everything built on pages (scatterlists, data buffers) can fail.

Contexts: any.

Differs from the kernel: ignore-gfp-wait defaults to N (the kernel's is
Y); there is no ignore-gfp-highmem (no highmem here).
"""
from __future__ import annotations

from kshim.fault_inject import DECLARE_FAULT_ATTR, should_fail
from kshim.gfp import __GFP_DIRECT_RECLAIM, __GFP_NOFAIL

fail_page_alloc = DECLARE_FAULT_ATTR("fail_page_alloc", {"ignore-gfp-wait": (bool, False, None),
                                                         "min-order": (int, 0, None)})


def should_fail_alloc_page(gfp: int, order: int) -> bool:
    """fail_page_alloc for one allocation of 2**order pages."""
    p = fail_page_alloc.params
    if gfp & __GFP_NOFAIL or order < p["min-order"]:
        return False
    if p["ignore-gfp-wait"] and gfp & __GFP_DIRECT_RECLAIM:
        return False
    return should_fail(fail_page_alloc, 4096 << order)
