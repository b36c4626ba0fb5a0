"""/proc-like text views of the emulated kernel's statistics.

Twin of the /proc files fs/proc/ and the subsystems serve: /proc/slabinfo
(mm/slab_common.c), /proc/meminfo (fs/proc/meminfo.c: the page
allocator's total and free memory), /proc/lock_stat (kernel/locking/lockdep_proc.c),
/proc/softirqs, the per-task lines of top (from /proc/<pid>/stat), and
/sys/kernel/debug/page_owner, and the trace ring as text (kshim.trace's
/sys/kernel/tracing/trace, whose files importing this module creates).

Contexts: any; the functions only read counters.

kstats is all of the subsystems' statistics() records as JSON, for
uscstadmin top; proc_create() lets the layers above add views (uscstd adds
"metrics", the Prometheus text of kshim.engine_metrics).

Differs from the kernel: these are functions returning strings (no
filesystem); proc_read(name) serves them by name for the control socket and
uscstadmin. Counters that need a debugging aid (lock_stat, softirq times,
page_owner, task run times) are empty while it is off.
"""
from __future__ import annotations

import json
from typing import Callable

import attrs

from kshim import lockdep, module, page_alloc, sched, slab, softirq, trace, workqueue
from kshim.err import EEXIST
from kshim.host import ops


def proc_slabinfo() -> str:
    """/proc/slabinfo."""
    return slab.slabinfo()


def proc_meminfo() -> str:
    """/proc/meminfo's first two lines: the page allocator's limit and what
    is not allocated (pages it keeps free for reuse count as free, as the
    buddy allocator's do)."""
    st = page_alloc.statistics()
    kb = page_alloc.PAGE_SIZE >> 10
    return (f"MemTotal:       {st.limit * kb:8d} kB\n"
            f"MemFree:        {(st.limit - st.pages_allocated) * kb:8d} kB\n")


def proc_lock_stat() -> str:
    """/proc/lock_stat."""
    return lockdep.lock_stat()


def proc_softirqs() -> str:
    """/proc/softirqs."""
    return softirq.softirqs()


def proc_top() -> str:
    """top(1) for kthreads."""
    return sched.top()


def proc_workqueues() -> str:
    """Workqueue counters."""
    return workqueue.workqueues()


def proc_modules() -> str:
    """/proc/modules (lsmod)."""
    return module.lsmod()


def proc_page_owner() -> str:
    """/sys/kernel/debug/page_owner."""
    return page_alloc.page_owner()


def proc_kstats() -> str:
    """The statistics of kshim's subsystems as one JSON object, for tools
    (uscstadmin top): tasks, softirq kinds, slab caches, workqueues, lock
    classes, and the host's monotonic clock in ns (to turn counts into rates)."""
    def rows(items: list) -> list[dict]:
        return [attrs.asdict(x) for x in items]
    return json.dumps({"now_ns": ops.monotonic_ns(), "tasks": rows(sched.statistics()),
                       "softirqs": rows(softirq.statistics()), "slabs": rows(slab.statistics()),
                       "workqueues": rows(workqueue.statistics()),
                       "locks": rows(lockdep.statistics())})


proc_files: dict[str, Callable[[], str]] = {
    "slabinfo": proc_slabinfo,
    "meminfo": proc_meminfo,
    "lock_stat": proc_lock_stat,
    "softirqs": proc_softirqs,
    "top": proc_top,
    "workqueues": proc_workqueues,
    "modules": proc_modules,
    "page_owner": proc_page_owner,
    "trace": trace.trace_text,
    "kstats": proc_kstats,
}


def proc_create(name: str, show: Callable[[], str]) -> int:
    """Add a view (fs/proc/generic.c proc_create, with a show function as
    its seq_file): 0, or -EEXIST if the name is taken."""
    if name in proc_files:
        return -EEXIST
    proc_files[name] = show
    return 0


def remove_proc_entry(name: str) -> None:
    proc_files.pop(name, None)


def proc_read(name: str) -> str | None:
    """The text of one view, or None if there is no such name."""
    fn = proc_files.get(name)
    return fn() if fn is not None else None
