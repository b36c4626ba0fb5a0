"""Replay of the coverage-guided fuzzing corpus (issue 16 campaign 6.3)
and a hypothesis pass over the same entry point.

tests/fuzz/corpus holds the inputs atheris found to reach distinct code
in the BHS codec, text keys, CHAP and the login state machine
(tools/fuzz_iscsi.py, merged with libFuzzer's -merge=1). Replaying them
needs no atheris and no network; any exception other than the codecs'
typed errors, or a broken invariant, fails the test with the file name.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import tools.fuzz_iscsi as fuzz

CORPUS = Path(__file__).resolve().parent / "corpus"


def test_fuzz_corpus_replays_without_a_crash() -> None:
    n = fuzz.replay([CORPUS])
    assert n >= 100, f"corpus too small ({n} inputs): was it merged?"


def test_fuzz_seeds_reach_full_feature_phase_through_chap() -> None:
    reached = []
    orig = fuzz.login_session.step

    def step(self, req):
        rsp = orig(self, req)
        if self.done:
            reached.append(self.auth_method)
        return rsp
    fuzz.login_session.step = step
    try:
        for name in ("login-chap-one-way", "login-chap-mutual", "login-security-then-op"):
            fuzz.one_input(fuzz.seeds()[name])
    finally:
        fuzz.login_session.step = orig
    assert reached == ["CHAP", "CHAP", "None"]


def test_fuzz_replay_reports_a_planted_parser_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes):
        raise KeyError("planted")
    monkeypatch.setattr(fuzz, "parse_text", broken)
    with pytest.raises(fuzz.FuzzCrash, match="KeyError"):
        fuzz.replay([CORPUS])


@seed(1603)
@settings(max_examples=3000, deadline=None, database=None)
@given(data=st.binary(max_size=600))
def test_fuzz_entry_point_survives_hypothesis_inputs(data: bytes) -> None:
    fuzz.one_input(data)
