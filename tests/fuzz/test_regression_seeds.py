"""Every reproducer in fixtures/fuzz/ that once made the reference target log an
internal error replays, in memory, against the engine without one (issue 14)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.fuzz.repro import load
from iscsi_conformance.target import engine as E
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.luns import LunStore

SEEDS = sorted((Path(__file__).parents[2] / "fixtures" / "fuzz").glob("*.py"))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_seeds_exist() -> None:
    assert len(SEEDS) >= 3


def _engine(target: str) -> tuple[E.TargetEngine, Connection]:
    cfg = simple_config(("127.0.0.1", 0), target, ["8M", "1M"])
    engine = E.TargetEngine(cfg, LunStore(cfg).by_target, rng=lambda n: bytes(n))
    return engine, engine.new_connection(portal_group=1)


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_seed_replays_without_internal_error(path: Path) -> None:
    finding = load(path)
    keys = dict(finding["login_keys"])
    engine, conn = _engine(keys["TargetName"])
    errors = _Errors()
    log = logging.getLogger("iscsi_conformance.target")
    log.addHandler(errors)
    try:
        if finding["phase"] == "ffp":
            req = P.LoginRequest(
                transit=True,
                csg=1,
                nsg=3,
                isid=1,
                itt=1,
                data=T.format_pairs(finding["login_keys"]),
            )
            conn.receive_data(P.encode(req))
            engine.take_output()
            assert conn.state is E.ConnState.FULL_FEATURE
        for raw in finding["pdus"]:
            conn.receive_data(raw)
        out = b"".join(bytes(b) for _, bufs, _ in engine.take_output() for b in bufs)
    finally:
        log.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    dec = P.PDUDecoder(max_data_segment_length=8192)
    dec.feed(out)
    assert all(isinstance(p, P.PDU) for p in dec)  # every answer decodes, within our MRDSL


def test_answer_our_encoder_refuses_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer that breaks a format rule is our bug: it is logged as an internal
    error, never taken for the peer's protocol error (which gets a Reject, RFC 7143
    11.17.1) as the PDUFormatError it raises would otherwise be."""
    engine, conn = _engine("iqn.2024-01.org.iscsi-conformance:fuzz")

    def bad_answer(self: Connection, pdu: P.PDU, now: float) -> None:
        self._emit(P.NopIn(itt=1 << 40))  # an ITT wider than its 32 bits

    monkeypatch.setattr(Connection, "handle_pdu", bad_answer)
    errors = _Errors()
    log = logging.getLogger("iscsi_conformance.target")
    log.addHandler(errors)
    try:
        conn.receive_data(P.encode(P.NopOut(immediate=True, itt=1)))
        out = b"".join(bytes(b) for _, bufs, _ in engine.take_output() for b in bufs)
    finally:
        log.removeHandler(errors)
    assert [r.getMessage().split(" from ")[0] for r in errors.records] == [
        "internal error handling 'NopOut'"
    ]
    dec = P.PDUDecoder()
    dec.feed(out)
    assert not any(isinstance(p, P.Reject) for p in dec)
