"""The management tree as SCST's scstadmin (SCST.pm, sysfs flavour) sees
it, driven through the FUSE mount the way scstadmin drives
/sys/kernel/scst_tgt: read every attribute, echo mgmt commands, apply a
config twice, write it back, close sessions, ALUA groups with `add`.
What SCST does is in docs/config.md ("Compatibility with scstadmin").
Every test runs a real uscstd on a free loopback port with --fuse."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from initiator import Initiator, InitiatorError
from mgmt_support import TARGET, Daemon, base_config, free_port  # type: ignore[import-not-found]

DRV = "targets/iscsi"
CHAP_TGT = "tgt1"          # not an IQN: SCST's iSCSI driver takes it, SCST.pm's tests use it
CHAP = f"""
TARGET_DRIVER iscsi {{
\tTARGET {CHAP_TGT} {{
\t\tIncomingUser "joe secretsecret1"
\t\tIncomingUser "ann secretsecret2"
\t\tOutgoingUser "tgt secretsecret3"
\t\tallowed_portal 127.0.0.*
\t\tLUN 0 null2
\t}}
}}
"""
INI = "iqn.1993-08.org.debian:01:compat"


def _config(tmp: Path, port: int) -> str:
    # the second TARGET_DRIVER iscsi block merges into the first
    text = base_config(tmp, port)
    i = text.index(f"\tTARGET {TARGET}")
    body = CHAP.split("TARGET_DRIVER iscsi {\n", 1)[1].rsplit("}\n", 1)[0]
    return text[:i] + body + text[i:]


@pytest.fixture
def fuse(tmp_path: Path):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mount cannot be tested here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    port = free_port()
    d = Daemon(tmp_path, _config(tmp_path, port), extra=["--fuse", str(mnt)], port=port)
    try:
        assert d.wait_for("uscstd: control socket"), d.output()
        if not d.wait_for("management tree mounted", 5):
            pytest.skip(f"FUSE mount failed here: {d.output()[-300:]}")
        assert "ready at" in d.output(), d.output()
        d.mnt = mnt          # type: ignore[attr-defined]
        yield d
    finally:
        d.stop()


def rd(d: Daemon, rel: str) -> str:
    return (d.mnt / rel).read_text()       # type: ignore[attr-defined]


def echo(d: Daemon, rel: str, text: str) -> None:
    """As scstadmin writes: open, write one line, close."""
    with open(d.mnt / rel, "w") as f:      # type: ignore[attr-defined]
        f.write(text + "\n")


def mode(d: Daemon, rel: str) -> int:
    return stat.S_IMODE(os.stat(d.mnt / rel).st_mode)     # type: ignore[attr-defined]


def login(d: Daemon, name: str = INI) -> Initiator:
    ini = Initiator(port=d.port, initiator_name=name)
    ini.connect()
    ini.login(TARGET)
    return ini


def wait_gone(path: Path, limit: float = 20.0) -> bool:
    """Poll (bounded) until path is gone: the session closes asynchronously."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not path.exists():
            return True
        time.sleep(0.05)
    return False


def test_every_attribute_reads_through_fuse_and_enabled_prints_the_value_alone(fuse) -> None:
    n = 0
    for root, dirs, files in os.walk(fuse.mnt):
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(root, x))]
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p) or not os.stat(p).st_mode & 0o444:
                continue
            with open(p) as fh:
                text = fh.read()
            assert text == "" or text.endswith("\n"), p
            n += 1
    assert n > 100
    assert rd(fuse, f"{DRV}/enabled") == "1\n"
    assert rd(fuse, f"{DRV}/{TARGET}/enabled") == "1\n"
    assert rd(fuse, f"{DRV}/{CHAP_TGT}/enabled") == "0\n"
    for name in ("threads", "setup_id", "max_tasklet_cmd", "trace_level", "measure_latency",
                 "version", "last_sysfs_mgmt_res"):
        assert (fuse.mnt / name).is_file(), name
    assert rd(fuse, "threads") == "1\n" and rd(fuse, "max_tasklet_cmd") == "10\n"


def test_chap_accounts_and_allowed_portals_are_one_file_per_value(fuse) -> None:
    t = f"{DRV}/{CHAP_TGT}"
    assert rd(fuse, f"{t}/IncomingUser") == "joe secretsecret1\n[key]\n"
    assert rd(fuse, f"{t}/IncomingUser1") == "ann secretsecret2\n[key]\n"
    assert rd(fuse, f"{t}/OutgoingUser") == "tgt secretsecret3\n[key]\n"
    assert rd(fuse, f"{t}/allowed_portal") == "127.0.0.*\n[key]\n"
    assert mode(fuse, f"{t}/IncomingUser") == 0o600 and mode(fuse, f"{t}/OutgoingUser") == 0o600
    assert mode(fuse, f"{t}/allowed_portal") == 0o644
    # absent when empty: the main target has none, nor has the driver
    assert not (fuse.mnt / DRV / TARGET / "IncomingUser").exists()
    assert not (fuse.mnt / DRV / "IncomingUser").exists()
    # scstadmin re-adds what a config lists: an identical value is no error
    echo(fuse, f"{DRV}/mgmt", f"add_target_attribute {CHAP_TGT} IncomingUser joe secretsecret1")
    assert not (fuse.mnt / t / "IncomingUser2").exists()
    echo(fuse, f"{DRV}/mgmt", f"del_target_attribute {CHAP_TGT} IncomingUser joe secretsecret1")
    assert rd(fuse, f"{t}/IncomingUser") == "ann secretsecret2\n[key]\n"
    assert not (fuse.mnt / t / "IncomingUser1").exists()
    echo(fuse, f"{t}/IncomingUser", "bob secretsecret5")          # writing replaces that value
    assert rd(fuse, f"{t}/IncomingUser") == "bob secretsecret5\n[key]\n"
    with pytest.raises(OSError):
        echo(fuse, f"{t}/IncomingUser", "nosecret")                 # refused, value kept
    assert rd(fuse, f"{t}/IncomingUser") == "bob secretsecret5\n[key]\n"
    echo(fuse, f"{DRV}/mgmt", "add_attribute IncomingUser disc secretsecret4")
    assert rd(fuse, f"{DRV}/IncomingUser") == "disc secretsecret4\n[key]\n"


def test_config_applied_twice_changes_nothing_and_write_back_round_trips_with_chap(fuse) -> None:
    r = json.loads(fuse.admin("--json", "config", str(fuse.config)).stdout)
    assert r["changes"] == 0, r["actions"]
    out = fuse.tmp / "written.conf"
    fuse.admin("write-config", str(out))
    first = out.read_text()
    for line in ('IncomingUser "joe secretsecret1"', 'IncomingUser "ann secretsecret2"',
                 'OutgoingUser "tgt secretsecret3"', "allowed_portal 127.0.0.*",
                 f"TARGET {CHAP_TGT}", "enabled 1", "enabled 0", f"portal 127.0.0.1:{fuse.port}"):
        assert line in first, line
    r = json.loads(fuse.admin("--json", "config", str(out)).stdout)
    assert r["changes"] == 0, r["actions"]
    fuse.admin("write-config", str(out))
    assert out.read_text() == first


def test_portal_is_not_a_clearable_key_and_the_last_listener_stays(fuse) -> None:
    usage = rd(fuse, f"{DRV}/mgmt")
    line = next(x for x in usage.splitlines() if x.startswith("The following target driver"))
    assert "portal" not in line and "IncomingUser" in line
    assert rd(fuse, f"{DRV}/portal") == f"127.0.0.1:{fuse.port}\n"         # no [key]
    with pytest.raises(OSError):
        echo(fuse, f"{DRV}/mgmt", f"del_attribute portal 127.0.0.1:{fuse.port}")
    assert rd(fuse, "last_sysfs_mgmt_res") == "-16\n"                       # EBUSY
    with login(fuse) as ini:                                               # still listening
        assert ini.test_unit_ready(0).status is not None


def test_force_close_closes_a_logged_in_session(fuse) -> None:
    sess = fuse.mnt / DRV / TARGET / "sessions" / INI
    with login(fuse) as ini:
        assert ini.test_unit_ready(0).status is not None
        assert sess.is_dir()
        echo(fuse, f"{DRV}/{TARGET}/sessions/{INI}/force_close", "1")
        assert wait_gone(sess), "the session outlived force_close"
        with pytest.raises((InitiatorError, OSError)):
            ini.test_unit_ready(0)


def test_del_target_with_a_logged_in_session_closes_it_instead_of_ebusy(fuse) -> None:
    with login(fuse) as ini:
        assert ini.test_unit_ready(0).status is not None
        echo(fuse, f"{DRV}/mgmt", f"del_target {TARGET}")
        assert not (fuse.mnt / DRV / TARGET).exists()
        with pytest.raises((InitiatorError, OSError)):
            ini.test_unit_ready(0)


def test_alua_groups_are_made_with_add_as_scstadmin_writes(fuse) -> None:
    echo(fuse, "device_groups/mgmt", "add dg1")
    echo(fuse, "device_groups/dg1/devices/mgmt", "add disk0")
    echo(fuse, "device_groups/dg1/target_groups/mgmt", "add local")
    echo(fuse, "device_groups/dg1/target_groups/local/mgmt", f"add {TARGET}")
    assert (fuse.mnt / "device_groups/dg1/target_groups/local" / TARGET).is_dir()
    echo(fuse, "device_groups/mgmt", "create dg2")                # uscst's older spelling
    assert (fuse.mnt / "device_groups/dg2").is_dir()
    r = json.loads(fuse.admin("--json", "config", "--dry-run", str(fuse.config)).stdout)
    assert r["changes"] == 0


def test_initiator_groups_have_scst_attributes_with_scst_defaults(fuse) -> None:
    g = f"{DRV}/{TARGET}/ini_groups/special"
    assert rd(fuse, f"{g}/addr_method") == "PERIPHERAL\n"
    assert rd(fuse, f"{g}/io_grouping_type") == "auto\n"
    assert rd(fuse, f"{g}/cpu_mask") == "1\n"
    assert rd(fuse, f"{g}/black_hole") == "0\n"
    echo(fuse, f"{g}/addr_method", "FLAT")
    assert rd(fuse, f"{g}/addr_method") == "FLAT\n[key]\n"
    with pytest.raises(OSError):
        echo(fuse, f"{g}/black_hole", "9")
    # a changed group attribute is saved in its GROUP block and applies back
    out = fuse.tmp / "written.conf"
    fuse.admin("write-config", str(out))
    first = out.read_text()
    assert "\t\tGROUP special {\n\t\t\taddr_method FLAT\n" in first
    echo(fuse, f"{g}/addr_method", "PERIPHERAL")
    r = json.loads(fuse.admin("--json", "config", str(out)).stdout)
    assert r["actions"] == [f"set {TARGET}/special addr_method FLAT"]
    assert rd(fuse, f"{g}/addr_method") == "FLAT\n[key]\n"
    assert json.loads(fuse.admin("--json", "config", str(out)).stdout)["changes"] == 0


def test_detected_thin_provisioning_has_no_key_and_handlers_list_their_own_parameters(fuse) -> None:
    assert "[key]" not in rd(fuse, "devices/disk0/thin_provisioned")
    assert rd(fuse, "devices/null1/dummy") == "0\n"
    nullio = rd(fuse, "handlers/vdisk_nullio/mgmt")
    fileio = rd(fuse, "handlers/vdisk_fileio/mgmt")
    assert "dummy" in nullio and "filename" not in nullio
    assert "filename" in fileio and "dummy" not in fileio
    echo(fuse, "handlers/vdisk_nullio/mgmt", "add_device nd size=1M; dummy=1")
    assert rd(fuse, "devices/nd/dummy") == "1\n[key]\n"
