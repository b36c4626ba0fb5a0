"""kshim: the Linux kernel API, emulated for kernel-idiom Python code.

Importing any kshim module first fills the host-ops table (kshim.host.ops)
with the real host's operations, so a clock and a console exist before an
engine boots; each engine refills it at boot (docs/kshim.md, "host ops").
"""
from kshim import engine_posix as _engine_posix  # noqa: F401  (fills host.ops; see above)
