"""ALUA management: the device_groups/ tree of scst_core.sysfs (mgmt
commands and attributes, errors), and DEVICE_GROUP sections of scst.conf
(tools/scst_conf.py): parse errors with file:line:column, apply as a
difference, write-back round trip. Every daemon test runs a real uscstd
on a free loopback port."""
from __future__ import annotations

from pathlib import Path

import pytest

from mgmt_support import TARGET, Daemon, base_config, free_port  # type: ignore[import-not-found]
from tools import scst_conf
from tools.scst_conf import ConfigError
from tools.uscstadmin import Ctl, Failed

DGS = "device_groups"
PEER = "iqn.2026-11.org.peer:remote"

ALUA = f"""DEVICE_GROUP dg1 {{
\tDEVICE disk0
\tDEVICE null1

\tTARGET_GROUP local {{
\t\tgroup_id 1
\t\tpreferred 1

\t\tTARGET {TARGET}
\t}}

\tTARGET_GROUP peer {{
\t\tgroup_id 2
\t\tstate standby

\t\tTARGET {PEER} {{
\t\t\trel_tgt_id 9
\t\t}}
\t}}
}}
"""


def start(tmp: Path, alua: str = ALUA) -> Daemon:
    port = free_port()
    d = Daemon(tmp, base_config(tmp, port) + alua, port=port)
    assert d.wait_for("uscstd: control socket"), d.output()
    assert "ready at" in d.output(), d.output()
    return d


@pytest.fixture
def alua_daemon(tmp_path: Path):
    d = start(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def value(ctl: Ctl, rel: str) -> str:
    return ctl.read(rel).split("\n")[0]


def errno_of(fn, *args) -> int:
    with pytest.raises(Failed) as ei:
        fn(*args)
    return ei.value.reply.get("errno", 0) if ei.value.reply else 0


def test_config_builds_the_device_groups_tree(alua_daemon: Daemon) -> None:
    ctl = Ctl(alua_daemon.sock)
    tree = ctl.tree(DGS)
    assert tree is not None
    tg = f"{DGS}/dg1/target_groups"
    assert value(ctl, f"{tg}/local/group_id") == "1"
    assert value(ctl, f"{tg}/local/state") == "active"
    assert value(ctl, f"{tg}/local/preferred") == "1"
    assert value(ctl, f"{tg}/peer/state") == "standby"
    assert value(ctl, f"{tg}/peer/{PEER}/rel_tgt_id") == "9"
    # a local target's rel_tgt_id is its own
    assert value(ctl, f"{tg}/local/{TARGET}/rel_tgt_id") == \
        value(ctl, f"targets/iscsi/{TARGET}/rel_tgt_id")
    listing = alua_daemon.admin("tree", f"{DGS}/dg1/devices").stdout
    assert "disk0" in listing and "null1" in listing and "null2" not in listing


def test_mgmt_commands_create_fill_and_delete_groups_and_refuse_bad_ones(
        alua_daemon: Daemon) -> None:
    ctl = Ctl(alua_daemon.sock)
    ctl.write(f"{DGS}/mgmt", "create dg2")
    ctl.write(f"{DGS}/dg2/devices/mgmt", "add null2")
    ctl.write(f"{DGS}/dg2/target_groups/mgmt", "create a")
    ctl.write(f"{DGS}/dg2/target_groups/mgmt", "create b")
    tg = f"{DGS}/dg2/target_groups/a"
    ctl.write(f"{tg}/group_id", "7")
    ctl.write(f"{tg}/state", "nonoptimized")
    ctl.write(f"{tg}/preferred", "1")
    ctl.write(f"{tg}/mgmt", f"add {TARGET}")
    assert value(ctl, f"{tg}/state") == "nonoptimized"
    assert ctl.read(f"{tg}/group_id") == "7\n[key]\n"
    assert TARGET in alua_daemon.admin("tree", tg).stdout
    # refusals, each leaving things as they were
    assert errno_of(ctl.write, f"{DGS}/mgmt", "create dg2") == 17                 # EEXIST
    assert errno_of(ctl.write, f"{DGS}/dg2/devices/mgmt", "add ghost") == 19      # ENODEV
    assert errno_of(ctl.write, f"{DGS}/dg2/devices/mgmt", "add null1") == 17      # in dg1
    assert errno_of(ctl.write, f"{DGS}/dg2/target_groups/b/group_id", "7") == 17  # used by a
    assert errno_of(ctl.write, f"{DGS}/dg2/target_groups/b/group_id", "0") == 22
    assert errno_of(ctl.write, f"{DGS}/dg2/target_groups/b/group_id", "65536") == 22
    assert errno_of(ctl.write, f"{tg}/state", "sideways") == 22
    assert errno_of(ctl.write, f"{tg}/preferred", "maybe") == 22
    assert errno_of(ctl.write, f"{DGS}/dg2/target_groups/b/mgmt", f"add {TARGET}") == 17
    assert errno_of(ctl.write, f"{tg}/{TARGET}/rel_tgt_id", "5") == 16            # local: EBUSY
    assert errno_of(ctl.write, f"{DGS}/mgmt", "bogus dg2") == 22
    assert value(ctl, f"{tg}/state") == "nonoptimized"
    # deletion, inner to outer and all at once
    ctl.write(f"{tg}/mgmt", f"del {TARGET}")
    assert TARGET not in alua_daemon.admin("tree", tg).stdout
    ctl.write(f"{DGS}/dg2/target_groups/mgmt", "del b")
    ctl.write(f"{DGS}/dg2/devices/mgmt", "del null2")
    assert errno_of(ctl.write, f"{DGS}/dg2/devices/mgmt", "del null2") == 2       # ENOENT
    ctl.write(f"{DGS}/mgmt", "del dg2")
    assert "dg2" not in alua_daemon.admin("tree", DGS).stdout


def test_write_config_round_trip_with_device_group_is_identical_with_zero_changes(
        alua_daemon: Daemon, tmp_path: Path) -> None:
    first = alua_daemon.admin("write-config").stdout
    assert ALUA in first
    out = tmp_path / "written.conf"
    out.write_text(first)
    r = alua_daemon.admin("config", str(out))
    assert r.stdout.strip().endswith("0 changes applied"), r.stdout
    assert alua_daemon.admin("write-config").stdout == first


def test_config_applies_only_the_alua_difference(alua_daemon: Daemon, tmp_path: Path) -> None:
    base = base_config(alua_daemon.tmp, alua_daemon.port)
    changed = ALUA.replace("state standby", "state unavailable").replace(
        "\tDEVICE null1\n", "\tDEVICE null1\n\tDEVICE null2\n")
    f = tmp_path / "changed.conf"
    f.write_text(base + changed)
    r = alua_daemon.admin("config", str(f))
    assert r.stdout.strip().endswith("2 changes applied"), r.stdout
    ctl = Ctl(alua_daemon.sock)
    assert value(ctl, f"{DGS}/dg1/target_groups/peer/state") == "unavailable"
    assert "null2" in alua_daemon.admin("tree", f"{DGS}/dg1/devices").stdout
    # without --force a group the file leaves out stays; with it, it goes
    f.write_text(base)
    assert alua_daemon.admin("config", str(f)).stdout.strip().endswith("0 changes applied")
    r = alua_daemon.admin("config", "--force", str(f))
    assert "del device group dg1" in r.stdout
    assert "dg1" not in alua_daemon.admin("tree", DGS).stdout
    assert "DEVICE_GROUP" not in alua_daemon.admin("write-config").stdout


def test_del_device_takes_it_out_of_its_device_group(alua_daemon: Daemon) -> None:
    ctl = Ctl(alua_daemon.sock)
    ctl.write(f"targets/iscsi/{TARGET}/luns/mgmt", "del 1")
    ctl.write(f"targets/iscsi/{TARGET}/ini_groups/special/luns/mgmt", "del 0")
    ctl.write("handlers/vdisk_nullio/mgmt", "del_device null1")
    listing = alua_daemon.admin("tree", f"{DGS}/dg1/devices").stdout
    assert "null1" not in listing and "disk0" in listing


def test_bad_device_group_config_is_refused_with_position_and_nothing_applied(
        alua_daemon: Daemon, tmp_path: Path) -> None:
    before = alua_daemon.admin("write-config").stdout
    base = base_config(alua_daemon.tmp, alua_daemon.port)
    f = tmp_path / "bad.conf"
    f.write_text(base + ALUA.replace("state standby", "state sideways"))
    r = alua_daemon.admin("config", str(f), check=False)
    assert r.returncode != 0
    line = base.count("\n") + ALUA[:ALUA.index("state standby")].count("\n") + 1
    assert f"{f}:{line}:9: expected an ALUA state" in r.stderr, r.stderr
    assert alua_daemon.admin("write-config").stdout == before


@pytest.mark.parametrize("text,where", [
    ("DEVICE_GROUP g {\n TARGET_GROUP t {\n  group_id 0\n }\n}\n",
     "x.conf:3:12: expected a group_id 1..65535, found '0'"),
    ("DEVICE_GROUP g {\n TARGET_GROUP t {\n  colour red\n }\n}\n",
     "x.conf:3:3: expected TARGET or one of group_id, state, preferred in TARGET_GROUP t, "
     "found 'colour'"),
    ("DEVICE_GROUP g {\n LUN 0 d\n}\n",
     "x.conf:2:2: expected 'DEVICE <name>' or 'TARGET_GROUP <name> {' in DEVICE_GROUP g"),
    ("DEVICE_GROUP g {\n TARGET_GROUP t {\n  TARGET x {\n   rel_tgt_id many\n  }\n }\n}\n",
     "x.conf:4:15: expected a rel_tgt_id 0..65535, found 'many'"),
    ("DEVICE_GROUP g {\n TARGET_GROUP t {\n  preferred perhaps\n }\n}\n",
     "x.conf:3:13: expected 0 or 1 for preferred, found 'perhaps'"),
    ("DEVICE_GROUP g {\n}\nDEVICE_GROUP g {\n}\n",
     "x.conf:3:1: device group g defined twice (first at line 1, column 1)"),
])
def test_device_group_syntax_errors_name_file_line_column(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as ei:
        scst_conf.parse(text, "x.conf")
    assert str(ei.value).startswith(where), str(ei.value)


def test_device_group_references_are_validated() -> None:
    schema = {"handlers": {"vdisk_nullio": {"params": ["size"], "live": [], "create_only": []}},
              "drivers": {}, "lun_attrs": ["read_only"]}
    head = "HANDLER vdisk_nullio {\n DEVICE n1\n}\n"
    cases = [
        ("DEVICE_GROUP g {\n DEVICE ghost\n}\n",
         "x.conf:5:9: DEVICE_GROUP g names device 'ghost', which is neither in this file nor running"),
        ("DEVICE_GROUP g {\n DEVICE n1\n}\nDEVICE_GROUP h {\n DEVICE n1\n}\n",
         "x.conf:8:9: device n1 is in DEVICE_GROUPs g and h; it may be in one only"),
        ("DEVICE_GROUP g {\n TARGET_GROUP a {\n  group_id 3\n }\n TARGET_GROUP b {\n"
         "  group_id 3\n }\n}\n",
         "x.conf:9:3: group_id 3 of TARGET_GROUP b is used by TARGET_GROUP a too"),
        ("DEVICE_GROUP g {\n TARGET_GROUP a {\n  TARGET t\n }\n TARGET_GROUP b {\n"
         "  TARGET t\n }\n}\n",
         "x.conf:9:3: target t is in TARGET_GROUPs a and b of DEVICE_GROUP g"),
    ]
    for text, where in cases:
        with pytest.raises(ConfigError) as ei:
            scst_conf.validate(scst_conf.parse(head + text, "x.conf"), schema)
        assert str(ei.value).startswith(where), str(ei.value)


def test_state_names_are_normalised_and_written_in_scstadmin_layout() -> None:
    cfg = scst_conf.parse("DEVICE_GROUP g {\n DEVICE d\n TARGET_GROUP t {\n"
                          "  state active/optimized\n  TARGET x\n }\n}\n")
    assert cfg.dgroups["g"].tgroups["t"].attrs["state"].values == ["active"]
    text = scst_conf.write(cfg)
    assert "DEVICE_GROUP g {\n\tDEVICE d\n\n\tTARGET_GROUP t {\n\t\tstate active\n\n" \
           "\t\tTARGET x\n\t}\n}\n" in text
    assert scst_conf.write(scst_conf.parse(text)) == text
