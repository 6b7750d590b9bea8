"""The hostile target damages any point of an exchange, in every family the issue names
(issue 14): Login Responses and their keys, CHAP challenges, SendTargets answers,
Data-In, R2T (too many included), NOP-In, Async Messages and Rejects. The damaged
positions are drawn over the whole exchange, recorded in each mutation and replayed
from it; a campaign of the reference initiator reaches every family."""

from __future__ import annotations

import random

from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz import hostile
from iscsi_conformance.fuzz.hostile import (
    DAMAGED_PREFIX,
    ISSUE_FAMILIES,
    Mutation,
    _Mutator,
    family_table,
    initiator_campaign,
)

_EXCHANGE: list[P.PDU] = [
    P.LoginResponse(transit=True, csg=1, nsg=3, itt=1, data=b"TargetPortalGroupTag=1\0"),
    P.TextResponse(final=True, itt=2, data=b"TargetName=iqn.2024-01.x:t\0TargetAddress=1,1\0"),
    P.ScsiDataIn(final=True, itt=3, datasn=0, buffer_offset=0, data=bytes(512)),
    P.R2T(itt=4, ttt=5, r2tsn=0, buffer_offset=0, desired_data_transfer_length=4096),
    P.ScsiResponse(itt=4, statsn=3),
    P.NopIn(itt=6, statsn=4),
]


def _damage(conn: int, length: int = 240) -> list[Mutation]:
    mut = _Mutator(random.Random(f"7/{conn}/1"), 1.0, 1)
    out = []
    for i in range(length):
        _sends, _tamper, m = mut.damage(_EXCHANGE[i % len(_EXCHANGE)])
        if m is not None:
            out.append(m)
    return out


def test_damage_lands_anywhere_in_the_exchange_and_in_every_family() -> None:
    done = [m for conn in range(600) for m in _damage(conn)]
    positions = [m.index for m in done]
    assert min(positions) == 0 and max(positions) > 100, max(positions)
    late = sum(p >= DAMAGED_PREFIX for p in positions)
    assert late > len(positions) // 5, (late, len(positions))  # not only the start
    families = {m.family for m in done}
    assert set(ISSUE_FAMILIES) <= families, families
    # the same (seed, case, connection) damages the same positions the same way
    assert [m.literal() for m in _damage(5)] == [m.literal() for m in _damage(5)]


def test_injected_pdus_come_back_from_their_literal() -> None:
    r2t = _EXCHANGE[3]
    assert isinstance(r2t, P.R2T)
    burst = Mutation(1, 9, "inject", ["r2t", {"count": 3, "buffer_offset": 1 << 31}], "r2t")
    again = Mutation.from_literal(burst.literal())
    assert again == burst and "r2t" in again.describe()
    sends, _ = again.apply(r2t)
    assert [p.r2tsn for p in sends] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert sends[1].buffer_offset == 1 << 31  # type: ignore[attr-defined]
    reject = Mutation(1, 2, "inject", ["reject", {"reason": 9, "data": bytes(48).hex()}], "reject")
    sends, _ = reject.apply(_EXCHANGE[2])
    assert isinstance(sends[0], P.Reject) and sends[1] is _EXCHANGE[2]
    assert P.decode(P.encode(sends[0], strict=False))  # it goes out as a PDU
    # a reproducer of an earlier session (no family) still reads
    assert Mutation.from_literal([1, 0, "drop", None]).family == ""


def test_a_campaign_of_the_reference_initiator_reaches_every_family() -> None:
    report = initiator_campaign(
        "reference", seed=3, seconds=60, max_cases=100, rate=1.0, shrink=False
    )
    table = family_table(report.families)
    assert report.cases == 100 and not report.failures, hostile.summary(report)
    assert all(report.families.get(f) for f in ISSUE_FAMILIES), table
    assert "never reached" not in table and table in hostile.summary(report)
