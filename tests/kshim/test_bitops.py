"""kshim.bitops: set_bit and friends on Bitmap, find_*_bit, bitmap_*, word helpers.

(The module is imported whole: its test_bit/test_and_set_bit names would
otherwise be collected by pytest as tests.)"""
from __future__ import annotations

from kshim import bitops as B
from kshim.bitops import Bitmap


def test_set_clear_and_test_and_set_return_the_old_bit():
    flags = Bitmap()
    B.set_bit(3, flags)
    assert B.test_bit(3, flags) and not B.test_bit(2, flags)
    assert B.test_and_set_bit(3, flags) is True and B.test_and_set_bit(5, flags) is False
    assert B.test_and_clear_bit(5, flags) is True and not B.test_bit(5, flags)
    assert B.test_and_change_bit(0, flags) is False and B.test_bit(0, flags)
    B.clear_bit(3, flags)
    assert flags.word == 1 and B.test_bit(0, 1)


def test_find_bits_return_size_when_there_is_none():
    bm = Bitmap()
    for nr in (2, 9, 70):
        B.set_bit(nr, bm)
    assert B.find_first_bit(bm, 128) == 2
    assert B.find_next_bit(bm, 128, 3) == 9 and B.find_next_bit(bm, 128, 71) == 128
    assert B.find_next_bit(bm, 50, 10) == 50
    assert B.find_first_zero_bit(bm, 128) == 0 and B.find_next_zero_bit(bm, 128, 2) == 3
    assert B.find_last_bit(bm, 128) == 70 and B.find_last_bit(Bitmap(), 8) == 8
    assert list(B.for_each_set_bit(bm, 64)) == [2, 9]


def test_bitmap_helpers():
    bm = Bitmap()
    B.bitmap_fill(bm, 10)
    assert B.bitmap_weight(bm, 10) == 10 and B.bitmap_weight(bm, 4) == 4
    B.bitmap_zero(bm)
    B.set_bit(1, bm)
    B.set_bit(2, bm)
    assert B.bitmap_find_next_zero_area(bm, 16, 0, 3) == 3
    assert B.bitmap_find_next_zero_area(bm, 5, 0, 3) == 5


def test_word_helpers_match_the_kernel():
    assert B.BIT(4) == 16 and B.GENMASK(7, 4) == 0xF0
    assert B.ffs(0) == 0 and B.ffs(0b1000) == 4 and B.__ffs(0b1000) == 3
    assert B.fls(0) == 0 and B.fls(0x80000000) == 32
    assert B.hweight32(0xFF00FF) == 16 and B.ilog2(4096) == 12
    assert B.is_power_of_2(64) and not B.is_power_of_2(0) and B.roundup_pow_of_two(5) == 8
