"""Run the tutorial's vdisk_pattern under the sim engine, from one seed.

Host-side script (not kernel idiom): it boots the target with
tools.boot.run(..., engine="sim") exactly as uscstd boots it on the trio
engine (scst, scst_vdisk, iscsi_scst, then the module), maps a pattern
device as LUN 1 from a configuration text, and lets one simulated
initiator log in, read LUN 1 and check every block. The same seed gives
the same run, event for event: the last line's trace hash says so.

    python -m docs.examples.pattern_sim --seed 7 [--module PATH]   (from the repo root)

Exit status 0 when every block read back is the pattern.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kshim.engine_sim import Simulation
from tools import boot
from tools.sim.channel import Channel
from tools.sim.initiator import InitiatorSession
from tools.sim.scenarios import cdb_rw

IQN = "iqn.2026-11.org.uscst:sim"
ADDR = ("10.0.0.1", 3260)
BLOCKS = 2048
SEED_VALUE = 0x1234
CONFIG = f"""HANDLER vdisk_pattern {{
\tDEVICE pat0 {{
\t\tblocks {BLOCKS}
\t\tseed {SEED_VALUE}
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {IQN} {{
\t\tLUN 1 pat0
\t\tenabled 1
\t}}
}}
"""


def pattern(lba: int) -> bytes:
    return (lba.to_bytes(8, "big") + SEED_VALUE.to_bytes(8, "big")) * 32


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pattern_sim", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--module", default=str(Path(__file__).with_name("vdisk_pattern.py")))
    args = p.parse_args(argv)
    sim = Simulation(args.seed)
    result = {"bad": 0, "read": 0, "errors": 0}

    def initiator() -> None:
        sess = InitiatorSession(IQN, isid=bytes([0x80]) + sim.rng.randbytes(5))
        ch = Channel(sess.connection(0), sim.connect(ADDR))
        ch.login()
        for _ in range(4):                        # unit attentions first
            tur = ch.submit(bytes(6), lun=1)
            ch.wait([tur])
            if tur.good:
                break
        for lba in range(0, BLOCKS, 64):
            cmd = ch.submit(cdb_rw(False, lba, 64, sim.rng.random() < 0.5), lun=1,
                            read_len=64 * 512)
            ch.wait([cmd])
            if not cmd.good:
                result["errors"] += 1
                continue
            data = bytes(cmd.data)
            result["read"] += 64
            result["bad"] += sum(data[i * 512:(i + 1) * 512] != pattern(lba + i)
                                 for i in range(64))
        ch.logout()

    def drive(s: Simulation) -> None:
        s.spawn(initiator, "initiator")
        s.run()

    cfg = boot.BootConfig(iqn=IQN, portals=[ADDR], config_text=CONFIG,
                          config_filename="pattern_sim.conf", modules=[args.module],
                          debug=True, log_level="err")
    ret = boot.run(cfg, "sim", sim=sim, drive=drive)
    ok = ret == 0 and result["errors"] == 0 and result["bad"] == 0 and result["read"] == BLOCKS
    why = "; ".join(boot.failures) or (f"{result['errors']} commands failed, "
                                        f"{result['bad']} blocks not the pattern")
    print(f"seed={args.seed} events={sim.events} read={result['read']} bad={result['bad']} "
          f"errors={result['errors']} trace={sim.trace_hash()} "
          f"verdict={'ok' if ok else 'FAIL: ' + why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
