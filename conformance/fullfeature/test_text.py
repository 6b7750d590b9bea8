"""FullFeature.Text: Text Requests in full feature phase (RFC 7143 6.4, 11.10, 11.11).

Keys allowed outside login (MaxRecvDataSegmentLength, private keys) are negotiated
with Text Requests and take effect when the exchange ends; keys that only a login may
carry (leading-only, initialize-only, security) are refused there. A text longer than
one PDU is sent with C=1 and continued with the Target Transfer Tag the target hands
out; TTT 0xffffffff always starts a new exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.text import parse_pairs
from iscsi_conformance.harness.probe import FullFeature, Outcome, full_feature, text_of
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

NONE_TAG = 0xFFFFFFFF
BLOCK = 512
PROBE_KEY = "X-org.iscsi-conformance.FfpProbe"


async def _text(
    ffp: FullFeature,
    data: bytes,
    *,
    itt: int | None = None,
    ttt: int = NONE_TAG,
    final: bool = True,
    cont: bool = False,
) -> tuple[Any, Any]:
    """One immediate Text Request; returns (request, the PDU answering it or None)."""
    req = P.TextRequest(
        immediate=True,
        final=final,
        cont=cont,
        itt=ffp.next_itt() if itt is None else itt,
        ttt=ttt,
        cmdsn=ffp.cmdsn,
        expstatsn=ffp.expstatsn,
        data=data,
    )
    await ffp.send(req)
    for _ in range(8):
        resp = await ffp.recv()
        if resp is None or isinstance(resp, P.Reject) or getattr(resp, "itt", None) == req.itt:
            return req, resp
    return req, None


def _what(ffp: FullFeature, resp: Any) -> str:
    """The answer as a message names it: its PDU type, or what happened instead."""
    return type(resp).__name__ if resp is not None else str(ffp.no_answer or "no answer")


def _pairs(resp: Any) -> dict[str, str]:
    if not isinstance(resp, P.TextResponse) or not resp.data:
        return {}
    try:
        return dict(parse_pairs(resp.data))
    except Exception:
        return {}


async def _still_alive(ffp: FullFeature, sent: list[Any], received: list[Any], req_id: str) -> None:
    ping = P.NopOut(
        immediate=True, itt=ffp.next_itt(), ttt=NONE_TAG, cmdsn=ffp.cmdsn, expstatsn=ffp.expstatsn
    )
    await ffp.send(ping)
    answer = None
    for _ in range(8):
        answer = await ffp.recv()
        if answer is None or getattr(answer, "itt", None) == ping.itt:
            break
    require(
        isinstance(answer, P.NopIn),
        req_id,
        f"the session did not survive: a ping after the exchange got {_what(ffp, answer)}",
        sent=[*sent, ping],
        received=[*received, *ffp.shown(answer)],
    )


# --------------------------------------------------------------------------- keys in FFP


@spec(
    "FullFeature.Text.UnknownKeyNotUnderstood",
    "RFC 7143 6.2",
    "RFC 7143 11.11",
    requirements=["R7143-6.2-1", "R7143-13.22-1"],
)
async def test_unknown_key_in_ffp(target: Any) -> None:
    """A private key the target does not know, sent in a Text Request, is answered
    NotUnderstood in a final Text Response (F=1, TTT 0xffffffff, same ITT)."""
    async with full_feature(target) as ffp:
        req, resp = await _text(ffp, text_of([(PROBE_KEY, "1")]))
        require(
            isinstance(resp, P.TextResponse),
            "R7143-6.2-1",
            f"an unknown key in a Text Request got {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.final and not resp.cont and resp.ttt == NONE_TAG,
            "R7143-6.2-1",
            f"the answer to a complete request must end the exchange (F=1, C=0, TTT 0xffffffff); "
            f"got F={int(resp.final)} C={int(resp.cont)} TTT={resp.ttt:#x}",
            sent=[req],
            received=[resp],
        )
        answer = _pairs(resp).get(PROBE_KEY)
        require(
            answer == "NotUnderstood",
            "R7143-6.2-1",
            f"{PROBE_KEY} answered {answer!r}, expected NotUnderstood",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Text.MaxRecvDataSegmentLengthRedeclared",
    "RFC 7143 6.4",
    "RFC 7143 13.12",
    requirements=["R7143-6.4-2", "R7143-13.12-1"],
)
async def test_mrdsl_redeclared_in_ffp(target: Any) -> None:
    """MaxRecvDataSegmentLength (usable in full feature phase) declared in a Text Request
    is taken: a final Text Response, no Reject, and no refusal of the key."""
    async with full_feature(target) as ffp:
        req, resp = await _text(ffp, text_of([("MaxRecvDataSegmentLength", "4096")]))
        require(
            isinstance(resp, P.TextResponse) and resp.final,
            "R7143-6.4-2",
            f"declaring MaxRecvDataSegmentLength in full feature phase got {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        answer = _pairs(resp).get("MaxRecvDataSegmentLength")
        require(
            answer is None or answer.isdigit() or answer.startswith("0x"),
            "R7143-6.4-2",
            f"MaxRecvDataSegmentLength is allowed in full feature phase, but was answered {answer!r}",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Text.RedeclaredLengthApplies",
    "RFC 7143 6.4",
    "RFC 7143 13.12",
    requirements=["R7143-6.4-2", "R7143-11.7-2"],
)
async def test_redeclared_mrdsl_applies(target: Any) -> None:
    """After MaxRecvDataSegmentLength=512 is declared in full feature phase, a 4 KiB READ
    comes back in Data-In PDUs of at most 512 bytes."""
    async with full_feature(target, keys=[("MaxRecvDataSegmentLength", "8192")]) as ffp:
        req, resp = await _text(ffp, text_of([("MaxRecvDataSegmentLength", "512")]))
        require(
            isinstance(resp, P.TextResponse) and resp.final,
            "R7143-6.4-2",
            "declaring MaxRecvDataSegmentLength=512 was not answered with a final Text "
            f"Response: {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        out = await ffp.command(cdb.read10(0, 8), read_length=8 * BLOCK, lun=target.lun)
        big = [len(p.data) for p in out.data_ins if len(p.data) > 512]
        require(
            out.status == 0,
            "RSBC3-5.16-1",
            f"READ failed ({out.status!r})",
            sent=[req, *out.sent],
            received=[resp, *out.shown()],
        )
        require(
            not big,
            "R7143-6.4-2",
            f"Data-In segments of {big} bytes after MaxRecvDataSegmentLength=512 was declared "
            "in full feature phase",
            sent=[req, *out.sent],
            received=[resp, *out.shown()],
        )


LOGIN_ONLY = {
    "MaxConnections": "2",
    "InitialR2T": "No",
    "ImmediateData": "No",
    "MaxBurstLength": "65536",
    "FirstBurstLength": "8192",
    "ErrorRecoveryLevel": "0",
    "MaxOutstandingR2T": "2",
    "DefaultTime2Wait": "3",
    "HeaderDigest": "None",
    "DataDigest": "None",
    "AuthMethod": "None",
}


def _make_login_only_test(key: str, value: str) -> Callable[..., Any]:
    kind = "security" if key == "AuthMethod" else "initialize-only/leading-only"

    @spec(
        f"FullFeature.Text.LoginOnlyKey.{key}",
        "RFC 7143 6.4",
        "RFC 7143 13",
        requirements=["R7143-6.4-1"],
    )
    async def test(target: Any) -> None:
        async with full_feature(target) as ffp:
            req, resp = await _text(ffp, text_of([(key, value)]))
            if isinstance(resp, P.Reject):
                await _still_alive(ffp, [req], [resp], "R7143-6.4-1")
                return
            require(
                isinstance(resp, P.TextResponse),
                "R7143-6.4-1",
                f"{key} in a Text Request got {_what(ffp, resp)}",
                sent=[req],
                received=ffp.shown(resp),
            )
            answer = _pairs(resp).get(key)
            require(
                answer in ("Reject", "Irrelevant"),
                "R7143-6.4-1",
                f"the {kind} key {key}={value} in full feature phase was answered {answer!r}; "
                "only a login may negotiate it (expected Reject)",
                sent=[req],
                received=[resp],
            )
            await _still_alive(ffp, [req], [resp], "R7143-6.4-1")

    test.__doc__ = f"{key} ({kind}) in a full-feature Text Request is refused (Reject)."
    return test


for _key, _value in LOGIN_ONLY.items():
    globals()[f"test_login_only_{_key}"] = _make_login_only_test(_key, _value)


# --------------------------------------------------------------------------- C bit and tags


async def _continued(ffp: FullFeature, first: bytes) -> tuple[Any, Any]:
    return await _text(ffp, first, final=False, cont=True)


@spec(
    "FullFeature.Text.ContinuedRequestEmptyAnswer",
    "RFC 7143 6.1",
    "RFC 7143 11.10.2",
    "RFC 7143 11.11",
    requirements=["R7143-11.10-3", "R7143-6.1-3"],
)
async def test_continued_text_request_empty_answer(target: Any) -> None:
    """A Text Request with C=1 (key name cut in two) is answered by an empty Text
    Response with F=0 and a Target Transfer Tag other than 0xffffffff."""
    async with full_feature(target) as ffp:
        text = text_of([(PROBE_KEY, "1")])
        req, resp = await _continued(ffp, text[:10])
        require(
            isinstance(resp, P.TextResponse),
            "R7143-11.10-3",
            f"a Text Request with C=1 got {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            not resp.data and not resp.final and resp.ttt != NONE_TAG,
            "R7143-11.10-3",
            f"expected an empty Text Response with F=0 and a TTT to continue with; got "
            f"{len(resp.data)} bytes, F={int(resp.final)}, TTT={resp.ttt:#x}",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Text.ContinuedRequestReassembled",
    "RFC 7143 6.1",
    "RFC 7143 11.10.2",
    requirements=["R7143-11.10-3", "R7143-6.1-3"],
)
async def test_continued_text_request_reassembled(target: Any) -> None:
    """The rest of the text, sent with the TTT the target gave, completes the key: the
    answer names the whole key (NotUnderstood)."""
    async with full_feature(target) as ffp:
        text = text_of([(PROBE_KEY, "1")])
        req1, resp1 = await _continued(ffp, text[:10])
        if not isinstance(resp1, P.TextResponse) or resp1.ttt == NONE_TAG:
            raise violation(
                "R7143-11.10-3",
                f"no Target Transfer Tag to continue the text with: {_what(ffp, resp1)}",
                sent=[req1],
                received=ffp.shown(resp1),
            )
        req2, resp2 = await _text(ffp, text[10:], itt=req1.itt, ttt=resp1.ttt)
        pairs = _pairs(resp2)
        require(
            isinstance(resp2, P.TextResponse) and resp2.final,
            "R7143-11.10-3",
            f"the continuation got {_what(ffp, resp2)}",
            sent=[req1, req2],
            received=ffp.shown(resp1, resp2),
        )
        require(
            pairs.get(PROBE_KEY) == "NotUnderstood",
            "R7143-11.10-3",
            f"the reassembled key was not answered under its whole name: {pairs}",
            sent=[req1, req2],
            received=[resp1, resp2],
        )


@spec(
    "FullFeature.Text.ResetWithReservedTtt",
    "RFC 7143 11.10.4",
    level="INFORMATIONAL",
    requirements=["R7143-11.10-4", "R7143-11.10-3"],
)
async def test_new_request_resets_exchange(target: Any) -> None:
    """Halfway through a continued text, a new request with the same ITT and TTT
    0xffffffff starts over: only the new request's key is answered."""
    other = "X-org.iscsi-conformance.Fresh"
    async with full_feature(target) as ffp:
        text = text_of([(PROBE_KEY, "1")])
        req1, resp1 = await _continued(ffp, text[:12])
        # The answer to C=1 is ContinuedRequestEmptyAnswer's MUST; here it is only the
        # way in, so its failure is graded at this test's own level.
        require(
            isinstance(resp1, P.TextResponse) and not resp1.final,
            "R7143-11.10-3",
            f"the first, continued request (C=1) was answered {_what(ffp, resp1)}: no exchange to reset",
            sent=[req1],
            received=ffp.shown(resp1),
            level="INFORMATIONAL",
        )
        req2, resp2 = await _text(ffp, text_of([(other, "2")]), itt=req1.itt)
        pairs = _pairs(resp2)
        require(
            isinstance(resp2, P.TextResponse) and resp2.final,
            "R7143-11.10-4",
            f"a new request (TTT 0xffffffff) after an unfinished one got {_what(ffp, resp2)}",
            sent=[req1, req2],
            received=ffp.shown(resp1, resp2),
        )
        require(
            pairs.get(other) == "NotUnderstood" and len(pairs) == 1,
            "R7143-11.10-4",
            f"the new request was answered {pairs}: the unfinished text must be dropped "
            f"and only {other} answered",
            sent=[req1, req2],
            received=ffp.shown(resp1, resp2),
        )


@spec(
    "FullFeature.Text.UnknownTtt",
    "RFC 7143 11.10.4",
    level="INFORMATIONAL",
    requirements=["R7143-11.10-5"],
)
async def test_text_request_with_unknown_ttt(target: Any) -> None:
    """A Text Request carrying a Target Transfer Tag the target never issued is rejected
    (or handled as a new request), and the session goes on."""
    async with full_feature(target) as ffp:
        req, resp = await _text(ffp, text_of([(PROBE_KEY, "1")]), ttt=0x0BADBEEF)
        require(
            isinstance(resp, P.Reject | P.TextResponse),
            "R7143-11.10-5",
            f"a Text Request with an unknown TTT got {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        if isinstance(resp, P.TextResponse):
            require(
                resp.final and _pairs(resp).get(PROBE_KEY) == "NotUnderstood",
                "R7143-11.10-5",
                "an unknown TTT answered with a Text Response that does not answer the request",
                sent=[req],
                received=[resp],
            )
        await _still_alive(ffp, [req], [resp], "R7143-11.10-5")


async def _format_error_ends_session(ffp: FullFeature, req: Any, resp: Any, what: str) -> None:
    """RFC 7143 7.7: a PDU with a format error is never processed, and the receiver
    ends every connection of the session (close or reset); a Reject may come first."""
    require(
        not isinstance(resp, P.TextResponse),
        "R7143-7.7-1",
        f"{what}, a format error, was answered as a valid request",
        sent=[req],
        received=[resp],
    )
    after = await ffp.drain(min(ffp.timeout, 5.0)) if resp is not None else []
    gone = ffp.no_answer
    require(
        gone is not None and gone.outcome is Outcome.CLOSED,
        "R7143-7.7-1",
        f"{what} got {_what(ffp, resp)}"
        + (" and the connection stayed open" if resp is not None else "")
        + "; RFC 7143 7.7 requires the target to end the session's connections on a "
        "format error",
        sent=[req],
        received=[*ffp.shown(resp), *after, *([gone] if resp is not None and gone else [])],
    )
    if isinstance(resp, P.Reject):
        require(
            resp.data[:48] == P.bhs_of(req),
            "R7143-11.17-1",
            "the Reject before the close does not carry the rejected header",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Text.ReservedItt",
    "RFC 7143 7.7",
    "RFC 7143 11.17.1",
    requirements=["R7143-7.7-1", "R7143-11.10-5"],
)
async def test_text_request_reserved_itt(target: Any) -> None:
    """A Text Request with the reserved Initiator Task Tag 0xffffffff is a format error:
    the target ends the connection (a Reject may come first) and never answers it as a
    request.

    The tag 0xffffffff is reserved and no task may carry it (RFC 7143 11.2.1.8): in a
    request that starts a task it is an illegal header field, one of the two format
    errors of RFC 7143 7.7, on which the receiver must end every connection of the
    session and go to session recovery. A Reject before the close is allowed; a Text
    Response, a session that goes on, or silence are not."""
    async with full_feature(target) as ffp:
        req, resp = await _text(ffp, text_of([(PROBE_KEY, "1")]), itt=NONE_TAG)
        await _format_error_ends_session(
            ffp, req, resp, "a Text Request with ITT 0xffffffff (reserved, 11.2.1.8)"
        )


@spec(
    "FullFeature.Text.FinalAndContinue",
    "RFC 7143 7.7",
    "RFC 7143 11.10.2",
    requirements=["R7143-7.7-1", "R7143-11.10-5"],
)
async def test_text_request_final_and_continue(target: Any) -> None:
    """A Text Request with both F=1 and C=1 is a format error: the target ends the
    connection (a Reject may come first) and never answers it as a request.

    A Text Request with C=1 must have F=0 (RFC 7143 11.10.2); F and C together are
    inconsistent field contents, one of the two format errors of RFC 7143 7.7, on which
    the receiver must end every connection of the session (close or reset) and go to
    session recovery. A Reject before the close does not process the request and is
    allowed; a Text Response, a session that goes on, or silence are not."""
    async with full_feature(target) as ffp:
        req, resp = await _text(ffp, text_of([(PROBE_KEY, "1")]), final=True, cont=True)
        await _format_error_ends_session(
            ffp, req, resp, "a Text Request with F=1 and C=1 (C=1 needs F=0, 11.10.2)"
        )
