"""Login: refusals, the Login Response fields, stage and T/C bits, session identity
(RFC 7143 6.3, 11.12, 11.13, 13)."""

from __future__ import annotations

import dataclasses
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.core.login.states import TargetInput
from iscsi_conformance.core.login.target import TargetLogin
from iscsi_conformance.errors import LoginError
from iscsi_conformance.mutation import wire
from iscsi_conformance.mutation.mutants._helpers import fields, rewrite
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection, ConnState
from iscsi_conformance.target.engine import TargetEngine
from iscsi_conformance.target.login import ConnectionLogin, target_node
from iscsi_conformance.target.task import TaskIO


def _failing(pdu: Any) -> bool:
    return isinstance(pdu, P.LoginResponse) and pdu.status_class >= 2


def _first_request_gets(p: Patcher, key: str, value: Any) -> None:
    """The first Login Request is read as if it carried ``key=value(self)`` when it lacks ``key``."""

    def make(old: Any) -> Any:
        def receive(self: ConnectionLogin, req: P.LoginRequest) -> Any:
            if self.core.first is None and f"{key}=".encode() not in req.data:
                pairs = dict(text.parse_pairs(req.data)) if req.data else {}
                extra = value(self, pairs)
                if extra is not None:
                    data = req.data + text.format_pairs([(key, extra)])
                    if key == "InitiatorName":
                        self.initiator_name = extra
                    req = dataclasses.replace(req, data=data)
            return old(self, req)

        return receive

    p.wrap(ConnectionLogin, "receive", make)


@mutant(
    "Login.Refusal.HangUp",
    "login",
    "a failed login ends with the connection closed and no Login Response (11.13.5)",
    catches=["Login.Session.UnknownTarget", "Login.Session.MissingInitiatorName"],
)
def refusal_hang_up(p: Patcher) -> None:
    rewrite(p, P.LoginResponse, lambda pdu: wire.HANG_UP if _failing(pdu) else pdu)


@mutant(
    "Login.Refusal.Silence",
    "login",
    "a failed login gets no Login Response and the connection stays open (11.13.5)",
    catches=["Login.Session.UnknownTarget", "Login.Session.MissingInitiatorName"],
)
def refusal_silence(p: Patcher) -> None:
    rewrite(p, P.LoginResponse, lambda pdu: wire.SILENCE if _failing(pdu) else pdu)


@mutant(
    "Login.Refusal.TargetErrorClass",
    "login",
    "every initiator error is reported as status class 3, target error (11.13.5)",
    catches=["Login.Session.UnknownTarget", "Login.Session.MissingTargetName"],
)
def refusal_target_class(p: Patcher) -> None:
    fields(p, P.LoginResponse, lambda pdu: pdu.status_class == 2, status_class=3, status_detail=0)


@mutant(
    "Login.Refusal.GenericDetail",
    "login",
    "every refusal carries status detail 0 (initiator error) instead of its own (11.13.5)",
    catches=["Login.Session.UnknownTarget", "Login.Session.MissingInitiatorName",
             "Login.Versions.Unsupported"],
)  # fmt: skip
def refusal_generic(p: Patcher) -> None:
    fields(p, P.LoginResponse, lambda pdu: pdu.status_class == 2, status_detail=0)


@mutant(
    "Login.Refusal.ConnectionKeptOpen",
    "login",
    "after a failed login the target keeps the connection open (RFC 7143 6.3, 11.13.5)",
    catches=["Login.Session.FailureClosesConnection"],
)
def refusal_keep_open(p: Patcher) -> None:
    rewrite(p, P.LoginResponse, lambda pdu: wire.KeepOpen(pdu) if _failing(pdu) else pdu)


@mutant(
    "Login.Refusal.UnknownTargetAccepted",
    "login",
    "a TargetName the target does not have logs in to its first target (11.13.5 0x0203)",
    catches=["Login.Session.UnknownTarget"],
)
def unknown_target(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def lookup(self: ConnectionLogin, name: str) -> Any:
            found = old(self, name)
            if found is None and self._targets:
                tc = next(iter(self._targets.values()))
                return target_node(tc, self._portal_group, self.initiator_name or "")
            return found

        return lookup

    p.wrap(ConnectionLogin, "_lookup_target", make)


@mutant(
    "Login.Refusal.MissingInitiatorNameAccepted",
    "login",
    "a leading login without InitiatorName is accepted (RFC 7143 13.5, 0x0207)",
    catches=["Login.Session.MissingInitiatorName"],
)
def missing_initiator_name(p: Patcher) -> None:
    _first_request_gets(p, "InitiatorName", lambda self, pairs: "iqn.2024-01.org.example:mutant")


@mutant(
    "Login.Refusal.MissingTargetNameAccepted",
    "login",
    "a Normal login without TargetName reaches the first target (RFC 7143 13.4, 0x0207)",
    catches=["Login.Session.MissingTargetName"],
)
def missing_target_name(p: Patcher) -> None:
    def first(self: ConnectionLogin, pairs: dict[str, str]) -> str | None:
        if pairs.get("SessionType", "Normal") != "Normal" or not self._targets:
            return None
        return next(iter(self._targets.values())).name

    _first_request_gets(p, "TargetName", first)


@mutant(
    "Login.Refusal.UnsupportedVersionAccepted",
    "login",
    "a Version-min above every supported version is accepted (11.12.4, 0x0205)",
    catches=["Login.Versions.Unsupported"],
)
def unsupported_version(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def receive(self: ConnectionLogin, req: P.LoginRequest) -> Any:
            return old(
                self, dataclasses.replace(req, version_min=0, version_max=max(req.version_max, 0))
            )

        return receive

    p.wrap(ConnectionLogin, "receive", make)


@mutant(
    "Login.Response.VersionActive",
    "login",
    "Login Responses carry Version-active 1, a version the target does not run (11.13.3)",
    catches=["Login.Versions.Active"],
)
def version_active(p: Patcher) -> None:
    fields(p, P.LoginResponse, version_active=1)


@mutant(
    "Login.Response.IsidNotEchoed",
    "login",
    "Login Responses carry another ISID than the request's (11.13)",
    catches=["Login.Session.EchoIsidAndItt"],
)
def isid_echo(p: Patcher) -> None:
    fields(p, P.LoginResponse, isid=lambda pdu: pdu.isid ^ 1)


@mutant(
    "Login.Response.IttNotEchoed",
    "login",
    "Login Responses carry another Initiator Task Tag than the request's (11.13)",
    catches=["Login.Session.EchoIsidAndItt"],
)
def itt_echo(p: Patcher) -> None:
    fields(p, P.LoginResponse, itt=lambda pdu: pdu.itt ^ 1)


@mutant(
    "Login.Response.TsihNotAssigned",
    "login",
    "the final Login Response of a leading login carries TSIH 0 (11.13.4: a new TSIH)",
    catches=["Login.Session.TsihAssigned"],
)
def tsih_zero(p: Patcher) -> None:
    fields(p, P.LoginResponse, lambda pdu: pdu.transit and pdu.nsg == 3, tsih=0)


@mutant(
    "Login.Session.UnknownTsihAccepted",
    "login",
    "a login naming a TSIH of no session is answered with success (11.13.5, 0x020A)",
    catches=["Login.Session.UnknownTsih"],
)
def unknown_tsih(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def begin(self: TargetLogin, req: P.LoginRequest) -> Any:
            if req.tsih and self.config.find_session(req.tsih) is None:
                result = old(self, dataclasses.replace(req, tsih=0))
                self.first = req
                return result
            return old(self, req)

        return begin

    p.wrap(TargetLogin, "_begin", make)


@mutant(
    "Login.Session.NonLoginPduIgnored",
    "login",
    "a PDU other than a Login Request before full feature phase is ignored, not a failed login (6.2)",
    catches=["Login.Session.NonLoginOpcodeBeforeFullFeature"],
)
def non_login_pdu(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def handle(self: Connection, pdu: P.PDU, now: float) -> None:
            if self.state is ConnState.LOGIN and not isinstance(pdu, P.LoginRequest):
                return
            old(self, pdu, now)

        return handle

    p.wrap(Connection, "handle_pdu", make)


@mutant(
    "Login.Session.NonLoginPduHangUp",
    "login",
    "a PDU other than a Login Request once the login has started closes the connection "
    "without the Login reject 'invalid during login' (RFC 3720 3.2.3 = RFC 7143 4.2.3)",
    catches=["Login.Session.NonLoginPduRefused"],
)
def non_login_pdu_hang_up(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def handle(self: Connection, pdu: P.PDU, now: float) -> None:
            if self.state is ConnState.LOGIN and not isinstance(pdu, P.LoginRequest):
                self.login.done = True  # no Login Response
                self.close()
                return
            old(self, pdu, now)

        return handle

    p.wrap(Connection, "handle_pdu", make)


@mutant(
    "Login.Session.ReinstatementIgnored",
    "login",
    "a leading login with the ISID of a live session does not end the old session (6.3.5)",
    catches=["Login.Session.Reinstatement", "Login.Connections.Reinstatement"],
)
def no_reinstatement(p: Patcher) -> None:
    def post(self: TargetLogin, result: Any, req: Any) -> Any:
        self.reinstates = None
        return result

    p.after(TargetLogin, "_begin", post, result=True)


@mutant(
    "Login.Connections.ReinstatedConnectionKept",
    "login",
    "a login with the ISID, TSIH and CID of a live connection succeeds but the old "
    "connection is neither logged out nor closed and goes on answering (6.3.4), as tgt 1.0.85",
    catches=["Login.Connections.ReinstatementSingleConnection"],
)
def reinstated_connection_kept(p: Patcher) -> None:
    from iscsi_conformance.core.login import ConnectionReinstated

    def make(old: Any) -> Any:
        def receive(self: ConnectionLogin, req: P.LoginRequest) -> Any:
            return [e for e in old(self, req) if not isinstance(e, ConnectionReinstated)]

        return receive

    p.wrap(ConnectionLogin, "receive", make)


@mutant(
    "Login.Session.DiscoveryScsiIgnored",
    "login",
    "a SCSI Command in a Discovery session is silently ignored, neither rejected nor answered (4.3)",
    catches=["Login.Session.DiscoveryRejectsScsi"],
)
def discovery_scsi(p: Patcher) -> None:
    from iscsi_conformance.target.session import SessionType

    def make(old: Any) -> Any:
        def on_scsi(self: Any, pdu: P.ScsiCommand, now: float) -> None:
            if self.session is not None and self.session.session_type is SessionType.DISCOVERY:
                return
            old(self, pdu, now)

        return on_scsi

    p.wrap(TaskIO, "on_scsi_command", make)


def _request_as(p: Patcher, change: Any) -> None:
    def make(old: Any) -> Any:
        def receive_pdu(self: TargetLogin, pdu: P.PDU) -> Any:
            if isinstance(pdu, P.LoginRequest):
                pdu = change(self, pdu)
            return old(self, pdu)

        return receive_pdu

    p.wrap(TargetLogin, "receive_pdu", make)


@mutant(
    "Login.Stages.TransitAndContinueAccepted",
    "login",
    "a Login Request with both T and C set is taken as T alone (11.12.2: a protocol error)",
    catches=["Login.Stages.TransitAndContinueBothSet"],
)
def t_and_c(p: Patcher) -> None:
    _request_as(
        p, lambda self, r: dataclasses.replace(r, cont=False) if r.transit and r.cont else r
    )


@mutant(
    "Login.Stages.BadNextStageIgnored",
    "login",
    "a transit to a stage not after the current one (or the reserved 2) is read as T=0 (11.12.3)",
    catches=["Login.Stages.NextStageBeforeCurrent"],
)
def bad_nsg(p: Patcher) -> None:
    def bad(r: P.LoginRequest) -> bool:
        return r.transit and (r.nsg <= r.csg or r.nsg == 2)

    def make_classify(old: Any) -> Any:
        def classify(self: TargetLogin, pdu: P.PDU) -> Any:
            inp = old(self, pdu)
            return TargetInput.RX_STAY if inp is TargetInput.RX_BAD_NSG else inp

        return classify

    def make_negotiate(old: Any) -> Any:
        def negotiate(self: TargetLogin, req: P.LoginRequest, prior: Any) -> Any:
            if bad(req):
                req = dataclasses.replace(req, transit=False, nsg=0)
            return old(self, req, prior)

        return negotiate

    p.wrap(TargetLogin, "classify", make_classify)
    p.wrap(TargetLogin, "_negotiate", make_negotiate)


@mutant(
    "Login.Stages.ReservedStageAccepted",
    "login",
    "a Login Request with the reserved CSG 2 is taken as the operational stage (11.12.3)",
    catches=["Login.Stages.ReservedStageValue"],
)
def reserved_csg(p: Patcher) -> None:
    _request_as(p, lambda self, r: dataclasses.replace(r, csg=1) if r.csg == 2 else r)


@mutant(
    "Login.Stages.TransitUnasked",
    "login",
    "the target sets T (to full feature) in an operational-stage answer to a request with T=0 (11.13.1)",
    catches=["Login.Stages.TransitOnlyIfRequested"],
)
def transit_unasked(p: Patcher) -> None:
    fields(
        p,
        P.LoginResponse,
        lambda pdu: pdu.status_class == 0 and pdu.csg == 1 and not pdu.transit and not pdu.cont,
        transit=True,
        nsg=3,
    )


@mutant(
    "Login.Stages.SecuritySkippedWhenRequired",
    "login",
    "a login that starts in the operational stage is accepted although the target requires CHAP (6.3)",
    catches=["Login.Stages.SkipSecurityWhenRequired"],
    suites=("CHAP",),
)
def skip_security(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def begin(self: TargetLogin, req: P.LoginRequest) -> Any:
            try:
                return old(self, req)
            except LoginError as exc:
                if getattr(exc, "login_status", None) == LoginStatus.AUTH_FAILURE and (
                    "security stage" in str(exc)
                ):
                    return None
                raise

        return begin

    p.wrap(TargetLogin, "_begin", make)


@mutant(
    "Login.Stages.AuthMethodNoneAccepted",
    "login",
    "AuthMethod=None is accepted by a target configured to require CHAP (6.3, 12)",
    catches=["Login.Stages.AuthMethodNoneWhenChapRequired"],
    suites=("CHAP",),
)
def none_accepted(p: Patcher) -> None:
    def post(self: TargetLogin, result: Any, req: Any) -> Any:
        if result is None and self._auth_chap is not None and not self._auth_chap.allow_none:
            self._auth_chap = dataclasses.replace(self._auth_chap, allow_none=True)
            assert self.negotiator is not None
            self.negotiator.local["AuthMethod"] = "CHAP,None"
        return result

    p.after(TargetLogin, "_begin", post, result=True)


@mutant(
    "Login.Session.ChangedFieldsAccepted",
    "login",
    "ISID, TSIH, CID or CmdSN may change between the Login Requests of one login (11.12)",
    catches=["Login.Session"],
)
def changed_fields(p: Patcher) -> None:
    p.noop(TargetLogin, "_check_consistent")


def _existing_with(p: Patcher, change: Any) -> None:
    """During the first request's checks, the session a TSIH names is seen through ``change``."""

    def make(old: Any) -> Any:
        def begin(self: TargetLogin, req: P.LoginRequest) -> Any:
            cfg = self.config
            find = cfg.find_session
            try:
                name = dict(text.parse_pairs(req.data)).get("InitiatorName", "")
            except Exception:
                name = ""
            cfg.find_session = lambda tsih: (
                None if (s := find(tsih)) is None else change(s, req, name)
            )
            try:
                return old(self, req)
            finally:
                cfg.find_session = find

        return begin

    p.wrap(TargetLogin, "_begin", make)


@mutant(
    "Login.Connections.TsihOtherIsidAccepted",
    "login",
    "a connection naming a session's TSIH with another ISID joins that session (5.3, 0x020A)",
    catches=["Login.Connections.TsihWithOtherIsid"],
)
def tsih_other_isid(p: Patcher) -> None:
    _existing_with(p, lambda s, req, name: dataclasses.replace(s, isid=req.isid))


@mutant(
    "Login.Connections.TsihOtherInitiatorAccepted",
    "login",
    "a connection naming a session's TSIH from another InitiatorName joins that session (5.3)",
    catches=["Login.Connections.TsihWithOtherInitiator"],
)
def tsih_other_initiator(p: Patcher) -> None:
    _existing_with(
        p, lambda s, req, name: dataclasses.replace(s, initiator_name=name or s.initiator_name)
    )


@mutant(
    "Login.Connections.MaxConnectionsIgnored",
    "login",
    "connections beyond the negotiated MaxConnections are admitted (13.2, 0x0206)",
    catches=["Login.Connections.BeyondMaxConnections"],
)
def max_connections(p: Patcher) -> None:
    def post(self: TargetEngine, result: Any, tsih: int) -> Any:
        if result is None:
            return None
        wide = dataclasses.replace(result.parameters, max_connections=65535)
        return dataclasses.replace(result, parameters=wide)

    p.after(TargetEngine, "existing_session", post, result=True)


@mutant(
    "Login.Redirect.NoTargetAddress",
    "login",
    "a redirection (status class 1) carries no TargetAddress (11.13.5)",
    catches=["Login.Redirect.CarriesTargetAddress"],
    suites=("Login.Redirect",),
)
def redirect_no_address(p: Patcher) -> None:
    fields(p, P.LoginResponse, lambda pdu: pdu.status_class == 1, data=b"")
