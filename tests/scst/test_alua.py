"""ALUA (scst_core.tg) end to end: one uscstd serving one nullio device
through two targets (two SCSI target ports) in two target groups of a
device group, and a second device in no device group. Checked with the
project's own initiator: the port designators of VPD page 0x83, INQUIRY's
TPGS field, REPORT TARGET PORT GROUPS in both formats, SET TARGET PORT
GROUPS (state change, unit attention on the other nexuses, refusals with a
field pointer) and the NOT READY answers of a port in a restricting state;
and libiscsi's iscsi-inq decoding our VPD page 0x83."""
from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from initiator import Initiator
from tools.uscstadmin import Ctl, Failed
from uscstd_support import finish_uscstd, start_uscstd

TA = "iqn.2026-11.org.uscst:alua-a"
TB = "iqn.2026-11.org.uscst:alua-b"
DG = "device_groups/dg1/target_groups"

CONFIG = f"""HANDLER vdisk_nullio {{
\tDEVICE null1 {{
\t\tsize 64M
\t}}
\tDEVICE null2 {{
\t\tsize 64M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {TA} {{
\t\tLUN 0 null1
\t\tLUN 1 null2
\t\tenabled 1
\t}}
\tTARGET {TB} {{
\t\tLUN 0 null1
\t\tLUN 1 null2
\t\tenabled 1
\t}}
}}
DEVICE_GROUP dg1 {{
\tDEVICE null1
\tTARGET_GROUP tga {{
\t\tgroup_id 1
\t\tpreferred 1
\t\tTARGET {TA}
\t}}
\tTARGET_GROUP tgb {{
\t\tgroup_id 2
\t\tstate nonoptimized
\t\tTARGET {TB}
\t}}
}}
"""

GOOD, CHECK = 0x00, 0x02
UA_STATE_CHANGED = (0x06, 0x2A, 0x06)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d: Path = tmp_path_factory.mktemp("alua")
    (d / "scst.conf").write_text(CONFIG)
    srv = start_uscstd(d, "--config", str(d / "scst.conf"), "--control", str(d / "ctl.sock"),
                       port=None, disk=None, size=None)
    srv.ctl_path = str(d / "ctl.sock")
    deadline = time.monotonic() + 20          # the control socket follows "ready at"
    while "control socket" not in srv.stdout_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield srv
    finally:
        finish_uscstd(srv)         # exit 0 and a log free of BUG/Traceback/WARNING


@pytest.fixture
def ctl(server):
    """The control socket, with both target groups back at their
    configured states before the test."""
    c = Ctl(server.ctl_path)
    c.write(f"{DG}/tga/state", "active")
    c.write(f"{DG}/tgb/state", "nonoptimized")
    return c


def login(server, target: str, name: str = "iqn.1993-08.org.debian:01:alua") -> Initiator:
    ini = Initiator(port=server.port, initiator_name=name)
    ini.connect()
    ini.login(target)
    return ini


def rel_id(ctl: Ctl, target: str) -> int:
    return int(ctl.read(f"targets/iscsi/{target}/rel_tgt_id").split()[0])


def sense3(r) -> tuple[int, int, int]:
    return r.sense_key, *r.asc_ascq


def designators(vpd83: bytes) -> list[tuple[int, int, int, bool, int, bytes]]:
    """(protocol id, code set, association, PIV, type, identifier) of each
    designator of a Device Identification page."""
    assert vpd83[1] == 0x83
    end = 4 + struct.unpack_from(">H", vpd83, 2)[0]
    assert end == len(vpd83)
    out, off = [], 4
    while off < end:
        b0, b1, _, n = vpd83[off:off + 4]
        out.append((b0 >> 4, b0 & 0x0F, (b1 >> 4) & 3, bool(b1 & 0x80), b1 & 0x0F,
                    vpd83[off + 4:off + 4 + n]))
        off += 4 + n
    assert off == end
    return out


def port_designators(ini: Initiator, lun: int = 0) -> dict[int, tuple]:
    r = ini.inquiry(lun, evpd=True, page=0x83)
    r.check()
    return {d[4]: d for d in designators(r.data) if d[2] == 1}    # association 01b


def rtpg(ini: Initiator, fmt: int = 0, lun: int = 0, alloc: int = 1024):
    cdb = bytes((0xA3, (fmt << 5) | 0x0A, 0, 0, 0, 0)) + alloc.to_bytes(4, "big") + bytes(2)
    return ini.scsi(cdb, lun, read_len=alloc)


def parse_rtpg(data: bytes, extended: bool) -> tuple[dict, list[dict]]:
    n = struct.unpack_from(">I", data, 0)[0]
    assert len(data) == 4 + n
    off, hdr = 4, {}
    if extended:
        hdr = {"format": data[4] >> 4 & 7, "transition_time": data[5]}
        off = 8
    groups = []
    while off < len(data):
        d = data[off:off + 8]
        cnt = d[7]
        ports = [struct.unpack_from(">H", data, off + 8 + 4 * i + 2)[0] for i in range(cnt)]
        groups.append({"pref": bool(d[0] & 0x80), "state": d[0] & 0x0F, "sup": d[1],
                       "id": struct.unpack_from(">H", d, 2)[0], "status": d[5], "ports": ports})
        off += 8 + 4 * cnt
    assert off == len(data)
    return hdr, groups


def stpg(ini: Initiator, descs: list[tuple[int, int]], lun: int = 0):
    data = bytes(4) + b"".join(bytes((state, 0)) + ident.to_bytes(2, "big")
                               for state, ident in descs)
    cdb = bytes((0xA4, 0x0A, 0, 0, 0, 0)) + len(data).to_bytes(4, "big") + bytes(2)
    return ini.scsi(cdb, lun, data_out=data)


def states(ini: Initiator) -> dict[int, int]:
    r = rtpg(ini)
    r.check()
    return {g["id"]: g["state"] for g in parse_rtpg(r.data, False)[1]}


def field_pointer(sense: bytes) -> tuple[bool, int, int]:
    """(C/D, byte, bit or -1) of fixed format sense with SKSV set."""
    sks = sense[15:18]
    assert sks[0] & 0x80, f"no field pointer in {sense.hex()}"
    return bool(sks[0] & 0x40), (sks[1] << 8) | sks[2], sks[0] & 7 if sks[0] & 0x08 else -1


# -- VPD 0x83 and INQUIRY -----------------------------------------------------

def test_vpd83_has_relative_port_tpg_and_port_name_designators_of_each_port(server, ctl):
    for target, group in ((TA, 1), (TB, 2)):
        with login(server, target) as ini:
            d = port_designators(ini)
            proto, code_set, _, piv, _, ident = d[0x4]             # relative target port
            assert (proto, code_set, piv) == (5, 1, True)
            assert ident == struct.pack(">HH", 0, rel_id(ctl, target))
            proto, code_set, _, piv, _, ident = d[0x5]             # target port group
            assert (proto, code_set, piv) == (5, 1, True)
            assert ident == struct.pack(">HH", 0, group)
            proto, code_set, _, piv, _, ident = d[0x8]             # SCSI name string
            assert (proto, code_set, piv) == (5, 3, True)
            assert len(ident) % 4 == 0 and ident.rstrip(b"\x00") == f"{target},t,0x0001".encode()
            assert ident[len(ident.rstrip(b'\x00'))] == 0          # null-terminated
    assert rel_id(ctl, TA) != rel_id(ctl, TB)


def test_vpd83_of_a_device_in_no_device_group_has_no_tpg_designator(server, ctl):
    with login(server, TA) as ini:
        d = port_designators(ini, lun=1)
        assert 0x4 in d and 0x8 in d and 0x5 not in d


def test_inquiry_tpgs_is_implicit_and_explicit_only_in_a_device_group(server, ctl):
    with login(server, TB) as ini:
        assert ini.inquiry(0).check().data[5] >> 4 & 3 == 3
        assert ini.inquiry(1).check().data[5] >> 4 & 3 == 0


# -- REPORT TARGET PORT GROUPS ---------------------------------------------------

def test_rtpg_length_only_format_lists_groups_states_and_ports(server, ctl):
    with login(server, TB) as ini:
        r = rtpg(ini)
        assert r.status == GOOD
        hdr, groups = parse_rtpg(r.data, extended=False)
        assert hdr == {}
        assert [(g["id"], g["state"], g["pref"], g["ports"]) for g in groups] == [
            (1, 0x0, True, [rel_id(ctl, TA)]), (2, 0x1, False, [rel_id(ctl, TB)])]
        for g in groups:
            assert g["sup"] == 0xCF        # T O U S AN AO supported, LBA dependent not
        # a device in no device group: no descriptors
        r = rtpg(ini, lun=1)
        assert r.status == GOOD and r.data == bytes(4)


def test_rtpg_extended_format_has_header_with_transition_time(server, ctl):
    with login(server, TA) as ini:
        r = rtpg(ini, fmt=1)
        assert r.status == GOOD
        hdr, groups = parse_rtpg(r.data, extended=True)
        assert hdr == {"format": 1, "transition_time": 0}
        assert [g["id"] for g in groups] == [1, 2]
        # the allocation length truncates, the length field stays whole
        short = rtpg(ini, fmt=1, alloc=12)
        assert short.status == GOOD and short.data == r.data[:12]
        # an unknown format: INVALID FIELD IN CDB at byte 1, bit 7
        bad = rtpg(ini, fmt=2)
        assert bad.status == CHECK and sense3(bad) == (0x05, 0x24, 0x00)
        assert field_pointer(bad.sense) == (True, 1, 7)


# -- SET TARGET PORT GROUPS and the command filter --------------------------------

def test_stpg_to_standby_raises_ua_elsewhere_and_standby_port_refuses_io(server, ctl):
    with login(server, TA, "iqn.1993-08.org.debian:01:one") as ia, \
            login(server, TA, "iqn.1993-08.org.debian:01:two") as ia2, \
            login(server, TB, "iqn.1993-08.org.debian:01:one") as ib:
        assert ib.read10(0, 1).status == GOOD                  # nonoptimized serves I/O
        r = stpg(ia, [(0x2, 2)])
        assert r.status == GOOD, r.sense.hex()
        assert states(ia) == {1: 0x0, 2: 0x2}
        rt = parse_rtpg(rtpg(ia).data, False)[1]
        assert rt[1]["status"] == 1                            # altered by STPG
        # the nexus that asked gets no unit attention, every other one does
        assert ia.test_unit_ready(0).status == GOOD
        r = ia2.test_unit_ready(0)
        assert r.status == CHECK and sense3(r) == UA_STATE_CHANGED
        assert ia2.test_unit_ready(0).status == GOOD
        r = ib.read10(0, 1)
        assert r.status == CHECK and sense3(r) == UA_STATE_CHANGED
        # now the standby port: NOT READY, TARGET PORT IN STANDBY STATE ...
        for r in (ib.read10(0, 1), ib.write10(0, bytes(512)), ib.test_unit_ready(0)):
            assert r.status == CHECK and sense3(r) == (0x02, 0x04, 0x0B)
        # ... but what SPC-4 5.16.2.4.4 lists still works
        assert ib.inquiry(0).status == GOOD
        assert ib.inquiry(0, evpd=True, page=0x83).status == GOOD
        assert ib.report_luns().status == GOOD
        assert rtpg(ib).status == GOOD
        assert ib.scsi(bytes((0x1A, 0, 0x3F, 0, 255, 0)), 0, read_len=255).status == GOOD
        assert ib.read_capacity16(0).status == GOOD
        # the device in no group is not filtered, and the active port is not either
        assert ib.read10(0, 1, lun=1).status == GOOD
        assert ia.read10(0, 1).status == GOOD
        # STPG is served in standby: make the port active again from it
        assert stpg(ib, [(0x1, 2)]).status == GOOD
        assert ib.read10(0, 1).status == GOOD
        r = ia.test_unit_ready(0)
        assert r.status == CHECK and sense3(r) == UA_STATE_CHANGED


def test_stpg_refuses_bad_state_and_unknown_group_with_field_pointer_and_changes_nothing(
        server, ctl):
    with login(server, TA) as ini:
        before = states(ini)
        r = stpg(ini, [(0x2, 2), (0xF, 1)])                    # transitioning: not settable
        assert r.status == CHECK and sense3(r) == (0x05, 0x26, 0x00)
        assert field_pointer(r.sense) == (False, 8, 3)
        r = stpg(ini, [(0x2, 2), (0x4, 1)])                    # LBA dependent: not supported
        assert r.status == CHECK and field_pointer(r.sense) == (False, 8, 3)
        r = stpg(ini, [(0x2, 2), (0x2, 9)])                    # no group 9
        assert r.status == CHECK and sense3(r) == (0x05, 0x26, 0x00)
        assert field_pointer(r.sense) == (False, 10, -1)
        assert states(ini) == before                           # all or nothing
        assert ini.test_unit_ready(0).status == GOOD           # and no UA
        # on a device in no device group the command fails as a whole
        r = stpg(ini, [(0x2, 2)], lun=1)
        assert r.status == CHECK and sense3(r) == (0x05, 0x67, 0x0A)
        # a zero parameter list length changes nothing and succeeds
        cdb = bytes((0xA4, 0x0A)) + bytes(10)
        assert ini.scsi(cdb, 0).status == GOOD
        assert states(ini) == before


def test_stpg_offline_names_a_relative_port(server, ctl):
    with login(server, TA) as ia, login(server, TB) as ib:
        assert stpg(ia, [(0xE, rel_id(ctl, TB))]).status == GOOD
        assert states(ia)[2] == 0xE
        assert sense3(ib.read10(0, 1)) == UA_STATE_CHANGED
        r = ib.read10(0, 1)
        assert r.status == CHECK and sense3(r) == (0x02, 0x04, 0x12)
        assert ib.inquiry(0).status == GOOD
        r = stpg(ia, [(0xE, 999)])                             # no such port
        assert r.status == CHECK and field_pointer(r.sense) == (False, 6, -1)


def test_management_state_changes_reach_every_nexus_and_filter_each_state(server, ctl):
    with login(server, TA) as ia, login(server, TB) as ib:
        ctl.write(f"{DG}/tgb/state", "unavailable")
        assert sense3(ia.test_unit_ready(0)) == UA_STATE_CHANGED      # implicit: all nexuses
        assert sense3(ib.read10(0, 1)) == UA_STATE_CHANGED
        r = ib.read10(0, 1)
        assert r.status == CHECK and sense3(r) == (0x02, 0x04, 0x0C)
        r = ib.scsi(bytes((0x1A, 0, 0x3F, 0, 255, 0)), 0, read_len=255)   # not in unavailable
        assert sense3(r) == (0x02, 0x04, 0x0C)
        ctl.write(f"{DG}/tgb/state", "transitioning")      # no UA for transitioning
        r = ib.read10(0, 1)
        assert r.status == CHECK and sense3(r) == (0x02, 0x04, 0x0A)
        r = stpg(ia, [(0x0, 2)])                           # no STPG while it transitions
        assert r.status == CHECK and sense3(r) == (0x02, 0x04, 0x0A)
        assert ctl.read(f"{DG}/tgb/state").split()[0] == "transitioning"
        with pytest.raises(Failed):
            ctl.write(f"{DG}/tgb/state", "sideways")
        ctl.write(f"{DG}/tgb/state", "active")
        assert sense3(ib.test_unit_ready(0)) == UA_STATE_CHANGED
        assert ib.read10(0, 1).status == GOOD
        assert sense3(ia.test_unit_ready(0)) == UA_STATE_CHANGED
        assert parse_rtpg(rtpg(ia).data, False)[1][1]["status"] == 2    # implicit


# -- a real initiator's decoder ------------------------------------------------------

@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="libiscsi-bin not installed")
def test_iscsi_inq_decodes_our_device_identification_page(server, ctl):
    url = f"iscsi://127.0.0.1:{server.port}/{TA}/0"
    r = subprocess.run(["iscsi-inq", "-i", "iqn.2007-10.com.github:libiscsi-alua",
                        "-e", "1", "-c", "131", url],
                       capture_output=True, text=True, errors="replace", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "DEVICE_IDENTIFICATION" in out
    for want in ("RELATIVE_TARGET_PORT", "TARGET_PORT_GROUP", "SCSI_NAME_STRING",
                 f"{TA},t,0x0001", "Association:(1) TARGET_PORT", "Protocol Identifier:(5) ISCSI"):
        assert want in out, out
    assert "error" not in (out + r.stderr).lower()
