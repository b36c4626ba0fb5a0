"""Helpers for the vdisk handler tests: build a device, run one command
through decode, parse and exec the way the core does, and decode sense."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from kshim import bug, engine, module
from kshim.gfp import GFP_ATOMIC
from kshim.scatterlist import sg_copy_from_buffer, sg_copy_to_buffer
from scst_core.cdbprobe import scst_get_cdb_info
from scst_core.const import SAM_STAT_RESERVATION_CONFLICT, TYPE_DISK
from scst_core.lib import scst_set_cmd_error_status
from scst_core.mem import scst_alloc_space, scst_release_space
from scst_core.pres import scst_pr_is_cmd_allowed
from scst_core.scst import SCST_DATA_WRITE, scst_cmd, scst_dev_type, scst_device
from vdisk.vdisk import scst_vdisk_dev, vdisk_alloc_dev


def run_kernel(body: Callable[[], Any]) -> Any:
    """Boot the engine, run body() in a kthread, stop, return body's result.
    The SCST core is there as a built-in would be: never loaded in this
    process, or loaded for the test (and unloaded after) when an earlier
    boot of the whole target unloaded it (tools/boot, the sim tests)."""
    box: list[Any] = []

    def init() -> int:
        core = module.find_module("scst")
        reload = core is not None and core.unloaded
        if reload:
            assert module.load_module("scst") == 0
        try:
            box.append(body())
        finally:
            if reload:
                module.delete_module("scst", module.O_TRUNC)
            engine.request_shutdown()
        return 0
    engine.run(init, handle_signals=False)
    return box[0] if box else None


@pytest.fixture
def kernel():
    bug.reset_reports()
    yield run_kernel
    bug.reset_reports()


def make_dev(devt: scst_dev_type, name: str, params: dict[str, str]) -> scst_device:
    """Build and attach a device the way scst_register_virtual_device does,
    without the core's threads."""
    r = vdisk_alloc_dev(devt.name, name, params)
    assert not isinstance(r, int), r
    virt_dev: scst_vdisk_dev = r[0]
    dev = scst_device(TYPE_DISK, devt, name, dh_priv=virt_dev)
    assert devt.attach(dev) == 0
    return dev


class Result:
    def __init__(self, cmd: scst_cmd, probe: int, data: bytes, done: list) -> None:
        self.cmd = cmd
        self.probe = probe
        self.data = data
        self.done = done
        self.status = cmd.status
        self.sense = bytes(cmd.sense[:cmd.sense_valid_len]) if cmd.sense is not None else b""

    @property
    def key_asc_ascq(self) -> tuple[int, int, int] | None:
        s = self.sense
        if not s:
            return None
        if s[0] & 0x7F in (0x72, 0x73):
            return s[1] & 0x0F, s[2], s[3]
        return s[2] & 0x0F, s[12], s[13]

    @property
    def field_pointer(self) -> tuple[bool, int, int] | None:
        """(in_cdb, byte, bit or -1) from the sense-key specific bytes."""
        s = self.sense
        if s[0] & 0x7F in (0x72, 0x73):
            sks = s[8 + 4:8 + 7] if len(s) >= 15 and s[8] == 0x02 else b""
        else:
            sks = s[15:18]
        if not sks or not sks[0] & 0x80:
            return None
        bit = sks[0] & 0x07 if sks[0] & 0x08 else -1
        return bool(sks[0] & 0x40), (sks[1] << 8) | sks[2], bit


def run_cmd(dev: scst_device, cdb: bytes | list[int], data_out: bytes = b"",
            sess: Any = None) -> Result:
    """Decode, parse, allocate, exec; return status, sense and Data-In.
    sess: the scst_session the command arrives on (its I_T nexus)."""
    cdb = bytes(cdb).ljust(16, b"\x00")
    cmd = scst_cmd(sess=sess, tgt=sess.tgt if sess is not None else None,
                   tgtt=sess.tgt.tgtt if sess is not None else None, cdb=cdb)
    cmd.dev = dev
    cmd.expected_transfer_len = len(data_out)
    done: list = []
    cmd.scst_cmd_done = lambda c, state, ctx: done.append((state, ctx))
    probe = scst_get_cdb_info(cmd)
    if probe != 0:
        return Result(cmd, probe, b"", done)
    dev.handler.parse(cmd)
    if not cmd.status and sess is not None and not scst_pr_is_cmd_allowed(cmd):
        # The core's reservation check (scst_core.targ._parse) before exec.
        scst_set_cmd_error_status(cmd, SAM_STAT_RESERVATION_CONFLICT)
    if cmd.status:
        return Result(cmd, probe, b"", done)
    if cmd.bufflen:
        assert scst_alloc_space(cmd, cmd.bufflen, GFP_ATOMIC) == 0
        if cmd.data_direction & SCST_DATA_WRITE:
            assert len(data_out) == cmd.bufflen, (len(data_out), cmd.bufflen)
            sg_copy_from_buffer(cmd.sg, cmd.sg_cnt, data_out)
    dev.handler.exec(cmd)
    data = b""
    if cmd.resp_data_len:
        buf = bytearray(cmd.resp_data_len)
        sg_copy_to_buffer(cmd.sg, cmd.sg_cnt, buf)
        data = bytes(buf)
    scst_release_space(cmd)
    return Result(cmd, probe, data, done)
