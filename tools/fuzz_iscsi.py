"""fuzz_iscsi: coverage-guided fuzzing of the pure iSCSI codecs and login
state machine (issue 16 campaign 6.3).

What is fuzzed, in-process, without a network (one_input(data) dispatches
on the first byte):
  0 hdr    iscsi_scst/hdr.py: every unpack_* of a BHS, login_fields, the
           AHS length, serial-number comparisons, packing a response from
           the parsed fields;
  1 text   iscsi_scst/usr/param.py: parse_text, key_negotiator.process in
           the operational and full-feature stages, split_text/pack_text
           round trip, text_negotiation (SendTargets);
  2 login  iscsi_scst/usr/iscsid.py's login_session fed a sequence of Login
           Requests (flags, stage, header fields and text all from the
           input), with CHAP (usr/chap.py) configured one-way or mutual;
           a request may ask the harness to answer the last CHAP_C
           correctly, so the fuzzer reaches the stages after
           authentication too;
  3 chap   usr/chap.py's value codecs: decode_binary, parse_chap_identifier,
           parse_user_secret, validate_secret, validate_user_name.

A crash is any exception other than the codecs' own typed errors
(ProtocolError, NegotiationError), or an invariant broken (a failed login
step not leaving the session in STATE_DROP, a response not in the
transition table's next states, a text round trip that changes the keys).
A hang is an input slower than --timeout (libFuzzer's -timeout).

Usage (atheris; libFuzzer flags and more corpus directories after --):
  python -m tools.fuzz_iscsi --runs 1000000 --max-seconds 1800 \\
      --corpus /tmp/fuzz-corpus tests/fuzz/corpus
  python -m tools.fuzz_iscsi --corpus tests/fuzz/corpus -- -merge=1 /tmp/fuzz-corpus
  python -m tools.fuzz_iscsi --replay tests/fuzz/corpus   (no atheris needed)

The corpus in tests/fuzz/corpus (kept small with libFuzzer's -merge) is
replayed by tests/fuzz/test_fuzz_corpus.py in CI.

Where it may run: on the host, as a tool; it imports the kernel-layer
codecs, which are pure (no kshim, no I/O).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

import attrs

from iscsi_scst.hdr import (BHS_SIZE, ProtocolError, login_fields, pack_generic_rsp,
                            pack_login_rsp, unpack_common, unpack_data_out, unpack_scsi_cmd,
                            unpack_words, sn_le, sn_lt)
from iscsi_scst.usr.chap import (chap_authenticator, chap_credentials, decode_binary,
                                 parse_chap_identifier, parse_user_secret, validate_secret,
                                 validate_user_name)
from iscsi_scst.usr.iscsid import (STATE_DROP, login_req, login_session, login_transitions,
                                   target_portal, text_negotiation)
from iscsi_scst.usr.param import (ISCSI_FULL_FEATURE_PHASE, ISCSI_OP_PARMS_NEGOTIATION_STAGE,
                                  NegotiationError, iscsi_tgt_params, key_negotiator, pack_text,
                                  parse_text, split_text)

TNAME = "iqn.2026-11.org.uscst:fuzz"
ISID = bytes.fromhex("400001370000")
USER, SECRET = "joe", "joe-secret-0123"
OUT_USER, OUT_SECRET = "tgt", "target-secret-89"
ONE_WAY = chap_credentials([(USER, SECRET)])
MUTUAL = chap_credentials([(USER, SECRET)], (OUT_USER, OUT_SECRET))


class FuzzCrash(AssertionError):
    """An invariant the fuzzed code must keep was broken."""


@attrs.define
class fuzz_target:
    tgt_params: iscsi_tgt_params = attrs.Factory(iscsi_tgt_params)
    alias: str = ""
    portal_group_tag: int = 1
    chap: chap_credentials | None = None


class Input:
    """Consumes the fuzzer's bytes field by field (zeros when exhausted)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        self.pos += len(b)
        return b

    def rest(self) -> bytes:
        return self.take(len(self.data))


# -- 0: the BHS codec -------------------------------------------------------------

def fuzz_hdr(inp: Input) -> None:
    raw = inp.rest()
    bhs = raw[:BHS_SIZE].ljust(BHS_SIZE, b"\0")
    b0, flags, _b2, _b3, ahs, dsl, lun, itt = unpack_common(bhs)
    if not (0 <= dsl < 1 << 24 and ahs == bhs[4] * 4 and len(lun) == 8):
        raise FuzzCrash(f"lengths out of range: dsl {dsl} ahs {ahs}")
    if len(unpack_scsi_cmd(bhs)[3]) != 16:
        raise FuzzCrash("CDB is not 16 bytes")
    unpack_data_out(bhs)
    unpack_words(bhs)
    f = login_fields(bhs)
    req = login_req(**f, data=raw[BHS_SIZE:])
    a, b = f["cmd_sn"], f["exp_stat_sn"]
    if sn_lt(a, b) and sn_lt(b, a):
        raise FuzzCrash(f"serial numbers {a} and {b} each less than the other")
    if sn_le(a, b) != (a == b or sn_lt(a, b)):
        raise FuzzCrash("sn_le disagrees with sn_lt")
    out = bytearray(BHS_SIZE)
    pack_generic_rsp(out, b0 & 0x3F, flags, 0, 0, dsl, lun, itt, 0, f["cmd_sn"], f["exp_stat_sn"],
                     0)
    if unpack_common(out)[7] != itt:
        raise FuzzCrash("packed ITT differs from the parsed one")
    pack_login_rsp(out, flags, req.version_max, req.version_min, dsl, req.isid, req.tsih, itt,
                   0, 0, 0, 0, 0)


# -- 1: text keys -------------------------------------------------------------------

def _targets() -> list[tuple[str, list[target_portal]]]:
    return [(TNAME, [target_portal("127.0.0.1", 3260, 1), target_portal("::1", 3260, 1)])]


def fuzz_text(inp: Input) -> None:
    mode = inp.byte()
    data = inp.rest()
    try:
        pairs = parse_text(data)
    except NegotiationError:
        return
    again = parse_text(pack_text(pairs))
    if again != pairs:
        raise FuzzCrash(f"text round trip changed {pairs!r} into {again!r}")
    limit = 1 + (mode << 4)
    pieces = split_text(pack_text(pairs), limit)
    if b"".join(pieces) != pack_text(pairs) or any(len(p) > limit for p in pieces):
        raise FuzzCrash("split_text lost bytes or overran its limit")
    try:
        if mode & 1:
            text_negotiation(data, session_type="Discovery" if mode & 2 else "Normal",
                             target_name=TNAME if mode & 4 else None, list_targets=_targets)
        else:
            neg = key_negotiator(tgt=iscsi_tgt_params(), discovery=bool(mode & 2),
                                 leading=bool(mode & 4))
            stage = ISCSI_FULL_FEATURE_PHASE if mode & 8 else ISCSI_OP_PARMS_NEGOTIATION_STAGE
            neg.process(pairs, stage)
            neg.target_offers()
            neg.check_required()
            neg.sess_params()
    except NegotiationError:
        return


# -- 2: the login state machine ------------------------------------------------------

def _chap_answer(last: dict[str, str]) -> list[tuple[str, str]]:
    """A correct CHAP_N/CHAP_R for the last challenge seen, or nothing."""
    try:
        ident = int(last["CHAP_I"])
        chal = bytes.fromhex(last["CHAP_C"][2:])
    except (KeyError, ValueError):
        return []
    r = hashlib.md5(bytes([ident & 0xFF]) + SECRET.encode() + chal).hexdigest()
    return [("CHAP_N", USER), ("CHAP_R", "0x" + r)]


def fuzz_login(inp: Input) -> None:
    cfg = inp.byte()
    creds = (None, ONE_WAY, MUTUAL, ONE_WAY)[cfg & 3]
    tgt = fuzz_target(chap=creds, tgt_params=iscsi_tgt_params(
        header_digest=("CRC32C", "None") if cfg & 4 else ("None",)))
    rnd_state = [cfg]

    def random_bytes(n: int) -> bytes:       # deterministic per input, as the fuzzer needs
        rnd_state[0] += 1
        seed = rnd_state[0].to_bytes(8, "big")
        return (hashlib.sha256(seed).digest() * (n // 32 + 1))[:n]

    auth = chap_authenticator(credentials=lambda s: tgt.chap if s.session_type != "Discovery"
                              else None, random_bytes=random_bytes, required=bool(cfg & 8))
    sess = login_session(find_target={TNAME: tgt}.get, alloc_tsih=lambda: 0x77,
                         authenticator=auth if cfg & 16 else None)
    last: dict[str, str] = {}
    for _ in range(8):
        if inp.pos >= len(inp.data):
            break
        flags = inp.byte()
        hdr = inp.byte()
        n = inp.byte() | (inp.byte() & 0x3F) << 8
        body = inp.take(n)
        if flags & 0x40:                  # ask for the right CHAP answer
            answer = _chap_answer(last)
            if flags & 0x20:              # and challenge the target (mutual CHAP)
                answer += [("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 16)]
            body = pack_text(answer) + body
        if flags & 0x10:                  # a plausible first request
            body = pack_text([("InitiatorName", "iqn.1993-08.org.debian:01:fuzz"),
                              ("TargetName", TNAME), ("SessionType", "Normal"),
                              ("AuthMethod", "CHAP,None")]) + body
        state = sess.state
        req = login_req(transit=bool(flags & 0x80), cont=bool(flags & 0x08),
                        csg=(flags >> 2) & 3, nsg=flags & 3, version_max=hdr & 1,
                        version_min=0, isid=ISID if not hdr & 2 else bytes(6),
                        tsih=0 if not hdr & 4 else 0x77, itt=hdr >> 4, cid=1,
                        cmd_sn=5, exp_stat_sn=0, data=body)
        rsp = sess.step(req)
        if rsp.status_class != 0 and not sess.failed:
            raise FuzzCrash(f"status {rsp.status_class:#x}/{rsp.status_detail:#x} but the "
                            f"session is in {sess.state.name}")
        if rsp.status_class == 0 and sess.failed:
            raise FuzzCrash("success status from a session in STATE_DROP")
        if not sess.failed and rsp.status_class == 0:
            ev = sess._event(req)
            tr = login_transitions.get((state, ev))
            if tr is None or sess.state not in tr.next_states:
                raise FuzzCrash(f"{state.name} -> {sess.state.name} not in the table")
        if sess.done and sess.params is None:
            raise FuzzCrash("full feature phase without negotiated parameters")
        try:
            last = dict(parse_text(rsp.data))
        except NegotiationError:
            raise FuzzCrash(f"the target sent text it cannot parse: {rsp.data!r}") from None
        if sess.failed or sess.state == STATE_DROP:
            break


# -- 3: CHAP value codecs -------------------------------------------------------------

def fuzz_chap(inp: Input) -> None:
    mode = inp.byte()
    value = inp.rest().decode("utf-8", "replace")
    key = ("CHAP_C", "CHAP_R", "CHAP_I", "CHAP_N")[mode & 3]
    try:
        raw, _form = decode_binary(key, value)
        if not isinstance(raw, bytes):
            raise FuzzCrash("decode_binary returned no bytes")
    except NegotiationError:
        pass
    try:
        ident = parse_chap_identifier(value)
        if not 0 <= ident <= 255:
            raise FuzzCrash(f"CHAP_I {ident} out of range")
    except NegotiationError:
        pass
    r = parse_user_secret(value)
    if not isinstance(r, (str, tuple)):
        raise FuzzCrash("parse_user_secret returned neither")
    for fn in (validate_secret, validate_user_name):
        if fn(value) is not None and not isinstance(fn(value), str):
            raise FuzzCrash(f"{fn.__name__} returned {fn(value)!r}")


TARGETS: tuple[Callable[[Input], None], ...] = (fuzz_hdr, fuzz_text, fuzz_login, fuzz_chap)
EXPECTED = (ProtocolError, NegotiationError)


def one_input(data: bytes) -> None:
    """The fuzz entry point: raises only on a crash (FuzzCrash or an
    unexpected exception)."""
    if not data:
        return
    inp = Input(data[1:])
    try:
        TARGETS[data[0] % len(TARGETS)](inp)
    except EXPECTED:
        pass


def _login_step(flags: int, hdr: int, text: bytes) -> bytes:
    return bytes([flags, hdr, len(text) & 0xFF, len(text) >> 8]) + text


def seeds() -> dict[str, bytes]:
    """Hand-written starting inputs: well-formed PDUs, texts and logins
    (the fuzzer mutates from there)."""
    bhs = bytearray(48)
    bhs[0], bhs[1], bhs[5:8] = 0x01, 0x81, (512).to_bytes(3, "big")
    login_bhs = bytearray(48)
    login_bhs[0], login_bhs[1] = 0x43, 0x87
    ops = pack_text([("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"),
                     ("MaxRecvDataSegmentLength", "65536"), ("InitialR2T", "No"),
                     ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
                     ("FirstBurstLength", "65536"), ("MaxConnections", "1"),
                     ("ErrorRecoveryLevel", "0"), ("X-vendor.key", "1")])
    return {
        "hdr-scsi-cmd": b"\x00" + bytes(bhs),
        "hdr-login": b"\x00" + bytes(login_bhs) + b"InitiatorName=iqn.x\0",
        "text-operational": b"\x01\x00" + ops,
        "text-sendtargets-all": b"\x01\x03" + pack_text([("SendTargets", "All")]),
        "text-sendtargets-own": b"\x01\x05" + pack_text([("SendTargets", "")]),
        "login-none-to-ffp": b"\x02\x00" + _login_step(0x10 | 0x80 | 0x04 | 0x03, 0, ops),
        "login-security-then-op": b"\x02\x00" + _login_step(0x10 | 0x80 | 0x01, 0, b"")
                                  + _login_step(0x80 | 0x04 | 0x03, 0, ops),
        "login-chap-one-way": b"\x02\x11" + _login_step(0x10, 0, b"")
                              + _login_step(0x00, 0, pack_text([("CHAP_A", "5")]))
                              + _login_step(0x40 | 0x80 | 0x01, 0, b"")
                              + _login_step(0x80 | 0x04 | 0x03, 0, ops),
        "login-chap-mutual": b"\x02\x12" + _login_step(0x10, 0, b"")
                             + _login_step(0x00, 0, pack_text([("CHAP_A", "5")]))
                             + _login_step(0x60 | 0x80 | 0x01, 0, b"")
                             + _login_step(0x80 | 0x04 | 0x03, 0, ops),
        "login-continue": b"\x02\x00" + _login_step(0x10 | 0x08, 0, b"X-a=1\0")
                          + _login_step(0x80 | 0x04 | 0x03, 0, ops),
        "chap-hex": b"\x03\x00" + b"0x" + b"ab" * 16,
        "chap-base64": b"\x03\x01" + b"0bq80=",
        "chap-user-secret": b"\x03\x03" + b"joe joe-secret-0123",
    }


def replay(paths: list[Path]) -> int:
    """Run every file of the corpus dirs/files through one_input; return
    how many inputs ran (raises on the first crash, naming the file)."""
    n = 0
    for p in paths:
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        for f in files:
            try:
                one_input(f.read_bytes())
            except Exception as e:
                raise FuzzCrash(f"{f}: {type(e).__name__}: {e}") from e
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fuzz_iscsi", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000000, help="inputs to run (libFuzzer -runs)")
    p.add_argument("--max-seconds", type=int, default=1800, help="time bound (-max_total_time)")
    p.add_argument("--timeout", type=int, default=10, help="seconds before an input is a hang")
    p.add_argument("--corpus", default=None, help="corpus directory (read and extended)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--artifacts", default="/tmp/uscst-fuzz-artifacts",
                   help="where libFuzzer writes crash/timeout inputs")
    p.add_argument("--replay", nargs="+", default=None, help="replay these files/dirs and exit")
    p.add_argument("--write-seeds", metavar="DIR", help="write the hand-written seeds and exit")
    p.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags (after --)")
    # libFuzzer re-runs this command for -merge with flags of its own: pass them on.
    a, extra = p.parse_known_args(argv)
    a.libfuzzer += extra
    if a.write_seeds:
        os.makedirs(a.write_seeds, exist_ok=True)
        for name, data in seeds().items():
            Path(a.write_seeds, f"seed-{name}").write_bytes(data)
        return 0
    if a.replay:
        t0 = time.monotonic()
        n = replay([Path(x) for x in a.replay])
        print(f"fuzz_iscsi: replayed {n} inputs in {time.monotonic() - t0:.1f} s, no crash")
        return 0
    try:
        import atheris     # only the scripted campaign needs it (docs/decisions/0023)
    except ImportError:
        print("fuzz_iscsi: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    flags = [f"{sys.executable} -m tools.fuzz_iscsi", f"-runs={a.runs}", f"-max_total_time={a.max_seconds}",
             f"-timeout={a.timeout}", f"-seed={a.seed}", "-print_final_stats=1",
             f"-artifact_prefix={a.artifacts.rstrip('/')}/",
             *[x for x in a.libfuzzer if x.startswith("-")]]
    os.makedirs(a.artifacts, exist_ok=True)
    if a.corpus:                          # the first directory is the one written to
        os.makedirs(a.corpus, exist_ok=True)
        flags.append(a.corpus)
    flags += [x for x in a.libfuzzer if not x.startswith("-")]
    atheris.instrument_all()
    atheris.Setup(flags, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
