"""Random numbers for kernel code: get_random_bytes and friends.

Twin of drivers/char/random.c (get_random_bytes, get_random_u32) and
include/linux/random.h.

Contexts: any; never sleeps.

Differs from the kernel: the entropy pool is the host's CSPRNG
(os.urandom through kshim.host); there is no boot-time wait for entropy.
"""
from __future__ import annotations

from kshim import host


def get_random_bytes(n: int) -> bytes:
    return host.random_bytes(n)


def get_random_u32() -> int:
    return int.from_bytes(host.random_bytes(4), "little")


def get_random_u64() -> int:
    return int.from_bytes(host.random_bytes(8), "little")
