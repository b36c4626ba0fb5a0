"""kshim.crc32c: checked against the RFC 3720 appendix B.4 vectors."""
from __future__ import annotations

import pytest

from kshim.crc32c import (crc32c, crc32c_digest_bytes, crc32c_iov, crc32c_shash,
                          crc32c_shash_final, crc32c_shash_init, crc32c_shash_update,
                          crc32c_value)

READ_PDU = bytes.fromhex(
    "01c00000000000000000000000000000"
    "14000000000004000000001400000018"
    "28000000000000000200000000000000")

# (data, CRC bytes as RFC 3720 B.4 lists them, i.e. as sent on the wire)
VECTORS = [
    (bytes(32), "aa36918a"),
    (b"\xff" * 32, "43aba862"),
    (bytes(range(32)), "4e79dd46"),
    (bytes(range(31, -1, -1)), "5cdb3f11"),
    (READ_PDU, "563a96d9"),
]


@pytest.mark.parametrize("data,wire", VECTORS)
def test_rfc3720_vectors(data, wire):
    v = crc32c_value(data)
    assert crc32c_digest_bytes(v).hex() == wire
    assert crc32c(0xFFFFFFFF, data) ^ 0xFFFFFFFF == v          # the kernel's raw form
    assert crc32c_iov([data[:5], memoryview(data)[5:]]) == v   # in pieces
    d = crc32c_shash()
    crc32c_shash_init(d)
    crc32c_shash_update(d, data[:7])
    crc32c_shash_update(d, data[7:])
    assert crc32c_shash_final(d).hex() == wire


def test_the_standard_check_value():
    assert crc32c_value(b"123456789") == 0xE3069283
