"""Login.Stages / Login.Session: CSG/NSG and T/C rules, versions, ISID and TSIH,
reinstatement, and what may be sent before full feature phase."""

from __future__ import annotations

import time
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import NoAnswer, Outcome, random_isid
from iscsi_conformance.plugin import require, spec, violation

#: Why a refused login still needs an answer (a failure message's second half).
REFUSAL_RULE = (
    "RFC 7143 11.13.5: a login the target does not accept ends with a Login Response with "
    "a non-zero status class, and only then is the connection closed"
)
#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"


def _refused_as_initiator_error(step: Any) -> bool:
    return bool(step.refused and step.response.status_class == 2)


def _require_answer(probe: Any, step: Any, requirement: str, rule: str = REFUSAL_RULE) -> None:
    """A Login Response came (any status); silence and a hang-up fail, saying which."""
    __tracebackhide__ = True
    require(
        step.response is not None,
        requirement,
        step.missing(rule),
        sent=probe.sent,
        received=probe.received,
    )


def _require_going_on(probe: Any, step: Any) -> None:
    """The login step succeeded, as it does at a target that needs no authentication
    (R7143-6.3.1-2); anything else fails, saying what came."""
    __tracebackhide__ = True
    require(
        step.succeeded,
        "R7143-6.3.1-2",
        step.missing(ANSWER_RULE) or f"login refused ({step.status:#06x})",
        sent=probe.sent,
        received=probe.received,
    )


@spec("Login.Stages.TransitAndContinueBothSet", "RFC 7143 11.12.2", requirements=["R7143-11.12-1"])
async def test_t_and_c_both_set(target: Any) -> None:
    """A Login Request with T=1 and C=1 is a protocol error: the login ends.

    Conforms: a Login Response with status class 02 (11.13.5), or the connection closed
    (T and C together are inconsistent header fields, a format error on which the
    receiver ends the connection, 7.7). Not: silence, or the login going on."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([("AuthMethod", "None")], csg=0, nsg=1, transit=True, cont=True)
        if step.hung_up:
            return
        _require_answer(
            probe,
            step,
            "R7143-11.12-1",
            "RFC 7143 11.13.5 ends a refused login with a Login Response with status class "
            "02, and 7.7 has the receiver of a format error close the connection",
        )
        require(
            step.refused,
            "R7143-11.12-1",
            "T=1 with C=1 was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            _refused_as_initiator_error(step),
            "R7143-11.13-1",
            f"expected an initiator error (02xx), got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Stages.NextStageBeforeCurrent",
    ("RFC 7143", "11.12.3", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-11.12-2", "R7143-11.13-1"],
)
async def test_nsg_lower_than_csg(target: Any) -> None:
    """T=1 with NSG (security) lower than CSG (operational) is a protocol error.

    The refusal is a robustness check (no keyword binds the target's answer, R7143-11.12-2);
    silence or a hang-up without a Login Response breaks R7143-11.13-1."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.send(probe.build([], csg=1, nsg=0, transit=True))
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-11.12-2",
            "a transition back to the security stage was accepted",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Stages.ReservedStageValue",
    "RFC 7143 11.12.3",
    "RFC 7143 7.7",
    "RFC 7143 11.13.5",
    requirements=["R7143-7.7-1", "R7143-11.13-1"],
)
async def test_reserved_stage_value(target: Any) -> None:
    """CSG=2 is reserved: the login fails."""
    await _reserved_stage_refused(target, [("AuthMethod", "None")])


@spec(
    "Login.Stages.TransitOnlyIfRequested",
    "RFC 7143 11.13.6",
    requirements=["R7143-6.3-4"],
)
async def test_target_transits_only_when_asked(target: Any) -> None:
    """With T=0 in the request, the target's response has T=0."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([("AuthMethod", "None")], csg=0, nsg=0, transit=False)
        _require_answer(probe, step, "R7143-6.3-4", ANSWER_RULE)
        require(
            step.succeeded,
            "R7143-6.3.1-2",
            f"login refused ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            not step.response.transit,
            "R7143-6.3-4",
            "the target set T although the initiator did not",
            sent=probe.sent,
            received=probe.received,
        )


@spec("Login.Stages.SkipSecurityWhenNotRequired", "RFC 7143 6.3", requirements=["R7143-6.3.1-2"])
async def test_start_in_operational_stage(target: Any) -> None:
    """A target that requires no authentication accepts a login that starts in the operational stage."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([], csg=1, nsg=3, transit=True)
        # The target may offer keys of its own first; they are answered (RFC 7143 6.2).
        if step.succeeded and not step.response.transit:
            step = await probe.operational(answering=step)
        require(
            probe.in_full_feature,
            "R7143-6.3.1-2",
            step.missing(ANSWER_RULE)
            or f"starting in the operational stage was refused by an unauthenticated target ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Stages.SkipSecurityWhenRequired",
    ("RFC 7143", "6.3.1", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3.1-1", "R7143-6.3-7", "R7143-11.13-1"],
    needs=("chap_algorithms=5",),
)
async def test_skip_security_refused(target: Any) -> None:
    """A target that requires CHAP refuses a login that skips the security stage.

    RFC 7143 6.3.1 lets such a target refuse (lower case), so the refusal and its code are
    a robustness check (R7143-6.3.1-1); a refusal without a Login Response breaks
    R7143-11.13-1."""
    async with target.raw() as raw:
        probe = target.probe(raw, "chap")
        step = await probe.step([], csg=1, nsg=3, transit=True)
        if step.succeeded and not step.response.transit:
            step = await probe.operational([])
        require(
            not probe.in_full_feature,
            "R7143-6.3.1-1",
            "reached full feature phase without authenticating",
            sent=probe.sent,
            received=probe.received,
        )
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused and step.response.status in (0x0201, 0x0202, 0x0200),
            "R7143-6.3.1-1",
            f"expected authentication/authorisation failure, got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Stages.AuthMethodNoneWhenChapRequired",
    "RFC 7143 6.3.2",
    requirements=["R7143-6.3.2-1", "R7143-6.3.1-1"],
    needs=("chap_algorithms=5",),
)
async def test_authmethod_none_refused(target: Any) -> None:
    """Offering only AuthMethod=None to a target that requires CHAP never reaches full feature phase."""
    async with target.raw() as raw:
        probe = target.probe(raw, "chap")
        step = await probe.security_none()
        require(
            step.response is not None,
            "R7143-11.13-1",
            "no Login Response to AuthMethod=None from a target that requires CHAP: it "
            "answers AuthMethod=Reject or ends the login with a non-zero status "
            "(RFC 7143 6.3.2, 11.13.5)",
            sent=probe.sent,
            received=probe.received,
        )
        if not step.refused:
            answer = step.keys.get("AuthMethod")
            require(
                answer in ("Reject", "None") and answer != "CHAP",
                "R7143-6.3.2-1",
                f"AuthMethod answered {answer!r}",
                sent=probe.sent,
                received=probe.received,
            )
            if answer == "None" and step.response.transit:
                step = await probe.operational([])
        # 6.3.2: the target answers the first offered method it supports and is allowed
        # to use for this initiator, or Reject; None is not allowed where CHAP is required.
        require(
            not probe.in_full_feature,
            "R7143-6.3.2-1",
            "full feature phase without authentication: AuthMethod=None was accepted by a "
            "target that requires CHAP (RFC 7143 6.3.2: Reject when no offered method may "
            "be used)",
            sent=probe.sent,
            received=probe.received,
        )


@spec("Login.Versions.Unsupported", "RFC 7143 11.12.4", requirements=["R7143-11.12-3"])
async def test_unsupported_version(target: Any) -> None:
    """Version-min 1 and Version-max 1 (no overlap with 0x00) fails with 0205."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.send(
            probe.build(
                [("AuthMethod", "None")], csg=0, nsg=1, transit=True, version_max=1, version_min=1
            )
        )
        _require_answer(probe, step, "R7143-11.12-3")
        require(
            step.refused,
            "R7143-11.12-3",
            "a login with only version 1 was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        # 0205 is the status table's entry for it; no keyword binds the target to that code
        require(
            step.response.status == 0x0205,
            "R7143-11.12-3",
            f"expected 0205 (unsupported version), got {step.status:#06x} (RFC 7143 11.13.5 "
            "names 0205 for it in its status table, without a keyword)",
            sent=probe.sent,
            received=probe.received,
            level="INFORMATIONAL",
        )


@spec("Login.Versions.Active", "RFC 7143 11.13.2", requirements=["R7143-11.12-3"])
async def test_version_active_zero(target: Any) -> None:
    """A successful Login Response carries Version-active 0x00."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.security_none()
        _require_going_on(probe, step)
        require(
            step.response.version_active == 0,
            "R7143-11.12-3",
            f"Version-active {step.response.version_active}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Session.EchoIsidAndItt",
    ("RFC 7143", "11.13", "INFORMATIONAL", "target"),
    "RFC 7143 6.2",
    requirements=["R7143-11.13-5", "R7143-6.2-4"],
)
async def test_response_echoes_isid_and_itt(target: Any) -> None:
    """Every Login Response carries the request's ISID and Initiator Task Tag.

    The echo is a robustness check (no keyword read, R7143-11.13-5); each Login Request
    offers keys, so a missing Login Response breaks R7143-6.2-4."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        await probe.to_full_feature([])
        for step in probe.steps:
            _require_answer(probe, step, "R7143-6.2-4", ANSWER_RULE)
            require(
                step.response.isid == step.request.isid,
                "R7143-11.13-5",
                f"ISID {step.response.isid:#x} != {step.request.isid:#x}",
                sent=probe.sent,
                received=probe.received,
            )
            require(
                step.response.itt == step.request.itt,
                "R7143-11.13-5",
                f"ITT {step.response.itt:#x} != {step.request.itt:#x}",
                sent=probe.sent,
                received=probe.received,
            )


@spec("Login.Session.TsihAssigned", "RFC 7143 11.13.3", requirements=["R7143-6.3-5"])
async def test_tsih_assigned(target: Any) -> None:
    """The final response of a new session carries a non-zero TSIH."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        await probe.to_full_feature([])
        require(
            probe.in_full_feature,
            "R7143-6.3.1-2",
            probe.steps[-1].missing(ANSWER_RULE) or "could not log in",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            probe.steps[-1].response.tsih != 0,
            "R7143-6.3-5",
            "TSIH 0 in the final login response",
            sent=probe.sent,
            received=probe.received,
        )


@spec("Login.Session.UnknownTsih", "RFC 7143 6.3", "RFC 7143 11.13.5", requirements=["R7143-6.3-6"])
async def test_unknown_tsih(target: Any) -> None:
    """Adding a connection to a session that does not exist fails with 020A."""
    async with target.raw() as raw:
        probe = target.probe(raw, tsih=0x7A5B, cid=1)
        step = await probe.security_none()
        if step.succeeded and step.response.transit:
            step = await probe.operational([])
        _require_answer(probe, step, "R7143-6.3-6")
        require(
            step.refused,
            "R7143-6.3-6",
            "a login with an unknown TSIH was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            step.response.status in (0x020A, 0x0200, 0x0207),
            "R7143-6.3-6",
            f"expected 020A (session does not exist), got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Session.MissingInitiatorName",
    ("RFC 7143", "6.3", "INFORMATIONAL", "target"),
    ("RFC 7143", "13.5", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-1", "R7143-11.13-1"],
)
async def test_missing_initiator_name(target: Any) -> None:
    """A first Login Request without InitiatorName fails with 0207 (missing parameter).

    The MUST binds the initiator (RFC 7143 6.3), so the refusal is a robustness check
    (R7143-6.3-1); a failed login without a Login Response breaks R7143-11.13-1."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.send(
            probe.build(
                [
                    ("TargetName", probe.target_name),
                    ("SessionType", "Normal"),
                    ("AuthMethod", "None"),
                ],
                csg=0,
                nsg=1,
                transit=True,
                with_leading=False,
            )
        )
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-6.3-1",
            "a login without InitiatorName was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            step.response.status_class == 2,
            "R7143-6.3-1",
            f"expected 02xx, got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Session.MissingTargetName",
    ("RFC 7143", "6.3", "INFORMATIONAL", "target"),
    ("RFC 7143", "13.4", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-1", "R7143-13.4-1", "R7143-11.13-1"],
)
async def test_missing_target_name(target: Any) -> None:
    """A Normal session's first Login Request without TargetName fails (02xx)."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.send(
            probe.build(
                [
                    ("InitiatorName", probe.initiator_name),
                    ("SessionType", "Normal"),
                    ("AuthMethod", "None"),
                ],
                csg=0,
                nsg=1,
                transit=True,
                with_leading=False,
            )
        )
        if step.succeeded and step.response.transit:
            step = await probe.operational([])
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-6.3-1",
            "a Normal session without TargetName was accepted",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Session.UnknownTarget",
    ("RFC 7143", "6.3", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-6.3-2", "R7143-11.13-1"],
)
async def test_unknown_target(target: Any) -> None:
    """A TargetName the target does not serve fails with 0203 (not found).

    0203 is a status-table entry, so the refusal and its code are a robustness check
    (R7143-6.3-2); a failed login without a Login Response breaks R7143-11.13-1."""
    async with target.raw() as raw:
        probe = target.probe(raw, target_name="iqn.2024-01.org.iscsi-conformance:no-such-target")
        step = await probe.security_none()
        if step.succeeded and step.response.transit:
            step = await probe.operational([])
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-6.3-2",
            "login to an unknown target was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            step.response.status in (0x0203, 0x0202, 0x0201),
            "R7143-6.3-2",
            f"expected 0203 (not found), got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )


@spec("Login.Session.FailureClosesConnection", "RFC 7143 11.13.5", requirements=["R7143-11.13-1"])
async def test_failure_closes_connection(target: Any) -> None:
    """After a failed login the target closes the connection."""
    async with target.raw() as raw:
        probe = target.probe(raw, target_name="iqn.2024-01.org.iscsi-conformance:no-such-target")
        step = await probe.security_none()
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-6.3-2",
            "login to an unknown target was accepted",
            sent=probe.sent,
            received=probe.received,
        )
        closed = await raw.expect_closed(timeout=5)
        require(
            closed,
            "R7143-11.13-1",
            "the connection stayed open after a failed login",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Session.NonLoginOpcodeBeforeFullFeature",
    "RFC 7143 4.2.4",
    "RFC 7143 8.1.2",
    requirements=["R7143-8.1.2-1"],
)
async def test_nop_during_login(target: Any) -> None:
    """A NOP-Out during login (before full feature phase) is not processed as a NOP."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([("AuthMethod", "None")], csg=0, nsg=0, transit=False)
        _require_going_on(probe, step)
        nop = P.NopOut(immediate=True, itt=0x77, ttt=0xFFFFFFFF, cmdsn=1, expstatsn=probe.expstatsn)
        await raw.send(nop)
        answer = await raw.recv(timeout=min(3.0, probe.timeout))
        require(
            not isinstance(answer, P.NopIn),
            "R7143-8.1.2-1",
            "the target answered a NOP-Out during login with a NOP-In",
            sent=[*probe.sent, nop],
            received=[*probe.received, answer] if answer else probe.received,
        )


@spec("Login.Session.Reinstatement", "RFC 7143 6.3.5", requirements=["R7143-6.3.5-1"])
async def test_session_reinstatement(target: Any) -> None:
    """A new login with the same ISID and InitiatorName (TSIH 0) replaces the old session."""
    isid = random_isid()
    async with target.raw() as first:
        p1 = await target.login(first, isid=isid)
        async with target.raw() as second:
            p2 = await target.login(second, isid=isid)
            require(
                p2.in_full_feature,
                "R7143-6.3.5-1",
                "reinstating login failed",
                sent=p2.sent,
                received=p2.received,
            )
            closed = await first.expect_closed(timeout=10)
            require(
                closed,
                "R7143-6.3.5-1",
                "the old session's connection was not closed on reinstatement",
                sent=p1.sent + p2.sent,
                received=p1.received + p2.received,
            )


@spec(
    "Login.Session.DiscoveryRejectsScsi",
    "RFC 7143 4.3",
    "RFC 7143 13.21",
    requirements=["R7143-13.21-2"],
)
async def test_discovery_session_refuses_scsi(target: Any) -> None:
    """A SCSI command in a Discovery session is rejected (or the connection dropped)."""
    async with target.raw() as raw:
        probe = target.probe(raw, session_type="Discovery", target_name=None)
        await probe.to_full_feature([])
        require(
            probe.in_full_feature,
            "R7143-6.3.1-2",
            "discovery login failed",
            sent=probe.sent,
            received=probe.received,
        )
        cmd = P.ScsiCommand(
            final=True,
            read=True,
            lun=0,
            itt=0x55,
            expected_data_transfer_length=36,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            cdb=bytes([0x12, 0, 0, 0, 36, 0]),
        )
        # Conforms: a Reject of the command, or the connection dropped. Not: silence (the
        # initiator would wait for a command that never ends) or any other answer.
        started = time.monotonic()
        await raw.send(cmd)
        answer = await raw.recv(timeout=probe.timeout)
        if answer is None:
            if raw.last_outcome is Outcome.CLOSED:
                return
            gap = NoAnswer(raw.last_outcome, time.monotonic() - started, probe.timeout)
            raise violation(
                "R7143-13.21-2",
                f"{gap.describe('Reject')}: a SCSI command in a Discovery session is rejected "
                "(or the connection dropped), never left unanswered",
                sent=[*probe.sent, cmd],
                received=[*probe.received, gap],
            )
        if isinstance(answer, P.Reject):
            return
        raise violation(
            "R7143-13.21-2",
            f"a SCSI command in a Discovery session got {type(answer).__name__}",
            sent=[*probe.sent, cmd],
            received=[*probe.received, answer],
        )


@spec(
    "Login.Stages.ReservedStageOperationalKeys",
    "RFC 7143 11.12.3",
    "RFC 7143 7.7",
    "RFC 7143 11.13.5",
    requirements=["R7143-7.7-1", "R7143-11.13-1"],
)
async def test_reserved_stage_with_operational_keys(target: Any) -> None:
    """CSG=2 is reserved even when the request carries only operational keys: the login
    fails (the request cannot be read as an operational-stage request)."""
    await _reserved_stage_refused(target, [("HeaderDigest", "None")])


async def _reserved_stage_refused(
    target: Any, pairs: list[tuple[str, str]], *, csg: int = 2, nsg: int = 3
) -> None:
    """A first Login Request with a reserved stage code (2, RFC 7143 11.12.3: all codes but
    0, 1 and 3 are reserved) carrying ``pairs`` fails. An illegal header field value is a
    format error (7.7), on which the target MUST end the connection (R7143-7.7-1), so a
    login that goes on does not conform; the failed login is owed a Login Response
    (R7143-11.13-1)."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.send(probe.build(pairs, csg=csg, nsg=nsg, transit=True))
        _require_answer(probe, step, "R7143-11.13-1")
        require(
            step.refused,
            "R7143-7.7-1",
            f"a Login Request with CSG={csg}, NSG={nsg} (2 is a reserved stage code, RFC 7143 "
            "11.12.3) was taken up; an illegal header field value is a format error, on "
            "which the target MUST end the connection (7.7)",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Stages.ReservedNextStage",
    "RFC 7143 11.12.3",
    "RFC 7143 7.7",
    "RFC 7143 11.13.5",
    requirements=["R7143-7.7-1", "R7143-11.13-1"],
)
async def test_reserved_next_stage(target: Any) -> None:
    """T=1 with NSG=2 (reserved; the Next Stage value is valid when T is 1) is a format
    error: the login fails, and is not read as a request without transit."""
    await _reserved_stage_refused(target, [("AuthMethod", "None")], csg=0, nsg=2)


@spec(
    "Login.Session.NonLoginPduRefused",
    "RFC 7143 4.2.4",
    "RFC 7143 8.1.2",
    requirements=["R7143-8.1.2-1"],
)
async def test_nop_during_login_refused(target: Any) -> None:
    """A NOP-Out after the first Login Request, before full feature phase, ends the login
    the way RFC 3720 3.2.3 (= RFC 7143 4.2.4) says: once the login phase has started, a
    target receiving a PDU other than a Login Request MUST send a Login reject with the
    status "invalid during login" (020B) and then disconnect. A hang-up without the Login
    reject, silence (the PDU ignored) or another answer does not conform."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([("AuthMethod", "None")], csg=0, nsg=0, transit=False)
        _require_going_on(probe, step)
        nop = P.NopOut(immediate=True, itt=0x78, ttt=0xFFFFFFFF, cmdsn=1, expstatsn=probe.expstatsn)
        limit = min(3.0, probe.timeout)
        started = time.monotonic()
        await raw.send(nop)
        answer = await raw.recv(timeout=limit)
        if answer is None:
            gap = NoAnswer(raw.last_outcome, time.monotonic() - started, limit)
            raise violation(
                "R7143-8.1.2-1",
                f"{gap.describe('Login reject')}: {INVALID_DURING_LOGIN_RULE}",
                sent=[*probe.sent, nop],
                received=[*probe.received, gap],
            )
        status = (
            (answer.status_class << 8) | answer.status_detail
            if isinstance(answer, P.LoginResponse)
            else None
        )
        require(
            status == 0x020B,
            "R7143-8.1.2-1",
            f"a NOP-Out during login got {type(answer).__name__}"
            + (f" with status {status:#06x}" if status is not None else "")
            + f", not a Login reject 0x020b: {INVALID_DURING_LOGIN_RULE}",
            sent=[*probe.sent, nop],
            received=[*probe.received, answer],
        )
        require(
            await raw.expect_closed(timeout=limit),
            "R7143-8.1.2-1",
            f"the connection stayed open after the Login reject: {INVALID_DURING_LOGIN_RULE}",
            sent=[*probe.sent, nop],
            received=[*probe.received, answer],
        )


#: RFC 3720 3.2.3 (= RFC 7143 4.2.4) on a PDU other than a Login Request during login.
INVALID_DURING_LOGIN_RULE = (
    "RFC 3720 3.2.3 (= RFC 7143 4.2.4): once the login phase has started, a target receiving "
    "any PDU except a Login Request MUST send a Login reject (status 020B, invalid during "
    "login) and then disconnect"
)


@spec(
    "Login.Session.CidOfFirstRequest",
    "RFC 7143 11.12.7",
    requirements=["R7143-6.3-3"],
)
async def test_cid_of_first_request_kept(target: Any) -> None:
    """Login Requests after the first carry another CID: the target refuses the login or
    keeps the first CID, so a Logout closing that CID in full feature phase succeeds."""
    from iscsi_conformance.harness.probe import FullFeature

    async with target.raw() as raw:
        probe = target.probe(raw)
        first_cid = probe.cid
        s = await probe.security_none()
        _require_going_on(probe, s)
        probe.cid = (first_cid + 1) & 0xFFFF
        step = await probe.operational(
            [("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "8192")]
        )
        if step.refused:
            return  # the target saw the CID change and ended the login: conforms
        require(
            step.succeeded and probe.in_full_feature,
            "R7143-6.3-3",
            step.missing(ANSWER_RULE) or "the login did not reach full feature phase",
            sent=probe.sent,
            received=probe.received,
        )
        ffp = FullFeature(raw, probe)
        req = P.LogoutRequest(
            immediate=True,
            reason=1,
            itt=ffp.next_itt(),
            cid=first_cid,
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
            isinstance(resp, P.LogoutResponse) and resp.response == 0,
            "R7143-6.3-3",
            f"the Login Requests carried CID {first_cid} and then {probe.cid}; a Logout closing "
            f"CID {first_cid} was answered {resp!r}: the target uses the CID of the first Login "
            "Request (RFC 3720 10.12.7 = RFC 7143 11.12.7)",
            sent=[*probe.sent, req],
            received=[*probe.received, *ffp.shown(resp)],
        )
