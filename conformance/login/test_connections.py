"""Login.Connections: sessions with more than one connection (RFC 7143 4.2.2, 4.2.5.1,
6.3, 6.3.4, 11.14, 13.2).

A connection joins a session by logging in with the session's InitiatorName, ISID and
TSIH and a new CID; only connection-scope keys are negotiated there. Each connection
keeps its own StatSN while CmdSN is session-wide; every response goes out on the
connection its request came in on. Tests that need two connections negotiate
MaxConnections=2 and skip when the target agrees to only one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.login import OPERATIONAL, SECURITY
from iscsi_conformance.harness.probe import FullFeature, Outcome, random_isid
from iscsi_conformance.harness.profiles import OTHER_INITIATOR_NAME
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

NONE_TAG = 0xFFFFFFFF
#: Why a refused login still needs an answer (a failure message's second half).
REFUSAL_RULE = (
    "RFC 7143 11.13.5: a login the target does not accept ends with a Login Response with "
    "a non-zero status class, and only then is the connection closed"
)
#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"


def _why_not_in(probe: Any, rule: str = ANSWER_RULE) -> str:
    """What the last step of a login that did not reach full feature phase got: the
    missing answer, or the status."""
    last = probe.steps[-1]
    return last.missing(rule) or f"status {last.status!r}"


async def _add_connection(
    target: Any,
    raw: Any,
    lead: Any,
    *,
    cid: int,
    keys: Any = (),
    cmdsn: int | None = None,
    isid: int | None = None,
    initiator_name: str | None = None,
) -> Any:
    """Log ``raw`` in as connection ``cid`` of ``lead``'s session; returns the probe.

    The first request carries only InitiatorName and TargetName (SessionType is
    leading-only, RFC 7143 13.21), then AuthMethod=None and the operational ``keys``.
    """
    name = initiator_name or target.initiator_name
    probe = target.probe(
        raw,
        initiator_name=name,
        isid=lead.isid if isid is None else isid,
        tsih=lead.tsih,
        cid=cid,
        cmdsn=lead.cmdsn if cmdsn is None else cmdsn,
    )
    first = [("InitiatorName", name), ("TargetName", probe.target_name), ("AuthMethod", "None")]
    step = await probe.step(first, csg=SECURITY, nsg=OPERATIONAL, transit=True, with_leading=False)
    if not step.succeeded or (step.response.transit and step.response.nsg == 3):
        return probe  # refused, or no answer (the caller judges which conforms)
    if not step.response.transit:
        step = await probe.step([], csg=SECURITY, nsg=OPERATIONAL, transit=True)
        if not step.succeeded or not step.response.transit:
            return probe
    keys = list(keys)
    if "MaxRecvDataSegmentLength" not in {k for k, _ in keys}:
        # connection-scoped and declarative: every connection declares its own, as
        # initiators do (the leading connection's probe does the same)
        keys.append(("MaxRecvDataSegmentLength", "8192"))
    await probe.operational(keys)
    return probe


def _agreed_connections(lead: Any) -> int:
    value = lead.negotiated.get("MaxConnections", "1")
    return int(value) if value.isdigit() else 1


@contextlib.asynccontextmanager
async def _session_for_two(target: Any) -> AsyncIterator[tuple[Any, FullFeature]]:
    """A leading connection that negotiated MaxConnections=2 (skips if the target
    agreed to fewer), as (raw, FullFeature)."""
    async with target.raw() as raw:
        lead = await target.login(raw, keys=[("MaxConnections", "2")])
        # A numerical offer is always answered (RFC 7143 6.2.2): no answer is no "1".
        require(
            "MaxConnections" in lead.negotiated,
            "R7143-6.2-4",
            "the login went on but MaxConnections=2 was never answered: the acceptor answers "
            "a numerical key offered to it (RFC 7143 6.2.2)",
            sent=lead.sent,
            received=lead.received,
        )
        agreed = _agreed_connections(lead)
        if agreed < 2:
            pytest.skip(f"the target agreed MaxConnections={agreed}: no multi-connection sessions")
        ffp = FullFeature(raw, lead)
        await ffp.clear_unit_attention(target.lun)
        lead.cmdsn = ffp.cmdsn
        yield raw, ffp


@contextlib.asynccontextmanager
async def _second(target: Any, ffp: FullFeature, *, cid: int = 1) -> AsyncIterator[FullFeature]:
    """Connection ``cid`` added to ``ffp``'s session, in full feature phase."""
    async with target.raw() as raw:
        ffp.probe.cmdsn = ffp.cmdsn
        probe = await _add_connection(target, raw, ffp.probe, cid=cid)
        require(
            probe.in_full_feature,
            "R7143-6.3-10",
            f"connection CID {cid} could not join the session ({_why_not_in(probe)})",
            sent=probe.sent,
            received=probe.received,
        )
        second = FullFeature(raw, probe)
        second.cmdsn = ffp.cmdsn
        yield second


async def _nop(ffp: FullFeature, *, immediate: bool = True) -> tuple[Any, Any]:
    """A ping; pings of the target's own (NOP-In with a TTT) are skipped."""
    req = P.NopOut(
        immediate=immediate,
        itt=ffp.next_itt(),
        ttt=NONE_TAG,
        cmdsn=ffp.take_cmdsn(immediate),
        expstatsn=ffp.expstatsn,
    )
    await ffp.send(req)
    for _ in range(8):
        resp = await ffp.recv()
        if resp is None or getattr(resp, "itt", None) == req.itt or isinstance(resp, P.Reject):
            return req, resp
    return req, None


# --------------------------------------------------------------------------- joining


@spec(
    "Login.Connections.AddConnection",
    ("RFC 7143", "6.3", "INFORMATIONAL", "target"),
    ("RFC 7143", "13.2", "INFORMATIONAL", "target"),
    requirements=["R7143-6.3-10", "R7143-13.2-1"],
)
async def test_add_second_connection(target: Any) -> None:
    """With MaxConnections=2 agreed, a second connection (same ISID, the session's
    TSIH, CID 1) logs in to full feature phase."""
    async with _session_for_two(target) as (_, ffp), target.raw() as raw:
        probe = await _add_connection(target, raw, ffp.probe, cid=1, cmdsn=ffp.cmdsn)
        require(
            probe.in_full_feature,
            "R7143-6.3-10",
            f"a second connection to a session with MaxConnections=2 was refused "
            f"({_why_not_in(probe)})",
            sent=[*ffp.probe.sent, *probe.sent],
            received=[*ffp.probe.received, *probe.received],
        )


@spec(
    "Login.Connections.AddedConnectionTsih",
    ("RFC 7143", "11.13", "INFORMATIONAL", "target"),
    requirements=["R7143-6.3-10"],
)
async def test_added_connection_keeps_tsih(target: Any) -> None:
    """Every Login Response to the added connection carries the session's TSIH (never a new one)."""
    async with _session_for_two(target) as (_, ffp), target.raw() as raw:
        tsih = ffp.probe.tsih
        probe = await _add_connection(target, raw, ffp.probe, cid=1, cmdsn=ffp.cmdsn)
        require(
            probe.in_full_feature,
            "R7143-6.3-10",
            f"the second connection could not log in ({_why_not_in(probe)})",
            sent=probe.sent,
            received=probe.received,
        )
        wrong = [r.tsih for r in probe.received if r.tsih != tsih]
        require(
            not wrong,
            "R7143-6.3-10",
            f"Login Responses of the added connection carry TSIH {wrong}, the session's is {tsih:#x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Connections.BeyondMaxConnections",
    "RFC 7143 13.2",
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-11", "R7143-13.2-1"],
)
async def test_connection_beyond_max_connections(target: Any) -> None:
    """With MaxConnections=1 agreed, a second connection to the session is refused
    (0206 too many connections, or 0208 cannot include in session).

    Admitting it is a robustness finding (R7143-6.3-11: no keyword read binds the
    target); a refusal is still owed a Login Response with a status (R7143-11.13-1)."""
    async with target.raw() as first:
        lead = await target.login(first, keys=[("MaxConnections", "1")])
        require(
            lead.negotiated.get("MaxConnections") is not None and _agreed_connections(lead) == 1,
            "R7143-13.2-1",
            f"MaxConnections=1 offered, answered {lead.negotiated.get('MaxConnections')!r}"
            + (
                ""
                if "MaxConnections" in lead.negotiated
                else ": never answered, though a numerical offer always is (RFC 7143 6.2.2)"
            ),
            sent=lead.sent,
            received=lead.received,
        )
        async with target.raw() as raw:
            probe = await _add_connection(target, raw, lead, cid=1)
            require(
                not probe.in_full_feature,
                "R7143-6.3-11",
                "a second connection was admitted to a session that agreed MaxConnections=1",
                sent=[*lead.sent, *probe.sent],
                received=[*lead.received, *probe.received],
            )
            status = probe.steps[-1].status
            require(
                probe.steps[-1].refused and status in (0x0206, 0x0208),
                "R7143-11.13-1",
                probe.steps[-1].missing(REFUSAL_RULE)
                or "expected a Login Response with status 0206 (too many connections) or 0208 "
                f"(RFC 7143 11.13.5), got {status:#06x}",
                sent=probe.sent,
                received=probe.received,
            )


LEADING_ONLY = {
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxBurstLength": "262144",
    "FirstBurstLength": "65536",
    "ErrorRecoveryLevel": "0",
    "MaxConnections": "2",
    "MaxOutstandingR2T": "1",
    "DataSequenceInOrder": "Yes",
}


def _make_leading_only_test(key: str, value: str) -> Callable[..., Any]:
    @spec(
        f"Login.Connections.NonLeading.{key}",
        ("RFC 7143", "6.3.6", "INFORMATIONAL", "target"),
        ("RFC 7143", "13", "INFORMATIONAL", "target"),
        "RFC 7143 6.2",
        requirements=["R7143-6.3.6-1", "R7143-6.2-4", "R7143-6.2-1"],
    )
    async def test(target: Any) -> None:
        async with _session_for_two(target) as (_, ffp), target.raw() as raw:
            probe = await _add_connection(
                target, raw, ffp.probe, cid=1, keys=[(key, value)], cmdsn=ffp.cmdsn
            )
            # Conforms: Irrelevant or Reject, or the login ended with status class 02.
            # Not: silence, a hang-up, the key left unanswered (R7143-6.2-4) or answered
            # NotUnderstood (R7143-6.2-1). Which answer it gets has no keyword read
            # (R7143-6.3.6-1, a robustness check: the LO rule binds the sender).
            require(
                probe.steps[-1].response is not None,
                "R7143-6.2-4",
                probe.steps[-1].missing(ANSWER_RULE),
                sent=probe.sent,
                received=probe.received,
            )
            if probe.steps[-1].refused:
                status = probe.steps[-1].status
                require(
                    status >> 8 == 2,
                    "R7143-6.3.6-1",
                    f"expected an initiator error (02xx) for a leading-only key, got {status!r}",
                    sent=probe.sent,
                    received=probe.received,
                )
                return
            answers = [s.keys.get(key) for s in probe.steps if s.keys.get(key) is not None]
            answer = answers[-1] if answers else None
            require(
                answer is not None,
                "R7143-6.2-4",
                f"the leading-only key {key}={value} on a non-leading connection was never "
                "answered: a negotiated key offered to the acceptor is answered (RFC 7143 6.2)",
                sent=probe.sent,
                received=probe.received,
            )
            require(
                answer != "NotUnderstood",
                "R7143-6.2-1",
                f"the leading-only key {key}={value} on a non-leading connection was answered "
                "NotUnderstood: a standard key the target knows is never answered NotUnderstood "
                "(RFC 7143 6.2)",
                sent=probe.sent,
                received=probe.received,
            )
            require(
                answer in ("Irrelevant", "Reject"),
                "R7143-6.3.6-1",
                f"the leading-only key {key}={value} on a non-leading connection was "
                + (f"answered {answer!r}" if answer is not None else "never answered")
                + ": expected Irrelevant (or Reject, or a failed login)",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"{key} (leading only) offered on an added connection is answered Irrelevant or the login fails."
    return test


for _key, _value in LEADING_ONLY.items():
    globals()[f"test_non_leading_{_key}"] = _make_leading_only_test(_key, _value)


@spec(
    "Login.Connections.ConnectionKeysOnNonLeading",
    ("RFC 7143", "6.3.6", "INFORMATIONAL", "target"),
    "RFC 7143 13.1",
    "RFC 7143 13.12",
    requirements=["R7143-6.3.6-1", "R7143-6.2.1-2"],
)
async def test_connection_keys_on_added_connection(target: Any) -> None:
    """Connection-scope keys (HeaderDigest, MaxRecvDataSegmentLength) are negotiated
    normally on an added connection: HeaderDigest=None is answered None."""
    keys = [("HeaderDigest", "None"), ("MaxRecvDataSegmentLength", "8192")]
    async with _session_for_two(target) as (_, ffp), target.raw() as raw:
        probe = await _add_connection(target, raw, ffp.probe, cid=1, keys=keys, cmdsn=ffp.cmdsn)
        require(
            probe.in_full_feature,
            "R7143-6.3.6-1",
            f"connection-scope keys made the added connection fail ({_why_not_in(probe)})",
            sent=probe.sent,
            received=probe.received,
        )
        answer = probe.negotiated.get("HeaderDigest")
        require(
            answer == "None",
            "R7143-6.2.1-2",
            f"HeaderDigest=None on an added connection was answered {answer!r}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Connections.TsihWithOtherIsid",
    "RFC 7143 6.3",
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-6"],
)
async def test_tsih_with_other_isid(target: Any) -> None:
    """A login with a live session's TSIH but another ISID joins no session: refused (020A)."""
    async with _session_for_two(target) as (_, ffp), target.raw() as raw:
        isid = random_isid()
        while isid == ffp.probe.isid:
            isid = random_isid()
        probe = await _add_connection(target, raw, ffp.probe, cid=1, isid=isid, cmdsn=ffp.cmdsn)
        require(
            not probe.in_full_feature,
            "R7143-6.3-6",
            "a connection with another ISID joined the session through its TSIH",
            sent=probe.sent,
            received=probe.received,
        )
        status = probe.steps[-1].status
        require(
            probe.steps[-1].refused and status >> 8 == 2,
            "R7143-11.13-1",
            probe.steps[-1].missing(REFUSAL_RULE)
            or f"expected an initiator error (020A session does not exist), got {status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Connections.TsihWithOtherInitiator",
    "RFC 7143 6.3",
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-6"],
)
async def test_tsih_with_other_initiator(target: Any) -> None:
    """The session's ISID and TSIH presented under another InitiatorName join no session: refused."""
    async with _session_for_two(target) as (_, ffp), target.raw() as raw:
        probe = await _add_connection(
            target, raw, ffp.probe, cid=1, initiator_name=OTHER_INITIATOR_NAME, cmdsn=ffp.cmdsn
        )
        require(
            not probe.in_full_feature,
            "R7143-6.3-6",
            "another initiator joined the session by presenting its ISID and TSIH",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            probe.steps[-1].refused,
            "R7143-11.13-1",
            probe.steps[-1].missing(REFUSAL_RULE)
            or "a login that joins no session ends with a Login Response with a non-zero "
            f"status (RFC 7143 11.13.5), got {probe.steps[-1].status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


# --------------------------------------------------------------------------- in use


@spec(
    "Login.Connections.Allegiance",
    "RFC 7143 4.2.5.1",
    requirements=["R7143-4.2.4.1-1"],
)
async def test_connection_allegiance(target: Any) -> None:
    """An INQUIRY and a ping sent on connection 1 are answered on connection 1 only."""
    async with _session_for_two(target) as (raw0, ffp), _second(target, ffp) as ffp1:
        out = await ffp1.command(cdb.inquiry(alloc=96), read_length=96, lun=target.lun)
        ffp.cmdsn = ffp1.cmdsn
        require(
            out.status is not None,
            "R7143-4.2.4.1-1",
            "an INQUIRY sent on connection 1 got no status on connection 1",
            sent=out.sent,
            received=out.received,
        )
        req, resp = await _nop(ffp1)
        require(
            isinstance(resp, P.NopIn),
            "R7143-4.2.4.1-1",
            "a ping sent on connection 1 got no NOP-In on connection 1",
            sent=[req],
            received=ffp1.shown(resp),
        )
        strays = []
        while (p := await raw0.recv(timeout=1.0)) is not None:
            if getattr(p, "itt", None) in (out.command.itt, req.itt):
                strays.append(p)
        require(
            not strays,
            "R7143-4.2.4.1-1",
            "PDUs of tasks started on connection 1 arrived on connection 0",
            sent=[out.command, req],
            received=strays,
        )


@spec(
    "Login.Connections.StatSNPerConnection",
    ("RFC 7143", "4.2.2.2", "INFORMATIONAL", "target"),
    requirements=["R7143-4.2.2.2-3", "R7143-4.2.2.2-1"],
)
async def test_statsn_per_connection(target: Any) -> None:
    """Three responses on connection 0 do not move connection 1's StatSN: its next
    two pings are answered StatSN n, n+1."""
    async with _session_for_two(target) as (_, ffp), _second(target, ffp) as ffp1:
        r1, a = await _nop(ffp1)
        sent, received = [r1], ffp1.shown(a)
        for _ in range(3):
            r, resp = await _nop(ffp)
            sent.append(r)
            received += ffp.shown(resp)
        r2, b = await _nop(ffp1)
        sent.append(r2)
        received += ffp1.shown(b)
        require(
            isinstance(a, P.NopIn) and isinstance(b, P.NopIn),
            "R7143-11.18-1",
            "a ping on connection 1 was not answered",
            sent=sent,
            received=received,
        )
        require(
            b.statsn == (a.statsn + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.2-3",
            f"connection 1's StatSN went {a.statsn} -> {b.statsn} across three responses "
            "on connection 0; StatSN is counted per connection",
            sent=sent,
            received=received,
        )


@spec(
    "Login.Connections.CmdSNSessionWide",
    ("RFC 7143", "4.2.2.1", "INFORMATIONAL", "target"),
    "RFC 7143 11.18",
    requirements=["R7143-4.2.2.1-6", "R7143-4.2.2.1-1", "R7143-11.18-1"],
)
async def test_cmdsn_session_wide(target: Any) -> None:
    """Non-immediate pings with CmdSN n..n+2 on connection 0, then n+3 on connection 1:
    connection 1's answer reports ExpCmdSN n+4.

    The session-wide ExpCmdSN is a robustness check (no keyword read, R7143-4.2.2.1-6);
    the ping itself is owed a NOP-In (R7143-11.18-1)."""
    async with _session_for_two(target) as (_, ffp), _second(target, ffp) as ffp1:
        sent, received = [], []
        for _ in range(3):
            r, resp = await _nop(ffp, immediate=False)
            sent.append(r)
            received += ffp.shown(resp)
        ffp1.cmdsn = ffp.cmdsn
        r, resp = await _nop(ffp1, immediate=False)
        sent.append(r)
        received += ffp1.shown(resp)
        require(
            isinstance(resp, P.NopIn),
            "R7143-11.18-1",
            f"a ping with CmdSN {r.cmdsn} on connection 1 (the session's next CmdSN after "
            "three on connection 0) was not answered",
            sent=sent,
            received=received,
        )
        require(
            resp.expcmdsn == (r.cmdsn + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.1-6",
            f"ExpCmdSN {resp.expcmdsn} on connection 1 after CmdSN {r.cmdsn}; the session's "
            f"next is {(r.cmdsn + 1) & 0xFFFFFFFF}",
            sent=sent,
            received=received,
        )


@spec(
    "Login.Connections.LogoutOtherConnection",
    "RFC 7143 11.14",
    "RFC 7143 11.15",
    requirements=["R7143-11.14-5", "R7143-11.14-1"],
)
async def test_logout_other_connection(target: Any) -> None:
    """A Logout 'close the connection' for CID 1 sent on connection 0 is answered on
    connection 0; connection 1 is closed and connection 0 goes on."""
    async with _session_for_two(target) as (_, ffp), _second(target, ffp) as ffp1:
        req = P.LogoutRequest(
            immediate=True,
            reason=1,
            itt=ffp.next_itt(),
            cid=1,
            cmdsn=ffp.cmdsn,
            expstatsn=ffp.expstatsn,
        )
        await ffp.send(req)
        resp = None
        for _ in range(8):
            resp = await ffp.recv()
            if resp is None or isinstance(resp, P.LogoutResponse | P.Reject):
                break
        require(
            isinstance(resp, P.LogoutResponse) and resp.response == 0 and resp.itt == req.itt,
            "R7143-11.14-5",
            f"Logout of CID 1 sent on CID 0 answered {resp!r}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            await ffp1.raw.expect_closed(timeout=10),
            "R7143-11.14-5",
            "connection 1 stayed open after its logout was answered",
            sent=[req],
            received=[resp],
        )
        ping, answer = await _nop(ffp)
        require(
            isinstance(answer, P.NopIn),
            "R7143-11.14-5",
            "connection 0 stopped answering after connection 1 was logged out",
            sent=[req, ping],
            received=[resp, *ffp.shown(answer)],
        )


@spec(
    "Login.Connections.Reinstatement",
    "RFC 7143 6.3.4",
    requirements=["R7143-6.3.4-1"],
)
async def test_connection_reinstatement(target: Any) -> None:
    """Logging in again with CID 1 while CID 1 is active reinstates it: the new login
    succeeds, the old CID 1 connection is closed, connection 0 goes on."""
    async with (
        _session_for_two(target) as (_, ffp),
        _second(target, ffp) as old,
        target.raw() as raw,
    ):
        probe = await _add_connection(target, raw, ffp.probe, cid=1, cmdsn=ffp.cmdsn)
        require(
            probe.in_full_feature,
            "R7143-6.3.4-1",
            f"reinstating CID 1 was refused ({_why_not_in(probe)}); a login with an "
            "active CID replaces that connection and does not count as an extra one",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            await old.raw.expect_closed(timeout=10),
            "R7143-6.3.4-1",
            "the old CID 1 connection stayed open after it was reinstated",
            sent=probe.sent,
            received=probe.received,
        )
        ping, answer = await _nop(ffp)
        if not isinstance(answer, P.NopIn):
            raise violation(
                "R7143-6.3.4-1",
                "connection 0 stopped answering after CID 1 was reinstated",
                sent=[*probe.sent, ping],
                received=[*probe.received, *ffp.shown(answer)],
            )


@spec(
    "Login.Connections.ReinstatementSingleConnection",
    "RFC 7143 6.3.4",
    requirements=["R7143-6.3.4-1", "R7143-6.3.4-2", "R7143-11.13-1"],
)
async def test_connection_reinstatement_single(target: Any) -> None:
    """A session of one connection (MaxConnections=1, ErrorRecoveryLevel=0) whose CID is
    reinstated by a second login with its ISID, TSIH and CID: the old connection is
    logged out (RFC 7143 6.3.4: "The Login Request performs the logout function of the
    old connection"), so it must not answer a NOP-Out, and the new one must (6.3.4: "in
    addition to the implicit logout of the old connection, reinstatement is equivalent
    to a new connection login"). A refused reinstatement breaks a SHOULD (R7143-6.3.4-2:
    6.3.4 has targets support that second connection, a SHOULD below ErrorRecoveryLevel
    2), a login left unanswered a MUST (R7143-11.13-1: a failed login ends with a
    Login Response).
    RFC 7143 6.3.4, full text read in Mango0x45/dotfiles doc/rfc/rfc7143.txt."""
    keys = [("MaxConnections", "1"), ("ErrorRecoveryLevel", "0")]
    async with target.raw() as raw, target.raw() as raw2:
        lead = await target.login(raw, keys=keys)
        for key, _ in keys:  # a numerical offer is always answered (RFC 7143 6.2.2)
            require(
                key in lead.negotiated,
                "R7143-6.2-4",
                f"the login went on but {key} was never answered: the acceptor answers a "
                "numerical key offered to it (RFC 7143 6.2.2)",
                sent=lead.sent,
                received=lead.received,
            )
        old = FullFeature(raw, lead)
        await old.clear_unit_attention(target.lun)
        lead.cmdsn = old.cmdsn
        probe = await _add_connection(target, raw2, lead, cid=lead.cid)
        if not probe.in_full_feature:
            unanswered = probe.steps[-1].response is None
            raise violation(
                "R7143-11.13-1" if unanswered else "R7143-6.3.4-2",
                f"the target did not let CID {lead.cid} of a one-connection session be "
                f"reinstated ({_why_not_in(probe)}); RFC 7143 6.3.4: targets SHOULD support "
                "opening that second connection below ErrorRecoveryLevel 2",
                sent=probe.sent,
                received=probe.received,
                level=None if unanswered else "SHOULD",
            )
        ping, answer = await _nop(old)
        gone = old.no_answer
        if isinstance(answer, P.NopIn):
            raise violation(
                "R7143-6.3.4-1",
                f"the old connection (CID {lead.cid}) answered a NOP-Out after a login with "
                "its ISID, TSIH and CID had reinstated it: that login performs its logout",
                sent=[*probe.sent, ping],
                received=[*probe.received, *old.shown(answer)],
            )
        if not (answer is None and gone is not None and gone.outcome is Outcome.CLOSED):
            require(
                await raw.expect_closed(timeout=10),
                "R7143-6.3.4-1",
                f"the old connection (CID {lead.cid}) stayed open 10 s after it was "
                f"reinstated (its NOP-Out got {answer or gone})",
                sent=[*probe.sent, ping],
                received=probe.received,
            )
        new = FullFeature(raw2, probe)
        new.cmdsn = old.cmdsn
        ping2, answer2 = await _nop(new)
        if not isinstance(answer2, P.NopIn):
            raise violation(
                "R7143-6.3.4-1",
                "the connection that reinstated the old one did not answer a NOP-Out",
                sent=[*probe.sent, ping2],
                received=[*probe.received, *new.shown(answer2)],
            )
