"""End to end: libiscsi's SCSI conformance suite (iscsi-test-cu) against
uscstd's vdisk handlers.

Runs the SBC/SPC suites that docs/conformance.md records as passing, one
iscsi-test-cu invocation per suite (or per test, where a suite has a test
that cannot pass yet and the doc says why), against a 64 MiB file LUN and,
for the removable-medium suites, a LUN configured `removable 1`. A suite
that libiscsi reports as skipped counts as passed by CUnit, so each run
must also show no "[SKIPPED]" line for the command the suite is about;
the lists below hold only suites whose commands uscst implements.

Bounded: each invocation has its own timeout and the whole module a
deadline well under a minute on the 2-core CI machine.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

DEADLINE_S = 55.0
ONE_RUN_TIMEOUT_S = 30.0

# Suites (or single tests) that pass against the default fileio LUN
# (thin provisioned: the backing file can punch holes).
DEFAULT_LUN_SPECS = (
    "SCSI.CompareAndWrite",
    "SCSI.GetLBAStatus.Simple",
    "SCSI.GetLBAStatus.BeyondEol",
    "SCSI.Inquiry",
    "SCSI.Mandatory",
    "SCSI.ModeSense6",
    "SCSI.OrWrite",
    "SCSI.Prefetch10",
    "SCSI.Prefetch16",
    "SCSI.PrinReadKeys",
    "SCSI.PrinServiceactionRange",
    "SCSI.PrinReportCapabilities",
    "SCSI.ProutRegister",
    "SCSI.ProutReserve",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.ReadCapacity10",
    "SCSI.ReadCapacity16",
    "SCSI.ReadDefectData10",
    "SCSI.ReadDefectData12",
    "SCSI.ReadOnly",
    "SCSI.ReportSupportedOpcodes",
    "SCSI.Reserve6.Simple",
    "SCSI.Reserve6.2Initiators",
    "SCSI.Reserve6.Logout",
    "SCSI.Reserve6.ITNexusLoss",
    "SCSI.Reserve6.TargetColdReset",
    "SCSI.Sanitize.BlockErase",
    "SCSI.Sanitize.BlockEraseReserved",
    "SCSI.Sanitize.CryptoErase",
    "SCSI.Sanitize.CryptoEraseReserved",
    "SCSI.Sanitize.ExitFailureMode",
    "SCSI.Sanitize.InvalidServiceAction",
    "SCSI.Sanitize.Overwrite",
    "SCSI.Sanitize.OverwriteReserved",
    "SCSI.Sanitize.Readonly",
    "SCSI.Sanitize.Reservations",
    "SCSI.TestUnitReady",
    "SCSI.Unmap",
    "SCSI.Verify10",
    "SCSI.Verify12",
    "SCSI.Verify16",
    "SCSI.Write10",
    "SCSI.Write12",
    "SCSI.Write16",
    "SCSI.WriteAtomic16",
    "SCSI.WriteSame10",
    "SCSI.WriteSame16",
    "SCSI.WriteVerify10",
    "SCSI.WriteVerify12",
    "SCSI.WriteVerify16",
)

# Suites that need a removable medium.
REMOVABLE_LUN_SPECS = (
    "SCSI.PreventAllow.Simple",
    "SCSI.PreventAllow.Eject",
    "SCSI.PreventAllow.ITNexusLoss",
    "SCSI.PreventAllow.Logout",
    "SCSI.PreventAllow.ColdReset",
    "SCSI.PreventAllow.2ITNexuses",
    "SCSI.StartStopUnit",
    "SCSI.NoMedia",
)

# "[SKIPPED]" reasons that mean the suite did not test what it is about.
_NOT_IMPLEMENTED = re.compile(r"\[SKIPPED\][^\n]*(not implemented|not supported|Not Supported"
                              r"|fully provisioned|not removable)", re.I)


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def _summary(out: str) -> tuple[int, int, int]:
    """(tests run, passed, failed) from CUnit's Run Summary."""
    m = re.search(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    assert m, f"no CUnit summary in:\n{out[-3000:]}"
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


def _run_specs(exe: str, url: str, specs: tuple[str, ...], deadline: float) -> list[str]:
    failures = []
    for spec in specs:
        left = deadline - time.monotonic()
        assert left > 0, f"conformance runs exceeded {DEADLINE_S} s before {spec}"
        p = subprocess.run([exe, "--dataloss", "--allow-sanitize", "-t", spec, url],
                           capture_output=True, text=True, errors="replace",
                           timeout=min(ONE_RUN_TIMEOUT_S, left), stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        ran, passed, failed = _summary(out)
        skipped = _NOT_IMPLEMENTED.search(out)
        if ran == 0 or failed or passed != ran or skipped:
            fails = "\n".join(ln for ln in out.splitlines() if "FAILED" in ln or "SKIPPED" in ln)
            failures.append(f"{spec}: ran {ran}, passed {passed}, failed {failed}\n{fails[-2000:]}")
    return failures


def test_libiscsi_sbc_spc_suites_pass_on_fileio_lun(uscstd) -> None:
    exe = _need("iscsi-test-cu")
    deadline = time.monotonic() + DEADLINE_S * 0.75
    srv = uscstd(debug=False)
    failures = _run_specs(exe, srv.url, DEFAULT_LUN_SPECS, deadline)
    assert not failures, "\n\n".join(failures)


def test_libiscsi_removable_medium_suites_pass(uscstd, tmp_path: Path) -> None:
    exe = _need("iscsi-test-cu")
    deadline = time.monotonic() + DEADLINE_S * 0.25
    img = tmp_path / "removable.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    conf = tmp_path / "removable.conf"
    conf.write_text(
        "HANDLER vdisk_fileio {\n"
        f"    DEVICE disk0 {{\n        filename {img}\n        removable 1\n    }}\n"
        "}\n"
        "TARGET_DRIVER iscsi {\n    enabled 1\n"
        "    TARGET iqn.2026-11.org.uscst:default {\n        LUN 0 disk0\n        enabled 1\n"
        "    }\n}\n")
    srv = uscstd("--config", str(conf), disk=None, size=None, debug=False)
    failures = _run_specs(exe, srv.url, REMOVABLE_LUN_SPECS, deadline)
    assert not failures, "\n\n".join(failures)
