"""A Ceph cluster for the vdisk_rbd tests: the throw-away single-node one
of tools/ceph_cluster.py (started once per test module in a temporary
directory, stopped after), or an existing cluster named by
USCST_CEPH_CONF (a ceph.conf path; USCST_CEPH_POOL, default rbd, is the
pool the tests create their images in, USCST_CEPH_USER, default admin,
the client they connect as). Skips with the reason when neither can be
had, and when librbd cannot be loaded."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from kshim import engine_rbd
from tools.ceph_cluster import POOL, CephCluster, missing_binaries

RBD_TARGET = "iqn.2026-11.org.uscst:rbd"
NO_CLUSTER = ("no Ceph cluster: install ceph-mon, ceph-osd and ceph-common (Debian) for the "
              "throw-away one, or set USCST_CEPH_CONF=/path/ceph.conf (and USCST_CEPH_POOL, "
              "USCST_CEPH_USER) to use yours")


class CephTestCluster:
    """Where the tests' images live: conf, pool, user; image() makes one."""

    def __init__(self, conf: Path, pool: str, user: str, local: "CephCluster | None") -> None:
        self.conf = conf
        self.pool = pool
        self.user = user
        self.local = local
        self.images: list[str] = []

    def rbd(self, *args: str) -> str:
        p = subprocess.run(["rbd", "-c", str(self.conf), "--id", self.user, *args],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, f"rbd {' '.join(args)}: {p.stderr}"
        return p.stdout

    def ceph(self, *args: str) -> str:
        p = subprocess.run(["ceph", "-c", str(self.conf), "--id", self.user,
                            "--connect-timeout", "20", *args],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, f"ceph {' '.join(args)}: {p.stderr}"
        return p.stdout

    def image(self, size: str) -> str:
        """A new image of size (rbd units: 64M) with a unique name."""
        name = f"uscst-test-{uuid.uuid4().hex[:12]}"
        self.rbd("create", "--size", size, f"{self.pool}/{name}")
        self.images.append(name)
        return name

    def cleanup(self) -> None:
        """Remove the images the tests made (on a cluster that outlives them)."""
        for name in self.images:
            subprocess.run(["rbd", "-c", str(self.conf), "--id", self.user, "rm",
                            f"{self.pool}/{name}"], capture_output=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        self.images.clear()

    def device_attrs(self, image: str) -> list[str]:
        """The vdisk_rbd attributes that name image on this cluster."""
        return [f"pool {self.pool}", f"image {image}", f"conf {self.conf}", f"user {self.user}"]


def start_test_cluster(workdir: Path) -> CephTestCluster:
    """The cluster for a test module, or pytest.skip with the reason."""
    why = engine_rbd.probe()
    if why:
        pytest.skip(why)
    conf = os.environ.get("USCST_CEPH_CONF")
    if conf:
        return CephTestCluster(Path(conf), os.environ.get("USCST_CEPH_POOL", "rbd"),
                           os.environ.get("USCST_CEPH_USER", "admin"), None)
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{NO_CLUSTER} (not installed: {', '.join(missing)})")
    cl = CephCluster(workdir).start()
    return CephTestCluster(cl.conf, POOL, "admin", cl)


def rbd_config(attrs: list[str], dev: str = "rd0") -> str:
    """scst.conf text: one vdisk_rbd device at LUN 0 of RBD_TARGET."""
    lines = "".join(f"        {a}\n" for a in attrs)
    return (f"HANDLER vdisk_rbd {{\n    DEVICE {dev} {{\n{lines}    }}\n}}\n"
            f"TARGET_DRIVER iscsi {{\n    enabled 1\n    TARGET {RBD_TARGET} {{\n"
            f"        LUN 0 {dev}\n        enabled 1\n    }}\n}}\n")
