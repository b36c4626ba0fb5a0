"""Unit attentions per I_T nexus, seen by two real sessions on one LUN:
MODE PARAMETERS CHANGED (SPC-4 6.11) and the reset UAs (SAM-5 6.3.3)."""
from __future__ import annotations

import pytest

from tests.initiator import TMF_LUN_RESET, TMF_TARGET_WARM_RESET, Initiator

TIMEOUT = 10.0
MODE_SENSE6_CACHING = bytes((0x1A, 0x08, 0x08, 0, 255, 0))


def _login(srv, name: str) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, initiator_name=name, timeout=TIMEOUT)
    ini.connect()
    ini.login(srv.iqn)
    return ini


def _clear_uas(ini: Initiator) -> None:
    """TEST UNIT READY until GOOD (bounded): the power-on UA goes."""
    for _ in range(8):
        if ini.test_unit_ready().status == 0:
            return
    pytest.fail("TEST UNIT READY never came back GOOD")


def _ua(ini: Initiator) -> tuple[int, int] | None:
    r = ini.test_unit_ready()
    return r.asc_ascq if r.sense_key == 0x06 else None


@pytest.fixture
def two_sessions(uscstd_server):
    a = _login(uscstd_server, "iqn.2026-11.test:ua-a")
    b = _login(uscstd_server, "iqn.2026-11.test:ua-b")
    _clear_uas(a)
    _clear_uas(b)
    yield a, b
    for ini in (a, b):
        ini.logout()
        ini.close()


def _select_caching(ini: Initiator, wce: bool) -> None:
    page = bytearray(ini.scsi(MODE_SENSE6_CACHING, read_len=255).check().data[4:24])
    page[0] &= 0x7F
    page[2] = (page[2] & ~0x04) | (0x04 if wce else 0)
    ini.scsi(bytes((0x15, 0x10, 0, 0, 24, 0)), data_out=bytes(4) + bytes(page)).check()


def test_mode_select_change_raises_mode_parameters_changed_on_the_other_nexus_only(two_sessions):
    a, b = two_sessions
    _select_caching(a, wce=True)
    assert _ua(a) is None
    assert _ua(b) == (0x2A, 0x01)
    assert _ua(b) is None
    _select_caching(a, wce=True)             # same values: nothing changed, no UA
    assert _ua(b) is None
    _select_caching(b, wce=False)
    assert _ua(a) == (0x2A, 0x01)


@pytest.mark.parametrize("fn, asc_ascq", [(TMF_LUN_RESET, (0x29, 0x03)),
                                          (TMF_TARGET_WARM_RESET, (0x29, 0x00))])
def test_reset_raises_its_unit_attention_on_every_nexus_the_issuer_too(two_sessions, fn,
                                                                       asc_ascq):
    a, b = two_sessions
    assert a.task_mgmt(fn) == 0
    assert _ua(a) == asc_ascq
    assert _ua(b) == asc_ascq
    assert _ua(a) is None and _ua(b) is None
