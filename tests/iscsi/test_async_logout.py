"""A planned shutdown asks logged-in initiators to log out (RFC 7143 11.9.1,
AsyncEvent 1), gives them the grace time it announces, then closes."""
from __future__ import annotations

import signal
import threading

from initiator import OP_ASYNC_MSG, Initiator


def test_sigterm_sends_logout_request_and_a_prompt_logout_ends_cleanly(uscstd):
    srv = uscstd()
    ini = Initiator(srv.host, srv.port, timeout=10.0)
    ini.connect()
    ini.login(srv.iqn)
    assert ini.test_unit_ready().status == 0
    stopper = threading.Thread(target=srv.stop, args=(signal.SIGTERM,))
    stopper.start()
    try:
        pdu = ini.recv_pdu(timeout=10.0)
        assert pdu.opcode == OP_ASYNC_MSG, pdu
        assert pdu.async_event == 1                    # logout requested
        assert pdu.async_params[2] >= 1                # Parameter3: seconds allowed
        assert ini.logout() == 0                       # the initiator complies
    finally:
        stopper.join(20)
    assert srv.returncode == 0
