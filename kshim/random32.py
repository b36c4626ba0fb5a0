"""Random numbers for kernel code: get_random_bytes and friends, prandom.

Twin of drivers/char/random.c (get_random_bytes, get_random_u32),
include/linux/random.h and lib/random32.c (prandom_u32).

Contexts: any; never sleeps.

Differs from the kernel: both come from the host-ops table. Under the trio
engine get_random_bytes is the host's CSPRNG (os.urandom) and prandom_u32 a
host PRNG; under the sim engine both come from the simulation's one seeded
PRNG, so a run replays from its seed. There is no boot-time wait for
entropy. Kernel code that wants reproducible pseudo-random choices (fault
injection, jitter) uses prandom_u32, never Python's random module.
"""
from __future__ import annotations

from kshim.host import ops


def get_random_bytes(n: int) -> bytes:
    return ops.random_bytes(n)


def get_random_u32() -> int:
    return int.from_bytes(ops.random_bytes(4), "little")


def get_random_u64() -> int:
    return int.from_bytes(ops.random_bytes(8), "little")


def prandom_u32() -> int:
    """A fast pseudo-random u32 (seeded under the sim engine)."""
    return ops.prandom_u32()


def prandom_u32_max(ep_ro: int) -> int:
    """A pseudo-random integer in [0, ep_ro)."""
    return (ops.prandom_u32() * ep_ro) >> 32
