"""Fuzzing the SCSI commands that carry a parameter list or many CDB
fields, end to end: EXTENDED COPY, RECEIVE COPY RESULTS, REPORT/SET TARGET
PORT GROUPS, PERSISTENT RESERVE OUT (REGISTER AND MOVE included), MODE
SELECT(10), UNMAP, WRITE SAME(16), SANITIZE, COMPARE AND WRITE, GET LBA
STATUS and REPORT SUPPORTED OPERATION CODES.

Each command starts from a valid template and gets a few random bytes
changed, its parameter list cut or lengthened, or its length field made
to disagree with the data; one in five is any opcode the LU knows with
the rest of its CDB random. Property: every command is answered (any SCSI
status: a bad CDB or list is CHECK CONDITION, never a dropped connection
or silence), and afterwards a fresh session still gets INQUIRY and the
log holds no Traceback, BUG:, Oops or WARNING:; the `uscstd` fixture's
teardown adds a clean exit on SIGTERM.

Bounded: COMMANDS commands from a fixed seed (printed on failure) within
BUDGET_S seconds, each answered within TIMEOUT seconds.
"""
from __future__ import annotations

import random
import struct
import time
from pathlib import Path

from initiator import Initiator, InitiatorError
from scsi_support import naa_designator, xcopy_b2b, xcopy_cdb, xcopy_cscd, xcopy_plist

IQN = "iqn.2026-11.org.uscst:fuzz"
SEED = 20261125
COMMANDS = 3000
BUDGET_S = 60.0
TIMEOUT = 10.0
BS = 512
MAX_LEN = 64 << 10


# every opcode a vdisk_fileio LU dispatches (vdisk/opcodes.py)
_OPCODES = (0x00, 0x03, 0x04, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28,
            0x2A, 0x2E, 0x2F, 0x34, 0x35, 0x37, 0x41, 0x42, 0x48, 0x55, 0x56, 0x57, 0x5A, 0x5E,
            0x5F, 0x83, 0x84, 0x88, 0x89, 0x8A, 0x8B, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9C, 0x9E,
            0xA0, 0xA3, 0xA4, 0xA8, 0xAA, 0xAE, 0xAF, 0xB7)


def _config(tmp: Path) -> str:
    devs = ""
    for name in ("fz0", "fz1"):
        img = tmp / f"{name}.img"
        with open(img, "wb") as f:
            f.truncate(4 << 20)
        devs += f"    DEVICE {name} {{\n        filename {img}\n        sanitize_rate 1024\n    }}\n"
    return (f"HANDLER vdisk_fileio {{\n{devs}}}\n"
            "TARGET_DRIVER iscsi {\n    enabled 1\n"
            f"    TARGET {IQN} {{\n        LUN 0 fz0\n        LUN 1 fz1\n        enabled 1\n    }}\n}}\n"
            "DEVICE_GROUP dg {\n    DEVICE fz0\n    DEVICE fz1\n"
            f"    TARGET_GROUP tg {{\n        group_id 1\n        TARGET {IQN}\n    }}\n}}\n")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random bytes changed, sometimes cut or lengthened."""
    b = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    r = rng.random()
    if r < 0.15 and b:
        del b[rng.randrange(len(b)):]
    elif r < 0.25:
        b += rng.randbytes(rng.randint(1, 64))
    return bytes(b)


def _templates(naa0: bytes, naa1: bytes) -> list:
    """(name, cdb builder taking the data length, data or None, read length)."""
    xcopy = xcopy_plist([xcopy_cscd(naa0), xcopy_cscd(naa1)], [xcopy_b2b(0, 1, 8, 0, 16)])
    stpg = bytes(4) + bytes((0x00, 0, 0, 1))
    tid = b"iqn.2026-11.test:fuzz-dest,i,0x023d000000aa\x00"
    tid = bytes((0x45, 0)) + struct.pack(">H", len(tid)) + tid
    move = struct.pack(">QQxBHI", 1, 2, 0, 1, len(tid)) + tid
    caching = bytes(8) + bytes((0x08, 0x12)) + bytes(18)
    unmap = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 8, 8)
    sanitize = struct.pack(">BBH", 0x01, 0, BS) + bytes(BS)
    return [
        ("EXTENDED COPY", lambda n: xcopy_cdb(n), xcopy, 0),
        ("RECEIVE COPY RESULTS", lambda n: struct.pack(">BBB7sIBB", 0x84, 0x03, 0, bytes(7),
                                                       1024, 0, 0), None, 1024),
        ("REPORT TARGET PORT GROUPS", lambda n: struct.pack(">BBxxxxIxx", 0xA3, 0x0A, 1024),
         None, 1024),
        ("SET TARGET PORT GROUPS", lambda n: struct.pack(">BBxxxxIxx", 0xA4, 0x0A, n), stpg, 0),
        ("PR OUT REGISTER", lambda n: struct.pack(">BBBxxIB", 0x5F, 0x00, 0, n, 0),
         struct.pack(">QQ8x", 0, 1), 0),
        ("PR OUT REGISTER AND MOVE", lambda n: struct.pack(">BBBxxIB", 0x5F, 0x07, 1, n, 0),
         move, 0),
        ("MODE SELECT(10)", lambda n: struct.pack(">BBxxxxxHB", 0x55, 0x10, n, 0), caching, 0),
        ("UNMAP", lambda n: struct.pack(">BBxxxxxHB", 0x42, 0, n, 0), unmap, 0),
        ("WRITE SAME(16)", lambda n: struct.pack(">BBQIBB", 0x93, 0x08, 32, 4, 0, 0),
         bytes(BS), 0),
        ("SANITIZE", lambda n: struct.pack(">BBxxxxxHB", 0x48, 0x81, n, 0), sanitize, 0),
        ("COMPARE AND WRITE", lambda n: struct.pack(">BBQxxxBxx", 0x89, 0, 64, 1),
         bytes(2 * BS), 0),
        ("GET LBA STATUS", lambda n: struct.pack(">BBQIxx", 0x9E, 0x12, 0, 256), None, 256),
        ("REPORT SUPPORTED OPCODES", lambda n: struct.pack(">BBBBHIxx", 0xA3, 0x0C, 0x82, 0x93, 0,
                                                           512), None, 512),
    ]


def test_malformed_parameter_lists_and_cdb_fields_are_answered_and_the_server_survives(
        uscstd, tmp_path: Path) -> None:
    conf = tmp_path / "fuzz.conf"
    conf.write_text(_config(tmp_path))
    srv = uscstd("--config", str(conf), disk=None, size=None)
    rng = random.Random(SEED)
    ini = Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT,
                    initiator_name="iqn.2026-11.test:fuzz-src")
    ini.connect()
    ini.login(IQN)
    templates = _templates(naa_designator(ini, 0), naa_designator(ini, 1))
    deadline = time.monotonic() + BUDGET_S
    sent = 0
    for i in range(COMMANDS):
        if time.monotonic() > deadline:
            break
        lun = rng.randrange(2)
        if rng.random() < 0.2:
            # Any command the LU knows, every other CDB byte random (huge
            # transfer lengths, odd flags), a little data or none.
            name = "random CDB"
            cdb = bytes((rng.choice(_OPCODES),)) + rng.randbytes(15)
            data = rng.randbytes(rng.choice((0, BS, 2 * BS))) or None
            read_len = rng.choice((0, 8, BS, 4096))
        else:
            name, cdb_of, data, read_len = rng.choice(templates)
            if data is not None:
                data = _mutate(rng, data)[:MAX_LEN]
            cdb = cdb_of(len(data) if data is not None else 0)
            if rng.random() < 0.5:
                cdb = _mutate(rng, cdb)[:16].ljust(6, b"\x00")
        try:
            r = ini.scsi(cdb, lun, data_out=data if data else None,
                         read_len=0 if data else read_len, timeout=TIMEOUT)
        except (InitiatorError, OSError, TimeoutError) as e:
            raise AssertionError(f"seed {SEED}, command {i} ({name}, LUN {lun}, CDB {cdb.hex()}, "
                                 f"data {(data or b'').hex()[:200]}): {type(e).__name__}: {e}") from e
        assert r.status is not None
        sent += 1
    ini.logout()
    ini.close()
    assert sent >= 500, f"only {sent} commands within {BUDGET_S} s"
    with Initiator(host=srv.host, port=srv.port, timeout=TIMEOUT,
                   initiator_name="iqn.2026-11.test:fuzz-check") as check:
        check.login(IQN)
        assert check.inquiry(0).status == 0
    srv.assert_healthy()
