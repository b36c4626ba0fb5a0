"""Property-based fuzzing of the iSCSI target with hypothesis.

Three generators feed one uscstd (module fixture, nullio LUN, its state
directory in a temporary directory):
  - random 48-byte BHSs before login, with sane lengths (the promised AHS
    and data follow) or insane ones (a data segment over the 8192 bytes a
    login PDU may carry, RFC 7143 13.12; only a few bytes follow);
  - Login Requests with random text (raw bytes, or key=value pairs drawn
    from real and invented keys with odd values and separators);
  - a valid login followed by 1-3 random PDUs (random opcode, flags, tags,
    CmdSN often inside the window, LUN often 0, random CDB), sane or
    insane lengths, then an immediate NOP-Out ping.

Property: every input ends, within a bound, in an answer or a clean close:
  - before login, a Reject, a Login Response (an error status, or a status
    0 answer to a request that happened to be acceptable) or the target
    closing the connection; any other PDU before login is a failure;
  - after login, the ping is answered (NOP-In with its ITT) or rejected, or
    the connection is closed; silence until the bound is a hang.
After each generator, a fresh login + TEST UNIT READY works and the log
holds no Traceback, BUG:, Oops or WARNING:; the fixture's teardown adds a
clean exit on SIGTERM.

Bounds: max_examples 150 per generator, each wait WAIT seconds, and a time
budget per generator (examples past it are skipped unless one has already
failed, so shrinking can finish). Failing examples are reported by
hypothesis with the blob to reproduce them (print_blob).
"""
from __future__ import annotations

import importlib.util
import random
import struct
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initiator import (
    OP_LOGIN_RSP,
    OP_NOP_IN,
    OP_REJECT,
    RESERVED_TAG,
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    ConnectionClosed,
    DigestError,
    Initiator,
    build_pdu,
    encode_keys,
    pack_login_req,
    pack_nop_out,
    pad4,
)

WAIT = 5.0                 # seconds an input may take to be answered or closed
BUDGET = 7.0               # seconds of examples per generator
MAX_EXAMPLES = 150
LOGIN_MAX_DSL = 8192       # RFC 7143: login PDUs carry at most 8192 bytes
PING_ITT = 0x7EADBEEF

FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


def _root_conftest():
    """tests/conftest.py as a module (start/finish helpers for a module
    fixture; pytest's own copy is not importable by name)."""
    name = "uscst_root_conftest"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "conftest.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fuzz_srv(tmp_path_factory) -> Iterator:
    cf = _root_conftest()
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = cf.start_uscstd(tmp / "srv", "--nullio", "--data-dir", str(tmp / "data"),
                          disk=None, size="64M")
    try:
        yield srv
    finally:
        try:
            cf.finish_uscstd(srv)
        finally:
            srv.kill()


class _Budget:
    """Time budget of one generator; never cuts short once an example failed."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.failed = False
        self.ran = 0

    def over(self) -> bool:
        return not self.failed and time.monotonic() > self.end


def _run_example(budget: _Budget, srv, body) -> None:
    if budget.over():
        return
    budget.ran += 1
    try:
        body()
        assert srv.proc.poll() is None, \
            f"uscstd died (exit {srv.proc.returncode}):\n{srv.stderr_text()[-3000:]}"
    except BaseException:
        budget.failed = True
        raise


def _connect(srv) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=WAIT, strict=False)
    ini.connect()
    return ini


def _send(ini: Initiator, data: bytes) -> bool:
    """Send; False if the target already closed (a legitimate reaction)."""
    try:
        ini.send_raw(data, timeout=WAIT)
        return True
    except ConnectionClosed:
        return False


def _pre_login_outcome(ini: Initiator, what: str) -> str:
    """Wait for the reaction to a pre-login input: 'closed', 'reject' or
    'login-rsp'. Anything else, or nothing within WAIT, fails."""
    try:
        pdu = ini.recv_pdu(WAIT, track=False)
    except ConnectionClosed:
        return "closed"
    except TimeoutError:
        pytest.fail(f"no answer and no close within {WAIT} s after {what}")
    except DigestError as e:
        pytest.fail(f"digest on a PDU before login after {what}: {e}")
    if pdu.opcode == OP_REJECT:
        return "reject"
    if pdu.opcode == OP_LOGIN_RSP:
        return "login-rsp"
    pytest.fail(f"target sent {pdu!r} before login after {what}")


def _assert_serves(srv) -> None:
    """A fresh session logs in and TEST UNIT READY is GOOD (one retry for a
    unit attention a fuzzed reset may have left); the log is clean."""
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0)
    ini.connect()
    try:
        ini.login(srv.iqn)
        res = ini.test_unit_ready()
        if not res.ok and res.sense_key == 6:
            res = ini.test_unit_ready()
        assert res.ok, res
        assert ini.logout() == 0
    finally:
        ini.close()
    srv.assert_healthy()


# --- strategies --------------------------------------------------------------------

sane_dsl = st.one_of(st.integers(0, 64), st.integers(0, LOGIN_MAX_DSL))
insane_dsl = st.integers(LOGIN_MAX_DSL + 1, (1 << 24) - 1)
ahs_words = st.one_of(st.just(0), st.integers(0, 8), st.integers(9, 255))

REAL_KEYS = ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "HeaderDigest",
             "DataDigest", "MaxConnections", "InitialR2T", "ImmediateData",
             "MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
             "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
             "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "CHAP_A",
             "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R", "TargetAlias", "SendTargets",
             "X-com.example.Key", "TaskReporting", "iSCSIProtocolLevel"]
odd_values = st.one_of(
    st.sampled_from(["", "None", "CRC32C", "None,CRC32C", "Yes", "No", "Normal", "Discovery",
                     "CHAP", "0", "1", "8192", "4294967296", "-1", "0x10", "0b", "0xZZ",
                     "iqn.2026-11.org.uscst:default", "iqn.2026-11.org.uscst:fuzz",
                     "Reject", "Irrelevant", "NotUnderstood", "A" * 300]),
    st.text(max_size=40),
    st.integers(-2**40, 2**40).map(str))
key_names = st.one_of(st.sampled_from(REAL_KEYS), st.text(min_size=0, max_size=70))
kv_text = st.lists(st.tuples(key_names, odd_values, st.sampled_from(["\0", "\0", "", "\0\0", "="])),
                   max_size=12).map(
    lambda items: "".join(f"{k}={v}{sep}" for k, v, sep in items).encode("utf-8", "replace"))
login_text = st.one_of(kv_text, st.binary(max_size=600),
                       st.binary(min_size=LOGIN_MAX_DSL - 8, max_size=LOGIN_MAX_DSL + 200))

INITIATOR_OPCODES = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x1C, 0x1D, 0x1E]


@st.composite
def random_bhs(draw, dsl_strategy):
    raw = bytearray(draw(st.binary(min_size=48, max_size=48)))
    words = draw(ahs_words)
    dsl = draw(dsl_strategy)
    raw[4] = words
    raw[5:8] = dsl.to_bytes(3, "big")
    return bytes(raw), words * 4, dsl


@st.composite
def full_feature_pdu(draw):
    """(bhs, ahs_len, dsl, sane, seed): a random PDU for full feature phase."""
    sane = draw(st.booleans()) or draw(st.booleans())        # 3 in 4 sane
    bhs, ahs_len, dsl = draw(random_bhs(st.integers(0, 4096) if sane
                                        else st.integers(1 << 20, (1 << 24) - 1)))
    b = bytearray(bhs)
    op = draw(st.one_of(st.sampled_from(INITIATOR_OPCODES), st.integers(0, 0x3F)))
    b[0] = (b[0] & 0xC0) | op
    if draw(st.booleans()):
        b[8:16] = bytes(8)                           # LUN 0
    if draw(st.booleans()):
        b[4] = 0                                     # no AHS, most often
        ahs_len = 0
    return bytes(b), ahs_len, dsl, sane, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


# --- generators --------------------------------------------------------------------

def test_random_bhs_before_login_is_answered_or_closed(fuzz_srv) -> None:
    budget = _Budget(BUDGET)

    @FUZZ_SETTINGS
    @given(case=random_bhs(st.one_of(sane_dsl, insane_dsl)), seed=st.integers(0, 2**32 - 1),
           tail=st.integers(0, 100))
    def run(case, seed, tail):
        bhs, ahs_len, dsl = case

        def body():
            rnd = random.Random(seed)
            sane = dsl <= LOGIN_MAX_DSL
            ini = _connect(fuzz_srv)
            try:
                if sane:
                    data = rnd.randbytes(ahs_len + dsl + pad4(dsl))
                else:
                    data = rnd.randbytes(ahs_len + tail)
                if _send(ini, bhs + data):
                    _pre_login_outcome(ini, f"BHS {bhs.hex()} (AHS {ahs_len}, DSL {dsl}, "
                                            f"{'all' if sane else 'only ' + str(tail)} bytes sent)")
            finally:
                ini.close()
        _run_example(budget, fuzz_srv, body)

    run()
    assert budget.ran >= 20, f"only {budget.ran} examples ran within the budget"
    _assert_serves(fuzz_srv)


def test_random_login_text_is_answered_or_closed(fuzz_srv) -> None:
    budget = _Budget(BUDGET)

    @FUZZ_SETTINGS
    @given(text=login_text, csg=st.sampled_from([STAGE_SECURITY, STAGE_OPERATIONAL]),
           nsg=st.sampled_from([STAGE_OPERATIONAL, STAGE_FULL_FEATURE]),
           transit=st.booleans(), cont=st.booleans(), prefix=st.booleans())
    def run(text, csg, nsg, transit, cont, prefix):
        if prefix:
            # Real identification first, so the random keys reach negotiation.
            text = encode_keys({"InitiatorName": "iqn.2026-11.org.uscst:fuzz",
                                "TargetName": fuzz_srv.iqn}) + text

        def body():
            ini = _connect(fuzz_srv)
            try:
                sent = text[:LOGIN_MAX_DSL + 200]
                bhs = pack_login_req(isid=ini.isid, itt=1, cmd_sn=1, exp_stat_sn=0, csg=csg,
                                     nsg=nsg, transit=transit, cont=cont, dsl=len(sent))
                if _send(ini, build_pdu(bhs, sent)):
                    _pre_login_outcome(ini, f"login text {sent[:200]!r}... ({len(sent)} bytes, "
                                            f"CSG {csg} NSG {nsg} T {transit} C {cont})")
            finally:
                ini.close()
        _run_example(budget, fuzz_srv, body)

    run()
    assert budget.ran >= 20, f"only {budget.ran} examples ran within the budget"
    _assert_serves(fuzz_srv)


def _ping_outcome(ini: Initiator, what: str) -> str:
    """After the fuzzed PDUs: send an immediate NOP-Out and wait for its
    NOP-In, a Reject, or the connection to close. PDUs the fuzzed ones
    caused (responses, R2Ts, Data-In...) are read and dropped."""
    bhs = pack_nop_out(itt=PING_ITT, cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn)
    if not _send(ini, build_pdu(bhs)):
        return "closed"
    deadline = time.monotonic() + WAIT
    # Bounded by the deadline (each recv waits at most until it).
    while True:
        try:
            pdu = ini.recv_pdu(max(0.0, deadline - time.monotonic()), track=False)
        except ConnectionClosed:
            return "closed"
        except TimeoutError:
            pytest.fail(f"target neither answered a NOP-Out ping nor closed within {WAIT} s "
                        f"after {what}")
        if pdu.opcode == OP_NOP_IN and pdu.itt == PING_ITT:
            return "pong"
        if pdu.opcode == OP_REJECT and pdu.rejected_bhs[16:20] == struct.pack(">I", PING_ITT):
            return "reject"


def test_random_pdus_after_login_are_answered_or_closed(fuzz_srv) -> None:
    budget = _Budget(BUDGET)

    @FUZZ_SETTINGS
    @given(pdus=st.lists(full_feature_pdu(), min_size=1, max_size=3))
    def run(pdus):
        def body():
            ini = _connect(fuzz_srv)
            try:
                ini.login(fuzz_srv.iqn)
                what = []
                for bhs, ahs_len, dsl, sane, seed, in_window in pdus:
                    b = bytearray(bhs)
                    if in_window and not b[0] & 0x40:
                        b[24:28] = struct.pack(">I", ini.cmd_sn)      # CmdSN in the window
                        ini.cmd_sn = (ini.cmd_sn + 1) & 0xFFFFFFFF
                    rnd = random.Random(seed)
                    body_len = ahs_len + (dsl + pad4(dsl) if sane else rnd.randrange(64))
                    what.append(f"{bytes(b).hex()} (AHS {ahs_len}, DSL {dsl}, "
                                f"{'all' if sane else 'part'} sent)")
                    if not _send(ini, bytes(b) + rnd.randbytes(body_len)):
                        return
                    if not sane:
                        break          # the target cannot frame what follows
                _ping_outcome(ini, "PDUs " + "; ".join(what))
            finally:
                ini.close()
        _run_example(budget, fuzz_srv, body)

    run()
    assert budget.ran >= 20, f"only {budget.ran} examples ran within the budget"
    _assert_serves(fuzz_srv)


def test_target_serves_after_the_fuzz_run(fuzz_srv) -> None:
    _assert_serves(fuzz_srv)
    text = fuzz_srv.stderr_text()
    for bad in ("Traceback", "BUG:", "Oops", "WARNING:", "Kernel panic"):
        assert bad not in text, f"{bad} in uscstd log:\n{text[-6000:]}"
