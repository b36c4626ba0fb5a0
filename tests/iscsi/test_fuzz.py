"""Property-based fuzzing of the iSCSI target (hypothesis), and the hostile-input
regressions docs/security.md lists.

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

A fourth generator attacks LUN masking (SCST access groups): an initiator
in a group whose only LUN is 0 sends READ CAPACITY(16) with random 8-byte
LUN fields (peripheral, flat, extended and second-level encodings of the
default group's LUNs, and random bytes). Each must fail or reach the
group's own device (told apart by capacity); REPORT LUNS lists only the
group's LUN. (EXTENDED COPY naming another group's LUN is refused in
tests/vdisk/test_xcopy.py.)

Two fixed regressions sit beside them: a Login Request promising 16 MiB
of text is dropped at once without the target reading it, and numeric
keys whose values only fit after 32-bit truncation are refused, never
taken as their truncated value.

Secrets: a configuration that gives IncomingUser and OutgoingUser the same
secret is refused at start without the secret appearing in uscstd's output
(which ends up in the journal), and CHAP logins (right and wrong secret,
one-way and mutual, through libiscsi's iscsi-inq) leave no secret in the
log even at --log-level debug. The control socket, even with its mode
opened up, serves only root and the daemon's user (SO_PEERCRED).

Bounds: max_examples 150 per generator, each wait WAIT seconds, and a time
budget per generator (examples past it are skipped unless one has already
failed, so shrinking can finish). Failing examples are reported by
hypothesis with the blob to reproduce them (print_blob).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import uscstd_support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initiator import (
    OP_LOGIN_RSP,
    OP_NOP_IN,
    OP_REJECT,
    SAM_STAT_GOOD,
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    ConnectionClosed,
    DigestError,
    Initiator,
    LoginError,
    build_pdu,
    encode_keys,
    pack_login_req,
    pack_nop_out,
    pad4,
    parse_read_capacity16,
    parse_report_luns,
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


@pytest.fixture(scope="module")
def fuzz_srv(tmp_path_factory) -> Iterator:
    cf = uscstd_support
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


def test_login_request_promising_16mib_of_text_is_dropped_without_reading_it(fuzz_srv) -> None:
    ini = _connect(fuzz_srv)
    try:
        bhs = pack_login_req(isid=ini.isid, itt=1, cmd_sn=1, exp_stat_sn=0,
                             csg=STAGE_OPERATIONAL, nsg=STAGE_FULL_FEATURE, transit=True,
                             dsl=(1 << 24) - 1)
        t0 = time.monotonic()
        if _send(ini, bhs + b"InitiatorName=iqn.2026-11.org.uscst:x\0"):
            outcome = _pre_login_outcome(ini, "a Login Request with DataSegmentLength 16 MiB - 1")
            assert outcome != "login-rsp" or ini.expect_closed(WAIT)
        assert time.monotonic() - t0 < WAIT
    finally:
        ini.close()
    _assert_serves(fuzz_srv)


@pytest.mark.parametrize("key", ["MaxRecvDataSegmentLength", "FirstBurstLength",
                                 "MaxBurstLength", "MaxOutstandingR2T"])
def test_numeric_key_that_fits_only_after_32_bit_truncation_is_refused(fuzz_srv, key) -> None:
    value = str((1 << 32) + 512)        # 512 after truncation to 32 bits
    ini = _connect(fuzz_srv)
    try:
        try:
            got = ini.login(fuzz_srv.iqn, keys={key: value})
        except (LoginError, ConnectionClosed) as e:   # a refused login is a fine answer too
            assert not isinstance(e, LoginError) or e.status_class == 0x02, str(e)
            return
        answer = got.get(key)
        if key == "MaxRecvDataSegmentLength":
            # Declarative (the target answers nothing): what it took shows
            # in how it splits a 64 KiB read; 512-byte Data-Ins mean truncation.
            res = ini.read10(0, 128)
            assert res.ok, res
            assert res.data_in_pdus < (128 * 512) // 512, \
                f"{key}={value} was taken as 512: {res.data_in_pdus} Data-In PDUs for 64 KiB"
        else:
            assert answer == "Reject" or (answer is not None and answer.isdigit()
                                          and int(answer) != 512), \
                f"{key}={value} answered {answer!r}: the value was truncated"
    finally:
        ini.close()
    fuzz_srv.assert_healthy()


def test_target_serves_after_the_fuzz_run(fuzz_srv) -> None:
    _assert_serves(fuzz_srv)
    text = fuzz_srv.stderr_text()
    for bad in ("Traceback", "BUG:", "Oops", "WARNING:", "Kernel panic"):
        assert bad not in text, f"{bad} in uscstd log:\n{text[-6000:]}"


# --- LUN masking -------------------------------------------------------------------

ACG_IQN = "iqn.2026-11.org.uscst:acg"
FENCED = "iqn.2026-11.org.uscst:fenced-host1"
OPEN = "iqn.2026-11.org.uscst:open-host"
SIZES = {"pub0": 16 << 20, "pub1": 32 << 20, "grp0": 48 << 20}
ACG_CONFIG = f"""HANDLER vdisk_nullio {{
\tDEVICE pub0 {{
\t\tsize 16M
\t}}
\tDEVICE pub1 {{
\t\tsize 32M
\t}}
\tDEVICE grp0 {{
\t\tsize 48M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {ACG_IQN} {{
\t\tLUN 0 pub0
\t\tLUN 1 pub1
\t\tGROUP fenced {{
\t\t\tLUN 0 grp0
\t\t\tINITIATOR iqn.2026-11.org.uscst:fenced-*
\t\t}}
\t\tenabled 1
\t}}
}}
"""


@pytest.fixture(scope="module")
def acg_srv(tmp_path_factory) -> Iterator:
    cf = uscstd_support
    tmp = tmp_path_factory.mktemp("acg")
    cfg = tmp / "acg.conf"
    cfg.write_text(ACG_CONFIG)
    srv = cf.start_uscstd(tmp / "srv", "--config", str(cfg), "--data-dir", str(tmp / "data"),
                          disk=None, size=None, iqn=ACG_IQN)
    try:
        yield srv
    finally:
        try:
            cf.finish_uscstd(srv)
        finally:
            srv.kill()


def _acg_login(srv, name: str) -> Initiator:
    ini = Initiator(host=srv.host, port=srv.port, timeout=10.0, initiator_name=name)
    ini.connect()
    ini.login(ACG_IQN)
    return ini


def _capacity(res) -> int | None:
    if res.status != SAM_STAT_GOOD or len(res.data) < 12:
        return None
    last, bs = parse_read_capacity16(res.data)
    return (last + 1) * bs


def test_report_luns_lists_only_the_groups_luns(acg_srv) -> None:
    fenced = _acg_login(acg_srv, FENCED)
    other = _acg_login(acg_srv, OPEN)
    try:
        r = fenced.report_luns()
        assert r.ok and parse_report_luns(r.data) == [0], parse_report_luns(r.data)
        r = other.report_luns()
        assert r.ok and parse_report_luns(r.data) == [0, 1], parse_report_luns(r.data)
        rc16 = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)
        assert _capacity(fenced.scsi(rc16, 0, read_len=32)) == SIZES["grp0"]
        assert _capacity(other.scsi(rc16, 0, read_len=32)) == SIZES["pub0"]
        assert _capacity(other.scsi(rc16, 1, read_len=32)) == SIZES["pub1"]
    finally:
        fenced.close()
        other.close()
    acg_srv.assert_healthy()


def _lun_encodings(n: int) -> list[bytes]:
    """Ways an initiator might spell LUN n (SAM-5 4.7)."""
    return [bytes([0, n & 0xFF, 0, 0, 0, 0, 0, 0]),               # peripheral
            bytes([0x40 | (n >> 8) & 0x3F, n & 0xFF, 0, 0, 0, 0, 0, 0]),   # flat
            bytes([0x01, n & 0xFF, 0, 0, 0, 0, 0, 0]),            # peripheral, bus 1
            bytes([0, 0, 0, n & 0xFF, 0, 0, 0, 0]),               # second level
            bytes([0x40, n & 0xFF, 0x40, 0, 0, 0, 0, 0]),         # flat, then more levels
            bytes([0xD2, 0, 0, 0, 0, 0, 0, n & 0xFF]),            # extended flat space
            bytes([0x80 | (n >> 8) & 0x3F, n & 0xFF, 0, 0, 0, 0, 0, 0])]   # logical unit


lun_fields = st.one_of(st.sampled_from([e for n in (0, 1, 2, 256, 257) for e in _lun_encodings(n)]),
                       st.binary(min_size=8, max_size=8))


def test_raw_lun_fields_never_reach_a_lun_outside_the_group(acg_srv) -> None:
    budget = _Budget(BUDGET / 2)
    state: dict[str, Initiator] = {}
    rc16 = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)

    @FUZZ_SETTINGS
    @given(lun=lun_fields)
    def run(lun):
        def body():
            ini = state.get("ini")
            if ini is None or ini.sock is None:
                ini = state["ini"] = _acg_login(acg_srv, FENCED)
            try:
                res = ini.scsi(rc16, lun=lun, read_len=32)
            except ConnectionClosed:
                ini.close()         # a LUN field may legitimately end the connection
                return
            cap = _capacity(res)
            assert cap in (None, SIZES["grp0"]), \
                f"LUN field {lun.hex()} from a fenced initiator reached a {cap}-byte LUN " \
                f"outside its group"
        _run_example(budget, acg_srv, body)

    try:
        run()
    finally:
        if "ini" in state:
            state["ini"].close()
    assert budget.ran >= 20, f"only {budget.ran} examples ran within the budget"
    acg_srv.assert_healthy()


# --- secrets -----------------------------------------------------------------------

SECRET_IN, SECRET_OUT, SECRET_WRONG = "joe-secret-0123", "target-secret-89", "wrong-secret-77"


def _chap_config(in_secret: str, out_secret: str) -> str:
    return f"""HANDLER vdisk_nullio {{
\tDEVICE null0 {{
\t\tsize 16M
\t}}
}}
TARGET_DRIVER iscsi {{
\tenabled 1
\tTARGET {ACG_IQN} {{
\t\tIncomingUser "joe {in_secret}"
\t\tOutgoingUser "tgt {out_secret}"
\t\tLUN 0 null0
\t\tenabled 1
\t}}
}}
"""


def test_one_secret_for_both_directions_is_refused_without_echoing_it(tmp_path: Path) -> None:
    cf = uscstd_support
    cfg = tmp_path / "same.conf"
    cfg.write_text(_chap_config(SECRET_IN, SECRET_IN))
    port = cf.free_port()
    p = subprocess.run([sys.executable, "-m", "tools.uscstd", "--portal", f"127.0.0.1:{port}",
                        "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                        "--control", str(tmp_path / "c.sock")],
                       cwd=cf.REPO_ROOT, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 1, f"uscstd accepted one secret for both directions:\n{out[-3000:]}"
    assert "OutgoingUser" in out, out[-3000:]
    assert SECRET_IN not in out, \
        f"uscstd's refusal prints the CHAP secret:\n{out[-3000:]}"


def test_chap_logins_leave_no_secret_in_the_debug_log(uscstd, tmp_path: Path) -> None:
    exe = shutil.which("iscsi-inq")
    if exe is None:
        pytest.skip("iscsi-inq (libiscsi-bin) is not installed")
    cfg = tmp_path / "chap.conf"
    cfg.write_text(_chap_config(SECRET_IN, SECRET_OUT))
    srv = uscstd("--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                 "--log-level", "debug", disk=None, size=None, iqn=ACG_IQN)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_CHAP")}
    mutual = {**base, "LIBISCSI_CHAP_TARGET_USERNAME": "tgt",
              "LIBISCSI_CHAP_TARGET_PASSWORD": SECRET_OUT}
    runs = [(SECRET_IN, base, 0), (SECRET_WRONG, base, None), (SECRET_IN, mutual, 0)]
    for secret, env, want in runs:
        url = f"iscsi://joe%{secret}@{srv.portal}/{ACG_IQN}/0"
        p = subprocess.run([exe, url], capture_output=True, text=True, errors="replace",
                           timeout=30, env=env, stdin=subprocess.DEVNULL)
        if want is not None:
            assert p.returncode == want, p.stdout + p.stderr
        else:
            assert p.returncode != 0, "a wrong CHAP secret logged in"
    log = srv.stderr_text() + srv.stdout_text()
    assert "login from" in log, "no login line at --log-level debug:\n" + log[-2000:]
    for secret in (SECRET_IN, SECRET_OUT, SECRET_WRONG):
        assert secret not in log, f"a CHAP secret is in uscstd's log:\n{log[-3000:]}"
    srv.assert_healthy()


_PEER_PROBE = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"op": "ping"}).encode() + b"\\n")
    line = s.makefile("rb").readline()
except OSError as e:
    print("ERROR", e.errno)
else:
    print("ANSWER" if line else "CLOSED")
"""


def test_control_socket_serves_no_other_user_even_with_its_mode_opened(uscstd) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    sys_python = "/usr/bin/python3"
    if not os.access(sys_python, os.X_OK):
        pytest.skip("no /usr/bin/python3 for the unprivileged client")
    with tempfile.TemporaryDirectory(prefix="uscst-") as d:
        os.chmod(d, 0o711)
        sock = f"{d}/ctl.sock"
        # Returns once the socket is bound, listening and chmod 0600 (the
        # "control socket" line): a chmod before the server's own would race.
        srv = uscstd("--control", sock)
        assert os.path.exists(sock), srv.stdout_text()
        os.chmod(sock, 0o666)          # what a careless admin might do

        def as_nobody() -> None:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        p = subprocess.run([sys_python, "-c", _PEER_PROBE, sock], capture_output=True,
                           text=True, timeout=30, preexec_fn=as_nobody, cwd="/")
        # The server closes at accept: the probe sees EOF, ECONNRESET, or
        # EPIPE when its request is written after the close (a race).
        assert p.stdout.strip() in ("CLOSED", "ERROR 104", "ERROR 32"), \
            f"uid 65534 reached the control socket: {p.stdout!r} {p.stderr[-500:]!r}"
        p = subprocess.run([sys_python, "-c", _PEER_PROBE, sock], capture_output=True,
                           text=True, timeout=30, cwd="/")
        assert p.stdout.strip() == "ANSWER", (p.stdout, p.stderr[-500:])
        srv.assert_healthy()
