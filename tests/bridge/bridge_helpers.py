"""Shared pieces of the bridge's tests: the golden captures decoded into conversations."""

from __future__ import annotations

from pathlib import Path

from iscsi_conformance.bridge.capture import Conversation, conversations
from iscsi_conformance.bridge.judge import Direction, Judge
from iscsi_conformance.core.pdu import PDU, PDUDecoder

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "captures"
GOLDEN_PORT = 13263  # make_capture.sh's tgt portal


def golden() -> list[Conversation]:
    return conversations(CAPTURES / "session.pcap", GOLDEN_PORT)


def decoded(conv: Conversation) -> list[tuple[Direction, PDU]]:
    """The conversation's PDUs in wire order (digests switched on as agreed)."""
    judge = Judge()
    decoders = {d: PDUDecoder() for d in ("i->t", "t->i")}
    out: list[tuple[Direction, PDU]] = []
    for direction, data in conv.segments:
        dec = decoders[direction]
        dec.feed(data)
        for pdu in dec:
            was = judge.full_feature
            judge.pdu(direction, pdu)
            out.append((direction, pdu))
            if judge.full_feature and not was:
                for d in decoders.values():
                    d.header_digest, d.data_digest = judge.header_digest, judge.data_digest
    return out
