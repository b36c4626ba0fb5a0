"""A peer wrapper for tests/sim/: sees, counts and alters PDUs on the wire.

WirePeer sits between a Channel and a real TcpPeer. It frames both
directions into PDUs (no digests: the tests negotiate None), counts them
by opcode, lets a test rewrite, drop or duplicate received PDUs (rx_hook:
one PDU's bytes in, a list of PDUs' bytes out) to plant a fault the
invariant checkers must catch, and can hand the initiator the stream in
small random pieces (split) to prove the sans-IO parser reassembles it.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Callable

from tools.sim.pdu import BHS_SIZE, RESERVED_TAG, pad4
from tools.sim.tcp import TcpPeer


def pdu_len(buf: bytes | bytearray) -> int | None:
    """Length of the first whole PDU in buf, None if it is not all there."""
    if len(buf) < BHS_SIZE:
        return None
    dsl = int.from_bytes(buf[5:8], "big")
    n = BHS_SIZE + buf[4] * 4 + dsl + pad4(dsl)
    return n if len(buf) >= n else None


class WirePeer:
    def __init__(self, peer: TcpPeer, *, rx_hook: Callable[[bytes], list[bytes]] | None = None,
                 split: random.Random | None = None) -> None:
        self.peer = peer
        self.rx_hook = rx_hook
        self.split = split
        self.sent: Counter[int] = Counter()          # opcode -> PDUs sent
        self.received: Counter[int] = Counter()      # opcode -> PDUs received
        self.unsolicited_data_out = 0
        self.solicited_data_out = 0
        self.immediate_data = 0
        self._tx = bytearray()
        self._rx = bytearray()
        self._ready = bytearray()

    def send(self, data: bytes) -> None:
        self._tx += data
        while (n := pdu_len(self._tx)) is not None:
            pdu = bytes(self._tx[:n])
            del self._tx[:n]
            op = pdu[0] & 0x3F
            self.sent[op] += 1
            if op == 0x05:
                ttt = int.from_bytes(pdu[20:24], "big")
                if ttt == RESERVED_TAG:
                    self.unsolicited_data_out += 1
                else:
                    self.solicited_data_out += 1
            elif op == 0x01 and int.from_bytes(pdu[5:8], "big"):
                self.immediate_data += 1
        self.peer.send(data)

    def recv(self, n: int) -> bytes:
        # Bounded: each pass takes one recv from the real peer.
        while not self._ready:
            chunk = self.peer.recv(n)
            if not chunk:
                return b""
            self._rx += chunk
            while (m := pdu_len(self._rx)) is not None:
                pdu = bytes(self._rx[:m])
                del self._rx[:m]
                self.received[pdu[0] & 0x3F] += 1
                for out in (self.rx_hook(pdu) if self.rx_hook else [pdu]):
                    self._ready += out
        k = len(self._ready) if self.split is None else self.split.randint(1, 7)
        out = bytes(self._ready[:k])
        del self._ready[:k]
        return out

    def close(self) -> None:
        self.peer.close()

    def reset(self) -> None:
        self.peer.reset()
