"""kshim.gfp: which flags may sleep."""
from __future__ import annotations

from kshim.gfp import GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOWAIT, gfpflags_allow_blocking


def test_only_reclaiming_flags_allow_blocking():
    assert gfpflags_allow_blocking(GFP_KERNEL) and gfpflags_allow_blocking(GFP_NOIO)
    assert gfpflags_allow_blocking(GFP_NOFS)
    assert not gfpflags_allow_blocking(GFP_ATOMIC) and not gfpflags_allow_blocking(GFP_NOWAIT)
