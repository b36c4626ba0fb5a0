"""kshim.printk: levels, the log buffer, _once, ratelimits, dev_* prefixes, hex dumps."""
from __future__ import annotations

import pytest

from kshim import printk
from kshim.printk import (KERN_INFO, dev_err, dev_info, dmesg, pr_cont, pr_debug, pr_err,
                          pr_info, pr_warn_once, pr_warn_ratelimited, print_hex_dump,
                          DUMP_PREFIX_OFFSET, ratelimit_state, __ratelimit)


@pytest.fixture(autouse=True)
def quiet():
    level = printk.console_loglevel
    printk.set_console_loglevel(0)
    printk.dmesg_clear()
    yield
    printk.console_loglevel = level


def test_messages_land_in_the_log_buffer_with_their_level():
    pr_err("disk on fire")
    pr_info("all good")
    pr_cont(", really")
    pr_debug("not at this console level")
    assert dmesg() == ["disk on fire", "all good, really"]
    assert [lvl for _, lvl, _ in printk.log_buf] == [3, 6]


def test_pr_debug_prints_only_when_the_console_level_asks_for_debug():
    printk.set_console_loglevel(8)
    pr_debug("now visible")
    printk.set_console_loglevel(0)
    assert dmesg() == ["now visible"]


def test_once_prints_once_per_call_site():
    for _ in range(3):
        pr_warn_once("first time only")
    pr_warn_once("another site")
    assert dmesg() == ["first time only", "another site"]


def test_ratelimited_prints_a_burst_then_suppresses():
    for i in range(15):
        pr_warn_ratelimited(f"flood {i}")
    assert dmesg() == [f"flood {i}" for i in range(10)]


def test_ratelimit_state_reports_what_it_suppressed_in_the_next_window(monkeypatch):
    now = [1000]
    monkeypatch.setattr(printk, "jiffies", lambda: now[0])
    rs = ratelimit_state(interval=100, burst=2)
    got = [__ratelimit(rs, "t") for _ in range(4)]
    now[0] += 100
    got.append(__ratelimit(rs, "t"))
    assert got == [True, True, False, False, True]
    assert dmesg() == ["t: 2 callbacks suppressed"]


def test_dev_prefixes_name_the_driver_and_the_device():
    class drv:
        name = "vdisk_fileio"

    class dev:
        name = "disk0"
        driver = drv()
    dev_err(dev(), "I/O error")
    dev_info("sess1", "logged in")
    assert dmesg() == ["vdisk_fileio disk0: I/O error", "sess1: logged in"]


def test_print_hex_dump_rows_with_offsets_and_ascii():
    print_hex_dump(KERN_INFO, "pdu: ", DUMP_PREFIX_OFFSET, 16, 1, b"ABC\x00" * 5, True)
    lines = dmesg()
    assert lines[0].startswith("pdu: 00000000: 41 42 43 00 41 42 43 00")
    assert lines[0].endswith("ABC.ABC.ABC.ABC.") and lines[1].startswith("pdu: 00000010: 41")
