"""tools/testing.py, the embeddable target, as an initiator developer uses it:
faults scripted in plain words, real initiators over loopback TCP.

The worked example of docs/fault-injection.md: QEMU's iscsi driver gets
TASK SET FULL for a WRITE, retries it, and the data lands.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from initiator import ConnectionClosed, Initiator
from tools.testing import UscstTarget, parse_phrase

BS = 512


def _login(t: UscstTarget) -> Initiator:
    ini = Initiator(host=t.host, port=t.port, timeout=10.0)
    ini.connect()
    ini.login(t.iqn)
    return ini


def _qemu_io(t: UscstTarget, cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "raw", "-c", cmd, t.url], capture_output=True,
                          text=True, timeout=120)


def test_qemu_retries_a_write_answered_task_set_full_and_the_data_lands() -> None:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed")
    with UscstTarget() as t:
        t.script("answer TASK SET FULL to the next 2 WRITEs")
        w = _qemu_io(t, "write -P 0x5a 0 64k")
        if "Unknown protocol" in w.stderr or "iscsi" in w.stderr and "not" in w.stderr:
            pytest.skip(f"qemu-io has no iscsi driver: {w.stderr.strip()}")
        assert w.returncode == 0 and "wrote 65536/65536" in w.stdout, w.stdout + w.stderr
        # Two answers of TASK SET FULL, yet the write succeeded: QEMU retried it.
        assert t.injected("fail_scsi_cmd") == 2
        r = _qemu_io(t, "read -P 0x5a 0 64k")
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def test_third_write_fails_with_medium_error_at_its_first_lba() -> None:
    with UscstTarget() as t:
        t.script("fail the 3rd WRITE with MEDIUM ERROR at its first LBA")
        ini = _login(t)
        try:
            results = [ini.write10(lba, b"\x01" * BS) for lba in (10, 20, 30, 40)]
        finally:
            ini.logout()
            ini.close()
        assert [r.ok for r in results] == [True, True, False, True]
        s = results[2].sense
        assert (s[0] & 0x80, s[2] & 0x0F, s[12], s[13]) == (0x80, 0x03, 0x0C, 0x00), s.hex()
        assert int.from_bytes(s[3:7], "big") == 30
        assert t.injected("fail_scsi_cmd") == 1


def test_connection_drops_after_the_second_data_out() -> None:
    with UscstTarget() as t:
        ini = _login(t)
        assert ini.write10(0, b"\x02" * (4 * BS), immediate=False).ok   # fault not yet set
        t.script("drop the connection after the 2nd Data-Out")
        oks = []
        with pytest.raises((ConnectionClosed, OSError, TimeoutError)):
            for lba in (0, 8, 16):             # one Data-Out each: the 3rd one drops
                oks.append(ini.write10(lba, b"\x03" * (4 * BS), immediate=False).ok)
        assert oks == [True, True]
        ini.close()
        assert t.injected("fail_iscsi_pdu") == 1
        again = _login(t)
        assert again.read10(0, 4).ok
        again.logout()
        again.close()


def test_delayed_reads_do_not_fail() -> None:
    with UscstTarget() as t:
        t.script("delay every READ by 20 ms")
        ini = _login(t)
        try:
            assert all(ini.read10(lba, 8).ok for lba in range(0, 80, 8))
        finally:
            ini.logout()
            ini.close()
        assert t.injected("fail_scsi_cmd") == 10


@pytest.mark.parametrize("phrase", ["fail the WRITE", "answer OK to the next 2 commands",
                                    "delay every READ by soon"])
def test_unknown_phrase_names_the_phrases_understood(phrase: str) -> None:
    with pytest.raises(ValueError, match="phrases: fail the Nth"):
        parse_phrase(phrase)
