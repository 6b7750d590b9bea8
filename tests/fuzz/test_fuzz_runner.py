"""The Hypothesis strategies of hostile cases draw what they promise (the state
machine's proofs against live targets are in test_machine.py)."""

from __future__ import annotations

from iscsi_conformance.fuzz.runner import FuzzCase, ffp_cases, login_cases

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


def test_strategies_draw_cases() -> None:
    from hypothesis import given, settings

    @settings(max_examples=30, deadline=None)
    @given(login_cases())
    def login(case: FuzzCase) -> None:
        assert case.phase == "login" and len(case.pdus) == 1

    @settings(max_examples=30, deadline=None)
    @given(ffp_cases())
    def ffp(case: FuzzCase) -> None:
        assert (
            case.phase == "ffp" and 1 <= len(case.pdus) <= 3 and len(case.tampers) == len(case.pdus)
        )

    login()
    ffp()
