"""kshim.slab: caches, kmalloc, and the slub_debug aids (poison, double free, leaks)."""
from __future__ import annotations

import attrs
import pytest
from kshim_support import report, titles

from kshim import slab
from kshim.bug import KernelBug
from kshim.debug import set_debug
from kshim.gfp import GFP_ATOMIC, GFP_KERNEL
from kshim.slab import (KMEM_CACHE, kfree, kmalloc, kmem_cache_alloc, kmem_cache_create,
                        kmem_cache_destroy, kmem_cache_free, kmem_cache_zalloc, kmemdup,
                        krealloc, kzalloc, slabinfo)


@attrs.define(slots=True, eq=False)
class t_cmd:
    tag: int = 0
    data: bytes = b""


class t_other:
    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x = 1


def test_a_freed_object_is_handed_out_again_with_its_last_fields(kernel):
    def body():
        c = KMEM_CACHE(t_cmd)
        a = kmem_cache_alloc(c, GFP_KERNEL)
        a.tag = 42
        kmem_cache_free(c, a)
        b = kmem_cache_alloc(c, GFP_KERNEL)
        fresh = kmem_cache_zalloc(c, GFP_KERNEL)
        out = (b is a, b.tag, fresh.tag, type(b) is t_cmd)
        kmem_cache_free(c, b)
        kmem_cache_free(c, fresh)
        kmem_cache_destroy(c)
        return out
    assert kernel(body) == (True, 42, 0, True)
    assert titles() == []


def test_use_after_free_raises_naming_the_cache_and_the_freeing_site(kernel):
    caught = []

    def free_it(c, obj):
        kmem_cache_free(c, obj)         # the site the report must name

    def body():
        c = kmem_cache_create("t_cmd_cache", t_cmd)
        obj = kmem_cache_alloc(c, GFP_KERNEL)
        free_it(c, obj)
        for access in (lambda: obj.tag, lambda: setattr(obj, "tag", 1)):
            try:
                access()
            except KernelBug as e:
                caught.append(str(e))
        still = isinstance(obj, t_cmd), repr(obj)
        kmem_cache_destroy(c)
        return still
    isinst, text = kernel(body)
    assert isinst and "freed t_cmd of cache t_cmd_cache" in text
    assert len(caught) == 2
    assert "t_cmd.tag" in caught[0] and "t_cmd_cache" in caught[0] and "free_it" in caught[0]
    reps = [r for r in __import__("kshim").bug.reports if r.title == "use after free"]
    assert reps[0].details["cache"] == "t_cmd_cache" and "free_it" in reps[0].details["freed_at"]


def test_a_use_after_free_in_a_kthread_kills_only_that_kthread(kernel):
    from kshim import sched
    from kshim.kthread import kthread_run, kthread_stop

    def user(arg):
        c, obj = arg
        return obj.tag

    def body():
        c = KMEM_CACHE(t_cmd)
        obj = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, obj)
        t = kthread_run(user, (c, obj), "stale_user")
        sched.yield_()
        kthread_stop(t)
        kmem_cache_destroy(c)
        return "alive"
    assert kernel(body) == "alive"
    assert report("oops").details["task"] == "stale_user"


def test_double_free_is_reported_with_the_first_free_and_not_done(kernel):
    def body():
        c = KMEM_CACHE(t_cmd)
        obj = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, obj)
        kmem_cache_free(c, obj)
        counts = c.active, c.frees, len(c.free)
        kmem_cache_destroy(c)
        return counts
    assert kernel(body) == (0, 1, 1)
    rep = report("double free")
    assert rep.details["cache"] == "t_cmd" and "test_slab.py" in rep.details["first_freed_at"]


def test_free_to_the_wrong_cache_is_reported_naming_the_right_one(kernel):
    def body():
        a = kmem_cache_create("t_a", t_cmd)
        b = kmem_cache_create("t_b", t_cmd)
        obj = kmem_cache_alloc(a, GFP_KERNEL)
        kmem_cache_free(b, obj)
        kmem_cache_free(a, obj)
        kmem_cache_destroy(a)
        kmem_cache_destroy(b)
    kernel(body)
    rep = report("Wrong slab cache")
    assert rep.details["cache"] == "t_b" and rep.details["belongs_to"] == "t_a"


def test_a_leaked_object_is_reported_at_destroy_with_its_allocation_stack(kernel):
    def allocate_and_forget(c):
        return kmem_cache_alloc(c, GFP_KERNEL)

    def body():
        c = kmem_cache_create("t_leaky", t_cmd)
        keep = kmem_cache_alloc(c, GFP_KERNEL)
        allocate_and_forget(c)
        kmem_cache_free(c, keep)
        return kmem_cache_destroy(c)
    assert kernel(body) == 1
    rep = report("kmem_cache_destroy t_leaky: Slab cache still has objects")
    assert rep.details["leaked"] == 1 and "allocate_and_forget" in rep.details["alloc_stacks"]


def test_bytearray_objects_are_poisoned_and_a_write_after_free_is_caught(kernel):
    def body():
        c = kmem_cache_create("t_buf", 16)
        buf = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, buf)
        poisoned = bytes(buf)
        buf[3] = 0                         # write after free
        again = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, again)
        kmem_cache_destroy(c)
        return poisoned, again is buf
    poisoned, same = kernel(body)
    assert poisoned == b"\x6b" * 15 + b"\xa5" and same
    rep = report("Poison overwritten")
    assert rep.details["cache"] == "t_buf" and rep.details["offset"] == 3


def test_kmalloc_buffer_grown_past_its_end_is_caught_at_kfree(kernel):
    def body():
        buf = kmalloc(8, GFP_KERNEL)
        buf[6:10] = b"overflow"            # slice assignment grows a bytearray
        kfree(buf)
        return bytes(buf[:2])
    assert kernel(body) == b"\x6b\x6b"
    rep = report("kmalloc red zone")
    assert rep.details["allocated"] == 8 and rep.details["now"] == 14


def test_double_kfree_is_reported(kernel):
    def body():
        buf = kmalloc(32, GFP_ATOMIC)
        kfree(buf)
        kfree(buf)
        kfree(None)
        kfree(bytearray(4))                # never came from kmalloc
    kernel(body)
    assert report("double free").details["cache"] == "kmalloc"
    assert report("kfree of a buffer not from kmalloc")


def test_allocation_failure_returns_none(kernel):
    def body():
        c = KMEM_CACHE(t_cmd)
        c.limit = 1
        first = kmem_cache_alloc(c, GFP_KERNEL)
        second = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, first)
        failures = c.failures
        kmem_cache_destroy(c)
        return second, failures, kmalloc(slab.KMALLOC_MAX_SIZE + 1, GFP_KERNEL)
    assert kernel(body) == (None, 1, None)


def test_kmalloc_family_copies_and_zeroes(kernel):
    def body():
        z = kzalloc(4, GFP_KERNEL)
        d = kmemdup(b"abc", GFP_KERNEL)
        r = krealloc(d, 5, GFP_KERNEL)
        out = bytes(z), bytes(r)
        kfree(z)
        kfree(r)
        return out
    assert kernel(body) == (b"\0\0\0\0", b"abc\0\0")
    assert titles() == []


def test_blocking_allocation_in_softirq_is_reported(kernel):
    from kshim import sched
    from kshim.softirq import raise_softirq

    def body():
        c = KMEM_CACHE(t_cmd)
        got = []
        raise_softirq(lambda _: got.append(kmem_cache_alloc(c, GFP_KERNEL)))
        sched.yield_()
        kmem_cache_free(c, got[0])
        kmem_cache_destroy(c)
    kernel(body)
    assert report("sleeping function called from invalid context").details["in_softirq"] == 1


def test_with_debug_off_nothing_is_poisoned_and_switching_on_later_is_quiet(kernel):
    def body():
        set_debug(False)
        c = KMEM_CACHE(t_other)
        a = kmem_cache_alloc(c, GFP_KERNEL)
        b = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, a)
        plain = type(a) is t_other and a.x == 1
        set_debug(True)                    # b was allocated untracked
        kmem_cache_free(c, b)
        poisoned = type(b) is not t_other
        set_debug(False)                   # the free list is unpoisoned
        unpoisoned = type(b) is t_other
        set_debug(True)
        kmem_cache_destroy(c)
        return plain, poisoned, unpoisoned
    assert kernel(body) == (True, True, True)
    assert titles() == []


def test_slabinfo_lists_caches_with_their_counters(kernel):
    def body():
        c = kmem_cache_create("t_info", t_cmd)
        objs = [kmem_cache_alloc(c, GFP_KERNEL) for _ in range(3)]
        kmem_cache_free(c, objs.pop())
        text = slabinfo()
        stats = {s.name: s for s in slab.statistics()}["t_info"]
        for o in objs:
            kmem_cache_free(c, o)
        kmem_cache_destroy(c)
        return text, stats
    text, st = kernel(body)
    assert "t_info" in text
    assert (st.active_objs, st.allocs, st.frees, st.high_water) == (2, 3, 1, 3)


def test_poisoning_needs_a_class_python_can_swap(kernel):
    def body():
        c = kmem_cache_create("t_dict", 0, ctor=dict)
        d = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, d)
        d["still"] = "works"               # a builtin cannot be poisoned (documented)
        again = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, again)
        kmem_cache_destroy(c)
        return again is d
    assert kernel(body) is True
    assert titles() == []


@pytest.mark.parametrize("frozen", [False, True])
def test_attrs_classes_frozen_or_not_are_poisoned(kernel, frozen):
    @attrs.define(slots=True, eq=False, frozen=frozen)
    class t_rec:
        v: int = 5

    def body():
        c = KMEM_CACHE(t_rec)
        o = kmem_cache_alloc(c, GFP_KERNEL)
        kmem_cache_free(c, o)
        try:
            _ = o.v
        except KernelBug:
            caught = True
        else:
            caught = False
        again = kmem_cache_alloc(c, GFP_KERNEL)
        v = again.v
        kmem_cache_free(c, again)
        kmem_cache_destroy(c)
        return caught, v
    assert kernel(body) == (True, 5)
