"""Header and data digests (CRC32C) for iSCSI PDUs.

Twin of iscsi-scst/kernel/digest.c; RFC 7143 section 11.2.3 and 13.1.

Contexts: any; never sleeps.

Differs from digest.c: no scatterlist walking helpers; callers pass the
buffers (bytes or memoryviews) the PDU consists of. The digest is sent
little-endian, as RFC 7143 B.4 specifies for CRC32C.
"""
from __future__ import annotations

from kshim.crc32c import crc32c_iov, crc32c_value

ISCSI_DIGEST_SIZE = 4


def digest_header(bhs: "bytes | bytearray | memoryview") -> bytes:
    return crc32c_value(bhs).to_bytes(4, "little")


def digest_data(iov: list) -> bytes:
    return crc32c_iov(iov).to_bytes(4, "little")


def digest_matches(computed: int, wire: "bytes | memoryview") -> bool:
    return computed == int.from_bytes(wire, "little")
