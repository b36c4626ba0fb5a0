"""Bit operations and bitmaps.

Twin of include/linux/bitops.h, include/asm-generic/bitops/*.h,
include/linux/bitmap.h, include/linux/bits.h and lib/find_bit.c.

Contexts: any.

Differs from the kernel: a bitmap is a Bitmap object (one Python int of any
width, in `word`), since Python cannot pass the address of an int field;
`set_bit(SCST_CMD_ABORTED, cmd.cmd_flags)` reads as in the kernel. The
atomic and the non-atomic (__set_bit) forms are the same on one CPU.
test_bit and the find_* calls also accept a plain int. Bit numbers may be
any size: there is no BITS_PER_LONG limit on a Bitmap.

Debug aids: a negative bit number raises (the kernel would write outside the
bitmap).
"""
from __future__ import annotations

from typing import Iterator

from kshim.wait import wake_up_var

BITS_PER_LONG = 64
BITS_PER_BYTE = 8


class Bitmap:
    """A word of flag bits, driven by set_bit and friends."""

    __slots__ = ("word",)

    def __init__(self, word: int = 0) -> None:
        self.word = word

    def __repr__(self) -> str:
        return f"Bitmap({self.word:#x})"

    def __int__(self) -> int:
        return self.word


def DECLARE_BITMAP(nbits: int = 0) -> Bitmap:
    return Bitmap()


def BIT(nr: int) -> int:
    return 1 << nr


BIT_ULL = BIT


def BIT_MASK(nr: int) -> int:
    return 1 << (nr % BITS_PER_LONG)


def BIT_WORD(nr: int) -> int:
    return nr // BITS_PER_LONG


def GENMASK(h: int, lo: int) -> int:
    """Bits lo..h set (inclusive)."""
    return ((1 << (h - lo + 1)) - 1) << lo


GENMASK_ULL = GENMASK


def BITS_TO_LONGS(nr: int) -> int:
    return -(-nr // BITS_PER_LONG)


def _word(addr: "Bitmap | int") -> int:
    return addr if isinstance(addr, int) else addr.word


def set_bit(nr: int, addr: Bitmap) -> None:
    addr.word |= 1 << nr


def clear_bit(nr: int, addr: Bitmap) -> None:
    addr.word &= ~(1 << nr)


def change_bit(nr: int, addr: Bitmap) -> None:
    addr.word ^= 1 << nr


def test_bit(nr: int, addr: "Bitmap | int") -> bool:
    return bool((_word(addr) >> nr) & 1)


def test_and_set_bit(nr: int, addr: Bitmap) -> bool:
    """Set the bit; return its old value."""
    m = 1 << nr
    old = addr.word
    addr.word = old | m
    return bool(old & m)


def test_and_clear_bit(nr: int, addr: Bitmap) -> bool:
    m = 1 << nr
    old = addr.word
    addr.word = old & ~m
    return bool(old & m)


def test_and_change_bit(nr: int, addr: Bitmap) -> bool:
    m = 1 << nr
    old = addr.word
    addr.word = old ^ m
    return bool(old & m)


__set_bit = set_bit
__clear_bit = clear_bit
__change_bit = change_bit
__test_and_set_bit = test_and_set_bit
__test_and_clear_bit = test_and_clear_bit
__test_and_change_bit = test_and_change_bit
set_bit_lock = set_bit
test_and_set_bit_lock = test_and_set_bit
clear_bit_unlock = clear_bit
__clear_bit_unlock = clear_bit
test_bit_acquire = test_bit


def clear_and_wake_up_bit(nr: int, addr: Bitmap) -> None:
    """Clear the bit and wake wait_var_event() waiters on addr."""
    clear_bit(nr, addr)
    wake_up_var(addr)


# -- finding bits -------------------------------------------------------------------

def find_next_bit(addr: "Bitmap | int", size: int, offset: int = 0) -> int:
    """Index of the first set bit at or after offset, or size if none below size."""
    if offset >= size:
        return size
    x = _word(addr) >> offset
    if not x:
        return size
    r = offset + (x & -x).bit_length() - 1
    return r if r < size else size


def find_first_bit(addr: "Bitmap | int", size: int) -> int:
    return find_next_bit(addr, size, 0)


def find_next_zero_bit(addr: "Bitmap | int", size: int, offset: int = 0) -> int:
    if offset >= size:
        return size
    x = ~(_word(addr) >> offset)
    r = offset + (x & -x).bit_length() - 1
    return r if r < size else size


def find_first_zero_bit(addr: "Bitmap | int", size: int) -> int:
    return find_next_zero_bit(addr, size, 0)


def find_last_bit(addr: "Bitmap | int", size: int) -> int:
    """Index of the last set bit below size, or size if none."""
    x = _word(addr) & ((1 << size) - 1)
    return x.bit_length() - 1 if x else size


def for_each_set_bit(addr: "Bitmap | int", size: int) -> Iterator[int]:
    x = _word(addr) & ((1 << size) - 1)
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def for_each_clear_bit(addr: "Bitmap | int", size: int) -> Iterator[int]:
    x = ~_word(addr) & ((1 << size) - 1)
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


# -- bitmap_* -----------------------------------------------------------------------

def bitmap_zero(dst: Bitmap, nbits: int = 0) -> None:
    dst.word = 0


def bitmap_fill(dst: Bitmap, nbits: int) -> None:
    dst.word = (1 << nbits) - 1


def bitmap_copy(dst: Bitmap, src: Bitmap, nbits: int = 0) -> None:
    dst.word = src.word


def bitmap_empty(src: "Bitmap | int", nbits: int) -> bool:
    return not (_word(src) & ((1 << nbits) - 1))


def bitmap_full(src: "Bitmap | int", nbits: int) -> bool:
    m = (1 << nbits) - 1
    return _word(src) & m == m


def bitmap_weight(src: "Bitmap | int", nbits: int) -> int:
    return (_word(src) & ((1 << nbits) - 1)).bit_count()


def bitmap_set(dst: Bitmap, start: int, nbits: int) -> None:
    dst.word |= ((1 << nbits) - 1) << start


def bitmap_clear(dst: Bitmap, start: int, nbits: int) -> None:
    dst.word &= ~(((1 << nbits) - 1) << start)


def bitmap_and(dst: Bitmap, a: Bitmap, b: Bitmap, nbits: int) -> bool:
    dst.word = a.word & b.word & ((1 << nbits) - 1)
    return dst.word != 0


def bitmap_or(dst: Bitmap, a: Bitmap, b: Bitmap, nbits: int) -> None:
    dst.word = (a.word | b.word) & ((1 << nbits) - 1)


def bitmap_equal(a: "Bitmap | int", b: "Bitmap | int", nbits: int) -> bool:
    m = (1 << nbits) - 1
    return _word(a) & m == _word(b) & m


def bitmap_find_next_zero_area(addr: Bitmap, size: int, start: int, nr: int) -> int:
    """Start of the first run of nr clear bits at or after start (size if none)."""
    i = start
    while True:
        i = find_next_zero_bit(addr, size, i)
        end = i + nr
        if end > size:
            return size
        j = find_next_bit(addr, end, i)
        if j >= end:
            return i
        i = j + 1


# -- single words ------------------------------------------------------------------

def hweight8(w: int) -> int:
    return (w & 0xFF).bit_count()


def hweight16(w: int) -> int:
    return (w & 0xFFFF).bit_count()


def hweight32(w: int) -> int:
    return (w & 0xFFFFFFFF).bit_count()


def hweight64(w: int) -> int:
    return (w & 0xFFFFFFFFFFFFFFFF).bit_count()


hweight_long = hweight64


def ffs(x: int) -> int:
    """1-based index of the least significant set bit; 0 if x is 0."""
    return (x & -x).bit_length()


def fls(x: int) -> int:
    """1-based index of the most significant set bit; 0 if x is 0."""
    return (x & 0xFFFFFFFF).bit_length()


def fls64(x: int) -> int:
    return (x & 0xFFFFFFFFFFFFFFFF).bit_length()


def __ffs(x: int) -> int:
    """0-based index of the least significant set bit (x must not be 0)."""
    return (x & -x).bit_length() - 1


def __fls(x: int) -> int:
    return x.bit_length() - 1


def ffz(x: int) -> int:
    """0-based index of the first zero bit."""
    return __ffs(~x)


def ilog2(n: int) -> int:
    return n.bit_length() - 1


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def rounddown_pow_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def order_base_2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0
