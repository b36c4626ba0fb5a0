"""Management services of the trio engine: the Unix control socket, the
FUSE mount of the sysfs tree, and systemd readiness notification.

Twin of nothing in the kernel: this is how the emulated machine's sysfs
reaches the host, where Linux has the VFS. Like kshim.engine, it is part of
the "hardware" and may touch the host (sockets, os, trio, pyfuse3).

- control_service(path, extra_ops): a Unix stream socket (mode 0600, peer
  must be root or our own uid) speaking one JSON object per line each way.
  Generic ops: ping, read, write, ls, readlink, tree; the daemon adds more
  (config_apply, config_write) through extra_ops. It cannot take the data
  path down: a request line longer than MAX_REQUEST or nested deeper than
  MAX_DEPTH is refused before it is decoded, an exception from any handler
  becomes an error reply and one "control: ... raised" log line, and the
  service restarts itself (at most MAX_RESTARTS times) if it ever fails.
- fuse_service(mountpoint): pyfuse3 on the engine's trio loop; files are
  sysfs attributes (direct I/O, no caching), directories kobjects, links
  sysfs links; unmounted when the service is cancelled.
- sd_notify(state): one datagram to $NOTIFY_SOCKET, no library needed.

Contexts: the services are trio tasks on the CPU thread; every tree
operation they perform runs in a kthread through engine.call_in_task, so
show()/store() callbacks are in task context and may sleep.

Differs from Linux sysfs over VFS: a write is one store() whatever its
offset; file sizes are reported as 4096 (direct I/O makes reads return the
real length); there is no inotify/poll on attributes.
"""
from __future__ import annotations

import errno as _errno
import json
import os
import re
import socket
import stat
import struct
import traceback
from itertools import accumulate
from typing import Any, Awaitable, Callable

import trio

from kshim import engine, printk
from kshim.proc import proc_files, proc_read
from kshim.err import errname
from kshim.kobject import kobject
from kshim.sysfs import (kobj_attribute, sysfs_link, sysfs_listdir, sysfs_lookup, sysfs_read,
                         sysfs_readlink, sysfs_write)

MAX_REQUEST = 4 << 20          # bytes in one request line (a config file fits)
MAX_DEPTH = 32                 # nesting of arrays/objects (requests use 1 or 2)
MAX_RESTARTS = 100             # times the control service restarts after a failure
MAX_CLIENTS = 16
IDLE_TIMEOUT = 300.0           # seconds a client may stay silent
MAX_REQUESTS_PER_CONN = 100000
TREE_MAX_NODES = 100000

stats = {"requests": 0, "errors": 0, "clients": 0, "fuse_ops": 0, "handler_bugs": 0,
         "restarts": 0}


def default_control_path() -> str:
    if os.geteuid() == 0:
        return "/run/uscst.sock"
    rt = os.environ.get("XDG_RUNTIME_DIR")
    if rt:
        return os.path.join(rt, "uscst.sock")
    return f"/tmp/uscst-{os.getuid()}/uscst.sock"


# -- tree operations, run in task context ----------------------------------

def _kind(e: Any) -> str:
    if isinstance(e, kobject):
        return "dir"
    if isinstance(e, sysfs_link):
        return "link"
    return "file"


def _log_mark() -> Any:
    return printk.log_buf[-1] if printk.log_buf else None


def _log_since(mark: Any, max_level: int = 3) -> list[str]:
    """Messages of level <= max_level (err) logged after mark."""
    out = []
    for entry in reversed(printk.log_buf):
        if entry is mark:
            break
        if entry[1] <= max_level:
            out.append(entry[2])
    return list(reversed(out))


def _fail(ret: int, msgs: list[str]) -> dict:
    why = next((m for m in reversed(msgs) if "failed:" not in m), msgs[-1] if msgs else "")
    return {"ok": False, "errno": -ret, "error": why or f"{errname(ret)} ({os.strerror(-ret)})",
            "code": errname(ret), "log": msgs}


def op_read(path: str) -> dict:
    v = sysfs_read(path)
    if isinstance(v, int):
        return _fail(v, [])
    return {"ok": True, "value": v}


def op_write(path: str, value: str) -> dict:
    mark = _log_mark()
    ret = sysfs_write(path, value)
    if ret < 0:
        return _fail(ret, _log_since(mark))
    return {"ok": True}


def op_ls(path: str) -> dict:
    ents = sysfs_listdir(path)
    if isinstance(ents, int):
        return _fail(ents, [])
    return {"ok": True, "entries": [
        {"name": n, "kind": _kind(e), "mode": e.mode if isinstance(e, kobj_attribute) else 0}
        for n, e in ents]}


def op_readlink(path: str) -> dict:
    v = sysfs_readlink(path)
    if isinstance(v, int):
        return _fail(v, [])
    return {"ok": True, "value": v}


def op_tree(path: str, values: bool = True) -> dict:
    """Nested listing with attribute values (mgmt files' usage left out)."""
    count = 0

    def node(p: str, e: Any, name: str, depth: int) -> dict:
        nonlocal count
        count += 1
        k = _kind(e)
        d: dict = {"name": name, "kind": k}
        if k == "link":
            d["target"] = sysfs_readlink(p)
        elif k == "file":
            if values and name != "mgmt" and e.mode & 0o444 and e.show is not None:
                v = sysfs_read(p)
                d["value"] = v if isinstance(v, str) else None
            d["mode"] = e.mode
        elif depth < 16 and count < TREE_MAX_NODES:
            ents = sysfs_listdir(p)
            d["children"] = [node(f"{p}/{n}", c, n, depth + 1)
                             for n, c in ([] if isinstance(ents, int) else ents)]
        return d
    e = sysfs_lookup(path)
    if isinstance(e, int):
        return _fail(e, [])
    return {"ok": True, "tree": node(path.rstrip("/"), e, path.rstrip("/").rsplit("/", 1)[-1], 0)}


def op_proc(name: str | None) -> dict:
    text = proc_read(name) if name is not None else None
    if text is None:
        return {"ok": False, "error": f"no /proc view {name!r}; views: {sorted(proc_files)}",
                "errno": _errno.ENOENT}
    return {"ok": True, "value": text}


class SysfsTree:
    """tools.scst_conf's Tree accessor on the live sysfs (task context)."""

    def read(self, path: str) -> "str | int":
        return sysfs_read(path)

    def write(self, path: str, text: str) -> int:
        return sysfs_write(path, text)

    def listdir(self, path: str) -> "list[tuple[str, str]] | int":
        ents = sysfs_listdir(path)
        return ents if isinstance(ents, int) else [(n, _kind(e)) for n, e in ents]

    def readlink(self, path: str) -> "str | int":
        return sysfs_readlink(path)


# -- the control socket ------------------------------------------------------

OpFn = Callable[[dict], Awaitable[dict]]

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_DELTA = [0] * 256
_BRACKET_DELTA[ord("[")] = _BRACKET_DELTA[ord("{")] = 1
_BRACKET_DELTA[ord("]")] = _BRACKET_DELTA[ord("}")] = -1


def json_depth(line: bytes) -> int:
    """The deepest nesting of arrays and objects in line, found without
    decoding it (json.loads recurses once per level). Brackets inside
    strings do not count; in a malformed line the result may be too high,
    which only refuses a line json.loads would refuse as well."""
    brackets = _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_BRACKET_DELTA.__getitem__, brackets)), default=0)


def decode_request(line: bytes) -> "dict | str":
    """The request object of one line, or why it is refused."""
    if len(line) > MAX_REQUEST:
        return f"request longer than {MAX_REQUEST} bytes"
    if json_depth(line) > MAX_DEPTH:
        return f"request nested deeper than {MAX_DEPTH} levels"
    try:
        req = json.loads(line)
    except (ValueError, RecursionError) as e:
        return str(e)
    if not isinstance(req, dict):
        return "request must be a JSON object"
    return req


def _bug_reply(what: str, e: BaseException) -> dict:
    """A handler raised: log one line naming it and where, reply an error."""
    stats["handler_bugs"] += 1
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    frame = traceback.extract_tb(e.__traceback__)[-1:] or [None]
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame[0] is not None else ""
    # One log line whatever the request held: escape it, and bound it.
    what, msg = repr(what)[1:-1][:200], repr(str(e))[1:-1][:400]
    printk.pr_err(f"control: {what} raised {type(e).__name__}{where}: {msg}")
    return {"ok": False, "error": f"internal error in {what}: {type(e).__name__}: {msg}",
            "errno": _errno.EIO}


async def ctl_call(what: str, fn: Callable[[], dict], name: str = "kworker/ctl") -> dict:
    """engine.call_in_task(fn, name), with an exception inside the kthread
    turned into an error reply there (so the kthread exits normally)."""
    def guarded() -> dict:
        try:
            return fn()
        except Exception as e:     # a handler bug must not end the kthread with an Oops
            return _bug_reply(what, e)
    rsp = await engine.call_in_task(guarded, name)
    return rsp if isinstance(rsp, dict) else {"ok": False, "error": f"{what}: no reply",
                                              "errno": _errno.EIO}


async def _dispatch(req: dict, extra_ops: dict[str, OpFn]) -> dict:
    op = req.get("op")
    path = req.get("path", "/")
    if not isinstance(path, str):
        return {"ok": False, "error": "path must be a string", "errno": _errno.EINVAL}
    if op == "ping":
        return {"ok": True, "pid": os.getpid()}
    if op == "read":
        return await ctl_call(f"read {path}", lambda: op_read(path))
    if op == "write":
        value = req.get("value", "")
        if not isinstance(value, str):
            return {"ok": False, "error": "value must be a string", "errno": _errno.EINVAL}
        return await ctl_call(f"write {path}", lambda: op_write(path, value))
    if op == "ls":
        return await ctl_call(f"ls {path}", lambda: op_ls(path))
    if op == "readlink":
        return await ctl_call(f"readlink {path}", lambda: op_readlink(path))
    if op == "tree":
        return await ctl_call(f"tree {path}", lambda: op_tree(path, bool(req.get("values", True))))
    if op == "proc":
        # The /proc-like statistics views (slabinfo, lock_stat, top, ...).
        name = req.get("name")
        if isinstance(name, str):
            return await ctl_call(f"proc {name}", lambda: op_proc(name))
        return op_proc(None)
    fn = extra_ops.get(op) if isinstance(op, str) else None
    if fn is not None:
        return await fn(req)
    return {"ok": False, "error": f"unknown op {op!r}", "errno": _errno.EINVAL}


def _peer_allowed(sock: trio.socket.SocketType) -> bool:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == 0 or uid == os.getuid()


async def _client(stream: trio.SocketStream, extra_ops: dict[str, OpFn]) -> None:
    if stats["clients"] >= MAX_CLIENTS or not _peer_allowed(stream.socket):
        await stream.aclose()
        return
    stats["clients"] += 1
    buf = bytearray()
    try:
        for _ in range(MAX_REQUESTS_PER_CONN):
            while (nl := buf.find(b"\n")) < 0:
                if len(buf) > MAX_REQUEST:
                    await _reply(stream, {"ok": False, "errno": _errno.E2BIG,
                                          "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                with trio.move_on_after(IDLE_TIMEOUT) as cs:
                    chunk = await stream.receive_some(65536)
                if cs.cancelled_caught or not chunk:
                    return
                buf += chunk
            line = bytes(buf[:nl])
            del buf[:nl + 1]
            stats["requests"] += 1
            req = decode_request(line)
            if isinstance(req, str):
                rsp = {"ok": False, "error": f"bad request: {req}", "errno": _errno.EINVAL}
            else:
                try:
                    rsp = await _dispatch(req, extra_ops)
                except Exception as e:    # one bad request must not end the service
                    rsp = _bug_reply(f"op {str(req.get('op'))[:40]!r}", e)
            await _reply(stream, rsp)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception as e:                # ditto, for a failure outside the handlers
        _bug_reply("control client", e)
    finally:
        stats["clients"] -= 1
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _reply(stream: trio.SocketStream, rsp: Any) -> None:
    if not isinstance(rsp, dict):
        rsp = {"ok": False, "error": "internal error: handler gave no reply", "errno": _errno.EIO}
    if not rsp.get("ok"):
        stats["errors"] += 1
    await stream.send_all(json.dumps(rsp).encode() + b"\n")


def _prepare_socket_path(path: str) -> str | None:
    """Make the directory, remove a stale socket; an error text or None."""
    d = os.path.dirname(path) or "."
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as e:
        return f"cannot create {d}: {e.strerror}"
    if os.path.exists(path) or os.path.islink(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return f"{path} exists and is not a socket"
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
            return f"{path} is in use by another uscstd"
        except OSError:
            os.unlink(path)
        finally:
            probe.close()
    return None


def control_service(path: str, extra_ops: dict[str, OpFn] | None = None,
                    on_error: Callable[[str], None] | None = None,
                    on_ready: Callable[[], None] | None = None) -> Callable[[], Awaitable[None]]:
    """An engine service serving the control socket at path."""
    ops = extra_ops or {}

    async def listen() -> trio.SocketListener | None:
        why = _prepare_socket_path(path)
        if why is not None:
            if on_error is not None:
                on_error(why)
            return None
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(path)
        except OSError as e:
            sock.close()
            if on_error is not None:
                on_error(f"cannot bind control socket {path}: {e.strerror}")
            return None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        return trio.SocketListener(sock)

    async def client(s: trio.SocketStream) -> None:
        await _client(s, ops)

    async def service() -> None:
        for attempt in range(MAX_RESTARTS + 1):
            listener = await listen()
            if listener is None:
                return
            if attempt == 0 and on_ready is not None:
                on_ready()
            try:
                await trio.serve_listeners(client, [listener])
            except Exception as e:        # keep serving: the data path must not notice
                _bug_reply("control service", e)
                stats["restarts"] += 1
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                try:
                    os.unlink(path)
                except OSError:
                    pass
            await trio.sleep(0.1)         # bounds the restart rate
        printk.pr_err(f"control: the service failed {MAX_RESTARTS + 1} times; "
                      f"no control socket any more")
    return service


# -- FUSE --------------------------------------------------------------------

def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot work here, or None."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return f"pyfuse3 is not installed ({e})"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible"
    return None


def _make_fs(base: str) -> Any:
    import pyfuse3  # optional dependency (the fuse extra); only a mount needs it
    FUSEError = pyfuse3.FUSEError
    uid, gid = os.getuid(), os.getgid()

    class sysfs_fs(pyfuse3.Operations):
        """The sysfs tree at base as a file system (inodes by path)."""

        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: base.rstrip("/")}
            self.inodes: dict[str, int] = {base.rstrip("/"): pyfuse3.ROOT_INODE}
            self.next_ino = pyfuse3.ROOT_INODE + 1

        def _ino(self, path: str) -> int:
            ino = self.inodes.get(path)
            if ino is None:
                ino = self.next_ino
                self.next_ino += 1
                self.inodes[path] = ino
                self.paths[ino] = path
            return ino

        def _path(self, inode: int) -> str:
            p = self.paths.get(inode)
            if p is None:
                raise FUSEError(_errno.ENOENT)
            return p

        def _attrs(self, path: str, e: Any) -> Any:
            a = pyfuse3.EntryAttributes()
            a.st_ino = self._ino(path)
            k = _kind(e)
            if k == "dir":
                a.st_mode = stat.S_IFDIR | 0o755
                a.st_nlink = 2
                a.st_size = 0
            elif k == "link":
                a.st_mode = stat.S_IFLNK | 0o777
                a.st_nlink = 1
                a.st_size = 0
            else:
                a.st_mode = stat.S_IFREG | (e.mode & 0o777)
                a.st_nlink = 1
                a.st_size = 4096
            a.st_uid, a.st_gid = uid, gid
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 0
            a.entry_timeout = 0
            a.attr_timeout = 0
            a.st_blksize = 4096
            a.st_blocks = 0
            return a

        async def _lookup_path(self, path: str) -> Any:
            stats["fuse_ops"] += 1
            e = await engine.call_in_task(lambda: sysfs_lookup(path or "/"))
            if isinstance(e, int):
                raise FUSEError(-e)
            return self._attrs(path, e)

        async def lookup(self, parent_inode, name, ctx=None):
            n = os.fsdecode(name)
            parent = self._path(parent_inode)
            if n == ".":
                return await self._lookup_path(parent)
            if n == "..":
                return await self._lookup_path(parent.rsplit("/", 1)[0])
            return await self._lookup_path(f"{parent}/{n}")

        async def getattr(self, inode, ctx=None):
            return await self._lookup_path(self._path(inode))

        async def setattr(self, inode, attr, fields, fh, ctx):
            # O_TRUNC of an attribute file before a write: nothing to do.
            return await self._lookup_path(self._path(inode))

        async def readlink(self, inode, ctx):
            path = self._path(inode)
            v = await engine.call_in_task(lambda: sysfs_readlink(path))
            if isinstance(v, int):
                raise FUSEError(-v)
            return os.fsencode(v)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            path = self._path(fh)
            ents = await engine.call_in_task(lambda: sysfs_listdir(path or "/"))
            if isinstance(ents, int):
                raise FUSEError(-ents)
            for i in range(start_id, len(ents)):
                name, e = ents[i]
                if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                             self._attrs(f"{path}/{name}", e), i + 1):
                    break

        async def releasedir(self, fh):
            return None

        async def open(self, inode, flags, ctx):
            path = self._path(inode)
            e = await engine.call_in_task(lambda: sysfs_lookup(path))
            if isinstance(e, int):
                raise FUSEError(-e)
            if _kind(e) != "file":
                raise FUSEError(_errno.EISDIR)
            acc = flags & os.O_ACCMODE
            if acc in (os.O_WRONLY, os.O_RDWR) and (e.store is None or not e.mode & 0o222):
                raise FUSEError(_errno.EACCES)
            if acc in (os.O_RDONLY, os.O_RDWR) and (e.show is None or not e.mode & 0o444):
                raise FUSEError(_errno.EACCES)
            return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

        async def read(self, fh, off, size):
            path = self._path(fh)
            v = await engine.call_in_task(lambda: sysfs_read(path))
            if isinstance(v, int):
                raise FUSEError(-v)
            return v.encode()[off:off + size]

        async def write(self, fh, off, buf):
            path = self._path(fh)
            text = bytes(buf).decode("utf-8", "replace")
            ret = await engine.call_in_task(lambda: sysfs_write(path, text))
            if ret < 0:
                raise FUSEError(-ret)
            return len(buf)

        async def flush(self, fh):
            return None

        async def release(self, fh):
            return None

        async def forget(self, inode_list):
            return None

        async def statfs(self, ctx):
            s = pyfuse3.StatvfsData()
            s.f_bsize = s.f_frsize = 4096
            s.f_namemax = 255
            return s

    return sysfs_fs()


def fuse_service(mountpoint: str, base: str = "/kernel/scst_tgt",
                 on_error: Callable[[str], None] | None = None,
                 on_ready: Callable[[], None] | None = None) -> Callable[[], Awaitable[None]]:
    """An engine service mounting the tree below base at mountpoint."""
    async def service() -> None:
        why = fuse_unavailable()
        if why is not None:
            if on_error is not None:
                on_error(f"FUSE not available: {why}")
            return
        import pyfuse3  # optional dependency (the fuse extra); only a mount needs it
        fs = _make_fs(base)
        opts = set(pyfuse3.default_options)
        opts.add("fsname=uscst")
        try:
            pyfuse3.init(fs, mountpoint, opts)
        except (RuntimeError, OSError) as e:
            if on_error is not None:
                on_error(f"cannot mount {mountpoint}: {e}")
            return
        if on_ready is not None:
            on_ready()
        try:
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)
    return service


# -- systemd -----------------------------------------------------------------

def sd_notify(state: str) -> bool:
    """Send state (e.g. "READY=1") to $NOTIFY_SOCKET; False if not run by
    systemd or the send failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(addr)
        s.sendall(state.encode())
        return True
    except OSError:
        return False
    finally:
        s.close()
