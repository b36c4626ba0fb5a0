"""GFP allocation flags.

Twin of include/linux/gfp_types.h.

Contexts: any.

Differs from the kernel: only the bits the emulation acts on have meaning:
whether the allocation may sleep (__GFP_DIRECT_RECLAIM), whether it must be
zeroed (__GFP_ZERO) and whether a failure is reported (__GFP_NOWARN).
"""
from __future__ import annotations

__GFP_HIGH = 0x20
__GFP_IO = 0x40
__GFP_FS = 0x80
__GFP_ZERO = 0x100
__GFP_DIRECT_RECLAIM = 0x400
__GFP_KSWAPD_RECLAIM = 0x800
__GFP_NOWARN = 0x2000
__GFP_RETRY_MAYFAIL = 0x4000
__GFP_NOFAIL = 0x8000
__GFP_NORETRY = 0x10000
__GFP_RECLAIM = __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM

GFP_ATOMIC = __GFP_HIGH | __GFP_KSWAPD_RECLAIM
GFP_NOWAIT = __GFP_KSWAPD_RECLAIM
GFP_NOIO = __GFP_RECLAIM
GFP_NOFS = __GFP_RECLAIM | __GFP_IO
GFP_KERNEL = __GFP_RECLAIM | __GFP_IO | __GFP_FS
GFP_USER = GFP_KERNEL
GFP_HIGHUSER = GFP_KERNEL


def gfpflags_allow_blocking(gfp: int) -> bool:
    return bool(gfp & __GFP_DIRECT_RECLAIM)
