"""The reference initiator's login policy over :class:`core.login.InitiatorLogin`, sans-IO.

Theory of operation: the login state machine (RFC 7143 6.3, 8.1, 11.12, 11.13) is
:class:`~iscsi_conformance.core.login.InitiatorLogin`, the one the target's tests
also drive; this module only adapts it to the reference initiator:

* policy in: the keys an initiator offers by default (:data:`DEFAULT_KEYS`, a value
  of None drops one), CHAP credentials as the peers describe them, ``auth_method``
  and ``skip_security`` (which stage the login starts in);
* ``login_hook`` onto the core's ``request_hook``: a hook that returns a PDU
  replaces the request in the core too (so responses are judged against what went
  on the wire); raw bytes or None (drop) cannot be a PDU, so the core keeps the
  request it built and :class:`LoginSend` tells the adapter what to write instead;
* events out: ``LoginCompleted`` becomes :class:`LoginResult`; ``LoginRedirected``
  raises :class:`TargetRedirected`; ``LoginFailed`` raises :class:`LoginError`
  (:class:`AuthenticationError` for status 0x0201) with the status in the message,
  or the rule the target broke when the core detected it (RFC section attached).

The asyncio adapters (``client.Connection.login``, ``raw.RawConnection.login``)
write each :class:`LoginSend`, read one PDU and hand it to :meth:`LoginFlow.receive`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from iscsi_conformance.core import chap
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.core.login import (
    OPERATIONAL,
    SECURITY,
    Event,
    InitiatorLogin,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator
from iscsi_conformance.core.pdu import PDU, LoginRequest, LoginResponse
from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import (
    AuthenticationError,
    LoginError,
    NegotiationError,
    ProtocolError,
)

__all__ = [
    "DEFAULT_DISCOVERY_KEYS",
    "DEFAULT_KEYS",
    "LoginFlow",
    "LoginHook",
    "LoginResult",
    "LoginSend",
    "TargetRedirected",
    "describe_status",
]

#: Rewrites an outgoing Login Request: a PDU (sent non-strictly unless it is the
#: request itself), raw bytes, or None to drop it (which ends the login).
LoginHook = Callable[[LoginRequest], "LoginRequest | bytes | None"]

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
    # RFC 7144: the session may use QUERY TASK, QUERY TASK SET, I_T NEXUS RESET and
    # QUERY ASYNCHRONOUS EVENT (Session.tmf) once the target answers 2 (minimum, 7.1.1);
    # a target that answers less or NotUnderstood leaves the session at RFC 7143.
    "iSCSIProtocolLevel": "2",
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


@dataclasses.dataclass(frozen=True)
class LoginSend:
    """One Login Request to put on the wire.

    ``request`` is what the login built; ``wire`` what ``login_hook`` made of it
    (``request`` itself without a hook): a PDU, raw bytes, or None (dropped).
    """

    request: LoginRequest
    wire: LoginRequest | bytes | None

    @property
    def strict(self) -> bool:
        """Encode strictly only what the login built itself."""
        return self.wire is self.request


# A connection joining a session offers no leading-only ("LO", RFC 7143 13) keys; the
# core would skip them anyway, but defaults nobody offers are kept out of its values.
_LEADING_ONLY_DEFAULTS = (
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
)


class LoginFlow:
    """The reference initiator's login on one connection (sans-IO).

    ``keys`` override or extend :data:`DEFAULT_KEYS` (a value of None drops a default);
    ``chap_algorithms`` is the CHAP_A list we offer (RFC 7143 12.1.3: 5 MD5, 6 SHA-1,
    7 SHA-256, 8 SHA3-256); ``auth_method`` overrides the AuthMethod offer (e.g.
    ``"CHAP,None"``); ``skip_security`` starts in LoginOperationalNegotiation.
    ``rng(n)`` gives n random bytes (challenges). ``session`` is the leading
    connection's outcome when this connection joins an existing session (``tsih``
    non-zero). ``login_hook`` may rewrite each request (see :class:`LoginSend`).

    Use: ``start()`` gives the first :class:`LoginSend`; feed each PDU received to
    :meth:`receive`, which gives the next :class:`LoginSend` or the
    :class:`LoginResult`, or raises.
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
        chap_credentials: ChapAccount | None = None,
        mutual_chap: ChapAccount | None = None,
        chap_policy: chap.ChapPolicy | None = None,
        chap_algorithms: Sequence[int] = (5,),
        auth_method: str | None = None,
        skip_security: bool = False,
        session: NegotiatedParameters | None = None,
        login_hook: LoginHook | None = None,
    ) -> None:
        if mutual_chap is not None and chap_credentials is None:
            raise ValueError("mutual CHAP needs CHAP credentials for the initiator too")
        leading = tsih == 0
        local: dict[str, str | None] = dict(
            DEFAULT_KEYS if session_type == "Normal" else DEFAULT_DISCOVERY_KEYS
        )
        if not leading:
            for key in _LEADING_ONLY_DEFAULTS:
                local.pop(key, None)
        local.update(keys or {})
        if (
            leading
            and local.get("ErrorRecoveryLevel") == "2"
            and "DefaultTime2Retain" not in (keys or {})
        ):
            # Offering connection recovery, keep the RFC's default time to do it in
            # (13.16: 0 would have the target drop the tasks at once).
            local["DefaultTime2Retain"] = "20"
        client: chap.ChapClient | None = None
        if chap_credentials is not None:
            client = chap.ChapClient(
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
        methods = (
            auth_method.split(",")
            if auth_method
            else (["CHAP"] if chap_credentials is not None else ["None"])
        )
        self.login_hook = login_hook
        self._hooked: list[LoginSend] = []
        self._last_response: LoginResponse | None = None
        self.login = InitiatorLogin(
            initiator_name,
            target_name if session_type == "Normal" else None,
            session_type,
            isid=isid,
            tsih=tsih,
            cid=cid,
            keys={k: v for k, v in local.items() if v is not None},
            chap=client,
            rng=rng,
            auth_methods=methods,
            itt=itt,
            cmdsn=cmdsn,
            expstatsn=expstatsn,
            session=session,
            # The reference initiator always walks through SecurityNegotiation, even
            # with AuthMethod=None, unless told to skip it (RFC 7143 6.3).
            start_stage=OPERATIONAL if skip_security else SECURITY,
            request_hook=self._apply_hook if login_hook is not None else None,
        )

    # ------------------------------------------------------------------ driving

    def start(self) -> LoginSend:
        """The first Login Request."""
        return self._next(self.login.start())

    def receive(self, pdu: PDU) -> LoginSend | LoginResult:
        """Consume one PDU from the target: the next request, or the login's result.

        Raises :class:`TargetRedirected`, :class:`AuthenticationError` or
        :class:`LoginError`.
        """
        events = self.login.receive_pdu(pdu)
        if not isinstance(pdu, LoginResponse):
            raise LoginError(
                f"expected a Login Response, got {type(pdu).__name__}", section="RFC 7143 11.13"
            ) from self.login.error
        self._last_response = pdu
        for event in events:
            self._raise_for(event)
            if isinstance(event, LoginCompleted):
                return self._result(event)
        return self._next(self.login.data_to_send())

    def connection_lost(self) -> None:
        """The transport closed during login (recorded in the core's history)."""
        self.login.connection_lost()

    def timed_out(self) -> None:
        """The login timer fired (recorded in the core's history)."""
        self.login.timed_out()

    @property
    def warnings(self) -> list[str]:
        """What the core noticed without ending the login (e.g. a bad ISID echo)."""
        return self.login.warnings

    @property
    def negotiator(self) -> Negotiator:
        """The core's key negotiator (for tests that look inside)."""
        return self.login.negotiator

    # ------------------------------------------------------------------ hooks

    def _apply_hook(self, request: LoginRequest) -> LoginRequest:
        assert self.login_hook is not None
        out = self.login_hook(request)
        # The core goes on with the rewritten PDU, or with its own when the hook
        # produced something that is not one.
        self._hooked.append(LoginSend(request, out))
        return out if isinstance(out, LoginRequest) else request

    def _next(self, queued: list[LoginRequest]) -> LoginSend:
        if len(queued) != 1:  # the core answers each response with one request
            raise AssertionError(f"expected one Login Request to send, got {len(queued)}")
        pdu = queued[0]
        hooked, self._hooked = self._hooked, []
        for sent in hooked:
            if sent.wire is pdu or sent.request is pdu:
                return sent
        # Not offered to request_hook by the core (the empty request that asks for
        # the rest of a C=1 response): the hook still sees every request.
        if self.login_hook is not None:
            return LoginSend(pdu, self.login_hook(pdu))
        return LoginSend(pdu, pdu)

    # ------------------------------------------------------------------ events

    def _raise_for(self, event: Event) -> None:
        if isinstance(event, LoginRedirected):
            raise TargetRedirected(event.status, event.address)
        if not isinstance(event, LoginFailed):
            return
        if event.status is not None:
            message = f"login failed: status {describe_status(event.status)}"
            if event.status == LoginStatus.AUTH_FAILURE:
                raise AuthenticationError(message, login_status=event.status)
            raise LoginError(message, login_status=event.status)
        rsp = self._last_response
        if rsp is not None and rsp.status_class == 1:
            # A redirection we could not read (no or bad TargetAddress, RFC 7143 13.8):
            # still a redirection, without an address to follow.
            raise TargetRedirected(rsp.status, None) from event.error
        exc = event.error
        if isinstance(exc, LoginError):
            raise exc
        if isinstance(exc, ProtocolError):
            raise LoginError(
                exc.message,
                section=exc.section,
                level=exc.level,
                login_status=(
                    exc.login_status
                    if isinstance(exc, NegotiationError)
                    else LoginStatus.INITIATOR_ERROR
                ),
            ) from exc
        raise LoginError(f"login failed: {event.reason}")

    def _result(self, done: LoginCompleted) -> LoginResult:
        return LoginResult(
            negotiated=done.parameters,
            tsih=done.tsih,
            isid=done.isid,
            cid=done.cid,
            cmdsn=done.cmdsn,
            statsn=done.statsn,
            expcmdsn=done.expcmdsn,
            maxcmdsn=done.maxcmdsn,
            target_pairs=tuple(self.login.received),
            authenticated=done.parameters.auth_method or "None",
        )
