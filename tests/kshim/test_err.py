"""kshim.err: errno values match Linux; IS_ERR tells objects from errors."""
from __future__ import annotations

from kshim.err import EAGAIN, ENOMEM, ERESTARTSYS, IS_ERR, IS_ERR_OR_NULL, errname


def test_values_and_names_match_linux():
    assert (ENOMEM, EAGAIN, ERESTARTSYS) == (12, 11, 512)
    assert errname(-ENOMEM) == "-ENOMEM" and errname(12345) == "12345"


def test_is_err_accepts_only_negative_errnos():
    assert IS_ERR(-ENOMEM) and not IS_ERR(0) and not IS_ERR(object()) and not IS_ERR(False)
    assert IS_ERR_OR_NULL(None) and not IS_ERR_OR_NULL(3)
