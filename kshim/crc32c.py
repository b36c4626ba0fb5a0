"""CRC32C (Castagnoli), as the kernel's crypto API gives it to iSCSI digests.

Twin of lib/crc32c.c (crc32c()) and the "crc32c" shash of crypto/crc32c_generic.c.

Contexts: any; never sleeps.

Differs from the kernel: the work is done by the `crc32c` package, which uses
the CPU's CRC32 instructions (SSE4.2 / ARMv8) when present. The kernel's
crc32c(seed, data) takes and returns the raw register value; crc32c_value()
is the finished digest iSCSI puts on the wire (RFC 3720 B.4).
"""
from __future__ import annotations

import crc32c as _impl


def crc32c_value(data: "bytes | bytearray | memoryview", value: int = 0) -> int:
    """Finished CRC32C of data, continuing from a previous finished value."""
    return _impl.crc32c(data, value)


def crc32c_iov(iov: list, value: int = 0) -> int:
    for b in iov:
        value = _impl.crc32c(b, value)
    return value
