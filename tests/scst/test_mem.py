"""scst_core.mem: the sgv pool's one-page buffers go from a released
command to the next one, and step aside for page debugging, the page
allocator's fault point and pages someone else still holds."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from kshim import fault_inject, page_alloc
from kshim.err import ENOMEM
from kshim.gfp import GFP_ATOMIC
from kshim.page_alloc import get_page, put_page
from scst_core import mem
from scst_core.mem import scst_alloc_space, scst_release_space
from scst_core.scst import scst_cmd


@pytest.fixture
def pool() -> Iterator[list]:
    """The pool, empty, with page debugging off as in the daemon; both put
    back afterwards."""
    saved, debug = list(mem._sgv_one), page_alloc.debug_pagealloc
    mem._sgv_one.clear()
    page_alloc.debug_pagealloc = False
    yield mem._sgv_one
    page_alloc.debug_pagealloc = debug
    fault_inject.fault_reset()
    mem._sgv_one[:] = saved


def _cmd() -> scst_cmd:
    return scst_cmd(None, None, None, b"")        # as the slab's constructor makes it


def test_sgv_pool_gives_a_released_one_page_buffer_to_the_next_command(pool: list) -> None:
    a, b = _cmd(), _cmd()
    assert scst_alloc_space(a, 4096, GFP_ATOMIC) == 0
    page = a.sg_pages[0]
    allocated = page_alloc.nr_pages_allocated
    scst_release_space(a)
    assert pool == [page] and page.refcount == 1
    assert scst_alloc_space(b, 512, GFP_ATOMIC) == 0
    assert b.sg_pages == [page] and b.sg[0].length == 512 and pool == []
    assert page_alloc.nr_pages_allocated == allocated     # the pool's pages stay allocated
    scst_release_space(b)


def test_sgv_pool_keeps_no_buffer_larger_than_a_page(pool: list) -> None:
    a = _cmd()
    assert scst_alloc_space(a, 8192, GFP_ATOMIC) == 0
    scst_release_space(a)
    assert pool == []


def test_sgv_pool_keeps_no_page_another_holder_still_has(pool: list) -> None:
    a, b = _cmd(), _cmd()
    assert scst_alloc_space(a, 4096, GFP_ATOMIC) == 0
    page = a.sg_pages[0]
    get_page(page)                  # e.g. a sender still referencing it
    scst_release_space(a)
    assert pool == [] and page.refcount == 1
    assert scst_alloc_space(b, 4096, GFP_ATOMIC) == 0
    assert b.sg_pages[0] is not page
    scst_release_space(b)
    put_page(page)


def test_sgv_pool_is_bypassed_while_page_debugging_is_on(pool: list) -> None:
    a, b = _cmd(), _cmd()
    assert scst_alloc_space(a, 4096, GFP_ATOMIC) == 0
    scst_release_space(a)
    kept = pool[0]
    page_alloc.debug_pagealloc = True
    assert scst_alloc_space(b, 4096, GFP_ATOMIC) == 0
    assert b.sg_pages[0] is not kept and pool == [kept]
    scst_release_space(b)
    assert pool == [kept]           # freed to the page allocator, to be poisoned


def test_sgv_pool_is_bypassed_while_fail_page_alloc_is_armed_seed_16101(pool: list) -> None:
    a, b = _cmd(), _cmd()
    assert scst_alloc_space(a, 4096, GFP_ATOMIC) == 0
    scst_release_space(a)
    fault_inject.apply_fault_specs(["fail_page_alloc:probability=100,times=1,seed=16101,"
                                    "verbose=0"])
    assert scst_alloc_space(b, 4096, GFP_ATOMIC) == -ENOMEM
    assert len(pool) == 1
    assert scst_alloc_space(b, 4096, GFP_ATOMIC) == 0     # times=1: the point disarmed
    assert pool == []
    scst_release_space(b)
