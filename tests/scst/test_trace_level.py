"""scst_core.debug: SCST's trace_level syntax and its mapping onto tracepoints."""
from __future__ import annotations

import pytest

from kshim import tracepoint
from kshim.err import EINVAL
from kshim.kobject import kobject_create_and_add, kobject_del
from kshim.sysfs import sysfs_read, sysfs_root, sysfs_write
from iscsi_scst import iscsi  # noqa: F401  (declares the iscsi_* events)
from scst_core import debug, targ  # noqa: F401  (targ declares the scst_* events)
from scst_core.debug import (TRACE_ALL_MASK, TRACE_DEFAULT_MASK, TRACE_TOKENS,
                             scst_debug_sysfs_init, scst_trace_events, scst_write_trace)


@pytest.mark.parametrize("cmd,before,after", [
    ("all", 0, TRACE_ALL_MASK),
    ("none", TRACE_ALL_MASK, 0),
    ("default", 0, TRACE_DEFAULT_MASK),
    ("value 0x800", 0, 0x800),
    ("value 2048", 0, 0x800),
    ("add scsi", 0x1, 0x801),
    ("del scsi", 0x801, 0x1),
    ("add mgmt\n", 0, 0x1000),
])
def test_trace_level_commands_compute_scst_masks(cmd, before, after):
    assert scst_write_trace(cmd, before) == after


@pytest.mark.parametrize("cmd", ["", "add", "add nosuch", "value", "value x", "value -1",
                                 "all now", "set scsi"])
def test_bad_trace_level_commands_are_refused(cmd):
    assert scst_write_trace(cmd, 0) == -EINVAL


def test_scsi_token_selects_the_command_state_events():
    names = scst_trace_events(TRACE_TOKENS["scsi"][0])
    assert "scst_cmd_state" in names and "scst_handler_exec" in names
    assert "iscsi_pdu_rx" not in names
    assert scst_trace_events(0) == []


def test_trace_level_file_selects_events_and_shows_tokens():
    root = kobject_create_and_add("scst_tl_test", sysfs_root)
    try:
        scst_debug_sysfs_init(root)
        assert sysfs_write("/scst_tl_test/trace_level", "none") > 0
        assert sysfs_write("/scst_tl_test/trace_level", "add scsi") > 0
        assert sysfs_write("/scst_tl_test/trace_level", "add data_received") > 0
        assert sysfs_read("/scst_tl_test/trace_level").startswith("scsi | data_received\n")
        sel = tracepoint.selected_events()
        assert "scst_cmd_state" in sel and "iscsi_pdu_rx" in sel and "softirq" not in sel
        assert sysfs_write("/scst_tl_test/trace_level", "add bogus") == -EINVAL
        assert "scsi | data_received" in sysfs_read("/scst_tl_test/trace_level")
    finally:
        tracepoint.set_event(None)
        debug.trace_flag = 0
        kobject_del(root)
