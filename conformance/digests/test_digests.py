"""Digests: HeaderDigest/DataDigest negotiation, digests on every full-feature PDU,
and corrupted digests handled as the negotiated ErrorRecoveryLevel requires."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.digest import crc32c
from iscsi_conformance.harness.probe import DEFAULT_TIMEOUT, NoAnswer, Outcome, full_feature
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

OFFERS = ["None", "CRC32C", "CRC32C,None", "None,CRC32C"]


def _label(offer: str) -> str:
    return offer.replace(",", "Then")


def _make_negotiation_test(key: str, offer: str) -> Any:
    @spec(
        f"Digests.Negotiation.{key}.{_label(offer)}",
        "RFC 7143 13.1",
        "RFC 7143 6.2.1",
        requirements=["R7143-13.1-1", "R7143-6.2.1-1", "R7143-6.2.1-2"],
    )
    async def test(target: Any) -> None:
        async with target.raw() as raw:
            probe = target.probe(raw)
            await probe.security_none()
            step = await probe.step([(key, offer)], csg=1, nsg=3, transit=True)
            offered = offer.split(",")
            require(
                step.succeeded,
                "R7143-13.1-1",
                f"{key}={offer} made the login fail ({step.status!r}); "
                "CRC32C and None must both be implemented",
                sent=probe.sent,
                received=probe.received,
            )
            answer = step.keys.get(key)
            require(
                answer in offered,
                "R7143-6.2.1-2",
                f"{key} answer {answer!r} is not one of {offered}",
                sent=probe.sent,
                received=probe.received,
            )
            if len(offered) == 1:
                require(
                    answer == offered[0],
                    "R7143-13.1-1",
                    f"{key}={offered[0]} alone must be accepted, got {answer!r}",
                    sent=probe.sent,
                    received=probe.received,
                )

    test.__doc__ = (
        f"{key}={offer} is answered with a value from the offer; both digests are implemented."
    )
    return test


for _key in ("HeaderDigest", "DataDigest"):
    for _offer in OFFERS:
        globals()[f"test_{_key}_{_label(_offer)}"] = _make_negotiation_test(_key, _offer)


async def _answer(raw: Any, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, NoAnswer | None]:
    """The next PDU, or what happened instead (closed, silent, undecodable)."""
    started = time.monotonic()
    pdu = await raw.recv(timeout=timeout)
    if pdu is not None:
        return pdu, None
    return None, NoAnswer(raw.last_outcome, time.monotonic() - started, timeout)


async def _digest_session(target: Any, header: bool, data: bool) -> tuple[Any, Any]:
    raw = target.raw()
    await raw.__aenter__()
    probe = await target.login(
        raw,
        keys=[
            ("HeaderDigest", "CRC32C" if header else "None"),
            ("DataDigest", "CRC32C" if data else "None"),
        ],
    )
    raw.set_digests(header=header, data=data)
    return raw, probe


@pytest.mark.parametrize(
    "header,data", [(True, False), (False, True), (True, True)], ids=["header", "data", "both"]
)
@spec(
    "Digests.FullFeature.EveryPdu", "RFC 7143 13.1", requirements=["R7143-13.1-2", "R7143-13.1-3"]
)
async def test_digests_on_every_pdu(target: Any, header: bool, data: bool) -> None:
    """With digests agreed, every full-feature PDU from the target carries correct digests."""
    raw, probe = await _digest_session(target, header, data)
    try:
        payload = os.urandom(1000)  # not a multiple of 4: padding is covered by the CRC
        nop = P.NopOut(
            immediate=True,
            itt=0x10,
            ttt=0xFFFFFFFF,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            data=payload,
        )
        await raw.send(nop)
        answer, gone = await _answer(raw)  # the raw decoder verifies both digests
        require(
            isinstance(answer, P.NopIn),
            "R7143-13.1-2",
            "expected a NOP-In with valid digests, got "
            f"{type(answer).__name__ if answer else gone}",
            sent=[*probe.sent, nop],
            received=[*probe.received, answer or gone],
        )
        require(
            answer.data == payload,
            "R7143-11.18-1",
            "the NOP-In does not echo the ping data",
            sent=[nop],
            received=[answer],
        )
        inquiry = P.ScsiCommand(
            final=True,
            read=True,
            lun=0,
            itt=0x11,
            expected_data_transfer_length=96,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            cdb=bytes([0x12, 0, 0, 0, 96, 0]),
        )
        await raw.send(inquiry)
        got: list[Any] = []
        gone: NoAnswer | None = None
        for _ in range(64):
            pdu, gone = await _answer(raw)
            if pdu is None:
                break
            got.append(pdu)
            if isinstance(pdu, P.ScsiResponse) or (
                isinstance(pdu, P.ScsiDataIn) and pdu.status_present
            ):
                break
        require(
            gone is None and got,
            "R7143-13.1-2",
            f"INQUIRY under digests got no valid response: {gone}",
            sent=[inquiry],
            received=[*got, *([gone] if gone else [])],
        )
    finally:
        await raw.__aexit__(None, None, None)


@pytest.mark.parametrize("which", ["header", "data"])
@spec(
    "Digests.Errors.CorruptedAtErl0",
    "RFC 7143 7.8",
    "RFC 7143 13.1",
    requirements=["R7143-7.8-1", "R7143-7.8-2", "R7143-7.8-6"],
)
async def test_corrupted_digest_erl0(target: Any, which: str) -> None:
    """At ErrorRecoveryLevel 0 a PDU with a wrong digest is not processed; the target drops the connection."""
    raw, probe = await _digest_session(target, True, True)
    try:
        payload = os.urandom(64)
        nop = P.NopOut(
            immediate=True,
            itt=0x20,
            ttt=0xFFFFFFFF,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            data=payload,
        )
        tamper = (
            P.Tamper(header_digest_value=0xDEADBEEF)
            if which == "header"
            else P.Tamper(data_digest_value=crc32c(payload) ^ 0xFFFFFFFF)
        )
        wire = P.encode(nop, header_digest=True, data_digest=True, strict=False, tamper=tamper)
        await raw.send(wire)
        answer, gone = await _answer(raw)
        if isinstance(answer, P.NopIn):
            raise violation(
                "R7143-7.8-1",
                f"a NOP-Out with a corrupted {which} digest was answered as valid",
                sent=[nop],
                received=[answer],
            )
        if isinstance(answer, P.Reject):
            # A data digest error is answered with Reject 02h (RFC 7143 7.8); a header
            # that failed its digest cannot be trusted enough to reject.
            require(
                answer.reason == 0x02 and which == "data",
                "R7143-7.8-1",
                f"Reject reason {answer.reason:#x} for a corrupted {which} digest",
                sent=[nop],
                received=[answer],
            )
        # At ErrorRecoveryLevel 0 the only recovery is session recovery (RFC 7143
        # 7.1.5): after the digest error (and the Reject, if any) the connection ends.
        # Silence with the connection open is no recovery at all.
        if answer is not None:
            closed = await raw.expect_closed(timeout=max(2.0, DEFAULT_TIMEOUT))
            gone = None if closed else NoAnswer(Outcome.SILENT, 0.0, max(2.0, DEFAULT_TIMEOUT))
        else:
            closed = gone is not None and gone.outcome is Outcome.CLOSED
        if which == "data":
            # A payload digest error is answered with Reject 02h at every level, unless
            # the target escalates to session recovery and ends the connection (RFC
            # 7143 7.8); a PDU dropped in silence on an open connection is neither.
            require(
                isinstance(answer, P.Reject) or closed,
                "R7143-7.8-6",
                f"a NOP-Out with a corrupted data digest got no Reject and the connection "
                f"stayed open: {gone or ''}",
                sent=[nop],
                received=[p for p in (answer, gone) if p is not None],
            )
        require(
            closed,
            "R7143-7.8-2",
            f"at ErrorRecoveryLevel 0 a corrupted {which} digest must end the connection "
            f"(session recovery); got {type(answer).__name__ if answer else ''}"
            f"{' and then ' if answer and gone else ''}{gone or ''}",
            sent=[nop],
            received=[p for p in (answer, gone) if p is not None],
        )
    finally:
        await raw.__aexit__(None, None, None)


@spec(
    "Digests.Errors.DataDigestRejectAtErl1",
    "RFC 7143 7.8",
    requirements=["R7143-7.8-3"],
    needs=("erl=1",),
    dataloss=True,
)
async def test_data_digest_error_erl1(target: Any) -> None:
    """At ErrorRecoveryLevel 1 a data digest error on unsolicited data is answered with Reject 02h."""
    async with target.raw() as raw:
        probe = await target.login(
            raw,
            keys=[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "CRC32C"),
                ("ErrorRecoveryLevel", "1"),
                ("ImmediateData", "Yes"),
            ],
        )
        if probe.negotiated.get("ErrorRecoveryLevel") != "1":
            pytest.skip("the target did not agree to ErrorRecoveryLevel=1")
        raw.set_digests(header=True, data=True)
        payload = os.urandom(512)
        cmd = P.ScsiCommand(
            final=True,
            write=True,
            lun=0,
            itt=0x30,
            expected_data_transfer_length=512,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            cdb=bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            data=payload,
        )
        wire = P.encode(
            cmd,
            header_digest=True,
            data_digest=True,
            strict=False,
            tamper=P.Tamper(data_digest_value=crc32c(payload) ^ 1),
        )
        await raw.send(wire)
        answer, gone = await _answer(raw)
        require(
            isinstance(answer, P.Reject) and answer.reason == 0x02,
            "R7143-7.8-3",
            f"expected Reject (Data Digest Error), got {type(answer).__name__ if answer else gone}",
            sent=[cmd],
            received=[answer or gone],
        )


# --------------------------------------------------------------------------- required digests
#
# The "digest-required" profile holds CRC32C alone for both digests: None is a value that
# target is not allowed to use. RFC 7143 6.2.1 has the acceptor answer a list with the
# first offered value it supports and may use, never a value that was not offered; when
# no offered value will do, it answers Reject or ends the negotiation, and a login that
# ends is failed with a Login Response whose status class is not 0 (11.13.5).

REQUIRED = "digest-required"


async def _required_answer(target: Any, raw: Any, key: str, offer: str) -> tuple[Any, Any]:
    """Offer ``key=offer`` (the other digest CRC32C) in the operational stage."""
    other = "DataDigest" if key == "HeaderDigest" else "HeaderDigest"
    probe = target.probe(raw, REQUIRED)
    first = await probe.security_none()
    if not first.succeeded:
        raise violation(
            "harness",
            f"the digest-required target refused the security stage ({first.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
    step = await probe.step([(key, offer), (other, "CRC32C")], csg=1, nsg=3, transit=True)
    return probe, step


def _make_required_none_test(key: str) -> Any:
    @spec(
        f"Digests.Required.{key}.None",
        "RFC 7143 6.2.1",
        "RFC 7143 11.13.5",
        requirements=["R7143-6.2.1-1", "R7143-6.2.1-2", "R7143-11.13-1"],
    )
    async def test(target: Any) -> None:
        async with target.raw(REQUIRED) as raw:
            probe, step = await _required_answer(target, raw, key, "None")
            require(
                step.response is not None,
                "R7143-11.13-1",
                f"{key}=None to a target that requires CRC32C got no Login Response; "
                "it answers Reject, or fails the login with a non-zero status",
                sent=probe.sent,
                received=probe.received,
            )
            if step.refused:
                return  # the negotiation ended: a failed login, as 11.13.5 has it
            answer = step.keys.get(key)
            require(
                answer == "Reject",
                "R7143-6.2.1-1" if answer in ("None", None) else "R7143-6.2.1-2",
                f"{key}=None to a target that holds only CRC32C was answered {answer!r}; "
                "None is not a value it may use and CRC32C was not offered: the answer is "
                "Reject, or the login fails",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = (
        f"{key}=None to a target that requires CRC32C: Reject, or a failed login; never None."
    )
    return test


def _make_required_list_test(key: str) -> Any:
    @spec(
        f"Digests.Required.{key}.NoneThenCRC32C",
        "RFC 7143 6.2.1",
        requirements=["R7143-6.2.1-1", "R7143-6.2.1-2"],
    )
    async def test(target: Any) -> None:
        async with target.raw(REQUIRED) as raw:
            probe, step = await _required_answer(target, raw, key, "None,CRC32C")
            require(
                step.succeeded,
                "R7143-6.2.1-1",
                f"{key}=None,CRC32C made the login fail "
                f"({'no Login Response' if step.status is None else f'{step.status:04x}'}); "
                "CRC32C is in the offer and the target supports it",
                sent=probe.sent,
                received=probe.received,
            )
            answer = step.keys.get(key)
            require(
                answer == "CRC32C",
                "R7143-6.2.1-1",
                f"{key}=None,CRC32C to a target that requires CRC32C was answered {answer!r}; "
                "the answer is the first offered value the target may use: CRC32C",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"{key}=None,CRC32C to a target that requires CRC32C is answered CRC32C."
    return test


for _key in ("HeaderDigest", "DataDigest"):
    globals()[f"test_required_{_key}_none"] = _make_required_none_test(_key)
    globals()[f"test_required_{_key}_none_then_crc32c"] = _make_required_list_test(_key)


def _got(reply: Any) -> str:
    """What answered a request, or what happened instead."""
    return type(reply.pdu).__name__ if reply.pdu is not None else str(reply.missing())


@spec(
    "Digests.FullFeature.EveryPduKind",
    "RFC 7143 13.1",
    requirements=["R7143-13.1-2", "R7143-13.1-3"],
    dataloss=True,
)
async def test_digests_on_every_pdu_kind(target: Any) -> None:
    """With both digests agreed, the target's R2T, SCSI Response (with and without sense
    data), Task Management Function Response and Logout Response all carry correct
    digests, and a PDU without data segment carries no data digest (13.1)."""
    keys = [
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "CRC32C"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        require(
            ffp.probe.negotiated.get("HeaderDigest") == "CRC32C"
            and ffp.probe.negotiated.get("DataDigest") == "CRC32C",
            "R7143-13.1-1",
            "HeaderDigest=CRC32C and DataDigest=CRC32C were not agreed: "
            f"{ffp.probe.negotiated.get('HeaderDigest')!r}, "
            f"{ffp.probe.negotiated.get('DataDigest')!r}",
            sent=ffp.probe.sent,
            received=ffp.probe.received,
        )

        def decoded(ok: bool, what: str, sent: list[Any], received: list[Any]) -> None:
            # the raw decoder checks both digests: a bad one leaves no PDU (undecodable)
            require(
                ok,
                "R7143-13.1-2",
                f"under HeaderDigest and DataDigest CRC32C, {what}",
                sent=sent,
                received=received,
            )

        # A solicited WRITE: an R2T (no data segment) and a SCSI Response without data.
        payload = os.urandom(16 * 512)
        out = await ffp.command(cdb.write10(1024, 16), data_out=payload, lun=target.lun)
        decoded(
            bool(out.r2ts) and isinstance(out.response, P.ScsiResponse) and out.status == 0,
            "a solicited WRITE did not end in R2T then a good SCSI Response: "
            f"{len(out.r2ts)} R2T(s), status {out.status!r}, {out.outcome}",
            out.sent,
            out.shown(),
        )
        # A READ past the end of the LU: a SCSI Response carrying sense data.
        bad = await ffp.command(cdb.read10(0xFFFFFFF0, 1), read_length=512, lun=target.lun)
        decoded(
            isinstance(bad.response, P.ScsiResponse | P.ScsiDataIn),
            f"a READ past the end of the LU got no status: {bad.outcome}",
            bad.sent,
            bad.shown(),
        )
        # ABORT TASK for a tag never used: a Task Management Function Response.
        tmf = P.TaskManagementRequest(
            immediate=True,
            function=1,
            lun=P.lun_to_field(target.lun),
            itt=ffp.next_itt(),
            referenced_task_tag=0x0BADF00D,
            cmdsn=ffp.cmdsn,
            expstatsn=ffp.expstatsn,
            refcmdsn=ffp.cmdsn,
        )
        reply = await ffp.exchange(tmf)
        decoded(
            isinstance(reply.pdu, P.TaskManagementResponse),
            f"ABORT TASK got {_got(reply)}",
            [tmf],
            reply.shown(),
        )
        # Close the session: a Logout Response (no data segment).
        logout = P.LogoutRequest(
            immediate=True,
            reason=0,
            itt=ffp.next_itt(),
            cid=ffp.probe.cid,
            cmdsn=ffp.cmdsn,
            expstatsn=ffp.expstatsn,
        )
        reply = await ffp.exchange(logout)
        decoded(
            isinstance(reply.pdu, P.LogoutResponse),
            f"a Logout Request got {_got(reply)}",
            [logout],
            reply.shown(),
        )


@spec(
    "Digests.FullFeature.TextResponse",
    "RFC 7143 13.1",
    "RFC 7143 C",
    requirements=["R7143-13.1-2", "R7143-13.3-1"],
)
async def test_digests_on_text_response(target: Any) -> None:
    """In a Discovery session with both digests agreed, SendTargets=All is answered in
    Text Responses that carry correct digests (13.1, appendix C). A target that answers
    None to CRC32C,None in Discovery (6.2.1 allows it) leaves nothing to check: skipped."""
    async with target.raw() as raw:
        probe = target.probe(raw, session_type="Discovery", target_name=None)
        await probe.to_full_feature(
            [("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C,None")]
        )
        require(
            probe.in_full_feature,
            "R7143-13.21-1",
            "a Discovery login offering HeaderDigest and DataDigest CRC32C,None failed",
            sent=probe.sent,
            received=probe.received,
        )
        agreed = (probe.negotiated.get("HeaderDigest"), probe.negotiated.get("DataDigest"))
        if agreed != ("CRC32C", "CRC32C"):
            pytest.skip(f"the Discovery session agreed digests {agreed}: nothing to check")
        raw.set_digests(header=True, data=True)
        text = P.TextRequest(
            immediate=True,
            final=True,
            itt=0x100,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            data=b"SendTargets=All\0",
        )
        await raw.send(text)
        answer, gone = await _answer(raw)  # the raw decoder verifies both digests
        require(
            gone is None or gone.outcome is not Outcome.UNDECODABLE,
            "R7143-13.1-2",
            "under HeaderDigest and DataDigest CRC32C, the answer to SendTargets=All did "
            "not decode (a wrong header or data digest)",
            sent=[text],
            received=[answer or gone],
        )
        require(
            isinstance(answer, P.TextResponse),
            "R7143-13.3-1",
            "SendTargets=All in a Discovery session got "
            f"{type(answer).__name__ if answer is not None else gone}, not a Text Response",
            sent=[text],
            received=[answer or gone],
        )


@spec(
    "Digests.FullFeature.AsyncMessage",
    "RFC 7143 13.1",
    "RFC 7143 11.9",
    requirements=["R7143-13.1-2"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_digests_on_async_message(target: Any) -> None:
    """With both digests agreed, an Async Message (a vendor event with data, asked of a
    dedicated reference target through its test API: no request makes a target send one)
    carries a correct header digest and a correct data digest (13.1)."""
    keys = [("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")]
    with target.dedicated() as inst:
        async with full_feature(inst, keys=keys) as ffp:
            if ffp.probe.negotiated.get("HeaderDigest") != "CRC32C":
                pytest.skip("HeaderDigest=CRC32C was not agreed")
            data = bytes(2) + b"vendor event data, 27 bytes"  # SenseLength 0, then event data
            inst.send_async(ffp.probe.tsih, 255, vcode=1, data=data)
            msg = await ffp.recv(timeout=5.0)
            # the raw decoder checks both digests: a bad one leaves no PDU (undecodable)
            require(
                isinstance(msg, P.AsyncMessage) and msg.data == data,
                "R7143-13.1-2",
                "under HeaderDigest and DataDigest CRC32C the Async Message did not decode "
                f"with valid digests: {msg if msg is not None else ffp.no_answer}",
                received=ffp.shown(msg),
            )


RECOVERY_LBA = 96  # the block the solicited-data recovery test writes and reads back
BLOCK = 512


@spec(
    "Digests.Errors.SolicitedDataDigestAtErl1",
    "RFC 7143 7.8",
    "RFC 7143 7.3",
    requirements=["R7143-7.8-4"],
    needs=("erl=1",),
    dataloss=True,
)
async def test_solicited_data_digest_error_erl1(target: Any) -> None:
    """At ErrorRecoveryLevel 1 a solicited Data-Out with a bad data digest is answered
    with Reject 02h carrying its header, and the task still ends with a SCSI Response:
    after a recovery R2T for the lost range (the data sent again is what gets written)
    or with CHECK CONDITION. GOOD without the data ever asked again, silence or a
    hang-up fail (7.8; 7.3: a Reject never ends an active task by itself)."""
    keys = [
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "CRC32C"),
        ("ErrorRecoveryLevel", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        if ffp.probe.negotiated.get("ErrorRecoveryLevel") != "1":
            pytest.skip("the target did not agree to ErrorRecoveryLevel=1")
        lun = target.lun
        payload = os.urandom(BLOCK)
        cmd, r2t, got = await ffp.hold_write(lun, cdb.write10(RECOVERY_LBA, 1), BLOCK)
        if r2t is None:
            raise violation(
                "harness",
                "the 1-block WRITE under InitialR2T=Yes, ImmediateData=No got no R2T",
                sent=[cmd],
                received=ffp.shown(*got, None),
            )
        bad = P.ScsiDataOut(
            final=True,
            lun=P.lun_to_field(lun),
            itt=cmd.itt,
            ttt=r2t.ttt,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=r2t.buffer_offset,
            data=payload[r2t.buffer_offset : r2t.buffer_offset + r2t.desired_data_transfer_length],
        )
        padded = bad.data + b"\0" * (-len(bad.data) % 4)
        wire = P.encode(
            bad,
            header_digest=True,
            data_digest=True,
            strict=False,
            tamper=P.Tamper(data_digest_value=crc32c(padded) ^ 1),
        )
        await ffp.send(bad, encoded=wire)
        sent: list[Any] = [cmd, bad]
        seen: list[Any] = []
        rejects: list[Any] = []
        recovered = False
        response = None
        for _ in range(16):
            p = await ffp.recv(timeout=5.0)
            if p is None:
                break
            seen.append(p)
            if isinstance(p, P.Reject):
                rejects.append(p)
            elif isinstance(p, P.R2T) and p.itt == cmd.itt:
                recovered = True
                start = p.buffer_offset
                again = P.ScsiDataOut(
                    final=True,
                    lun=P.lun_to_field(lun),
                    itt=cmd.itt,
                    ttt=p.ttt,
                    expstatsn=ffp.expstatsn,
                    datasn=0,
                    buffer_offset=start,
                    data=payload[start : start + p.desired_data_transfer_length],
                )
                await ffp.send(again)
                sent.append(again)
            elif isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                response = p
                break
        require(
            any(r.reason == 0x02 and r.data[:48] == P.bhs_of(bad)[:48] for r in rejects),
            "R7143-7.8-4",
            "the Data-Out with a bad data digest was not answered with a Reject "
            "(Data-Digest-Error, 02h) carrying its header",
            sent=sent,
            received=ffp.shown(*seen, None) if response is None else seen,
        )
        require(
            response is not None,
            "R7143-7.8-4",
            "after rejecting the Data-Out the target neither asked for the data again nor "
            f"ended the task: no SCSI Response ({ffp.no_answer})",
            sent=sent,
            received=ffp.shown(*seen, None),
        )
        if response.status != 0:
            return  # the task ended with CHECK CONDITION: the other allowed choice
        require(
            recovered,
            "R7143-7.8-4",
            "the WRITE ended GOOD although the only Data-Out was discarded for its digest "
            "and no recovery R2T asked for the data again",
            sent=sent,
            received=seen,
        )
        back = await ffp.command(cdb.read10(RECOVERY_LBA, 1), lun=lun, read_length=BLOCK)
        require(
            back.status == 0 and back.data == payload,
            "R7143-7.8-4",
            "the block written through the recovery R2T does not read back as sent "
            f"(status {back.status}, {len(back.data)} bytes)",
            sent=[*sent, back.command],
            received=back.shown(),
        )
