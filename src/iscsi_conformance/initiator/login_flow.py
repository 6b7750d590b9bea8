"""The initiator's side of the login phase (RFC 7143 6, 8.1, 11.12, 11.13, 12.1.3), sans-IO.

Theory of operation: :class:`LoginFlow` is the seam between the reference initiator
and the login machinery of ``core``. It builds Login Requests and consumes Login
Responses; the adapter moves them over the wire (and may rewrite each request
through a ``login_hook`` for negative tests). Key negotiation is
:class:`~iscsi_conformance.core.negotiation.Negotiator`'s job and the CHAP
computations are :mod:`iscsi_conformance.core.chap`'s; what is here is the order of
stages an initiator walks through:

1. SecurityNegotiation (CSG=0), unless ``skip_security``: the declarative keys
   (InitiatorName, SessionType, TargetName) and AuthMethod. With CHAP: CHAP_A, then
   CHAP_N/CHAP_R (plus CHAP_I/CHAP_C when we authenticate the target too), T=1 to
   LoginOperationalNegotiation. Without: AuthMethod=None and T=1 at once.
2. LoginOperationalNegotiation (CSG=1): our operational offers, answers to the
   target's, until both sides set T=1 with NSG=3 (RFC 7143 6.3).
3. The final response gives the TSIH, StatSN and command window: :class:`LoginResult`.

Response data split over C-bit PDUs is reassembled (an empty request asks for the
rest, RFC 7143 11.12.2). A non-zero status raises :class:`LoginError` (or
:class:`AuthenticationError` for 0x0201 and for a target that fails mutual CHAP),
a redirect raises :class:`TargetRedirected` carrying the new address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from iscsi_conformance.core import chap, text
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator, Role
from iscsi_conformance.core.pdu import LoginRequest, LoginResponse
from iscsi_conformance.errors import AuthenticationError, LoginError, NegotiationError
from iscsi_conformance.peers.base import ChapCredentials

__all__ = [
    "DEFAULT_DISCOVERY_KEYS",
    "DEFAULT_KEYS",
    "LoginFlow",
    "LoginResult",
    "TargetRedirected",
    "describe_status",
]

# What the reference initiator offers unless told otherwise. RFC defaults except a
# larger MaxRecvDataSegmentLength (we can take it) and DefaultTime2Retain 0 (no
# session reinstatement at ErrorRecoveryLevel 0, as most initiators offer).
DEFAULT_KEYS: dict[str, str] = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxConnections": "1",
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "262144",
    "FirstBurstLength": "65536",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}
DEFAULT_DISCOVERY_KEYS: dict[str, str] = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxRecvDataSegmentLength": "262144",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "ErrorRecoveryLevel": "0",
}

_CLASS_NAMES = {0: "success", 1: "redirection", 2: "initiator error", 3: "target error"}


def describe_status(status: int) -> str:
    """``0x0201 (AUTH_FAILURE, initiator error)`` for a 16-bit login status."""
    try:
        name = LoginStatus(status).name
    except ValueError:
        name = "undefined"
    return f"{status:#06x} ({name}, {_CLASS_NAMES.get(status >> 8, 'reserved class')})"


class TargetRedirected(LoginError):
    """Login status class 1 (RFC 7143 11.13.5): the target is at ``address``."""

    def __init__(self, status: int, address: str | None) -> None:
        super().__init__(
            f"login redirected: status {describe_status(status)}, TargetAddress={address}",
            login_status=status,
        )
        self.address = address

    @property
    def permanent(self) -> bool:
        return self.login_status == LoginStatus.TARGET_MOVED_PERMANENTLY


@dataclasses.dataclass(frozen=True)
class LoginResult:
    """What a completed login leaves for the full-feature phase."""

    negotiated: NegotiatedParameters
    tsih: int
    isid: int
    cid: int
    cmdsn: int  # the CmdSN of the login; the first command uses it (RFC 7143 11.12.8)
    statsn: int  # StatSN of the final Login Response; ExpStatSN is one more
    expcmdsn: int
    maxcmdsn: int
    target_pairs: tuple[tuple[str, str], ...]
    authenticated: str = "None"  # AuthMethod used


class LoginFlow:
    """Sans-IO initiator login on one connection.

    ``keys`` override or extend :data:`DEFAULT_KEYS` (a value of None drops a default);
    ``chap_algorithms`` is the CHAP_A list we offer (RFC 7143 12.1.3: 5 MD5, 6 SHA-1,
    7 SHA-256, 8 SHA3-256). ``rng(n)`` gives n random bytes (challenges). ``session``
    is the leading connection's outcome when this connection joins an existing
    session (``tsih`` non-zero).
    """

    def __init__(
        self,
        *,
        initiator_name: str,
        target_name: str | None,
        isid: int,
        rng: Callable[[int], bytes],
        tsih: int = 0,
        cid: int = 0,
        itt: int = 0,
        cmdsn: int = 0,
        expstatsn: int = 0,
        session_type: str = "Normal",
        keys: Mapping[str, str | None] | None = None,
        chap_credentials: ChapCredentials | None = None,
        mutual_chap: ChapCredentials | None = None,
        chap_policy: chap.ChapPolicy | None = None,
        chap_algorithms: Sequence[int] = (5,),
        auth_method: str | None = None,
        skip_security: bool = False,
        session: NegotiatedParameters | None = None,
        version: int = 0,
    ) -> None:
        if mutual_chap is not None and chap_credentials is None:
            raise ValueError("mutual CHAP needs CHAP credentials for the initiator too")
        self.isid = isid
        self.tsih = tsih
        self.cid = cid
        self.itt = itt
        self.cmdsn = cmdsn
        self.expstatsn = expstatsn
        self.session_type = session_type
        self.rng = rng
        self.version = version
        local: dict[str, str] = {"InitiatorName": initiator_name, "SessionType": session_type}
        if session_type == "Normal" and target_name is not None:
            local["TargetName"] = target_name
        defaults = DEFAULT_KEYS if session_type == "Normal" else DEFAULT_DISCOVERY_KEYS
        local.update(defaults)
        local["AuthMethod"] = auth_method or ("CHAP" if chap_credentials else "None")
        leading = tsih == 0
        if not leading:
            # A connection joining a session declares only connection-scope keys.
            for key in ("MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
                        "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain",
                        "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
                        "ErrorRecoveryLevel", "SessionType"):  # fmt: skip
                local.pop(key, None)
        for key, value in (keys or {}).items():
            if value is None:
                local.pop(key, None)
            else:
                local[key] = value
        self.negotiator = Negotiator(
            Role.INITIATOR,
            local,
            session_type,
            leading=leading,
            stage=LoginStage.SECURITY_NEGOTIATION,
            session=session,
        )
        self.stage = (
            LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
            if skip_security
            else LoginStage.SECURITY_NEGOTIATION
        )
        self._chap: chap.ChapClient | None = None
        if chap_credentials is not None and local["AuthMethod"].startswith("CHAP"):
            self._chap = chap.ChapClient(
                chap.ChapCredentials(chap_credentials.user, chap_credentials.secret.encode()),
                algorithms=[chap.ChapAlgorithm(a) for a in chap_algorithms],
                target=(
                    chap.ChapCredentials(mutual_chap.user, mutual_chap.secret.encode())
                    if mutual_chap is not None
                    else None
                ),
                rng=rng,
                policy=chap_policy or chap.ChapPolicy(),
            )
        self._assembler = text.TextAssembler()
        self._target_pairs: list[tuple[str, str]] = []
        self._want_transit = False
        self.auth_used = "None"
        self.done = False
        self.responses: list[LoginResponse] = []

    # ------------------------------------------------------------------ building

    def _request(
        self, pairs: list[tuple[str, str]], *, transit: bool, nsg: int, cont: bool = False
    ) -> LoginRequest:
        self._want_transit = transit
        return LoginRequest(
            transit=transit,
            cont=cont,
            csg=self.stage,
            nsg=nsg if transit else 0,
            version_max=self.version,
            version_min=self.version,
            isid=self.isid,
            tsih=self.tsih,
            itt=self.itt,
            cid=self.cid,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            data=text.format_pairs(pairs, strict=False),
        )

    def start(self) -> LoginRequest:
        """The first Login Request."""
        self.negotiator.stage = self.stage
        pairs = self.negotiator.offer()
        if self.stage == LoginStage.SECURITY_NEGOTIATION:
            if self._chap is not None:
                return self._request(pairs, transit=False, nsg=0)
            return self._request(pairs, transit=True, nsg=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION)
        return self._request(pairs, transit=True, nsg=LoginStage.FULL_FEATURE_PHASE)

    # ------------------------------------------------------------------ receiving

    def receive(self, resp: LoginResponse) -> LoginRequest | LoginResult:
        """Consume one Login Response: the next request, or the login's result."""
        self.responses.append(resp)
        # ExpStatSN follows the target's StatSN from the first response on (11.13.4).
        self.expstatsn = (resp.statsn + 1) & 0xFFFFFFFF
        if resp.status != 0:
            self._fail(resp)
        if resp.csg != self.stage:
            raise LoginError(
                f"Login Response CSG {resp.csg} does not match the request's {int(self.stage)}",
                section="RFC 7143 11.13.3",
                login_status=LoginStatus.INITIATOR_ERROR,
            )
        if resp.isid != self.isid:
            raise LoginError(
                f"Login Response ISID {resp.isid:#014x} is not ours {self.isid:#014x}",
                section="RFC 7143 11.13",
                login_status=LoginStatus.INITIATOR_ERROR,
            )
        try:
            pairs = self._assembler.feed(resp.data, resp.cont)
        except NegotiationError as exc:
            raise LoginError(f"bad text in Login Response: {exc}", section=exc.section) from exc
        if pairs is None:
            # More data to come: an empty request with T=0 asks for it (11.12.2).
            return self._request([], transit=False, nsg=0)
        self._target_pairs.extend(pairs)
        if self.stage == LoginStage.SECURITY_NEGOTIATION:
            return self._security(resp, pairs)
        return self._operational(resp, pairs)

    def _fail(self, resp: LoginResponse) -> None:
        status = resp.status
        if resp.status_class == 1:
            address = None
            try:
                for key, value in text.parse_pairs(resp.data):
                    if key == "TargetAddress":
                        address = value
            except NegotiationError:
                pass
            raise TargetRedirected(status, address)
        message = f"login failed: status {describe_status(status)}"
        if status == LoginStatus.AUTH_FAILURE:
            raise AuthenticationError(message, login_status=status)
        raise LoginError(message, login_status=status)

    def _security(
        self, resp: LoginResponse, pairs: list[tuple[str, str]]
    ) -> LoginRequest | LoginResult:
        chap_pairs = [(k, v) for k, v in pairs if k.startswith("CHAP_")]
        other = [(k, v) for k, v in pairs if not k.startswith("CHAP_")]
        try:
            answers = self.negotiator.respond(other)
        except NegotiationError as exc:
            raise LoginError(
                exc.message, section=exc.section, login_status=exc.login_status
            ) from exc
        method = self.negotiator.values.get("AuthMethod")
        if method is not None:
            self.auth_used = method
        out: list[tuple[str, str]] = list(answers)
        if self._chap is not None and not self._chap.done:
            if self._chap.state is chap.ClientState.START:
                if method != "CHAP":
                    got = method or self.negotiator.special_answers.get("AuthMethod")
                    raise AuthenticationError(f"target answered AuthMethod={got} to our CHAP offer")
                out += self._chap.start()  # CHAP_A
                return self._request(out, transit=False, nsg=0)
            out += self._chap.receive(dict(chap_pairs))
            if self._chap.state is chap.ClientState.WAIT_CONFIRM:
                # CHAP_N/CHAP_R sent: ask to move on (RFC 7143 12.1.3, 6.3)
                return self._request(
                    out, transit=True, nsg=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
                )
        elif chap_pairs:
            raise AuthenticationError(
                f"unexpected CHAP keys {[k for k, _ in chap_pairs]} from the target"
            )
        if resp.transit:
            return self._enter(resp.nsg, out)
        # Target stays in the security stage: repeat our wish to move on.
        return self._request(out, transit=True, nsg=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION)

    def _enter(self, nsg: int, out: list[tuple[str, str]]) -> LoginRequest | LoginResult:
        if nsg == LoginStage.LOGIN_OPERATIONAL_NEGOTIATION:
            self.stage = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
            self.negotiator.stage = self.stage
            out = out + self.negotiator.offer()
            return self._request(out, transit=True, nsg=LoginStage.FULL_FEATURE_PHASE)
        if nsg == LoginStage.FULL_FEATURE_PHASE:
            return self._finish()
        raise LoginError(f"target transits to reserved stage {nsg}", section="RFC 7143 11.13.3")

    def _operational(
        self, resp: LoginResponse, pairs: list[tuple[str, str]]
    ) -> LoginRequest | LoginResult:
        try:
            answers = self.negotiator.respond(pairs)
        except NegotiationError as exc:
            raise LoginError(
                exc.message, section=exc.section, login_status=exc.login_status
            ) from exc
        if resp.transit:
            if resp.nsg != LoginStage.FULL_FEATURE_PHASE:
                raise LoginError(
                    f"target transits from stage 1 to {resp.nsg}", section="RFC 7143 11.13.3"
                )
            if not self._want_transit:
                raise LoginError("target set T=1 though we did not", section="RFC 7143 11.13.3")
            if answers:
                # RFC 7143 6.2: the target cannot end the negotiation with offers of its own
                # outstanding; say so rather than enter FFP with unanswered keys.
                raise LoginError(
                    f"target offered {[k for k, _ in answers]} in its final Login Response",
                    section="RFC 7143 6.2",
                )
            return self._finish(resp)
        return self._request(list(answers), transit=True, nsg=LoginStage.FULL_FEATURE_PHASE)

    def _finish(self, resp: LoginResponse | None = None) -> LoginResult:
        resp = resp or self.responses[-1]
        self.done = True
        negotiated = self.negotiator.result()
        return LoginResult(
            negotiated=negotiated,
            tsih=resp.tsih,
            isid=self.isid,
            cid=self.cid,
            cmdsn=self.cmdsn,
            statsn=resp.statsn,
            expcmdsn=resp.expcmdsn,
            maxcmdsn=resp.maxcmdsn,
            target_pairs=tuple(self._target_pairs),
            authenticated=self.auth_used,
        )
