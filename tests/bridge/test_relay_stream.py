"""The relay's streaming (bridge/pump.py ``_judge_chunk(stream=True)``): a Data-In,
Data-Out or SCSI Command is judged from its header and its data passes unread. It must
judge every conversation as the decoder does, however the bytes are cut into chunks:
the golden captures and each of test_judge.py's planted breaches (which it must still
catch); and no rule may read the data of the classes it streams (judge.DATA_UNREAD)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from bridge_helpers import decoded, golden
from test_judge import PLANTED

from iscsi_conformance.bridge import pump
from iscsi_conformance.bridge.judge import DATA_UNREAD, Direction, Judge, SessionBook
from iscsi_conformance.bridge.pump import Bridge, BridgedConnection
from iscsi_conformance.core import pdu as P

Conv = list[tuple[Direction, P.PDU]]
#: chunk sizes: a byte at a time, cuts inside the header and its digest, the capture's
#: segments, a relay's receive buffer
CHUNKS = (1, 47, 50, 4096, 65000, 1 << 18)


def wire(conv: Conv) -> list[tuple[Direction, bytes]]:
    """Each run of PDUs one way as the bytes sent, digests on from full feature phase."""
    judge = Judge()
    runs: list[tuple[Direction, bytearray]] = []
    for d, p in conv:
        raw = P.encode(p, header_digest=judge.header_digest, data_digest=judge.data_digest,
                       strict=False)  # fmt: skip
        if runs and runs[-1][0] == d:
            runs[-1][1].extend(raw)
        else:
            runs.append((d, bytearray(raw)))
        judge.pdu(d, p)
    return [(d, bytes(b)) for d, b in runs]


def relay(runs: list[tuple[Direction, bytes]], chunk: int, *, stream: bool) -> Judge:
    """The runs through a bridge's judging, ``chunk`` bytes at a time."""
    bridge = Bridge(("127.0.0.1", 9))
    conn = BridgedConnection(0, SessionBook())
    for d, data in runs:
        view = memoryview(data)
        was = conn.judge.full_feature
        for at in range(0, len(data), chunk):
            bridge._judge_chunk(conn, d, conn.decoders[d], view[at : at + chunk], stream)
        if conn.judge.full_feature and not was:  # as the pump does (RFC 7143 13.1)
            for dec in conn.decoders.values():
                dec.header_digest = conn.judge.header_digest
                dec.data_digest = conn.judge.data_digest
    assert not bridge.harness_errors
    assert all(not dec.buffered for dec in conn.decoders.values())
    assert conn.skip == {"i->t": 0, "t->i": 0}
    return conn.judge


def verdict(judge: Judge) -> tuple[list[str], set[str], int]:
    return [str(b) for b in judge.breaches], judge.exercised, judge.index


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the PDUs judged from their header alone."""
    calls = [0]
    real = pump.decode_head

    def counting(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        calls[0] += found is not None
        return found

    monkeypatch.setattr(pump, "decode_head", counting)
    yield calls


@pytest.mark.parametrize("index", range(len(golden())))
def test_streaming_judges_the_golden_captures_as_the_decoder(
    index: int, streamed: list[int]
) -> None:
    runs = wire(decoded(golden()[index]))
    expected = verdict(relay(runs, len(max(runs, key=lambda r: len(r[1]))[1]), stream=False))
    assert expected[0] == []
    for chunk in CHUNKS:
        assert verdict(relay(runs, chunk, stream=True)) == expected, f"chunks of {chunk}"


def test_streaming_takes_the_data_pdus_from_their_header(streamed: list[int]) -> None:
    """Reads and writes (the second with HeaderDigest=CRC32C): their Data-In, Data-Out
    and SCSI Commands are judged from the header, in every cut of the bytes."""
    for index in (2, 8):  # test_judge.READS, WRITES
        conv = decoded(golden()[index])
        data_pdus = sum(isinstance(p, DATA_UNREAD) for _, p in conv)
        runs = wire(conv)
        for chunk in CHUNKS:
            streamed[0] = 0
            relay(runs, chunk, stream=True)
            assert streamed[0] == data_pdus, f"conversation {index}, chunks of {chunk}"


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_streaming_catches_each_planted_breach(rule: str) -> None:
    index, plant = PLANTED[rule]
    runs = wire(plant(decoded(golden()[index])))
    expected = verdict(relay(runs, 1 << 24, stream=False))
    for chunk in (47, 65000):
        judge = relay(runs, chunk, stream=True)
        assert verdict(judge) == expected, f"{rule}, chunks of {chunk}"
        assert rule in {b.rule.name for b in judge.breaches}, f"{rule}, chunks of {chunk}"


def _zeroed(conv: Conv) -> Conv:
    return [
        (d, dataclasses.replace(p, data=bytes(len(p.data))) if isinstance(p, DATA_UNREAD) else p)  # type: ignore[call-arg]
        for d, p in conv
    ]


def test_no_rule_reads_the_data_of_a_streamed_class() -> None:
    """DATA_UNREAD: the data of those PDUs replaced by zeros, every conversation (clean
    and planted) is judged the same."""
    convs = [decoded(c) for c in golden()]
    cases = [*convs, *(plant(convs[i]) for i, plant in PLANTED.values())]
    for conv in cases:
        plain, zero = Judge(), Judge()
        for (d, p), (_, z) in zip(conv, _zeroed(conv), strict=True):
            plain.pdu(d, p)
            zero.pdu(d, z)
        assert verdict(zero) == verdict(plain)


def test_decode_head() -> None:
    pdu = P.ScsiDataIn(final=True, itt=7, datasn=0, buffer_offset=0, data=b"abcdefg")
    for digest in (False, True):
        raw = P.encode(pdu, header_digest=digest, data_digest=digest, strict=False)
        head = 52 if digest else 48
        found = P.decode_head(raw[:head], header_digest=digest)
        assert found is not None
        got, used, size = found
        assert (used, size) == (head, head + 8)  # the data digest is the caller's
        assert got == dataclasses.replace(pdu, data=bytes(7))
        assert P.decode_head(raw[: head - 1], header_digest=digest) is None  # not all in
    raw = P.encode(pdu, header_digest=True, strict=False)
    bad = raw[:48] + bytes([raw[48] ^ 1]) + raw[49:]
    assert P.decode_head(bad, header_digest=True) is None  # decode() says what is wrong
    cmd = P.ScsiCommand(final=True, read=True, itt=1, expected_data_transfer_length=512,
                        cdb=bytes(32))  # fmt: skip
    assert P.decode_head(P.encode(cmd, strict=False)) is None  # an AHS


def test_decoder_wanted_and_drop() -> None:
    raw = P.encode(P.ScsiDataIn(final=True, itt=7, data=bytes(100)), strict=False)
    dec = P.PDUDecoder()
    assert dec.wanted == 48
    dec.feed(raw[:10])
    assert dec.wanted == 38
    dec.feed(raw[10:48])
    assert dec.next_pdu() is None and dec.wanted == 100
    dec.drop()
    assert dec.buffered == 0 and dec.wanted == 48
    dec.feed(raw)
    assert isinstance(dec.next_pdu(), P.ScsiDataIn) and dec.buffered == 0
