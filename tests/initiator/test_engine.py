"""The sans-IO initiator engine, in memory: PDUs in, PDUs and events out."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from iscsi_conformance.core.codes import LoginStage, ScsiStatus
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator, Role
from iscsi_conformance.core.pdu import (
    R2T,
    LoginResponse,
    NopIn,
    NopOut,
    Reject,
    ScsiCommand,
    ScsiDataIn,
    ScsiDataOut,
    ScsiResponse,
    SnackRequest,
    TextRequest,
    TextResponse,
    bhs_of,
    encode,
    lun_to_field,
)
from iscsi_conformance.errors import SCSIError
from iscsi_conformance.initiator.engine import (
    NONE_TAG,
    CommandCompleted,
    InitiatorConnection,
    PDURejected,
    PingAnswered,
    ProtocolViolated,
    SessionSequencer,
    TargetPinged,
    TextCompleted,
    make_isid,
)


def conn(**params: Any) -> InitiatorConnection:
    seq = SessionSequencer(10, expcmdsn=10, maxcmdsn=40)
    return InitiatorConnection(seq, params=NegotiatedParameters(**params), expstatsn=5)


def covered(pdus: list[ScsiDataOut]) -> list[tuple[int, int]]:
    return [(p.buffer_offset, p.buffer_offset + len(p.data)) for p in pdus]


def check_sequence(pdus: list[ScsiDataOut], start: int, end: int, limit: int) -> None:
    """One Data-Out sequence: contiguous, DataSN 0.., each within ``limit``, F on the last."""
    pos = start
    for n, p in enumerate(pdus):
        assert p.datasn == n
        assert p.buffer_offset == pos
        assert 0 < len(p.data) <= limit
        assert p.final == (n == len(pdus) - 1)
        pos += len(p.data)
    assert pos == end
    # and every PDU is encodable as is
    for p in pdus:
        encode(p)


def test_isid_is_random_type_10b() -> None:
    isid = make_isid(lambda n: bytes(range(1, n + 1)))
    assert isid >> 46 == 0b10  # T = random (RFC 7143 11.12.5)
    assert (isid >> 40) & 0x3F == 0  # A reserved
    assert (isid >> 16) & 0xFFFFFF == 0x010203
    assert isid & 0xFFFF == 0x0405


def test_write_with_immediate_data_then_r2t() -> None:
    c = conn(
        max_recv_data_segment_length_peer=8192,
        first_burst_length=65536,
        immediate_data=True,
        initial_r2t=True,
    )
    data = bytes(range(256)) * 400  # 102400 bytes
    itt = c.start_command(1, b"\x8a" + bytes(15), data_out=data)
    (cmd,) = c.pdus_to_send()
    assert isinstance(cmd, ScsiCommand)
    assert cmd.write and not cmd.read and cmd.final
    assert cmd.expected_data_transfer_length == len(data)
    assert cmd.data == data[:8192]  # immediate data within the target's MRDSL (13.12)
    assert cmd.cmdsn == 10 and cmd.expstatsn == 5 and cmd.lun == lun_to_field(1)
    assert c.session.cmdsn == 11
    events = c.receive_pdu(R2T(itt=itt, ttt=0x77, statsn=5, expcmdsn=11, maxcmdsn=40, r2tsn=0,
                               buffer_offset=8192, desired_data_transfer_length=len(data) - 8192))  # fmt: skip
    assert not [e for e in events if isinstance(e, ProtocolViolated)]
    outs = c.pdus_to_send()
    assert all(isinstance(p, ScsiDataOut) and p.ttt == 0x77 and p.itt == itt for p in outs)
    check_sequence(outs, 8192, len(data), 8192)
    assert b"".join(p.data for p in outs) == data[8192:]


def test_unsolicited_data_out_up_to_first_burst() -> None:
    c = conn(
        max_recv_data_segment_length_peer=4096,
        first_burst_length=16384,
        immediate_data=False,
        initial_r2t=False,
    )
    data = b"\xab" * 50000
    itt = c.start_command(0, bytes(16), data_out=data)
    cmd, *outs = c.pdus_to_send()
    assert isinstance(cmd, ScsiCommand) and cmd.data == b"" and not cmd.final  # Data-Out follows
    assert all(p.ttt == NONE_TAG for p in outs)  # unsolicited (11.7.4)
    check_sequence(outs, 0, 16384, 4096)
    c.receive_pdu(R2T(itt=itt, ttt=1, statsn=5, expcmdsn=11, maxcmdsn=40, r2tsn=0,
                      buffer_offset=16384, desired_data_transfer_length=50000 - 16384))  # fmt: skip
    check_sequence(c.pdus_to_send(), 16384, 50000, 4096)


def test_immediate_plus_unsolicited() -> None:
    c = conn(
        max_recv_data_segment_length_peer=8192,
        first_burst_length=20000,
        immediate_data=True,
        initial_r2t=False,
    )
    c.start_command(0, bytes(16), data_out=b"z" * 30000)
    cmd, *outs = c.pdus_to_send()
    assert len(cmd.data) == 8192 and not cmd.final
    check_sequence(outs, 8192, 20000, 8192)


def test_small_write_fits_in_immediate_data() -> None:
    c = conn(max_recv_data_segment_length_peer=8192, immediate_data=True, initial_r2t=False)
    c.start_command(0, bytes(16), data_out=b"q" * 512)
    (cmd,) = c.pdus_to_send()
    assert cmd.final and cmd.data == b"q" * 512


def test_r2t_beyond_limits_is_recorded() -> None:
    c = conn(max_recv_data_segment_length_peer=8192, max_burst_length=16384, immediate_data=False)
    itt = c.start_command(0, bytes(16), data_out=b"d" * 40000)
    c.pdus_to_send()
    events = c.receive_pdu(R2T(itt=itt, ttt=1, statsn=5, expcmdsn=11, maxcmdsn=40, r2tsn=3,
                               buffer_offset=0, desired_data_transfer_length=32768))  # fmt: skip
    msgs = [e.message for e in events if isinstance(e, ProtocolViolated)]
    assert any("MaxBurstLength" in m for m in msgs)
    assert any("R2TSN 3" in m for m in msgs)
    # still answered, with what was asked
    check_sequence(c.pdus_to_send(), 0, 32768, 8192)


def test_data_in_reassembly_and_status() -> None:
    c = conn(max_recv_data_segment_length_local=4096)
    itt = c.start_command(0, bytes(16), expected_in=10000)
    (cmd,) = c.pdus_to_send()
    assert cmd.read and cmd.expected_data_transfer_length == 10000
    payload = bytes(i % 251 for i in range(10000))
    c.receive_pdu(
        ScsiDataIn(
            itt=itt, datasn=0, buffer_offset=0, data=payload[:4096], expcmdsn=11, maxcmdsn=40
        )
    )
    c.receive_pdu(
        ScsiDataIn(
            itt=itt, datasn=1, buffer_offset=4096, data=payload[4096:8192], expcmdsn=11, maxcmdsn=40
        )
    )
    events = c.receive_pdu(ScsiDataIn(itt=itt, datasn=2, buffer_offset=8192, data=payload[8192:], final=True,
                                      status_present=True, status=0, statsn=5, expcmdsn=11, maxcmdsn=40))  # fmt: skip
    assert not c.violations
    (done,) = [e for e in events if isinstance(e, CommandCompleted)]
    assert done.result.data == payload and done.result.good
    assert c.expstatsn == 6
    assert itt not in c.tasks


def test_data_in_pdus_out_of_order_placed_by_buffer_offset() -> None:
    """With DataPDUInOrder=No the target may send a sequence's Data-In PDUs in any
    offset order (RFC 7143 13.18), DataSN still counting in sending order (11.7.5): the
    reference initiator places each PDU at its Buffer Offset, and the data read is the
    data sent, with no violation recorded."""
    c = conn(data_pdu_in_order=False, max_recv_data_segment_length_local=4096)
    itt = c.start_command(0, bytes(16), expected_in=10000)
    c.pdus_to_send()
    payload = bytes(i % 251 for i in range(10000))
    pieces = [(8192, payload[8192:]), (0, payload[:4096]), (4096, payload[4096:8192])]
    events: list[Any] = []
    for datasn, (offset, data) in enumerate(pieces):
        last = datasn == len(pieces) - 1
        events = c.receive_pdu(ScsiDataIn(itt=itt, datasn=datasn, buffer_offset=offset, data=data,
                                          final=last, status_present=last, status=0, statsn=5,
                                          expcmdsn=11, maxcmdsn=40))  # fmt: skip
    assert not c.violations
    (done,) = [e for e in events if isinstance(e, CommandCompleted)]
    assert done.result.good and done.result.data == payload


def test_data_in_leaving_a_gap_in_order_recorded() -> None:
    """With DataPDUInOrder and DataSequenceInOrder Yes (the defaults) Data-In comes at
    continuously increasing offsets (RFC 7143 13.18, 13.19): one that starts past the
    end so far leaves bytes the READ would return as zeros, which is recorded (found by
    fuzz --initiator reference: a first Data-In moved to Buffer Offset 1 went unnoticed)."""
    c = conn(max_recv_data_segment_length_local=4096)
    itt = c.start_command(0, bytes(16), expected_in=8192)
    c.pdus_to_send()
    payload = bytes(i % 251 for i in range(8192))
    c.receive_pdu(ScsiDataIn(itt=itt, datasn=0, buffer_offset=1, data=payload[:4096],
                             expcmdsn=11, maxcmdsn=40))  # fmt: skip
    (v,) = c.violations
    assert "Buffer Offset 1 leaves bytes 0..1 unsent" in v.message and "13.18" in v.section


def test_data_in_out_of_order_datasn_recorded() -> None:
    c = conn()
    itt = c.start_command(0, bytes(16), expected_in=1024)
    c.pdus_to_send()
    events = c.receive_pdu(
        ScsiDataIn(itt=itt, datasn=1, buffer_offset=0, data=b"x" * 1024, expcmdsn=11, maxcmdsn=40)
    )
    assert any(
        "DataSN 1, expected 0" in e.message for e in events if isinstance(e, ProtocolViolated)
    )


def test_underflow_without_u_bit_recorded() -> None:
    c = conn()
    itt = c.start_command(0, bytes(16), expected_in=255)
    c.pdus_to_send()
    c.receive_pdu(ScsiDataIn(itt=itt, datasn=0, data=b"i" * 96, expcmdsn=11, maxcmdsn=40))
    events = c.receive_pdu(ScsiResponse(itt=itt, statsn=5, expdatasn=1, expcmdsn=11, maxcmdsn=40))
    assert any(
        "no underflow reported" in e.message for e in events if isinstance(e, ProtocolViolated)
    )


def test_check_condition_sense() -> None:
    c = conn()
    itt = c.start_command(0, bytes(16))
    c.pdus_to_send()
    sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0])
    (done,) = c.receive_pdu(ScsiResponse(itt=itt, status=ScsiStatus.CHECK_CONDITION, statsn=5,
                                         expcmdsn=11, maxcmdsn=40, data=ScsiResponse.sense_segment(sense)))  # fmt: skip
    assert isinstance(done, CommandCompleted)
    assert done.result.sense_key == 5 and done.result.asc_ascq == (0x24, 0)
    with pytest.raises(SCSIError) as info:
        done.result.raise_for_status()
    assert info.value.sense_key == 5 and info.value.asc == 0x24


def test_statsn_gap_recorded_and_followed() -> None:
    c = conn()
    itt = c.start_command(0, bytes(16))
    c.pdus_to_send()
    events = c.receive_pdu(ScsiResponse(itt=itt, statsn=9, expcmdsn=11, maxcmdsn=40))
    assert any(
        "StatSN 9, expected 5" in e.message for e in events if isinstance(e, ProtocolViolated)
    )
    assert c.expstatsn == 10


def test_window_closed_queues_commands() -> None:
    seq = SessionSequencer(10, expcmdsn=10, maxcmdsn=10)
    c = InitiatorConnection(seq, expstatsn=1)
    a = c.start_command(0, bytes(16))
    b = c.start_command(0, bytes(16))
    (first,) = c.pdus_to_send()
    assert first.itt == a and first.cmdsn == 10
    assert c.queued_commands == 1  # CmdSN 11 > MaxCmdSN 10 (RFC 7143 4.2.2.1)
    c.receive_pdu(NopIn(statsn=1, expcmdsn=11, maxcmdsn=11))  # window opens
    (second,) = c.pdus_to_send()
    assert second.itt == b and second.cmdsn == 11


def test_window_update_ignored_when_max_below_exp_minus_one() -> None:
    seq = SessionSequencer(10, expcmdsn=10, maxcmdsn=20)
    assert seq.update_window(15, 12) is not None
    assert (seq.expcmdsn, seq.maxcmdsn) == (10, 20)


def test_target_ping_answered() -> None:
    c = conn()
    (ev,) = c.receive_pdu(
        NopIn(ttt=0x1234, lun=lun_to_field(0), statsn=5, expcmdsn=10, maxcmdsn=40)
    )
    assert isinstance(ev, TargetPinged) and ev.answered
    (out,) = c.pdus_to_send()
    assert isinstance(out, NopOut)
    assert (out.itt, out.ttt, out.immediate, out.cmdsn) == (NONE_TAG, 0x1234, True, 10)
    assert c.expstatsn == 5  # ITT 0xffffffff: StatSN not advanced (11.19)


def test_our_ping_answered() -> None:
    c = conn()
    itt = c.start_nop(b"hello")
    (out,) = c.pdus_to_send()
    assert out.immediate and out.data == b"hello" and c.session.cmdsn == 10
    (ev,) = c.receive_pdu(NopIn(itt=itt, statsn=5, expcmdsn=10, maxcmdsn=40, data=b"hello"))
    assert isinstance(ev, PingAnswered)
    itt = c.start_nop(b"again")
    c.pdus_to_send()
    events = c.receive_pdu(NopIn(itt=itt, statsn=6, expcmdsn=10, maxcmdsn=40, data=b"wrong"))
    assert any("echo" in e.message for e in events if isinstance(e, ProtocolViolated))


def test_text_request_and_response_continuation() -> None:
    c = conn(max_recv_data_segment_length_peer=512)
    data = b"X-long=" + b"v" * 900 + b"\0"
    itt = c.start_text(data)
    (first,) = c.pdus_to_send()
    assert (
        isinstance(first, TextRequest) and first.cont and not first.final and len(first.data) == 512
    )
    c.receive_pdu(TextResponse(itt=itt, ttt=9, statsn=5, expcmdsn=10, maxcmdsn=40))
    (second,) = c.pdus_to_send()
    assert second.final and not second.cont and second.ttt == 9 and first.data + second.data == data
    c.receive_pdu(
        TextResponse(
            itt=itt, cont=True, ttt=10, statsn=6, expcmdsn=10, maxcmdsn=40, data=b"TargetName=iqn.x"
        )
    )
    (ask,) = c.pdus_to_send()
    assert ask.data == b"" and ask.ttt == 10 and ask.final
    events = c.receive_pdu(
        TextResponse(itt=itt, final=True, statsn=7, expcmdsn=10, maxcmdsn=40, data=b":t\0")
    )
    (done,) = [e for e in events if isinstance(e, TextCompleted)]
    assert done.data == b"TargetName=iqn.x:t\0"
    assert not c.violations


def test_reject_ends_the_rejected_command() -> None:
    c = conn()
    itt = c.start_command(0, bytes(16))
    (cmd,) = c.pdus_to_send()
    (ev,) = c.receive_pdu(Reject(reason=9, statsn=5, expcmdsn=11, maxcmdsn=40, data=bhs_of(cmd)))
    assert isinstance(ev, PDURejected) and ev.itt == itt and ev.reason == 9
    assert itt not in c.tasks


def test_unknown_itt_recorded() -> None:
    c = conn()
    events = c.receive_pdu(ScsiResponse(itt=0x999, statsn=5, expcmdsn=10, maxcmdsn=40))
    assert any("0x999" in e.message for e in events if isinstance(e, ProtocolViolated))


def test_params_before_login_are_the_rfc_defaults() -> None:
    c = InitiatorConnection(SessionSequencer(1), expstatsn=1)
    assert c.params == NegotiatedParameters()
    p = c.params  # RFC 7143 13.12-13.20, 13.1
    assert (p.max_recv_data_segment_length_peer, p.max_recv_data_segment_length_local) == (
        8192,
        8192,
    )
    assert (p.max_burst_length, p.first_burst_length) == (262144, 65536)
    assert p.immediate_data and p.initial_r2t
    assert not (p.header_digest or p.data_digest)
    assert p.error_recovery_level == 0
    assert p.data_pdu_in_order and p.data_sequence_in_order


def test_negotiation_result_shapes_pdus_as_is() -> None:
    # What the login leaves (core.negotiation's result) goes into the engine unchanged.
    neg = Negotiator(
        Role.INITIATOR,
        {"MaxRecvDataSegmentLength": "262144", "ImmediateData": "Yes", "InitialR2T": "Yes"},
        stage=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION,
    )
    neg.offer()
    neg.respond([("MaxRecvDataSegmentLength", "1024"), ("ImmediateData", "No")])
    params = neg.result()
    c = InitiatorConnection(SessionSequencer(10, maxcmdsn=40), params=params, expstatsn=1)
    assert c.params is params
    itt = c.start_command(0, b"\x2a" + bytes(15), data_out=bytes(3000))
    (cmd,) = c.pdus_to_send()
    assert isinstance(cmd, ScsiCommand) and cmd.data == b""  # ImmediateData=No
    c.receive_pdu(
        R2T(itt=itt, ttt=7, statsn=1, expcmdsn=11, maxcmdsn=40, desired_data_transfer_length=3000)
    )
    outs = c.pdus_to_send()
    data_outs = [p for p in outs if isinstance(p, ScsiDataOut)]
    assert len(data_outs) == len(outs)
    check_sequence(data_outs, 0, 3000, 1024)


def test_initiator_pdu_from_the_target_touches_no_sequence_number() -> None:
    c = conn()
    before = (c.expstatsn, c.session.expcmdsn, c.session.maxcmdsn)
    events = c.receive_pdu(NopOut(itt=0x55, ttt=NONE_TAG, cmdsn=99, expstatsn=99))
    assert (c.expstatsn, c.session.expcmdsn, c.session.maxcmdsn) == before
    (v,) = [e for e in events if isinstance(e, ProtocolViolated)]
    assert "unexpected NopOut" in v.message


def test_login_response_in_full_feature_phase_still_moves_the_window() -> None:
    c = conn()
    events = c.receive_pdu(LoginResponse(statsn=5, expcmdsn=10, maxcmdsn=50))
    assert c.session.maxcmdsn == 50
    assert c.expstatsn == 5  # a Login Response does not advance StatSN here
    assert any(
        "unexpected LoginResponse" in e.message for e in events if isinstance(e, ProtocolViolated)
    )


def test_read_with_missing_data_in_is_never_good() -> None:
    """RFC 7143 7.9: a skipped DataSN, bytes never sent, or an ExpDataSN counting Data-In
    that never came are implied digest errors, which 7.8 has the initiator recover or
    end with an error: the READ's result carries why and is not good, though its status
    is GOOD (found through the conformance bridge: zeros were returned as data)."""
    payload = bytes(i % 251 for i in range(2048))
    cases = {
        "skipped": [
            ScsiDataIn(itt=0, datasn=0, buffer_offset=0, data=payload[:1024]),
            ScsiDataIn(
                itt=0,
                datasn=2,
                buffer_offset=1024,
                data=payload[1024:],
                final=True,
                status_present=True,
            ),
        ],
        "hole": [
            ScsiDataIn(
                itt=0,
                datasn=0,
                buffer_offset=1024,
                data=payload[1024:],
                final=True,
                status_present=True,
            )
        ],
        "expdatasn": [
            ScsiDataIn(itt=0, datasn=0, buffer_offset=0, data=payload[:1024]),
            ScsiDataIn(itt=0, datasn=1, buffer_offset=1024, data=payload[1024:], final=True),
        ],
    }
    for name, pdus in cases.items():
        c = conn(max_recv_data_segment_length_local=4096)
        itt = c.start_command(0, bytes(16), expected_in=2048)
        c.pdus_to_send()
        events = []
        for p in pdus:
            events += c.receive_pdu(dataclasses.replace(p, itt=itt, expcmdsn=11, maxcmdsn=40))
        if name == "expdatasn":
            events += c.receive_pdu(
                ScsiResponse(itt=itt, statsn=1, expdatasn=3, expcmdsn=11, maxcmdsn=40)
            )
        (done,) = [e for e in events if isinstance(e, CommandCompleted)]
        assert done.result.status == 0 and not done.result.good, name
        assert done.result.data_missing, name
    # the same READ whole: good
    c = conn(max_recv_data_segment_length_local=4096)
    itt = c.start_command(0, bytes(16), expected_in=2048)
    c.pdus_to_send()
    events = c.receive_pdu(ScsiDataIn(itt=itt, datasn=0, buffer_offset=0, data=payload,
                                      final=True, status_present=True, expcmdsn=11,
                                      maxcmdsn=40))  # fmt: skip
    (done,) = [e for e in events if isinstance(e, CommandCompleted)]
    assert done.result.good and not done.result.data_missing


def _two_bursts(c: InitiatorConnection, *, ack_datasn: int, skip_first: bool = False) -> int:
    """A 4096-byte read in two 2048-byte bursts, the A bit on ``ack_datasn`` (TTT 0x77)."""
    itt = c.start_command(3, bytes(16), expected_in=4096)
    c.pdus_to_send()
    first = 1 if skip_first else 0
    for n, sn in enumerate(range(first, 4)):
        c.receive_pdu(
            ScsiDataIn(
                itt=itt, datasn=sn, buffer_offset=1024 * (n + first), data=b"d" * 1024,
                final=sn in (1, 3), ack=sn == ack_datasn, ttt=0x77 if sn == ack_datasn else NONE_TAG,
                lun=lun_to_field(3), expcmdsn=11, maxcmdsn=40,
            )
        )  # fmt: skip
    return itt


def test_data_ack_for_the_a_bit_at_erl1() -> None:
    """RFC 7143 11.16.2 (MUST): the A bit gets a DataACK: ITT 0xffffffff (11.16.4), the
    Data-In's TTT and LUN (11.16.5), BegRun the next DataSN (11.16.6), RunLength 0."""
    c = conn(error_recovery_level=1)
    itt = c.start_command(3, bytes(16), expected_in=4096)
    c.pdus_to_send()
    for sn in range(2):
        c.receive_pdu(
            ScsiDataIn(
                itt=itt, datasn=sn, buffer_offset=1024 * sn, data=b"d" * 1024, final=sn == 1,
                ack=sn == 1, ttt=0x77 if sn == 1 else NONE_TAG, lun=lun_to_field(3),
                expcmdsn=11, maxcmdsn=40,
            )
        )  # fmt: skip
    (ack,) = c.pdus_to_send()
    assert isinstance(ack, SnackRequest)
    assert (ack.snack_type, ack.itt, ack.ttt, ack.lun, ack.begrun, ack.runlength) == (
        2, NONE_TAG, 0x77, lun_to_field(3), 2, 0,
    )  # fmt: skip
    assert ack.expstatsn == 5
    encode(ack)
    assert not c.violations


def test_no_data_ack_at_erl0_or_after_a_hole() -> None:
    c = conn(error_recovery_level=0)
    _two_bursts(c, ack_datasn=1)
    assert not c.pdus_to_send()  # the A bit is ignored (and recorded) at ERL 0, 11.7.2
    assert any("A bit set at ErrorRecoveryLevel 0" in v.message for v in c.violations)
    c = conn(error_recovery_level=1)
    _two_bursts(c, ack_datasn=3, skip_first=True)  # DataSN 0 never came: a hole
    assert not c.pdus_to_send()  # 11.16.2: postponed until the hole is filled
