"""ceph_cluster: a throw-away single-node Ceph cluster on 127.0.0.1, for
trying and testing vdisk_rbd.

One monitor and one OSD whose objects live in memory (osd objectstore =
memstore), no authentication (auth_*_required = none), pools of size 1,
no manager; every file (ceph.conf, monitor store, OSD data, logs, pid
files, admin sockets) under one directory. Debian 12's ceph-mon,
ceph-osd and ceph-common packages are all it needs; it starts in a few
seconds. Nothing of /etc/ceph or /var/lib/ceph is read or written.

Not for data anyone wants to keep: the OSD's memory is its disk.

Where it may run: on the host, as a tool or from the tests' fixture
(tests/vdisk/ceph_support.py); the daemons listen on loopback only.

Usage:
  python -m tools.ceph_cluster start DIR [--image NAME --size SIZE] [--port PORT]
      start the cluster in DIR (created), create pool rbd, optionally an
      image; print the ceph.conf path
  python -m tools.ceph_cluster stop DIR
      stop the daemons the pid files in DIR name, then remove DIR's state
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "ceph", "rbd", "monmaptool")
STEP_TIMEOUT_S = 60.0          # bound on each ceph command
STOP_TIMEOUT_S = 20.0          # bound on waiting for a daemon to exit
POOL = "rbd"


def missing_binaries() -> list[str]:
    """The cluster's programs that are not installed."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf_text(d: Path, fsid: str, port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd objectstore = memstore
memstore device bytes = 1073741824
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
mon data = {d}/mon.$id
osd data = {d}/osd.$id
"""


class CephCluster:
    """A cluster in directory d: start(), create_image(), ceph()/rbd(), stop()."""

    def __init__(self, d: Path, port: int | None = None) -> None:
        self.dir = d
        self.port = port or _free_port()
        self.conf = d / "ceph.conf"

    def _run(self, *argv: str) -> str:
        """Run a cluster command; its stdout, or RuntimeError naming it and its output."""
        p = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: "
                               f"{(p.stderr or p.stdout).strip()[-2000:]}")
        return p.stdout

    def ceph(self, *args: str) -> str:
        return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "20", *args)

    def rbd(self, *args: str) -> str:
        return self._run("rbd", "-c", str(self.conf), *args)

    def start(self) -> "CephCluster":
        """Make and start the monitor and the OSD, create pool rbd. On a
        failure the daemons started so far are stopped and RuntimeError says
        which step failed."""
        d = self.dir
        for sub in ("run", "log", "mon.a", "osd.0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(_conf_text(d, fsid, self.port))
        c = str(self.conf)
        try:
            self._run("monmaptool", "--create", "--add", "a", f"v2:127.0.0.1:{self.port}",
                      "--fsid", fsid, str(d / "monmap"))
            self._run("ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"))
            self._run("ceph-mon", "-c", c, "-i", "a")
            osd_uuid = str(uuid.uuid4())
            self.ceph("osd", "new", osd_uuid)
            self._run("ceph-osd", "-c", c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
            self._run("ceph-osd", "-c", c, "-i", "0")
            self.ceph("osd", "pool", "create", POOL, "8")
            self.ceph("osd", "pool", "application", "enable", POOL, "rbd")
        except (RuntimeError, subprocess.TimeoutExpired):
            self.stop()
            raise
        return self

    def create_image(self, name: str, size: str, *features: str) -> None:
        """rbd create POOL/name of size (rbd's units: 64M, 1G)."""
        extra = [a for f in features for a in ("--image-feature", f)]
        self.rbd("create", "--size", size, *extra, f"{POOL}/{name}")

    def pid(self, daemon: str) -> int:
        """The pid of a running daemon ("mon.a", "osd.0")."""
        return int((self.dir / "run" / f"{daemon}.pid").read_text().strip())

    def pids(self) -> list[int]:
        out = []
        for f in sorted((self.dir / "run").glob("*.pid")):
            text = f.read_text().strip()
            if text.isdecimal():
                out.append(int(text))
        return out

    def stop(self) -> None:
        """SIGTERM the daemons the pid files name, wait (bounded), SIGKILL
        the rest; remove the pid files."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for pid in pids:
            # Bounded by the deadline; polls every 50 ms.
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for f in (self.dir / "run").glob("*.pid"):
            f.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:       # a zombie child of ours is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ceph_cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a cluster in DIR")
    s.add_argument("dir", type=Path)
    s.add_argument("--port", type=int, default=None, help="the monitor's port (default: free)")
    s.add_argument("--image", default=None, help="also create this image in pool rbd")
    s.add_argument("--size", default="1G", help="its size (default 1G)")
    t = sub.add_parser("stop", help="stop the cluster in DIR and remove its state")
    t.add_argument("dir", type=Path)
    a = p.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"ceph_cluster: not installed: {', '.join(missing)} (Debian: apt-get install "
              f"ceph-mon ceph-osd ceph-common)", file=sys.stderr)
        return 2
    cl = CephCluster(a.dir.resolve(), getattr(a, "port", None))
    try:
        if a.cmd == "stop":
            cl.stop()
            shutil.rmtree(cl.dir, ignore_errors=True)
            return 0
        if cl.conf.exists():
            print(f"ceph_cluster: {cl.conf} exists: stop that cluster first", file=sys.stderr)
            return 1
        cl.start()
        if a.image:
            cl.create_image(a.image, a.size)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print(f"ceph_cluster: {e}", file=sys.stderr)
        return 1
    print(cl.conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
