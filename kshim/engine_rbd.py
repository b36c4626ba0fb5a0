"""librbd for the engine: Ceph RBD images as the host's block devices, bound
with cffi in ABI mode (dlopen of Debian's librbd.so.1 and librados.so.2).

Twin of nothing in the kernel: this is the host side of kshim.libceph, as
engine_uring.py is of kshim's file I/O. The kernel's rbd driver speaks the
RADOS protocol itself (net/ceph/); we let the host's librbd do it and
treat it as hardware: an image is a device with an asynchronous queue and
a completion interrupt.

- Open and close block (they talk to the monitors and OSDs, take the
  image's header lock): image_open and image_close run on the engine's
  I/O pool, never on the CPU thread. client_mount_timeout and the
  monitor and OSD operation timeouts come from the caller, so neither an
  unreachable cluster nor a dead OSD can hold a request forever.
- Submission (image_submit, CPU thread, never blocks): rbd_aio_readv /
  rbd_aio_writev straight from and into the request's buffers (no copy),
  rbd_aio_flush, rbd_aio_discard, rbd_aio_write_zeroes. Each request is
  pinned (its cffi views and iovec array) until it completes.
- Completion: librbd completes requests on its own threads. No Python
  runs there: each image has an eventfd registered with
  rbd_set_image_notification, which librbd signals after queueing the
  completion; the trio engine waits on the eventfd and image_reap()
  collects the finished requests (rbd_poll_io_events) on the CPU thread,
  where the engine runs each request's complete() in softirq context,
  as io_uring completions are.

Why ABI mode and not Debian's python3-rbd (decision 0051): no compiler,
no -dev headers, no second copy of every buffer (python3-rbd's aio_write
takes bytes and aio_read returns bytes), no Python callbacks on librbd's
threads, and Debian's python3-rbd is built for /usr/bin/python3, not our
venv's interpreter.

Contexts: probe, image_size, image_submit, image_reap: the CPU thread,
never blocking. image_open, image_close, image_extent: an I/O pool
thread.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Any

from kshim.host import RBD_OP_DISCARD, RBD_OP_FLUSH, RBD_OP_READ, RBD_OP_WRITE, rbd_request

RBD_REAP_MAX = 64               # completions per rbd_poll_io_events call
EVENT_TYPE_EVENTFD = 2          # librbd.h's rbd_image_notification type

_CDEF = """
typedef void *rados_t;
typedef void *rados_ioctx_t;
typedef void *rbd_image_t;
typedef void *rbd_completion_t;
typedef void (*rbd_callback_t)(rbd_completion_t cb, void *arg);
struct iovec { void *iov_base; size_t iov_len; };
int rados_create2(rados_t *pcluster, const char *const clustername,
                  const char *const name, uint64_t flags);
int rados_conf_read_file(rados_t cluster, const char *path);
int rados_conf_set(rados_t cluster, const char *option, const char *value);
int rados_connect(rados_t cluster);
void rados_shutdown(rados_t cluster);
int rados_ioctx_create(rados_t cluster, const char *pool_name, rados_ioctx_t *ioctx);
void rados_ioctx_destroy(rados_ioctx_t io);
int rbd_open(rados_ioctx_t io, const char *name, rbd_image_t *image, const char *snap_name);
int rbd_close(rbd_image_t image);
int rbd_get_size(rbd_image_t image, uint64_t *size);
int rbd_set_image_notification(rbd_image_t image, int fd, int type);
int rbd_poll_io_events(rbd_image_t image, rbd_completion_t *comps, int numcomp);
int rbd_aio_create_completion(void *cb_arg, rbd_callback_t complete_cb, rbd_completion_t *c);
ssize_t rbd_aio_get_return_value(rbd_completion_t c);
void *rbd_aio_get_arg(rbd_completion_t c);
void rbd_aio_release(rbd_completion_t c);
int rbd_aio_readv(rbd_image_t image, const struct iovec *iov, int iovcnt, uint64_t off,
                  rbd_completion_t c);
int rbd_aio_writev(rbd_image_t image, const struct iovec *iov, int iovcnt, uint64_t off,
                   rbd_completion_t c);
int rbd_aio_flush(rbd_image_t image, rbd_completion_t c);
int rbd_aio_discard(rbd_image_t image, uint64_t off, uint64_t len, rbd_completion_t c);
int rbd_aio_write_zeroes(rbd_image_t image, uint64_t off, size_t len, rbd_completion_t c,
                         int zero_flags, int op_flags);
int rbd_diff_iterate2(rbd_image_t image, const char *fromsnapname, uint64_t ofs, uint64_t len,
                      uint8_t include_parent, uint8_t whole_object,
                      int (*cb)(uint64_t, size_t, int, void *), void *arg);
"""

# (ffi, librados, librbd), or why not (one line); loaded once
_lib: "tuple[Any, Any, Any] | str | None" = None


def _load() -> "tuple[Any, Any, Any] | str":
    global _lib
    if _lib is not None:
        return _lib
    try:
        import cffi            # function-local: only the rbd path needs it
    except ImportError as e:
        _lib = f"cffi is not installed ({e})"
        return _lib
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        rados = ffi.dlopen("librados.so.2")
        rbd = ffi.dlopen("librbd.so.1")
    except OSError as e:
        _lib = f"librbd is not installed (Debian: apt-get install librbd1): {e}"
        return _lib
    _lib = (ffi, rados, rbd)
    return _lib


def probe() -> str:
    """'' when librbd can be used, else one line saying why not."""
    r = _load()
    return r if isinstance(r, str) else ""


class rbd_image:
    """One open image: the cluster handle, the pool's I/O context, the image
    and its completion eventfd. reqs: requests in flight by key (CPU
    thread only). engine_priv: the engine's watcher (the trio cancel scope)."""

    __slots__ = ("ffi", "rbd", "rados", "cluster", "ioctx", "image", "efd", "reqs", "next_key",
                 "comps", "engine_priv", "closed")

    def __init__(self, ffi: Any, rados: Any, rbd: Any) -> None:
        self.ffi = ffi
        self.rados = rados
        self.rbd = rbd
        self.cluster: Any = None
        self.ioctx: Any = None
        self.image: Any = None
        self.efd = -1
        self.reqs: dict[int, tuple[rbd_request, list]] = {}
        self.next_key = 1
        self.comps = ffi.new("rbd_completion_t[]", RBD_REAP_MAX)
        self.engine_priv: Any = None
        self.closed = False


def _teardown(img: rbd_image) -> None:
    if img.image is not None:
        img.rbd.rbd_close(img.image)
        img.image = None
    if img.ioctx is not None:
        img.rados.rados_ioctx_destroy(img.ioctx)
        img.ioctx = None
    if img.cluster is not None:
        img.rados.rados_shutdown(img.cluster)
        img.cluster = None
    if img.efd >= 0:
        os.close(img.efd)
        img.efd = -1


def image_open(conf: str, user: str, pool: str, name: str,
               options: "dict[str, str]") -> "rbd_image | tuple[int, str]":
    """Connect to the cluster that conf (a ceph.conf path; '' for librados'
    default search) describes as client.<user>, with the librados options
    given (name -> value), and open pool/name. The image, or (-errno, the
    step that failed). Blocks: an I/O pool thread only."""
    lib = _load()
    if isinstance(lib, str):
        return -_errno.ENODEV, lib
    ffi, rados, rbd = lib
    img = rbd_image(ffi, rados, rbd)
    entity = user if user.startswith("client.") else f"client.{user}"
    cl = ffi.new("rados_t *")
    ret = rados.rados_create2(cl, b"ceph", entity.encode(), 0)
    if ret < 0:
        return ret, f"rados_create2 {entity}"
    img.cluster = cl[0]
    step = f"reading {conf or 'the default ceph.conf'}"
    ret = rados.rados_conf_read_file(img.cluster, conf.encode() if conf else ffi.NULL)
    for k, v in options.items():
        if ret >= 0:
            step = f"setting {k}={v}"
            ret = rados.rados_conf_set(img.cluster, k.encode(), v.encode())
    if ret >= 0:
        step = "connecting to the cluster"
        ret = rados.rados_connect(img.cluster)
    if ret >= 0:
        step = f"opening pool {pool}"
        io = ffi.new("rados_ioctx_t *")
        ret = rados.rados_ioctx_create(img.cluster, pool.encode(), io)
        if ret >= 0:
            img.ioctx = io[0]
    if ret >= 0:
        step = f"opening image {pool}/{name}"
        im = ffi.new("rbd_image_t *")
        ret = rbd.rbd_open(img.ioctx, name.encode(), im, ffi.NULL)
        if ret >= 0:
            img.image = im[0]
    if ret >= 0:
        step = "eventfd"
        try:
            img.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError as e:
            ret = -(e.errno or _errno.EIO)
    if ret >= 0:
        step = "rbd_set_image_notification"
        ret = rbd.rbd_set_image_notification(img.image, img.efd, EVENT_TYPE_EVENTFD)
    if ret < 0:
        _teardown(img)
        return ret, step
    return img


def image_size(img: rbd_image) -> int:
    """The image's size in bytes (librbd's cached header), or -errno."""
    sz = img.ffi.new("uint64_t *")
    ret = img.rbd.rbd_get_size(img.image, sz)
    return ret if ret < 0 else int(sz[0])


def image_close(img: rbd_image) -> int:
    """Close the image (librbd waits for its requests in flight and
    releases the exclusive lock) and the cluster connection. Blocks: an
    I/O pool thread only, after the engine stopped watching the image."""
    img.closed = True            # set already by the engine's detach, on the CPU thread
    _teardown(img)
    return 0


def image_submit(img: rbd_image, req: rbd_request) -> int:
    """Start req: 0, or -errno when librbd
    refused it at once (req.complete is then not called)."""
    if img.closed:
        return -_errno.ESHUTDOWN
    ffi, rbd = img.ffi, img.rbd
    key = img.next_key
    img.next_key = key + 1
    comp = ffi.new("rbd_completion_t *")
    ret = rbd.rbd_aio_create_completion(ffi.cast("void *", key), ffi.NULL, comp)
    if ret < 0:
        return ret
    c = comp[0]
    pins: list = []
    op = req.op
    if op in (RBD_OP_READ, RBD_OP_WRITE):
        vec = ffi.new("struct iovec[]", len(req.iov))
        pins.append(vec)
        for i, buf in enumerate(req.iov):
            b = ffi.from_buffer(buf, require_writable=op == RBD_OP_READ)
            pins.append(b)
            vec[i].iov_base = b
            vec[i].iov_len = len(b)
        fn = rbd.rbd_aio_readv if op == RBD_OP_READ else rbd.rbd_aio_writev
        ret = fn(img.image, vec, len(req.iov), req.off, c)
    elif op == RBD_OP_FLUSH:
        ret = rbd.rbd_aio_flush(img.image, c)
    elif op == RBD_OP_DISCARD:
        ret = rbd.rbd_aio_discard(img.image, req.off, req.length, c)
    else:
        ret = rbd.rbd_aio_write_zeroes(img.image, req.off, req.length, c, 0, 0)
    if ret < 0:
        rbd.rbd_aio_release(c)
        for p in pins:
            ffi.release(p)
        return ret
    img.reqs[key] = (req, pins)
    return 0


def image_extent(img: rbd_image, off: int, length: int) -> "tuple[bool, int] | int":
    """(allocated, bytes) of the run of allocated or unallocated bytes that
    starts at off, looked for within [off, off+length) (rbd_diff_iterate2
    against no snapshot: the allocated extents), or -errno. Blocks: an I/O pool thread
    only (its callback runs there, or on librbd's threads: it only
    appends to a list)."""
    ffi = img.ffi
    found: list[tuple[int, int]] = []

    def extent(o: int, n: int, exists: int, _arg: Any) -> int:
        if exists:
            found.append((o, n))
        return 0
    cb = ffi.callback("int(uint64_t, size_t, int, void *)", extent)
    ret = img.rbd.rbd_diff_iterate2(img.image, ffi.NULL, off, length, 1, 0, cb, ffi.NULL)
    if ret < 0:
        return ret
    found.sort()
    if not found or found[0][0] > off:
        return False, (found[0][0] - off) if found else length
    end = off
    for o, n in found:
        if o > end:
            break
        end = max(end, o + n)
    return True, min(end, off + length) - off


def eventfd_clear(img: rbd_image) -> None:
    try:
        os.eventfd_read(img.efd)
    except (BlockingIOError, OSError):
        pass


def image_reap(img: rbd_image) -> list[rbd_request]:
    """The requests librbd finished since the last call (at most
    RBD_REAP_MAX), each with .result set (>= 0 or -errno), unpinned."""
    ffi, rbd = img.ffi, img.rbd
    n = rbd.rbd_poll_io_events(img.image, img.comps, RBD_REAP_MAX)
    out = []
    for i in range(max(n, 0)):
        c = img.comps[i]
        key = int(ffi.cast("uintptr_t", rbd.rbd_aio_get_arg(c)))
        ret = int(rbd.rbd_aio_get_return_value(c))
        rbd.rbd_aio_release(c)
        entry = img.reqs.pop(key, None)
        if entry is None:
            continue
        req, pins = entry
        for p in pins:
            ffi.release(p)
        req.result = ret
        out.append(req)
    return out
