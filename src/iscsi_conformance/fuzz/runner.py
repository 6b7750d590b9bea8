"""Hypothesis strategies of hostile initiator PDUs, for the state machine of sessions.

Theory of operation: ``initiator_pdus`` draws any request (every field over its whole
range, from ``fuzz.strategies``) or an unknown opcode; ``tampers`` draws a ``Tamper``
(a wrong length, padding, AHS, a patched BHS byte) or none; ``login_cases`` and
``ffp_cases`` draw one case of the old one-case-per-connection campaign (a first Login
Request, or one to three PDUs after a login). ``fuzz.machine`` uses the first two in
its ``hostile_pdu`` rule; the campaign that ran one case per connection and checked
only liveness was replaced by that machine (``fuzz ... --engine hypothesis``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.text import format_pairs
from iscsi_conformance.fuzz import keys as key_strategies
from iscsi_conformance.fuzz import strategies as pdu_strategies


@dataclasses.dataclass
class FuzzCase:
    """What one example sends. ``phase`` is "login" or "ffp" (after a correct login)."""

    phase: str
    pdus: tuple[Any, ...]
    tampers: tuple[Any, ...]


def tampers() -> st.SearchStrategy[Any]:
    """No tampering most of the time; otherwise one wrong length, padding or digest."""
    one = st.one_of(
        st.builds(P.Tamper, data_segment_length=st.integers(0, 0xFFFFFF)),
        st.builds(P.Tamper, total_ahs_length=st.integers(0, 0xFF)),
        st.builds(P.Tamper, padding=st.binary(min_size=1, max_size=3)),
        st.builds(P.Tamper, extra=st.binary(min_size=1, max_size=64)),
        st.builds(
            P.Tamper,
            bhs_patch=st.dictionaries(
                st.integers(0, 47), st.integers(0, 255), min_size=1, max_size=3
            ),
        ),
    )
    return st.none() | one


def initiator_pdus(max_data: int = 256) -> st.SearchStrategy[Any]:
    """PDUs an initiator could send (requests), plus unknown opcodes."""
    classes = [c for c in P.PDU_CLASSES.values() if c.is_request]
    return st.one_of(
        *[pdu_strategies.pdu_of(c, max_data=max_data) for c in classes],
        pdu_strategies.unknown_pdus(max_data),
    )


@st.composite
def login_cases(draw: st.DrawFn) -> FuzzCase:
    """A first Login Request whose stages, flags and text are drawn."""
    pairs = draw(key_strategies.pairs(max_pairs=8))
    req = P.LoginRequest(
        transit=draw(st.booleans()),
        cont=draw(st.booleans()),
        csg=draw(st.integers(0, 3)),
        nsg=draw(st.integers(0, 3)),
        version_max=draw(st.integers(0, 255)),
        version_min=draw(st.integers(0, 255)),
        isid=draw(st.integers(0, (1 << 48) - 1)),
        tsih=draw(st.sampled_from([0, 0, 1, 0xFFFF])),
        itt=draw(st.integers(0, 0xFFFFFFFF)),
        data=format_pairs(pairs, strict=False),
    )
    return FuzzCase("login", (req,), (draw(tampers()),))


@st.composite
def ffp_cases(draw: st.DrawFn) -> FuzzCase:
    n = draw(st.integers(1, 3))
    pdus = tuple(draw(initiator_pdus()) for _ in range(n))
    return FuzzCase("ffp", pdus, tuple(draw(tampers()) for _ in range(n)))
