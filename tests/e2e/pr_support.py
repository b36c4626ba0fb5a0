"""PERSISTENT RESERVE IN/OUT over the project's initiator, for the e2e
tests that log in as fixed I_T nexuses (initiator name + ISID)."""
from __future__ import annotations

import struct

from initiator import Initiator
from uscstd_support import UscstdServer

CHECK_CONDITION = 0x02

# PERSISTENT RESERVE IN / OUT service actions (SPC-4 6.15, 6.16)
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
REGISTER, RESERVE, RELEASE, REGISTER_AND_MOVE = 0, 1, 2, 7


def login(srv: UscstdServer, who: tuple[str, bytes]) -> Initiator:
    """Log in as who = (initiator name, ISID) and consume the unit
    attentions a new nexus may report first (bounded: 5 tries)."""
    ini = Initiator(port=srv.port, initiator_name=who[0], isid=who[1])
    ini.login(srv.iqn)
    for _ in range(5):
        r = ini.test_unit_ready()
        if r.ok:
            return ini
        assert r.status == CHECK_CONDITION and r.sense_key == 0x6, r
    raise AssertionError("TEST UNIT READY never became GOOD")


def prout(ini: Initiator, sa: int, res_key: int, sa_key: int, ptype: int = 0,
          aptpl: bool = False):
    """PERSISTENT RESERVE OUT with the basic 24-byte parameter list."""
    cdb = struct.pack(">BBBxxIB", 0x5F, sa, ptype, 24, 0)
    data = struct.pack(">QQ4xB3x", res_key, sa_key, 0x01 if aptpl else 0)
    return ini.scsi(cdb, data_out=data)


def prin(ini: Initiator, sa: int, alloc: int = 1024) -> bytes:
    cdb = struct.pack(">BBxxxxxHB", 0x5E, sa, alloc, 0)
    return ini.scsi(cdb, read_len=alloc).check().data


def read_keys(ini: Initiator) -> tuple[int, list[int]]:
    d = prin(ini, READ_KEYS)
    gen, n = struct.unpack_from(">II", d)
    return gen, [struct.unpack_from(">Q", d, 8 + i)[0] for i in range(0, n, 8)]


def read_reservation(ini: Initiator) -> tuple[int, tuple[int, int, int] | None]:
    """(generation, (key, scope, type) or None)."""
    d = prin(ini, READ_RESERVATION)
    gen, n = struct.unpack_from(">II", d)
    if n == 0:
        return gen, None
    assert n == 16, d.hex()
    key = struct.unpack_from(">Q", d, 8)[0]
    return gen, (key, d[21] >> 4, d[21] & 0x0F)


def write1(ini: Initiator, lba: int = 8) -> int:
    """The status of a one-block WRITE(10) at lba."""
    return ini.write10(lba, bytes([lba & 0xFF]) * 512).status
