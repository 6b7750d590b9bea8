"""Digests: CRC32C header and data digests on every PDU type the target sends, and
what it does with a bad digest it receives (RFC 7143 7.8, 11.1, 13.1)."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import RejectReason
from iscsi_conformance.mutation import wire
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection

#: The PDUs a target sends in full feature phase (RFC 7143 11), by name.
_SENT = {
    "NopIn": P.NopIn,
    "ScsiResponse": P.ScsiResponse,
    "TaskManagementResponse": P.TaskManagementResponse,
    "TextResponse": P.TextResponse,
    "DataIn": P.ScsiDataIn,
    "LogoutResponse": P.LogoutResponse,
    "R2T": P.R2T,
    "AsyncMessage": P.AsyncMessage,
    "Reject": P.Reject,
}
#: Those of them that carry a data segment in the suite's runs.
_WITH_DATA = ("NopIn", "ScsiResponse", "TextResponse", "DataIn", "Reject", "AsyncMessage")
#: The test that sees each PDU under digests where Digests.FullFeature.EveryPdu cannot:
#: an Async Message is the target's own initiative, asked of a dedicated reference target.
_CATCHER = {"AsyncMessage": "Digests.FullFeature.AsyncMessage"}


def _corrupt(p: Patcher, cls: type[P.PDU], which: str) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if not isinstance(pdu, cls):
            return pdu
        if which == "header" and stream.hd:
            good = wire.encode(pdu, stream)
            crc = int.from_bytes(good[48 + len(pdu.ahs) : 52 + len(pdu.ahs)], "big")
            return wire.encode(pdu, stream, header_digest_value=crc ^ 0x1)
        if which == "data" and stream.dd and pdu.data:
            good = wire.encode(pdu, stream)
            return good[:-4] + bytes([good[-4] ^ 0x80]) + good[-3:]
        return pdu

    p.rewrite_output(fn)


def _register(name: str, cls: type[P.PDU], which: str) -> None:
    @mutant(
        f"Digests.{which.capitalize()}Digest.Wrong.{name}",
        "digests",
        f"every {name} PDU goes out with a wrong {which} digest (11.1, 13.1: CRC32C)",
        catches=[_CATCHER.get(name, "Digests.FullFeature.EveryPdu")],
    )
    def apply(p: Patcher) -> None:
        _corrupt(p, cls, which)


for _name, _cls in _SENT.items():
    _register(_name, _cls, "header")
for _name in _WITH_DATA:
    _register(_name, _SENT[_name], "data")


@mutant(
    "Digests.Sent.HeaderDigestOmitted",
    "digests",
    "the target sends full-feature PDUs without the header digest it negotiated (13.1)",
    catches=["Digests.FullFeature.EveryPdu[header]"],
)
def no_header_digest(p: Patcher) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if stream.hd:
            return P.encode(pdu, header_digest=False, data_digest=stream.dd, strict=False)
        return pdu

    p.rewrite_output(fn)


@mutant(
    "Digests.Sent.DataDigestOnEmptySegment",
    "digests",
    "the target appends a data digest to PDUs with no data segment (11.1: only with data)",
    catches=["Digests.FullFeature.EveryPdu[data]"],
)
def digest_on_empty(p: Patcher) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if stream.dd and not pdu.data and not isinstance(pdu, P.LoginResponse):
            return wire.encode(pdu, stream) + b"\0\0\0\0"
        return pdu

    p.rewrite_output(fn)


@mutant(
    "Digests.Negotiation.DataFollowsHeader",
    "digests",
    "the data digest in force is the header digest's outcome (13.1: two separate keys)",
    catches=["Digests.FullFeature.EveryPdu[header]", "Digests.FullFeature.EveryPdu[data]"],
)
def data_follows_header(p: Patcher) -> None:
    def post(self: Connection, *args: Any) -> None:
        self.dd = self.hd
        self.decoder.data_digest = self.hd

    p.after(Connection, "enter_full_feature", post)


@mutant(
    "Digests.Negotiation.NonePreferred",
    "digests",
    "offered CRC32C,None the target answers None (6.2.1: the originator's first value it supports)",
    catches=[
        "Digests.Negotiation.HeaderDigest.CRC32CThenNone",
        "Digests.Negotiation.DataDigest.CRC32CThenNone",
    ],
)
def none_preferred(p: Patcher) -> None:
    from iscsi_conformance.core import text
    from iscsi_conformance.core.negotiation import Negotiator

    def make(old: Any) -> Any:
        def answer(self: Negotiator, spec: Any, value: str) -> str:
            if spec.name in ("HeaderDigest", "DataDigest") and "None" in text.parse_list(value):
                self.values[spec.name] = "None"
                return "None"
            return old(self, spec, value)  # type: ignore[no-any-return]

        return answer

    p.for_target(Negotiator, "_answer_list", make)


def _digest_error(p: Patcher, handle: Any) -> None:
    def make(old: Any) -> Any:
        def on_error(self: Connection, exc: Any) -> None:
            if not handle(self, exc):
                old(self, exc)

        return on_error

    p.wrap(Connection, "_digest_error", make)


@mutant(
    "Digests.Received.DataErrorIgnoredAtErl0",
    "digests",
    "at ERL 0 a PDU with a bad data digest is dropped silently; the connection goes on (7.8, 7.1.4)",
    catches=["Digests.Errors.CorruptedAtErl0[data]"],
)
def data_error_erl0(p: Patcher) -> None:
    _digest_error(p, lambda self, exc: self.erl == 0 and exc.which == "data")


@mutant(
    "Digests.Received.HeaderErrorSkippedAtErl0",
    "digests",
    "at ERL 0 a PDU with a bad header digest is skipped by its length; the connection goes on (7.8)",
    catches=["Digests.Errors.CorruptedAtErl0[header]"],
)
def header_error_erl0(p: Patcher) -> None:
    def handle(self: Connection, exc: Any) -> bool:
        if self.erl == 0 and exc.which == "header":
            self.decoder._skip_current()
            return True
        return False

    _digest_error(p, handle)


@mutant(
    "Digests.Received.NoRejectAtErl1",
    "digests",
    "at ERL 1 a data digest error is not answered with a Reject (reason 0x02) (7.8, 11.17.1)",
    catches=["Digests.Errors.DataDigestRejectAtErl1"],
)
def no_reject_erl1(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reject(self: Connection, reason: int, header: bytes, **kw: Any) -> None:
            if reason == RejectReason.DATA_DIGEST_ERROR:
                return
            old(self, reason, header, **kw)

        return reject

    p.wrap(Connection, "reject", make)
