"""tools/scst_conf.py without a daemon: the parser's positions and
messages, validation against a schema, the writer, and the planner's
difference on hand-made running configurations."""
from __future__ import annotations

import pytest

from tools import scst_conf
from tools.scst_conf import ConfigError, parse, plan, validate, write

SCHEMA = {
    "handlers": {
        "vdisk_fileio": {"params": ["filename", "size", "blocksize", "nv_cache", "read_only", "usn"],
                         "live": ["usn"], "create_only": ["size"]},
        "vdisk_nullio": {"params": ["size", "blocksize", "usn"], "live": ["usn", "size"],
                         "create_only": []},
    },
    "drivers": {"iscsi": {"attrs": ["enabled"], "multi": ["IncomingUser", "OutgoingUser", "portal"],
                          "target_params": [], "target_attrs": ["enabled", "rel_tgt_id", "HeaderDigest"],
                          "target_multi": ["IncomingUser", "OutgoingUser", "allowed_portal"]}},
    "lun_attrs": ["read_only"],
}

GOOD = """# a comment
HANDLER vdisk_fileio {
    DEVICE d0 {
        filename "/srv/my disk.img"   # quoted, with a space
        nv_cache 1
    }
}
HANDLER vdisk_nullio {
    DEVICE n1
}
TARGET_DRIVER iscsi {
    enabled 1
    IncomingUser "joe secret12345"
    IncomingUser "ann secret67890"
    TARGET iqn.2026-11.org.uscst:t1 {
        HeaderDigest CRC32C,None
        LUN 0 d0
        LUN 1 n1 {
            read_only 1
        }
        GROUP hosts {
            LUN 0 n1
            INITIATOR iqn.1993-08.org.debian:*
        }
        enabled 1
    }
}
DEVICE_GROUP dg {
    DEVICE d0
    TARGET_GROUP tg {
        group_id 7
        TARGET iqn.2026-11.org.uscst:t1
    }
}
"""


def err(text: str, schema: dict | None = None) -> str:
    with pytest.raises(ConfigError) as ei:
        cfg = parse(text, "x.conf")
        if schema is not None:
            validate(cfg, schema)
    return str(ei.value)


def test_parse_reads_devices_targets_luns_groups_and_quoted_values() -> None:
    cfg = parse(GOOD, "good.conf")
    assert cfg.devices["d0"].attrs["filename"].values == ["/srv/my disk.img"]
    assert cfg.devices["n1"].handler == "vdisk_nullio" and not cfg.devices["n1"].attrs
    drv = cfg.drivers["iscsi"]
    assert drv.attrs["IncomingUser"].values == ["joe secret12345", "ann secret67890"]
    t = drv.targets["iqn.2026-11.org.uscst:t1"]
    assert (t.luns[1].device, t.luns[1].read_only) == ("n1", True)
    assert t.groups["hosts"].initiators == {"iqn.1993-08.org.debian:*": (23, 13)}
    assert len(cfg.alua) == 1
    validate(cfg, SCHEMA)


def test_write_then_parse_then_write_is_identical() -> None:
    once = write(parse(GOOD))
    assert write(parse(once)) == once
    assert '"/srv/my disk.img"' in once and "\tDEVICE_GROUP" not in once and "DEVICE_GROUP dg {" in once


@pytest.mark.parametrize("text,where", [
    ("HANDLER vdisk_fileio {\n  DEVICE d0 {\n",
     "x.conf:3:1: expected '}' to close DEVICE d0 block opened at line 2, column 13; found end of file"),
    ("}\n", "x.conf:1:1: unexpected '}' with no open block"),
    ("HANDLER x {\n}\nBOGUS y {\n}\n",
     "x.conf:3:1: expected HANDLER, TARGET_DRIVER, DEVICE_GROUP or one of cluster_listen, "
     "cluster_peers, max_tasklet_cmd, setup_id, threads, found 'BOGUS'"),
    ('TARGET_DRIVER iscsi {\n  IncomingUser "joe\n}\n', "x.conf:2:16: unterminated quoted string"),
    ("TARGET_DRIVER iscsi {\n TARGET t {\n  LUN x d0\n }\n}\n",
     "x.conf:3:7: expected a LUN number 0..16383, found 'x'"),
    ("TARGET_DRIVER iscsi {\n TARGET t {\n  LUN 0 d0 {\n   nv_cache 1\n  }\n }\n}\n",
     "x.conf:4:4: unknown LUN attribute 'nv_cache' (expected: read_only)"),
    ("HANDLER h {\n DEVICE a\n DEVICE a\n}\n",
     "x.conf:3:2: device a defined twice (first at line 2, column 2)"),
    ("HANDLER h {\n DEVICE a {\n  size\n }\n}\n", "x.conf:3:3: expected a value after attribute 'size'"),
])
def test_syntax_errors_name_file_line_column_and_what_was_expected(text: str, where: str) -> None:
    assert err(text).startswith(where)


def test_unknown_names_and_bad_values_are_refused_by_validate() -> None:
    assert err("HANDLER vdisk_tape {\n}\n", SCHEMA).startswith(
        "x.conf:1:1: unknown handler 'vdisk_tape' (expected one of: vdisk_fileio, vdisk_nullio)")
    assert err("HANDLER vdisk_nullio {\n DEVICE a {\n  colour red\n }\n}\n", SCHEMA).startswith(
        "x.conf:3:3: unknown attribute 'colour' for DEVICE a of HANDLER vdisk_nullio")
    assert err("HANDLER vdisk_nullio {\n DEVICE a {\n  size lots\n }\n}\n", SCHEMA).startswith(
        "x.conf:3:3: expected a size such as 10G for size, found 'lots'")
    assert err("TARGET_DRIVER iscsi {\n TARGET t {\n  HeaderDigest MD5\n }\n}\n", SCHEMA).startswith(
        "x.conf:3:3: expected None, CRC32C or 'CRC32C,None' for HeaderDigest")
    assert err("TARGET_DRIVER iscsi {\n TARGET t {\n  LUN 0 ghost\n }\n}\n", SCHEMA).startswith(
        "x.conf:3:9: LUN 0 names device 'ghost', which is neither in this file nor running")
    assert err("HANDLER vdisk_fileio {\n DEVICE a {\n  size 1G\n }\n}\n", SCHEMA).startswith(
        "x.conf:2:2: DEVICE a of HANDLER vdisk_fileio needs a 'filename' attribute")


@pytest.mark.parametrize("attr,message", [
    ("blocksize 8192", "expected a power of two from 512 to 4096 for blocksize, found '8192'"),
    ("blocksize 768", "expected a power of two from 512 to 4096 for blocksize, found '768'"),
    ("physical_blocksize 3000",
     "expected a power of two from 512 to 65536 for physical_blocksize, found '3000'"),
    ("sanitize_rate 0", "expected a number from 1 to 1048576 for sanitize_rate, found '0'"),
    ("sanitize_rate -1", "expected a number for sanitize_rate, found '-1'"),
])
def test_device_values_out_of_the_handlers_range_are_refused_at_their_line(attr: str,
                                                                           message: str) -> None:
    schema = {**SCHEMA, "handlers": {"vdisk_nullio": {
        "params": ["size", "blocksize", "physical_blocksize", "sanitize_rate"], "live": [],
        "create_only": []}}}
    text = f"HANDLER vdisk_nullio {{\n DEVICE a {{\n  {attr}\n }}\n}}\n"
    assert err(text, schema) == f"x.conf:3:3: {message}"


def test_plan_of_identical_configs_is_empty_and_of_a_new_lun_is_one_add() -> None:
    cfg = parse(GOOD)
    running = parse(GOOD)
    for d in running.devices.values():
        d.shown = {k: a.values[0] for k, a in d.attrs.items()}
    for t in running.drivers["iscsi"].targets.values():
        t.shown = {k: a.values[0] for k, a in t.attrs.items()}
    running.drivers["iscsi"].shown = {"enabled": "1"}
    assert plan(cfg, running, SCHEMA) == []
    more = parse(GOOD.replace("        LUN 0 d0\n", "        LUN 0 d0\n        LUN 5 n1\n"))
    acts = plan(more, running, SCHEMA)
    assert [(a.path, a.text) for a in acts] == [
        ("/targets/iscsi/iqn.2026-11.org.uscst:t1/luns/mgmt", "add n1 5")]
    # removing it from the file removes it only with force
    assert plan(cfg, parse_running_with(more), SCHEMA) == []
    assert [a.text for a in plan(cfg, parse_running_with(more), SCHEMA, force=True)] == ["del 5"]


def parse_running_with(cfg_like: scst_conf.Config) -> scst_conf.Config:
    r = parse(write(cfg_like))
    for d in r.devices.values():
        d.shown = {k: a.values[0] for k, a in d.attrs.items()}
    for t in r.drivers["iscsi"].targets.values():
        t.shown = {k: a.values[0] for k, a in t.attrs.items()}
    r.drivers["iscsi"].shown = {"enabled": "1"}
    return r


def test_new_target_is_added_configured_and_enabled_last() -> None:
    running = parse("HANDLER vdisk_nullio {\n DEVICE n1\n}\n")
    running.drivers["iscsi"] = scst_conf.Driver("iscsi", shown={"enabled": "1"})
    cfg = parse("HANDLER vdisk_nullio {\n DEVICE n1\n}\nTARGET_DRIVER iscsi {\n TARGET iqn.2026-11.a:b {\n"
                "  enabled 1\n  LUN 0 n1\n  GROUP g {\n   INITIATOR iqn.x:*\n  }\n }\n}\n")
    texts = [a.text for a in plan(cfg, running, SCHEMA)]
    assert texts == ["add_target iqn.2026-11.a:b", "add n1 0", "create g", "add iqn.x:*", "1"]
