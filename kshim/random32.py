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


# -- pseudo-random numbers from a seed (lib/random32.c's prandom_*_state) ----
# A combined Tausworthe generator of four LFSRs (L'Ecuyer, "Tables of
# maximally-equidistributed combined LFSR generators", 1999): state that
# fits in four u32s, period about 2**113, and the same numbers from the same
# seed on every host, which is what makes an injected fault replayable.


class rnd_state:
    """struct rnd_state: the four LFSR words of one generator."""

    __slots__ = ("s1", "s2", "s3", "s4")

    def __init__(self) -> None:
        self.s1 = self.s2 = self.s3 = self.s4 = 0


_M32 = 0xFFFFFFFF


def prandom_u32_state(state: rnd_state) -> int:
    """The next u32 of the generator (never sleeps, any context)."""
    s1, s2, s3, s4 = state.s1, state.s2, state.s3, state.s4
    s1 = (((s1 & 0xFFFFFFFE) << 18) & _M32) ^ ((((s1 << 6) & _M32) ^ s1) >> 13)
    s2 = (((s2 & 0xFFFFFFF8) << 2) & _M32) ^ ((((s2 << 2) & _M32) ^ s2) >> 27)
    s3 = (((s3 & 0xFFFFFFF0) << 7) & _M32) ^ ((((s3 << 13) & _M32) ^ s3) >> 21)
    s4 = (((s4 & 0xFFFFFF80) << 13) & _M32) ^ ((((s4 << 3) & _M32) ^ s4) >> 12)
    state.s1, state.s2, state.s3, state.s4 = s1, s2, s3, s4
    return s1 ^ s2 ^ s3 ^ s4


def prandom_seed_state(state: rnd_state, seed: int) -> None:
    """Seed the generator from a 64-bit seed. Each word gets a value above
    its LFSR's minimum (the low bits a step discards), then the generator
    runs ten steps so that nearby seeds give unrelated sequences."""
    i = (seed & 0xFFFFFFFF) ^ (seed >> 32)
    words = []
    for k, minimum in enumerate((2, 8, 16, 128)):
        w = (i * 69069 + k * 0x9E3779B9 + 1) & _M32
        i = w
        words.append(w if w >= minimum else w + minimum)
    state.s1, state.s2, state.s3, state.s4 = words
    for _ in range(10):
        prandom_u32_state(state)


def reciprocal_scale(val: int, ep_ro: int) -> int:
    """include/linux/kernel.h: a u32 scaled into [0, ep_ro) by multiply-and-shift."""
    return (val * ep_ro) >> 32
