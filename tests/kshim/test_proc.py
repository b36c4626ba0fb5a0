"""kshim.proc: the /proc-like views read the live counters."""
from __future__ import annotations

from kshim import sched
from kshim.gfp import GFP_KERNEL
from kshim.proc import proc_files, proc_read
from kshim.slab import kmem_cache_alloc, kmem_cache_create, kmem_cache_destroy, kmem_cache_free
from kshim.spinlock import spin_lock, spin_unlock, spinlock_t


def test_every_view_renders_and_names_what_it_counts(kernel):
    def body():
        c = kmem_cache_create("t_proc_cache", object)
        o = kmem_cache_alloc(c, GFP_KERNEL)
        lk = spinlock_t("t.proc_lock")
        spin_lock(lk)
        spin_unlock(lk)
        sched.yield_()
        views = {name: proc_read(name) for name in proc_files}
        kmem_cache_free(c, o)
        kmem_cache_destroy(c)
        return views
    v = kernel(body)
    assert "t_proc_cache" in v["slabinfo"]
    assert "t.proc_lock" in v["lock_stat"]
    assert "insmod" in v["top"]
    assert "events" in v["workqueues"]
    assert all(isinstance(t, str) for t in v.values())
    assert proc_read("nope") is None
