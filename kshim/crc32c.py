"""CRC32C (Castagnoli), as the kernel's crypto API gives it to iSCSI digests.

Twin of lib/crc32.c (crc32c / __crc32c_le), include/linux/crc32c.h and the
"crc32c" shash of crypto/crc32c_generic.c.

Contexts: any; never sleeps.

Differs from the kernel: the work is done by the `crc32c` package, which uses
the CPU's CRC32 instructions (SSE4.2 / ARMv8) when present. The kernel's
crc32c(seed, data) takes and returns the raw register value (start with
~0, finish by inverting); crc32c_value() is the finished digest iSCSI puts on
the wire (RFC 3720 section 12.1 and appendix B.4), continuing from a
previous finished value; crc32c_shash_* give the crypto API's init /
update / final sequence over the same state. Results are ints; iSCSI sends
the digest little-endian (crc32c_digest_bytes).
"""
from __future__ import annotations

import crc32c as _impl

_MASK = 0xFFFFFFFF


def crc32c_value(data: "bytes | bytearray | memoryview", value: int = 0) -> int:
    """Finished CRC32C of data, continuing from a previous finished value."""
    return _impl.crc32c(data, value)


def crc32c(crc: int, data: "bytes | bytearray | memoryview") -> int:
    """The kernel's raw form: continue register value `crc` over data.
    crc32c(~0, data) ^ ~0 is the finished CRC."""
    return (~_impl.crc32c(data, (~crc) & _MASK)) & _MASK


__crc32c_le = crc32c


def crc32c_iov(iov: list, value: int = 0) -> int:
    """Finished CRC32C over several buffers, as one."""
    for b in iov:
        value = _impl.crc32c(b, value)
    return value


def crc32c_digest_bytes(value: int) -> bytes:
    """The 4 digest bytes as iSCSI puts them on the wire (little-endian)."""
    return value.to_bytes(4, "little")


class crc32c_shash:
    """A crypto-API-like descriptor: init, update*, final."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def crc32c_shash_init(desc: crc32c_shash) -> int:
    desc.value = 0
    return 0


def crc32c_shash_update(desc: crc32c_shash, data: "bytes | bytearray | memoryview") -> int:
    desc.value = _impl.crc32c(data, desc.value)
    return 0


def crc32c_shash_final(desc: crc32c_shash) -> bytes:
    """The digest bytes (little-endian), as crypto_shash_final writes them."""
    return crc32c_digest_bytes(desc.value)
