"""printk, log levels and the kernel log buffer.

Twin of kernel/printk/printk.c and include/linux/printk.h.

Contexts: any; printk never sleeps.

Differs from the kernel: the message is a finished Python string (no format
arguments); a level prefix is KERN_* as in the kernel ("\\x01" + digit).
The log buffer is a bounded ring of (seconds, level, text) for dmesg-like
reading; the console is the host's stderr.
"""
from __future__ import annotations

from collections import deque

from kshim import host

KERN_SOH = "\x01"
KERN_EMERG = KERN_SOH + "0"
KERN_ALERT = KERN_SOH + "1"
KERN_CRIT = KERN_SOH + "2"
KERN_ERR = KERN_SOH + "3"
KERN_WARNING = KERN_SOH + "4"
KERN_NOTICE = KERN_SOH + "5"
KERN_INFO = KERN_SOH + "6"
KERN_DEBUG = KERN_SOH + "7"
KERN_CONT = KERN_SOH + "c"
LOGLEVEL_DEFAULT = 4

LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

# Messages below console_loglevel reach the console (as in the kernel).
console_loglevel = 7
log_buf: deque[tuple[float, int, str]] = deque(maxlen=4096)
_boot = host.monotonic()


def set_console_loglevel(name_or_level: "str | int") -> None:
    """Accept a level name ('info', 'debug', ...) or number 0-7."""
    global console_loglevel
    if isinstance(name_or_level, str):
        name_or_level = LEVEL_NAMES.index(name_or_level) + 1
    console_loglevel = int(name_or_level)


def printk(msg: str) -> None:
    level = LOGLEVEL_DEFAULT
    if msg[:1] == KERN_SOH and len(msg) > 1:
        c = msg[1]
        msg = msg[2:]
        if c.isdigit():
            level = int(c)
    t = host.monotonic() - _boot
    log_buf.append((t, level, msg))
    if level < console_loglevel:
        host.console_write(f"[{t:12.6f}] {msg}\n")


def pr_emerg(msg: str) -> None:
    printk(KERN_EMERG + msg)


def pr_alert(msg: str) -> None:
    printk(KERN_ALERT + msg)


def pr_crit(msg: str) -> None:
    printk(KERN_CRIT + msg)


def pr_err(msg: str) -> None:
    printk(KERN_ERR + msg)


def pr_warn(msg: str) -> None:
    printk(KERN_WARNING + msg)


def pr_notice(msg: str) -> None:
    printk(KERN_NOTICE + msg)


def pr_info(msg: str) -> None:
    printk(KERN_INFO + msg)


def pr_debug(msg: str) -> None:
    if console_loglevel > 7:
        printk(KERN_DEBUG + msg)


def dmesg() -> list[str]:
    """The log buffer's messages, oldest first."""
    return [m for _, _, m in log_buf]
