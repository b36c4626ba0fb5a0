"""End to end: vcdrom (vdisk/cdrom.py) and a removable-medium disk
(`removable 1`) behind a real uscstd started with an scst.conf, driven by
the project's own initiator (tests/initiator.py) and by uscstadmin over
the control socket.

The target has three LUNs: 0 a vcdrom with an ISO-like image (any
file whose size is a multiple of 2048 bytes), 1 a vdisk_fileio disk with
`removable 1`, 2 an empty vcdrom (no filename).

What it checks (MMC-6 / SBC-3 / SPC-4, and SCST's vcdrom behaviour):
INQUIRY peripheral type and RMB; READ CAPACITY(10) in 2048-byte blocks;
READ(10) returns the image; WRITE(10) is refused DATA PROTECT, WRITE
PROTECTED (the drive is read-only; the core's write-protect check comes
before the opcode dispatch, as in SCST); eject and load through the
management tree's filename attribute (NOT READY, MEDIUM NOT PRESENT while
empty, UNIT ATTENTION MEDIUM MAY HAVE CHANGED once per nexus after a
load); PREVENT ALLOW MEDIUM REMOVAL per I_T nexus against START STOP UNIT
LOEJ and against the management eject, cleared by the preventing nexus's
logout and by a LUN reset; a config apply with another filename loads
that image.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Iterator

import pytest

from initiator import TMF_LUN_RESET, TMF_RSP_COMPLETE, Initiator, ScsiResult
from tests.mgmt.mgmt_support import Daemon, free_port
from uscstd_support import UNHEALTHY_RE

TARGET = "iqn.2026-11.org.uscst:cdrom"
LUN_CD, LUN_RDISK, LUN_EMPTY = 0, 1, 2
CD_BLOCKS, CD2_BLOCKS = 100, 37
GOOD, CHECK_CONDITION = 0x00, 0x02

NOT_READY_NO_MEDIUM = (0x2, 0x3A, 0x00)
UA_MEDIUM_CHANGED = (0x6, 0x28, 0x00)
MEDIUM_REMOVAL_PREVENTED = (0x5, 0x53, 0x02)
WRITE_PROTECTED = (0x7, 0x27, 0x00)


def image(path: Path, blocks: int, seed: int) -> bytes:
    """An ISO-like file: blocks of 2048 bytes, each block distinct."""
    data = b"".join(bytes([(seed + i) & 0xFF]) * 16 + struct.pack(">I", i) * 508
                    for i in range(blocks))
    path.write_bytes(data)
    return data


def config(tmp: Path, port: int, ro_luns: bool = True) -> str:
    """The target's scst.conf. ro_luns: say `read_only 1` on the cdrom
    LUNs, as the running tree reports them."""
    ro = " {\n\t\t\tread_only 1\n\t\t}" if ro_luns else ""
    return f"""HANDLER vcdrom {{
\tDEVICE cd0 {{
\t\tfilename {tmp}/a.iso
\t}}
\tDEVICE cdempty
}}
HANDLER vdisk_fileio {{
\tDEVICE rdisk {{
\t\tfilename {tmp}/rdisk.img
\t\tremovable 1
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tportal 127.0.0.1:{port}
\tTARGET {TARGET} {{
\t\tLUN {LUN_CD} cd0{ro}
\t\tLUN {LUN_RDISK} rdisk
\t\tLUN {LUN_EMPTY} cdempty{ro}
\t\tenabled 1
\t}}
}}
"""


class CdTarget:
    """A running uscstd serving TARGET, its images and its sessions."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.iso_a = image(tmp / "a.iso", CD_BLOCKS, 0x10)
        self.iso_b = image(tmp / "b.iso", CD2_BLOCKS, 0x80)
        (tmp / "rdisk.img").write_bytes(bytes(1 << 20))
        self.port = free_port()
        self.sessions: list[Initiator] = []
        # --data-dir: keep APTPL state files of these devices private
        self.daemon = Daemon(tmp, config(tmp, self.port), port=self.port,
                             extra=["--debug", "--data-dir", str(tmp)])

    def session(self, name: str = "iqn.1994-05.org.uscst.test:cd-a") -> Initiator:
        ini = Initiator(port=self.port, initiator_name=name)
        ini.login(TARGET)
        self.sessions.append(ini)
        # The first command on each LUN reports the power-on UA; consume
        # it. Bounded: 5 TURs per LUN.
        for lun in (LUN_CD, LUN_RDISK, LUN_EMPTY):
            for _ in range(5):
                if ini.test_unit_ready(lun).sense_key != 0x6:
                    break
        return ini

    def set_filename(self, dev: str, value: str, check: bool = True):
        return self.daemon.admin("set", f"devices/{dev}/filename", value, check=check)

    def unhealthy(self) -> list[str]:
        return [ln for ln in self.daemon.output().splitlines() if UNHEALTHY_RE.search(ln)]


@pytest.fixture
def cd(tmp_path: Path) -> Iterator[CdTarget]:
    t = CdTarget(tmp_path)
    try:
        assert t.daemon.wait_for("uscstd: control socket"), t.daemon.output()
        assert "ready at" in t.daemon.output(), t.daemon.output()
        yield t
    finally:
        for ini in t.sessions:
            ini.close()
        rc = t.daemon.stop()
    bad = t.unhealthy()
    assert rc == 0 and not bad, f"uscstd exit {rc}; log:\n{t.daemon.output()[-6000:]}"


# ---------------------------------------------------------------- helpers

def sense(r: ScsiResult) -> tuple[int, int, int] | None:
    if r.status != CHECK_CONDITION:
        return None
    return (r.sense_key, *r.asc_ascq)


def read_capacity10(ini: Initiator, lun: int) -> ScsiResult:
    return ini.scsi(bytes((0x25,)) + bytes(9), lun, read_len=8)


def capacity(ini: Initiator, lun: int) -> tuple[int, int]:
    """(block count, block length) from READ CAPACITY(10)."""
    last, bl = struct.unpack(">II", read_capacity10(ini, lun).check().data)
    return last + 1, bl


def start_stop(ini: Initiator, lun: int, loej: bool, start: bool) -> ScsiResult:
    return ini.scsi(bytes((0x1B, 0, 0, 0, (0x02 if loej else 0) | (0x01 if start else 0), 0)), lun)


def prevent_allow(ini: Initiator, lun: int, prevent: bool) -> ScsiResult:
    return ini.scsi(bytes((0x1E, 0, 0, 0, 0x01 if prevent else 0, 0)), lun)


# ---------------------------------------------------------------- tests

def test_inquiry_reports_cdrom_type_5_and_removable_medium(cd: CdTarget) -> None:
    ini = cd.session()
    d = ini.inquiry(LUN_CD).check().data
    assert d[0] & 0x1F == 5 and d[1] & 0x80
    d = ini.inquiry(LUN_EMPTY).check().data                 # INQUIRY works without a medium
    assert d[0] & 0x1F == 5 and d[1] & 0x80
    d = ini.inquiry(LUN_RDISK).check().data
    assert d[0] & 0x1F == 0 and d[1] & 0x80                 # a disk, RMB=1


def test_read_capacity_gives_2048_byte_blocks_and_read_returns_the_image(cd: CdTarget) -> None:
    ini = cd.session()
    assert capacity(ini, LUN_CD) == (CD_BLOCKS, 2048)
    r = ini.read10(5, 3, bs=2048, lun=LUN_CD).check()
    assert r.data == cd.iso_a[5 * 2048:8 * 2048]
    r = ini.read10(CD_BLOCKS - 1, 1, bs=2048, lun=LUN_CD).check()
    assert r.data == cd.iso_a[-2048:]
    r = ini.read10(CD_BLOCKS - 1, 2, bs=2048, lun=LUN_CD)   # past the end
    assert sense(r) == (0x5, 0x21, 0x00)


def test_write_to_the_cdrom_is_refused_write_protected(cd: CdTarget) -> None:
    ini = cd.session()
    r = ini.write10(3, b"\xee" * 2048, bs=2048, lun=LUN_CD)
    assert sense(r) == WRITE_PROTECTED
    assert (cd.tmp / "a.iso").read_bytes() == cd.iso_a
    # and the empty drive says there is no medium first
    assert sense(ini.write10(0, b"\xee" * 2048, bs=2048, lun=LUN_EMPTY)) == NOT_READY_NO_MEDIUM


def test_empty_drive_is_not_ready_medium_not_present(cd: CdTarget) -> None:
    ini = cd.session()
    assert sense(ini.test_unit_ready(LUN_EMPTY)) == NOT_READY_NO_MEDIUM
    assert sense(read_capacity10(ini, LUN_EMPTY)) == NOT_READY_NO_MEDIUM
    assert sense(ini.read10(0, 1, bs=2048, lun=LUN_EMPTY)) == NOT_READY_NO_MEDIUM
    assert cd.daemon.admin("get", "devices/cdempty/filename").stdout.strip() == ""


def test_eject_and_load_through_the_management_tree(cd: CdTarget) -> None:
    a = cd.session()
    b = cd.session("iqn.1994-05.org.uscst.test:cd-b")
    assert a.test_unit_ready(LUN_CD).ok and b.test_unit_ready(LUN_CD).ok
    cd.set_filename("cd0", "")                                  # eject
    # no unit attention on eject: straight to NOT READY, as SCST does
    assert sense(a.test_unit_ready(LUN_CD)) == NOT_READY_NO_MEDIUM
    assert sense(a.test_unit_ready(LUN_CD)) == NOT_READY_NO_MEDIUM
    assert sense(read_capacity10(a, LUN_CD)) == NOT_READY_NO_MEDIUM
    assert a.inquiry(LUN_CD).ok
    cd.set_filename("cd0", str(cd.tmp / "b.iso"))               # load another image
    assert cd.daemon.admin("get", "devices/cd0/filename").stdout.strip() == str(cd.tmp / "b.iso")
    for ini in (a, b):                                          # once per I_T nexus
        assert sense(ini.test_unit_ready(LUN_CD)) == UA_MEDIUM_CHANGED
        assert ini.test_unit_ready(LUN_CD).ok
    assert capacity(a, LUN_CD) == (CD2_BLOCKS, 2048)
    assert b.read10(CD2_BLOCKS - 2, 2, bs=2048, lun=LUN_CD).check().data == cd.iso_b[-4096:]
    # the UA went to the nexuses of cd0 only
    assert a.test_unit_ready(LUN_RDISK).ok
    # write-config carries the new medium
    conf = cd.daemon.admin("write-config", "-").stdout
    assert re.search(r"DEVICE cd0 \{\s*filename " + re.escape(str(cd.tmp / "b.iso")), conf), conf


def test_load_into_the_empty_drive_and_a_missing_image_is_refused(cd: CdTarget) -> None:
    ini = cd.session()
    r = cd.set_filename("cdempty", str(cd.tmp / "no-such.iso"), check=False)
    assert r.returncode != 0
    assert sense(ini.test_unit_ready(LUN_EMPTY)) == NOT_READY_NO_MEDIUM
    cd.set_filename("cdempty", str(cd.tmp / "a.iso"))
    assert sense(ini.test_unit_ready(LUN_EMPTY)) == UA_MEDIUM_CHANGED
    assert capacity(ini, LUN_EMPTY) == (CD_BLOCKS, 2048)
    assert ini.read10(0, 1, bs=2048, lun=LUN_EMPTY).check().data == cd.iso_a[:2048]


def test_prevent_blocks_eject_by_start_stop_and_by_the_management_tree(cd: CdTarget) -> None:
    ini = cd.session()
    assert prevent_allow(ini, LUN_CD, True).ok
    assert sense(start_stop(ini, LUN_CD, loej=True, start=False)) == MEDIUM_REMOVAL_PREVENTED
    r = cd.set_filename("cd0", "", check=False)
    assert r.returncode != 0 and "medium removal is prevented, cannot eject" in r.stderr, r
    assert ini.test_unit_ready(LUN_CD).ok                       # still loaded
    assert prevent_allow(ini, LUN_CD, False).ok
    assert start_stop(ini, LUN_CD, loej=True, start=False).ok   # eject
    assert sense(ini.test_unit_ready(LUN_CD)) == NOT_READY_NO_MEDIUM
    assert start_stop(ini, LUN_CD, loej=True, start=True).ok    # load the same image again
    assert ini.test_unit_ready(LUN_CD).ok
    assert ini.read10(7, 1, bs=2048, lun=LUN_CD).check().data == cd.iso_a[7 * 2048:8 * 2048]


def test_removable_disk_prevent_is_per_i_t_nexus_and_logout_clears_it(cd: CdTarget) -> None:
    a = cd.session()
    b = cd.session("iqn.1994-05.org.uscst.test:cd-b")
    assert prevent_allow(a, LUN_RDISK, True).ok
    assert sense(start_stop(a, LUN_RDISK, loej=True, start=False)) == MEDIUM_REMOVAL_PREVENTED
    assert sense(start_stop(b, LUN_RDISK, loej=True, start=False)) == MEDIUM_REMOVAL_PREVENTED
    assert prevent_allow(b, LUN_RDISK, False).ok                # B's ALLOW is B's only
    assert sense(start_stop(b, LUN_RDISK, loej=True, start=False)) == MEDIUM_REMOVAL_PREVENTED
    # plain START STOP (LOEJ=0) is not a removal and stays allowed
    assert start_stop(b, LUN_RDISK, loej=False, start=True).ok
    a.logout()                                                  # A's nexus goes: so does its PREVENT
    assert start_stop(b, LUN_RDISK, loej=True, start=False).ok
    assert sense(b.test_unit_ready(LUN_RDISK)) == NOT_READY_NO_MEDIUM
    assert sense(b.read10(0, 1, lun=LUN_RDISK)) == NOT_READY_NO_MEDIUM
    assert start_stop(b, LUN_RDISK, loej=True, start=True).ok
    assert b.test_unit_ready(LUN_RDISK).ok


def test_lun_reset_clears_prevent(cd: CdTarget) -> None:
    a = cd.session()
    assert prevent_allow(a, LUN_RDISK, True).ok
    assert sense(start_stop(a, LUN_RDISK, loej=True, start=False)) == MEDIUM_REMOVAL_PREVENTED
    assert a.task_mgmt(TMF_LUN_RESET, lun=LUN_RDISK) == TMF_RSP_COMPLETE
    r = start_stop(a, LUN_RDISK, loej=True, start=False)
    assert sense(r)[:2] == (0x6, 0x29), r                       # the reset's UA first
    assert start_stop(a, LUN_RDISK, loej=True, start=False).ok
    assert sense(a.test_unit_ready(LUN_RDISK)) == NOT_READY_NO_MEDIUM


def test_config_apply_with_another_filename_changes_the_medium(cd: CdTarget) -> None:
    ini = cd.session()
    text = cd.daemon.config.read_text().replace(f"{cd.tmp}/a.iso", f"{cd.tmp}/b.iso")
    new = cd.tmp / "new.conf"
    new.write_text(text)
    r = cd.daemon.admin("config", str(new))
    assert f"set device cd0 filename {cd.tmp}/b.iso" in r.stdout, r
    assert "1 change" in r.stdout, r
    assert sense(ini.test_unit_ready(LUN_CD)) == UA_MEDIUM_CHANGED
    assert capacity(ini, LUN_CD) == (CD2_BLOCKS, 2048)


def test_config_apply_of_the_running_config_changes_nothing(cd: CdTarget) -> None:
    plain = cd.tmp / "plain.conf"
    plain.write_text(config(cd.tmp, cd.port, ro_luns=False))
    r = cd.daemon.admin("config", str(plain))
    assert re.search(r"\b0 changes\b", r.stdout + r.stderr), r
