"""Durability as SBC-3 says, checked by cutting the power.

uscstd serves a file on a FUSE filesystem (powercut_fs.py) that keeps
writes in a volatile cache until fsync. The test writes through iSCSI,
kills uscstd with SIGKILL, cuts the power, and reads what survived:
- write cache off (the default): every write that got GOOD is there, even
  with uscstd killed in the middle of a loaded run;
- write cache on (MODE SELECT WCE=1): FUA writes and writes completed
  before a good SYNCHRONIZE CACHE are there, plain writes after the last
  flush are lost -- which shows the harness does see a target that
  acknowledges data it has not made stable.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.initiator import InitiatorError, Initiator
from tests.uscstd_support import start_uscstd

HERE = Path(__file__).resolve().parent
DISK_SIZE = 32 << 20
BS = 512
WRITE_BLOCKS = 8                     # 4 KiB per WRITE
QUEUE_DEPTH = 8
LOAD_SECONDS = 10.0                  # upper bound; the kill comes much sooner
TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3 (Debian fuse3)")


class PowerCutDisk:
    """The powercut_fs process: its mount holds disk.img."""

    def __init__(self, root: Path) -> None:
        self.mnt = root / "mnt"
        self.mnt.mkdir()
        self.out = root / "durable.img"
        self.log = open(root / "powercut_fs.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "powercut_fs.py"), str(self.mnt), str(DISK_SIZE),
             str(self.out)], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + TIMEOUT
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"powercut_fs did not mount: {(root / 'powercut_fs.err').read_text()}")
            time.sleep(0.05)

    @property
    def disk(self) -> Path:
        return self.mnt / "disk.img"

    def cut(self) -> bytes:
        """Power off: what was fsynced, and nothing else."""
        self.proc.terminate()
        assert self.proc.wait(TIMEOUT) == 0
        return self.out.read_bytes()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        self.log.close()


@pytest.fixture
def powercut(tmp_path):
    d = PowerCutDisk(tmp_path)
    yield d
    d.close()


def _block_data(salt: bytes, lba: int) -> bytes:
    unit = salt + struct.pack(">Q", lba)
    return unit * (WRITE_BLOCKS * BS // len(unit))


def _write10(lba: int, fua: bool) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, WRITE_BLOCKS, 0)


def _write_range(ini: Initiator, lbas: list[int], salt: bytes, fua: bool = False,
                 acked: list | None = None, stop: threading.Event | None = None) -> list:
    """WRITE(10) each LBA in lbas, QUEUE_DEPTH at a time; returns (and
    appends to `acked`) the LBAs that completed GOOD. Ends early, quietly,
    if the connection dies or `stop` is set."""
    acked = [] if acked is None else acked
    inflight: list[tuple[int, int]] = []
    todo = iter(lbas)
    deadline = time.monotonic() + LOAD_SECONDS
    try:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            while len(inflight) < QUEUE_DEPTH:
                lba = next(todo, None)
                if lba is None:
                    break
                inflight.append((ini.submit(_write10(lba, fua), data_out=_block_data(salt, lba)),
                                 lba))
            if not inflight:
                break
            itt, lba = inflight.pop(0)
            if ini.wait(itt, TIMEOUT).status == 0:
                acked.append(lba)
    except (InitiatorError, OSError, TimeoutError):
        pass
    # Responses that arrived before the connection died count too.
    for itt, lba in inflight:
        task = ini.tasks.get(itt)
        if task is not None and task.done and task.result.status == 0:
            acked.append(lba)
    return acked


def _missing(image: bytes, salt: bytes, lbas: list[int]) -> list[int]:
    size = WRITE_BLOCKS * BS
    return [lba for lba in lbas if image[lba * BS:lba * BS + size] != _block_data(salt, lba)]


def _login(srv) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT)
    ini.connect()
    ini.login(srv.iqn)
    return ini


def test_write_cache_off_by_default_every_acknowledged_write_survives_sigkill_and_power_cut(
        tmp_path, powercut):
    srv = start_uscstd(tmp_path / "srv", disk=powercut.disk, size=None)
    salt = os.urandom(8)
    lbas = list(range(0, DISK_SIZE // BS, WRITE_BLOCKS))
    acked: list[int] = []
    with _login(srv) as ini:
        ms = ini.scsi(bytes((0x1A, 0x08, 0x08, 0, 255, 0)), read_len=255).check()
        assert not ms.data[4 + 2] & 0x04, "the caching page must say WCE=0 by default"
        loader = threading.Thread(target=_write_range, args=(ini, lbas, salt, False, acked))
        loader.start()
        deadline = time.monotonic() + LOAD_SECONDS
        while len(acked) < 300 and loader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.proc.kill()                      # under load: writes are in flight
        srv.proc.wait(TIMEOUT)
        loader.join(TIMEOUT + LOAD_SECONDS)
        assert not loader.is_alive()
    image = powercut.cut()
    assert len(acked) >= 300, f"only {len(acked)} writes completed before the kill"
    assert len(acked) < len(lbas), "the kill came after the load had finished"
    assert _missing(image, salt, acked) == []


def test_write_cache_on_fua_and_synchronize_cache_are_durable_plain_writes_are_not(
        tmp_path, powercut):
    srv = start_uscstd(tmp_path / "srv", disk=powercut.disk, size=None)
    salt = os.urandom(8)
    step = WRITE_BLOCKS
    synced = list(range(0, 400 * step, step))
    fua = list(range(400 * step, 600 * step, step))
    volatile = list(range(600 * step, 800 * step, step))
    with _login(srv) as ini:
        ms = ini.scsi(bytes((0x1A, 0x08, 0x08, 0, 255, 0)), read_len=255).check().data
        page = bytearray(ms[4:4 + 20])
        page[0] &= 0x7F                      # PS is reserved in MODE SELECT
        page[2] |= 0x04                      # WCE=1: write-back
        ini.scsi(bytes((0x15, 0x10, 0, 0, 24, 0)), data_out=bytes(4) + bytes(page)).check()
        assert _write_range(ini, synced, salt) == synced
        ini.scsi(bytes((0x35,)) + bytes(9)).check()          # SYNCHRONIZE CACHE(10)
        assert _write_range(ini, fua, salt, fua=True) == fua
        assert _write_range(ini, volatile, salt) == volatile
        srv.proc.kill()
        srv.proc.wait(TIMEOUT)
    image = powercut.cut()
    assert _missing(image, salt, synced) == []
    assert _missing(image, salt, fua) == []
    assert _missing(image, salt, volatile) == volatile
