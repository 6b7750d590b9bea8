"""The negative FullFeature.Bidi tests can fail: each runs here against the reference
target configured without what it checks, as it is and broken on purpose.

``FullFeature.Bidi.XdWriteReadNotImplemented`` and ``FullFeature.Bidi.RefusedWithoutSupport``
run only on targets whose manifest says ``xdwriteread = false`` or ``bidirectional =
false``, which the reference target's manifest does not. Its configuration can say so
(``xdwriteread = false``: the LU answers XDWRITEREAD(10) with INVALID COMMAND
OPERATION CODE; ``bidirectional = false``: a SCSI Command with R and W is rejected,
reason Command not supported, RFC 7143 11.17.1). Each test must pass on the target so
configured, and must fail, naming RSBC3-5.48-2 and saying what happened, when the target
answers the command wrongly instead:

- GOOD: the command taken as if supported (GOOD, with no data at all, or with the XOR);
- another sense (INVALID FIELD IN CDB) for the missing XDWRITEREAD;
- the connection closed, or silence (no answer within the answer time-out).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import ScsiStatus
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.harness.peerpool import TargetEntry
from iscsi_conformance.harness.profiles import Credentials
from iscsi_conformance.peers.base import Manifest, TargetEndpoint
from iscsi_conformance.plugin.spec import ConformanceViolation
from iscsi_conformance.plugin.under_test import Evidence, TargetUnderTest
from iscsi_conformance.scsi.device import LogicalUnit, ScsiOutcome
from iscsi_conformance.target import connection
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.server import TargetServer
from suite_modules import load_suite

SUITE = load_suite("fullfeature/test_bidi.py", "bidi_negative_under_proof")
IQN = "iqn.2024-01.org.example:no-bidi"
ROW = r"RSBC3-5\.48-2"


def _target(**knobs: bool) -> Iterator[TargetUnderTest]:
    cfg = simple_config(("127.0.0.1", 0), IQN, ["16M"])
    cfg = dataclasses.replace(cfg, targets=(dataclasses.replace(cfg.targets[0], **knobs),))
    server = TargetServer(cfg)
    server.start_in_thread()
    try:
        host, port = server.portal()
        caps = {"bidirectional": knobs.get("bidirectional", True), "xdwriteread": False}
        entry = TargetEntry(
            name="reference",
            manifest=Manifest(name="reference", role="target", capabilities=caps),
            endpoints={"default": TargetEndpoint(host, port, IQN, luns=(0,))},
        )
        yield TargetUnderTest(entry, Credentials.generate(), Evidence(), allow_dataloss=True)
    finally:
        server.stop_thread()


@pytest.fixture(scope="module")
def no_xdwriteread() -> Iterator[TargetUnderTest]:
    yield from _target(xdwriteread=False)


@pytest.fixture(scope="module")
def no_bidi() -> Iterator[TargetUnderTest]:
    yield from _target(bidirectional=False)


# --------------------------------------------------------------------------- broken targets


def _answer_bidi(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The target answers every bidirectional command ``how``: "good" (a SCSI
    Response GOOD at once, no R2T and no data), "close" (the connection ends) or
    "silent" (nothing, the CmdSN not taken). Other commands are served as usual."""
    real = connection._FFP_HANDLERS[P.ScsiCommand]

    def on_scsi_command(self: Connection, pdu: P.ScsiCommand, now: float) -> None:
        if not (pdu.read and pdu.write):
            real(self, pdu, now)
            return
        if how == "close":
            self.close()
        elif how == "good":
            s = self.session
            assert s is not None
            s.expcmdsn = sn_add(pdu.cmdsn, 1)
            self._emit(
                P.ScsiResponse(
                    itt=pdu.itt, status=ScsiStatus.GOOD, statsn=self.next_statsn(),
                    expcmdsn=s.expcmdsn, maxcmdsn=s.maxcmdsn,
                )
            )  # fmt: skip

    _handle(monkeypatch, on_scsi_command)


def _handle(monkeypatch: pytest.MonkeyPatch, handler: Any) -> None:
    """SCSI Commands go to ``handler`` (the connection dispatches through its table)."""
    monkeypatch.setitem(connection._FFP_HANDLERS, P.ScsiCommand, handler)


def _lu_answers(monkeypatch: pytest.MonkeyPatch, outcome: ScsiOutcome) -> None:
    """The LU answers XDWRITEREAD(10) with ``outcome`` instead of its CHECK CONDITION."""
    real = LogicalUnit.execute

    def execute(self: LogicalUnit, nexus: Any, cdb: bytes, data_out: bytes = b"", **kw: Any) -> Any:
        if cdb[:1] == b"\x53":
            return outcome
        return real(self, nexus, cdb, data_out, **kw)

    monkeypatch.setattr(LogicalUnit, "execute", execute)


def _fails(test: Any, target: TargetUnderTest, *words: str) -> str:
    with pytest.raises(ConformanceViolation, match=ROW) as failed:
        asyncio.run(test(target))
    text = str(failed.value)
    for word in words:
        assert word in text, text
    return text


# --------------------------------------------------------------------------- XdWriteReadNotImplemented


def test_xdwriteread_not_implemented_passes_on_a_target_without_it(no_xdwriteread) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(SUITE.test_xdwriteread_not_implemented(no_xdwriteread))


def test_xdwriteread_not_implemented_fails_when_it_runs_after_all(
    no_xdwriteread, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _lu_answers(monkeypatch, ScsiOutcome(ScsiStatus.GOOD, data=bytes(16 * 512)))
    _fails(SUITE.test_xdwriteread_not_implemented, no_xdwriteread, "status 0", "20h/00h")


def test_xdwriteread_not_implemented_fails_on_another_sense(
    no_xdwriteread, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    invalid_field_in_cdb = bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])
    _lu_answers(monkeypatch, ScsiOutcome(ScsiStatus.CHECK_CONDITION, sense=invalid_field_in_cdb))
    _fails(SUITE.test_xdwriteread_not_implemented, no_xdwriteread, "ASC/ASCQ (36, 0)")


@pytest.mark.parametrize(("how", "words"), [("close", "closed"), ("silent", "nothing within")])
def test_xdwriteread_not_implemented_fails_without_an_answer(
    no_xdwriteread, monkeypatch: pytest.MonkeyPatch, how: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    _answer_bidi(monkeypatch, how)
    _fails(SUITE.test_xdwriteread_not_implemented, no_xdwriteread, "no status", words)


def test_xdwriteread_not_implemented_fails_on_good_without_data(
    no_xdwriteread, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _answer_bidi(monkeypatch, "good")
    _fails(SUITE.test_xdwriteread_not_implemented, no_xdwriteread, "status 0")


# --------------------------------------------------------------------------- RefusedWithoutSupport


def test_refused_without_support_passes_on_a_target_without_bidi(no_bidi) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(SUITE.test_bidi_refused_without_support(no_bidi))


def test_refused_without_support_fails_on_good_without_data(
    no_bidi, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _answer_bidi(monkeypatch, "good")
    _fails(SUITE.test_bidi_refused_without_support, no_bidi, "status 0, no Reject")


def test_refused_without_support_fails_when_it_is_served_after_all(
    no_bidi, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # the transport takes the command after all (the bidirectional knob ignored) and the
    # LU runs it: GOOD with the XOR
    real = connection._FFP_HANDLERS[P.ScsiCommand]

    def on_scsi_command(self: Connection, pdu: P.ScsiCommand, now: float) -> None:
        s = self.session
        assert s is not None and s.target is not None
        cfg = s.target.config
        s.target.config = dataclasses.replace(cfg, bidirectional=True)
        try:
            real(self, pdu, now)
        finally:
            s.target.config = cfg

    _handle(monkeypatch, on_scsi_command)
    _fails(SUITE.test_bidi_refused_without_support, no_bidi, "status 0, no Reject")


@pytest.mark.parametrize(("how", "words"), [("close", "closed"), ("silent", "nothing within")])
def test_refused_without_support_fails_without_an_answer(
    no_bidi, monkeypatch: pytest.MonkeyPatch, how: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    _answer_bidi(monkeypatch, how)
    _fails(SUITE.test_bidi_refused_without_support, no_bidi, words)


def test_the_knobs_parse_from_a_configuration() -> None:
    from iscsi_conformance.errors import ConfigError
    from iscsi_conformance.target.config import parse_config

    raw: dict[str, Any] = {
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [{"name": IQN, "bidirectional": False, "xdwriteread": False}],
    }
    (t,) = parse_config(raw).targets
    assert t.bidirectional is False and t.xdwriteread is False
    raw["targets"][0]["bidirectional"] = "no"
    with pytest.raises(ConfigError, match="bidirectional"):
        parse_config(raw)
