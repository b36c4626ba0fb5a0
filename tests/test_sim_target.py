"""tools.sim_target: our iSCSI target boots in-process under the sim engine,
serves a login and a READ over a sim connection, and replays by seed."""
from __future__ import annotations

from initiator import Pdu, build_pdu, encode_keys, pack_login_req, pack_scsi_cmd

from kshim import bug
from kshim.engine_sim import SimPeer, Simulation, teardown_problems
from tools import boot
from tools.boot import BootConfig
from tools.sim_target import DEFAULT_ADDR, DEFAULT_IQN, SimTarget, boot_target, stop_target

ISID = b"\x80\x12\x34\x56\x78\x9a"


def _recv_pdu(p: SimPeer, buf: bytearray) -> Pdu:
    while True:
        if len(buf) >= 48:
            dsl = int.from_bytes(buf[5:8], "big")
            total = 48 + buf[4] * 4 + ((dsl + 3) & ~3)
            if len(buf) >= total:
                raw = bytes(buf[:total])
                del buf[:total]
                return Pdu.parse(raw)
        chunk = p.recv(1 << 16)
        assert chunk, "target closed the connection"
        buf += chunk


def _login_and_read(sim: Simulation, t: SimTarget, out: list) -> None:
    p = sim.connect(t.addr)
    buf = bytearray()
    keys = encode_keys({"InitiatorName": "iqn.2026-01.org.uscst.test:ini", "TargetName": t.iqn,
                        "SessionType": "Normal", "HeaderDigest": "None",
                        "DataDigest": "None"})
    p.send(build_pdu(pack_login_req(isid=ISID, itt=1, cmd_sn=1, exp_stat_sn=0, csg=1, nsg=3,
                                    transit=True, dsl=len(keys)), keys))
    rsp = _recv_pdu(p, buf)
    out.append((rsp.name, rsp.status_class))
    read10 = bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0])      # LBA 1, one block
    p.send(build_pdu(pack_scsi_cmd(itt=2, cmd_sn=1, exp_stat_sn=rsp.stat_sn + 1, cdb=read10,
                                   read=True, edtl=t.blocksize)))
    data = b""
    while True:
        pdu = _recv_pdu(p, buf)
        data += pdu.data
        if pdu.name != "Data-In" or pdu.flags & 0x01:        # S bit: status with the data
            break
    out.append(data)
    p.close()


def _run(seed: int) -> tuple[Simulation, list]:
    bug.reset_reports()
    sim = Simulation(seed)
    t = boot_target(sim)
    t.disk[512:1024] = b"\xa5" * 512
    out: list = []
    sim.spawn(lambda: _login_and_read(sim, t, out), "initiator")
    sim.run(max_virtual_s=60)
    stop_target(sim)
    return sim, out


def test_sim_target_logs_in_and_reads_lba1_from_the_in_memory_disk_seed_7():
    sim, out = _run(7)
    assert out == [("Login-Response", 0), b"\xa5" * 512]
    assert teardown_problems(sim) == []


def test_sim_target_run_replays_by_seed_seed_7_and_8():
    a, _ = _run(7)
    b, _ = _run(7)
    c, _ = _run(8)
    assert a.trace_hash() == b.trace_hash() != c.trace_hash()


def test_boot_run_on_the_sim_engine_loads_and_unloads_the_default_target_seed_0():
    bug.reset_reports()
    cfg = BootConfig(iqn=DEFAULT_IQN, nullio=True, size=1 << 20, portals=[DEFAULT_ADDR])
    sim = Simulation(0)
    assert boot.run(cfg, engine="sim", sim=sim) == 0
    assert boot.failures == [] and bug.reports == [] and teardown_problems(sim) == []
    bad = BootConfig(iqn=DEFAULT_IQN, disk="/sim/missing-dir/x", disk_exists=True, size=0,
                     portals=[DEFAULT_ADDR])
    assert boot.run(bad, engine="sim", sim=Simulation(0)) < 0 and boot.failures
