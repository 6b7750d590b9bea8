"""The reference target's login policy, as the callbacks of ``core.login.TargetLogin``.

Theory of operation: the login itself - stages, transitions (RFC 7143 8.1.2 T4, T5,
T7), key negotiation, CHAP, the Login status of every refusal - is the core's table
(``core.login``); this module holds only the reference target's *decisions*, which
the core asks for through ``TargetLoginConfig``:

- which target a TargetName denotes (iSCSI names compare case-insensitively, RFC
  3722) and whether it is exposed on this portal group (if not: "not found");
- whether this initiator may log in (the target's ACL), with which CHAP credentials
  (per ACL, else per target; discovery has its own), and whether the login is to be
  redirected (status class 1, RFC 7143 11.13.5);
- the keys the target offers (``TARGET_DEFAULTS``, then the target's own).

``ConnectionLogin`` is one connection's login: it feeds Login Requests to the core,
and returns the core's events for the connection to act on (create or join a
session, reinstate one, close).  It is sans-IO and knows nothing of the engine: the
session table reaches it as two lookup functions.

``renegotiate`` answers the keys of a full-feature Text Request (other than
SendTargets) with the login's negotiator: a new negotiation sequence (RFC 7143 6.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.chap import ChapAlgorithm, ChapCredentials
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.login import (
    ChapTargetAuth,
    Event,
    ExistingSession,
    LoginCompleted,
    LoginFailed,
    TargetLogin,
    TargetLoginConfig,
    TargetNode,
)
from iscsi_conformance.core.negotiation import Negotiator
from iscsi_conformance.errors import NegotiationError, ProtocolError
from iscsi_conformance.target.config import ChapConfig, DiscoveryConfig, TargetConfig

#: What the reference target supports unless the configuration says otherwise.
TARGET_DEFAULTS: dict[str, str] = {
    "HeaderDigest": "None,CRC32C",
    "DataDigest": "None,CRC32C",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
    "MaxOutstandingR2T": "8",
    "ErrorRecoveryLevel": "1",
    "MaxConnections": "4",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "20",
    # RFC 7144 (level 2): its task management functions (6.3), Status Qualifier and
    # command priority ignored or not (5.1.1, 5.2.1: this target never sets the one
    # and ignores the other). Minimum result function, so an initiator gets at most
    # what it offers; a target configured with 1 claims RFC 7143 alone (7143 13.24).
    "iSCSIProtocolLevel": "2",
}

#: Every CHAP algorithm the core implements (RFC 7143 12.1.3 and RFC 8017/IANA).
ALL_CHAP_ALGORITHMS = (5, 6, 7, 8)

FindByTsih = Callable[[int], ExistingSession | None]
FindByIsid = Callable[[str, int, str | None], ExistingSession | None]


def chap_auth(
    users: list[ChapConfig], mutual: ChapConfig | None, algorithms: tuple[int, ...]
) -> ChapTargetAuth | None:
    """The core's CHAP settings for these configured users; secrets stay in the object."""
    if not users:
        return None
    return ChapTargetAuth(
        secrets={u.user: u.secret.encode() for u in users},
        credentials=ChapCredentials(mutual.user, mutual.secret.encode()) if mutual else None,
        algorithms=tuple(ChapAlgorithm(a) for a in algorithms),
    )


def find_target(targets: Mapping[str, TargetConfig], name: str) -> TargetConfig | None:
    """The configured target of this name; names compare case-insensitively (RFC 3722)."""
    found = targets.get(name)
    if found is not None:
        return found
    return next((t for t in targets.values() if t.name.lower() == name.lower()), None)


def target_node(tc: TargetConfig, portal_group: int, initiator_name: str) -> TargetNode | None:
    """What the login may know of one configured target, seen from this initiator."""
    if tc.portal_groups and portal_group not in tc.portal_groups:
        return None  # not exposed on this portal group: "not found"
    acl = tc.acl_for(initiator_name)
    if acl is not None and acl.chap is not None:
        users, mutual = [acl.chap], acl.mutual_chap
    else:
        users, mutual = ([tc.chap] if tc.chap else []), tc.mutual_chap
    keys = dict(TARGET_DEFAULTS)
    keys.update(tc.parameters)
    if tc.alias:
        keys["TargetAlias"] = tc.alias
    redirect = tc.redirect
    return TargetNode(
        name=tc.name,
        alias=tc.alias,
        keys=keys,
        chap=chap_auth(users, mutual, tc.chap_algorithms),
        redirect=redirect.address if redirect else None,
        redirect_permanent=bool(redirect and redirect.permanent),
        allow=(lambda ini: tc.acl_for(ini) is not None) if tc.acls else None,
        cmd_window=tc.cmd_window,
    )


class ConnectionLogin:
    """The login of one connection: the core's table with the target's policy."""

    def __init__(
        self,
        *,
        targets: Mapping[str, TargetConfig],
        discovery: DiscoveryConfig,
        portal_group: int,
        allocate_tsih: Callable[[], int],
        find_session: FindByTsih,
        find_session_by_isid: FindByIsid,
        cmd_window: int,
        rng: Callable[[int], bytes],
    ) -> None:
        self.done = False
        self.started = False  # a Login Request came: the login phase has started (4.2.3)
        self._held: list[P.LoginResponse] = []  # responses that replace the core's
        self.initiator_name: str | None = None
        self._targets = targets
        self._portal_group = portal_group
        config = TargetLoginConfig(
            lookup_target=self._lookup_target,
            allocate_tsih=allocate_tsih,
            find_session=find_session,
            find_session_by_isid=find_session_by_isid,
            portal_group_tag=portal_group,
            keys=dict(TARGET_DEFAULTS),
            discovery=discovery.enabled,
            discovery_chap=chap_auth(
                [discovery.chap] if discovery.chap else [],
                discovery.mutual_chap,
                ALL_CHAP_ALGORITHMS,
            ),
            cmd_window=cmd_window,
        )
        self.core = TargetLogin(config, rng=rng)

    def _lookup_target(self, name: str) -> TargetNode | None:
        tc = find_target(self._targets, name)
        if tc is None:
            return None
        return target_node(tc, self._portal_group, self.initiator_name or "")

    @property
    def neg(self) -> Negotiator | None:
        """The login's negotiator (None before the first request was understood)."""
        return self.core.negotiator

    def receive(self, req: P.LoginRequest) -> list[Event]:
        """Feed one Login Request; the answers wait in ``data_to_send``."""
        if self.done:
            return []
        self.started = True
        if self.initiator_name is None:
            # The ACL needs the InitiatorName before the core asks for the target
            # node; it is in the first request (RFC 7143 13.5).
            try:
                self.initiator_name = dict(T.parse_pairs(req.data)).get("InitiatorName")
            except ProtocolError:
                pass  # the core answers malformed text
        events = self.core.receive_pdu(req)
        completed = next((e for e in events if isinstance(e, LoginCompleted)), None)
        why = self._against_policy(completed) if completed is not None else None
        if why is None:
            return events
        # The core would end the login with a digest this target does not allow (it
        # answered Reject to the offer, and the key kept its default, None): the target
        # fails the login instead of serving a session against its own policy.
        *before, final = self.core.data_to_send()
        status = LoginStatus.INITIATOR_ERROR
        self._held = [
            *before,
            dataclasses.replace(
                final,
                transit=False,
                nsg=0,
                tsih=0,
                status_class=status >> 8,
                status_detail=status & 0xFF,
                data=b"",
            ),
        ]
        self.done = True
        return [LoginFailed(status, why)]

    def _against_policy(self, done: LoginCompleted) -> str | None:
        """Why the login's outcome breaks the target's digest policy (a target that
        holds only CRC32C for a digest, as the digest-required profile does), or None."""
        node = self._lookup_target(done.target_name) if done.target_name else None
        if node is None:
            return None
        for key, used in (
            ("HeaderDigest", done.parameters.header_digest),
            ("DataDigest", done.parameters.data_digest),
        ):
            allowed = {v.strip() for v in node.keys.get(key, "None").split(",")}
            if not used and "None" not in allowed:
                return f"{key}=None is not allowed by this target (it holds {node.keys[key]})"
        return None

    def data_to_send(self) -> list[P.LoginResponse]:
        held, self._held = self._held, []
        return held + self.core.data_to_send()

    def fail(self, status: LoginStatus = LoginStatus.INITIATOR_ERROR) -> P.LoginResponse | None:
        """The Login Response that ends a login the connection found broken (framing:
        initiator error; a PDU other than a Login Request: invalid during login, RFC 7143
        11.13.5)."""
        if self.done:
            return None
        self.done = True
        return P.LoginResponse(
            status_class=status >> 8, status_detail=status & 0xFF, statsn=self.core.statsn
        )


def renegotiate(neg: Negotiator | None, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Answer the keys (other than SendTargets) of a full-feature Text Request: a new
    negotiation sequence (RFC 7143 6.4).  A key that may not be negotiated now, or a
    bad value, is answered Reject and the others are answered."""
    if neg is None:
        return [(k, T.NOT_UNDERSTOOD) for k, _ in pairs]
    neg.stage = LoginStage.FULL_FEATURE_PHASE
    neg.begin_sequence()
    rejected: list[tuple[str, str]] = []
    for _ in range(len(pairs) + 1):
        try:
            answer = neg.respond(pairs)
        except NegotiationError as exc:
            bad = exc.key if exc.key in {k for k, _ in pairs} else pairs[0][0]
            rejected.append((bad, T.REJECT))
            pairs = [(k, v) for k, v in pairs if k != bad]
            neg.begin_sequence()
            continue
        return rejected + answer
    return rejected


__all__ = [
    "ALL_CHAP_ALGORITHMS",
    "TARGET_DEFAULTS",
    "ConnectionLogin",
    "chap_auth",
    "find_target",
    "renegotiate",
    "target_node",
]
