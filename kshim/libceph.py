"""Ceph RBD images for dev handlers: open an image, queue asynchronous
requests on it, close it.

Twin in role of the kernel's Ceph client library (net/ceph/,
include/linux/ceph/libceph.h) as drivers/block/rbd.c uses it: a device
driver opens an image of a pool on a cluster and sends it reads, writes,
flushes and discards that complete asynchronously. Here the host's
librbd speaks RADOS; kshim reaches it only through the host-ops table
(kshim.host: rbd_*), filled by kshim/engine_rbd.py under the trio engine.

Contexts: rbd_image_open, rbd_image_extent and rbd_image_close sleep (the I/O pool talks to
the cluster meanwhile): process context only. rbd_image_submit from any
context; the request's complete() runs later in softirq context, as a
bio's end_io. rbd_available and rbd_image_size from any context.

Differs from the kernel: no RADOS in kshim (librbd does it, with its own
threads, exclusive lock and object map); the sim engine has no cluster,
so rbd_available() names the reason and rbd_image_open fails.
"""
from __future__ import annotations

from typing import Any

from kshim.err import ENODEV
from kshim.completion import completion, complete, wait_for_completion
from kshim.host import io_job, ops, rbd_request
from kshim.sched import might_sleep
from kshim.tracepoint import TRACE_EVENT

trace_rbd_rq_issue = TRACE_EVENT("rbd_rq_issue", ("op", "off", "len"))
trace_rbd_rq_complete = TRACE_EVENT("rbd_rq_complete", ("op", "off", "result"))


def _pool_done(job: io_job) -> None:
    complete(job.private)


def _pool_call(fn: Any, *args: Any) -> Any:
    """Run a blocking librbd call on the I/O pool; sleep until it is done."""
    done = completion("rbd pool call")
    job = io_job(fn, args, _pool_done, done)
    ops.io_submit(job)
    wait_for_completion(done)
    return job.result


def rbd_available() -> str:
    """'' when this engine can open RBD images, else why not (one line)."""
    return ops.rbd_probe()


def rbd_image_open(conf: str, user: str, pool: str, image: str,
                   options: "dict[str, str]") -> Any:
    """Connect to the cluster as client.<user> with conf (a ceph.conf path,
    '' for librados' default search) and the librados options given, open
    pool/image and start receiving its completions. The image handle, or
    (-errno, the step that failed) (-ENODEV: no librbd or no cluster under
    this engine). Process context: sleeps."""
    might_sleep()
    why = ops.rbd_probe()
    if why:
        return -ENODEV, why
    h = _pool_call(ops.rbd_open, conf, user, pool, image, options)
    if isinstance(h, tuple):
        return h
    ops.rbd_attach(h)
    return h


def rbd_image_size(h: Any) -> int:
    """The image's size in bytes, or -errno."""
    return ops.rbd_size(h)


def _traced_complete(req: rbd_request) -> None:
    done, private = req.private
    req.private = private
    trace_rbd_rq_complete(req.op, req.off, req.result)
    req.complete = done
    done(req)


def rbd_image_submit(h: Any, req: rbd_request) -> int:
    """Start req on the image: 0 (req.complete(req) runs later in softirq
    context with req.result >= 0 or -errno), or -errno at once (complete
    is then not called). Any context."""
    if not trace_rbd_rq_issue.enabled:
        return ops.rbd_submit(h, req)
    trace_rbd_rq_issue(req.op, req.off, req.length)
    done, private = req.complete, req.private
    req.private, req.complete = (done, private), _traced_complete
    ret = ops.rbd_submit(h, req)
    if ret < 0:
        req.private, req.complete = private, done
    return ret


def rbd_image_extent(h: Any, off: int, length: int) -> "tuple[bool, int] | int":
    """(allocated, bytes) of the run of allocated or unallocated bytes at
    off, looked for within [off, off+length), or -errno. Process context:
    sleeps while the I/O pool asks librbd."""
    might_sleep()
    return _pool_call(ops.rbd_extent, h, off, length)


def rbd_image_close(h: Any) -> None:
    """Stop receiving the image's completions, then close it and its
    cluster connection (librbd waits for what is in flight and releases
    the exclusive lock). Process context: sleeps."""
    might_sleep()
    ops.rbd_detach(h)
    _pool_call(ops.rbd_close, h)
