"""printk, log levels, the kernel log buffer, rate limiting and dev_* prefixes.

Twin of kernel/printk/printk.c, include/linux/printk.h, lib/ratelimit.c,
include/linux/dev_printk.h and lib/hexdump.c (print_hex_dump).

Contexts: any; printk never sleeps.

Differs from the kernel: the message is a finished Python string (format it
with an f-string; there are no format arguments); a level prefix is KERN_*
as in the kernel ("\\x01" + digit). The log buffer is a bounded ring of
(seconds, level, text) for dmesg-like reading; the console is the host's
stderr (messages with a level below console_loglevel). pr_debug and dev_dbg
print only when console_loglevel is above 7 (there is no dynamic debug).
The _once and _ratelimited variants key their state by call site, as the
kernel's static variables do. dev_* take anything with a `name` (and
optionally a `driver` with a `name`) or a plain string as the device.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from kshim import host
from kshim.host import ops
from kshim.jiffies import jiffies

KERN_SOH = "\x01"
KERN_EMERG = KERN_SOH + "0"
KERN_ALERT = KERN_SOH + "1"
KERN_CRIT = KERN_SOH + "2"
KERN_ERR = KERN_SOH + "3"
KERN_WARNING = KERN_SOH + "4"
KERN_NOTICE = KERN_SOH + "5"
KERN_INFO = KERN_SOH + "6"
KERN_DEBUG = KERN_SOH + "7"
KERN_DEFAULT = ""
KERN_CONT = KERN_SOH + "c"
LOGLEVEL_DEFAULT = 4

LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

# Messages below console_loglevel reach the console (as in the kernel).
console_loglevel = 7
log_buf: deque[tuple[float, int, str]] = deque(maxlen=4096)
_boot = 0.0             # ops.monotonic() at boot: timestamps count from it


def _clock_base() -> None:
    global _boot
    _boot = ops.monotonic()


host.on_clock_base(_clock_base)
_clock_base()
_once_sites: set = set()


def set_console_loglevel(name_or_level: "str | int") -> None:
    """Accept a level name ('info', 'debug', ...) or number 0-8."""
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
        elif c == "c" and log_buf:                 # KERN_CONT: extend the last record
            t, lvl, prev = log_buf[-1]
            log_buf[-1] = (t, lvl, prev + msg)
            if lvl < console_loglevel:
                ops.console_write(msg)
            return
    t = ops.monotonic() - _boot
    log_buf.append((t, level, msg))
    if level < console_loglevel:
        ops.console_write(f"[{t:12.6f}] {msg}\n")


def vprintk(level: str, msg: str) -> None:
    printk(level + msg)


def no_printk(msg: str) -> None:
    pass


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


pr_warning = pr_warn


def pr_notice(msg: str) -> None:
    printk(KERN_NOTICE + msg)


def pr_info(msg: str) -> None:
    printk(KERN_INFO + msg)


def pr_cont(msg: str) -> None:
    printk(KERN_CONT + msg)


def pr_debug(msg: str) -> None:
    if console_loglevel > 7:
        printk(KERN_DEBUG + msg)


pr_devel = pr_debug


def _site(depth: int = 2) -> tuple:
    from kshim.bug import getframe     # bug imports printk: no cycle at load
    f = getframe(depth)
    return (f.f_code, f.f_lineno)


def printk_once(msg: str) -> bool:
    """printk, at most once per call site; True if printed."""
    key = _site()
    if key in _once_sites:
        return False
    _once_sites.add(key)
    printk(msg)
    return True


def _once(level: str, msg: str) -> None:
    key = _site(3)
    if key not in _once_sites:
        _once_sites.add(key)
        printk(level + msg)


def pr_emerg_once(msg: str) -> None:
    _once(KERN_EMERG, msg)


def pr_err_once(msg: str) -> None:
    _once(KERN_ERR, msg)


def pr_warn_once(msg: str) -> None:
    _once(KERN_WARNING, msg)


def pr_notice_once(msg: str) -> None:
    _once(KERN_NOTICE, msg)


def pr_info_once(msg: str) -> None:
    _once(KERN_INFO, msg)


def dmesg() -> list[str]:
    """The log buffer's messages, oldest first."""
    return [m for _, _, m in log_buf]


def dmesg_clear() -> None:
    """Empty the log buffer (dmesg -C)."""
    log_buf.clear()


# -- rate limiting (lib/ratelimit.c) -----------------------------------------------

DEFAULT_RATELIMIT_INTERVAL = 5 * 1000     # 5 * HZ, HZ = 1000
DEFAULT_RATELIMIT_BURST = 10


class ratelimit_state:
    __slots__ = ("interval", "burst", "printed", "missed", "begin")

    def __init__(self, interval: int = DEFAULT_RATELIMIT_INTERVAL,
                 burst: int = DEFAULT_RATELIMIT_BURST) -> None:
        self.interval = interval       # jiffies
        self.burst = burst
        self.printed = 0
        self.missed = 0
        self.begin = 0


def DEFINE_RATELIMIT_STATE(interval: int = DEFAULT_RATELIMIT_INTERVAL,
                           burst: int = DEFAULT_RATELIMIT_BURST) -> ratelimit_state:
    return ratelimit_state(interval, burst)


def ratelimit_state_init(rs: ratelimit_state, interval: int, burst: int) -> None:
    ratelimit_state.__init__(rs, interval, burst)


def __ratelimit(rs: ratelimit_state, name: str = "") -> bool:
    """True if the caller may print now. A new window reports what the last
    one suppressed."""
    if not rs.interval:
        return True
    now = jiffies()
    if not rs.begin:
        rs.begin = now
    if now - rs.begin >= rs.interval:
        if rs.missed:
            printk(KERN_WARNING + f"{name or 'printk'}: {rs.missed} callbacks suppressed")
        rs.begin = now
        rs.printed = 0
        rs.missed = 0
    if rs.burst and rs.burst > rs.printed:
        rs.printed += 1
        return True
    rs.missed += 1
    return False


_printk_rs = ratelimit_state()
_site_rs: dict[tuple, ratelimit_state] = {}


def printk_ratelimit() -> bool:
    """The shared printk rate limit: True if printing is allowed now."""
    return __ratelimit(_printk_rs, "printk_ratelimit")


def _ratelimited(level: str, msg: str) -> None:
    key = _site(3)
    rs = _site_rs.get(key)
    if rs is None:
        rs = _site_rs[key] = ratelimit_state()
    if __ratelimit(rs, key[0].co_name):
        printk(level + msg)


def printk_ratelimited(msg: str) -> None:
    _ratelimited("", msg)


def pr_emerg_ratelimited(msg: str) -> None:
    _ratelimited(KERN_EMERG, msg)


def pr_err_ratelimited(msg: str) -> None:
    _ratelimited(KERN_ERR, msg)


def pr_warn_ratelimited(msg: str) -> None:
    _ratelimited(KERN_WARNING, msg)


def pr_notice_ratelimited(msg: str) -> None:
    _ratelimited(KERN_NOTICE, msg)


def pr_info_ratelimited(msg: str) -> None:
    _ratelimited(KERN_INFO, msg)


def pr_debug_ratelimited(msg: str) -> None:
    if console_loglevel > 7:
        _ratelimited(KERN_DEBUG, msg)


# -- dev_* (include/linux/dev_printk.h) ----------------------------------------------

def dev_name(dev: Any) -> str:
    if isinstance(dev, str):
        return dev
    name = getattr(dev, "name", None) or getattr(dev, "init_name", None)
    return str(name) if name is not None else type(dev).__name__


def dev_driver_string(dev: Any) -> str:
    drv = getattr(dev, "driver", None)
    name = getattr(drv, "name", None) if drv is not None else None
    return str(name) if name else ""


def _dev_prefix(dev: Any) -> str:
    if dev is None:
        return "(NULL device *): "
    drv = dev_driver_string(dev)
    return f"{drv} {dev_name(dev)}: " if drv else f"{dev_name(dev)}: "


def dev_printk(level: str, dev: Any, msg: str) -> None:
    printk(level + _dev_prefix(dev) + msg)


def dev_emerg(dev: Any, msg: str) -> None:
    dev_printk(KERN_EMERG, dev, msg)


def dev_alert(dev: Any, msg: str) -> None:
    dev_printk(KERN_ALERT, dev, msg)


def dev_crit(dev: Any, msg: str) -> None:
    dev_printk(KERN_CRIT, dev, msg)


def dev_err(dev: Any, msg: str) -> None:
    dev_printk(KERN_ERR, dev, msg)


def dev_warn(dev: Any, msg: str) -> None:
    dev_printk(KERN_WARNING, dev, msg)


def dev_notice(dev: Any, msg: str) -> None:
    dev_printk(KERN_NOTICE, dev, msg)


def dev_info(dev: Any, msg: str) -> None:
    dev_printk(KERN_INFO, dev, msg)


def dev_dbg(dev: Any, msg: str) -> None:
    if console_loglevel > 7:
        dev_printk(KERN_DEBUG, dev, msg)


def dev_err_once(dev: Any, msg: str) -> None:
    _once(KERN_ERR, _dev_prefix(dev) + msg)


def dev_warn_once(dev: Any, msg: str) -> None:
    _once(KERN_WARNING, _dev_prefix(dev) + msg)


def dev_info_once(dev: Any, msg: str) -> None:
    _once(KERN_INFO, _dev_prefix(dev) + msg)


def dev_err_ratelimited(dev: Any, msg: str) -> None:
    _ratelimited(KERN_ERR, _dev_prefix(dev) + msg)


def dev_warn_ratelimited(dev: Any, msg: str) -> None:
    _ratelimited(KERN_WARNING, _dev_prefix(dev) + msg)


def dev_info_ratelimited(dev: Any, msg: str) -> None:
    _ratelimited(KERN_INFO, _dev_prefix(dev) + msg)


# -- hex dumps (lib/hexdump.c) --------------------------------------------------------

DUMP_PREFIX_NONE = 0
DUMP_PREFIX_ADDRESS = 1
DUMP_PREFIX_OFFSET = 2


def hex_dump_to_buffer(buf: "bytes | bytearray | memoryview", rowsize: int = 16,
                       groupsize: int = 1, ascii: bool = False) -> str:
    """One line of hex (groups of groupsize bytes, little-endian as the
    kernel prints them) and optionally the ASCII column."""
    b = bytes(buf[:rowsize])
    if groupsize not in (1, 2, 4, 8) or len(b) % groupsize:
        groupsize = 1
    groups = []
    for i in range(0, len(b), groupsize):
        groups.append(b[i:i + groupsize][::-1].hex())
    text = " ".join(groups)
    if ascii:
        width = rowsize * 2 + rowsize // groupsize - 1
        text = f"{text:<{width}}  " + "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in b)
    return text


def print_hex_dump(level: str, prefix_str: str, prefix_type: int, rowsize: int,
                   groupsize: int, buf: "bytes | bytearray | memoryview", ascii: bool) -> None:
    if rowsize not in (16, 32):
        rowsize = 16
    for off in range(0, len(buf), rowsize):
        line = hex_dump_to_buffer(buf[off:off + rowsize], rowsize, groupsize, ascii)
        pre = f"{off:08x}: " if prefix_type in (DUMP_PREFIX_OFFSET, DUMP_PREFIX_ADDRESS) else ""
        printk(level + f"{prefix_str}{pre}{line}")


def print_hex_dump_bytes(prefix_str: str, prefix_type: int,
                         buf: "bytes | bytearray | memoryview") -> None:
    print_hex_dump(KERN_DEBUG, prefix_str, prefix_type, 16, 1, buf, True)
