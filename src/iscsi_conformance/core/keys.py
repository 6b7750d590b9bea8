"""The table of every text key of RFC 7143 sections 12 and 13 (one KeySpec each).

Theory of operation: everything the negotiator, the login state machines, the
Hypothesis strategies and the conformance tests need to know about a key -- its
value type, default, legal range, result function, scope, when it may be used,
who may send it, whether a Discovery session cares -- is declared here once, as
data.  Code elsewhere never spells a key's rule out again; it looks it up in
:data:`KEYS`.

Sources, paraphrased: RFC 7143 section 13 (operational keys, the "Use", "Senders",
"Scope", "Irrelevant when" and "Result function" lines of each key), section 12
(AuthMethod and the CHAP keys), 13.25 (obsolete marker keys), RFC 7144 4.2.1 /
RFC 7143 13.24 (iSCSIProtocolLevel).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# RFC 7143 13.12-13.14: 512 .. 2**24 - 1.
_MAX_24 = 2**24 - 1


class ValueKind(enum.Enum):
    """The value type of a key (RFC 7143 6.1 definitions)."""

    BOOLEAN = "boolean-value"
    NUMBER = "numerical-value"
    RANGE = "numeric-range"
    LIST = "list-of-values"
    ENUM = "simple-value from a fixed set"
    TEXT = "text-value"
    ISCSI_NAME = "iSCSI-name-value"
    LOCAL_NAME = "iSCSI-local-name-value"
    ADDRESS = "TargetAddress value"
    BINARY = "binary-value"
    LARGE_BINARY = "large-binary-value"


class ResultFunction(enum.Enum):
    """How the outcome follows from offer and answer (RFC 7143 6.2)."""

    LIST = "first value of the originator's list the responder supports"
    AND = "boolean AND"
    OR = "boolean OR"
    MIN = "numerical minimum"
    MAX = "numerical maximum"
    DECLARATIVE = "declared, not negotiated"
    AUTH = "driven by the authentication method (chap.py)"
    OBSOLETE = "obsolete key: answered Reject (RFC 7143 13.25)"
    REQUEST = "a request answered by the target's text handler (SendTargets)"


class Scope(enum.Enum):
    """Session-wide (SW) or connection-only (CO) (RFC 7143 13)."""

    SESSION = "SW"
    CONNECTION = "CO"


class Phase(enum.Flag):
    """When a key may be used (the "Use" line of RFC 7143 13 and 12)."""

    LO = enum.auto()  # leading connection only
    IO = enum.auto()  # initialize only: login phase
    FFPO = enum.auto()  # full feature phase only
    ALL = enum.auto()  # login and full feature phase
    SECURITY = enum.auto()  # SecurityNegotiation stage only
    DECLARATIVE = enum.auto()
    ANY_STAGE = enum.auto()  # either login stage


class Senders(enum.Flag):
    """Who may send the key (the "Senders" line)."""

    INITIATOR = enum.auto()
    TARGET = enum.auto()
    BOTH = INITIATOR | TARGET


@dataclass(frozen=True)
class KeySpec:
    """One key of RFC 7143 12/13.

    ``default`` is the value in force when the key is never negotiated (None when the
    RFC gives none).  ``min`` / ``max`` bound numbers.  ``values`` lists the legal
    values of LIST / ENUM keys.  ``usable_in_discovery`` is False where the RFC says
    "Irrelevant when: SessionType=Discovery".  ``max_length`` bounds each (decoded)
    value in bytes.  ``repeatable`` marks keys that may legally appear more than once in
    one negotiation (TargetAddress).  SendTargets answers, where TargetName repeats to
    start each record, are parsed by the discovery layer, not negotiated.
    """

    name: str
    kind: ValueKind
    default: str | None
    result_function: ResultFunction
    scope: Scope
    phase: Phase
    senders: Senders
    section: str
    min: int | None = None
    max: int | None = None
    values: tuple[str, ...] = ()
    usable_in_discovery: bool = True
    max_length: int = 255
    repeatable: bool = False

    @property
    def declarative(self) -> bool:
        """True for keys that are declared, never answered."""
        return self.result_function is ResultFunction.DECLARATIVE

    @property
    def leading_only(self) -> bool:
        """True for LO keys: only on the leading connection's login."""
        return Phase.LO in self.phase

    @property
    def security(self) -> bool:
        """True for keys of the SecurityNegotiation stage only."""
        return Phase.SECURITY in self.phase

    @property
    def login_only(self) -> bool:
        """True if the key is not allowed in full feature phase."""
        return not (self.phase & (Phase.ALL | Phase.FFPO))

    @property
    def direction(self) -> Senders:
        """Alias of ``senders`` (architecture.md names it direction)."""
        return self.senders

    def in_range(self, n: int) -> bool:
        """True if ``n`` lies within [min, max]."""
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)


def _bool(
    name: str, default: str, fn: ResultFunction, section: str, *, discovery: bool = False
) -> KeySpec:
    return KeySpec(
        name, ValueKind.BOOLEAN, default, fn, Scope.SESSION, Phase.LO | Phase.IO,
        Senders.BOTH, section, usable_in_discovery=discovery,
    )  # fmt: skip


def _num(
    name: str, default: int, lo: int, hi: int, fn: ResultFunction, section: str, *,
    discovery: bool = False, phase: Phase = Phase.LO | Phase.IO, scope: Scope = Scope.SESSION,
) -> KeySpec:  # fmt: skip
    return KeySpec(
        name, ValueKind.NUMBER, str(default), fn, scope, phase, Senders.BOTH, section,
        min=lo, max=hi, usable_in_discovery=discovery,
    )  # fmt: skip


_DECL_ANY = Phase.DECLARATIVE | Phase.ANY_STAGE

_SPECS: tuple[KeySpec, ...] = (
    # --- RFC 7143 13.1
    KeySpec("HeaderDigest", ValueKind.LIST, "None", ResultFunction.LIST, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.1", values=("CRC32C", "None")),
    KeySpec("DataDigest", ValueKind.LIST, "None", ResultFunction.LIST, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.1", values=("CRC32C", "None")),
    # --- 13.2 .. 13.9
    _num("MaxConnections", 1, 1, 65535, ResultFunction.MIN, "RFC 7143 13.2"),
    KeySpec("SendTargets", ValueKind.TEXT, None, ResultFunction.REQUEST, Scope.SESSION,
            Phase.FFPO, Senders.INITIATOR, "RFC 7143 13.3"),
    KeySpec("TargetName", ValueKind.ISCSI_NAME, None, ResultFunction.DECLARATIVE, Scope.SESSION,
            Phase.IO | _DECL_ANY, Senders.BOTH, "RFC 7143 13.4", max_length=223),
    KeySpec("InitiatorName", ValueKind.ISCSI_NAME, None, ResultFunction.DECLARATIVE,
            Scope.SESSION, Phase.IO | _DECL_ANY, Senders.INITIATOR, "RFC 7143 13.5",
            max_length=223),
    KeySpec("TargetAlias", ValueKind.LOCAL_NAME, None, ResultFunction.DECLARATIVE, Scope.SESSION,
            Phase.ALL | _DECL_ANY, Senders.TARGET, "RFC 7143 13.6"),
    KeySpec("InitiatorAlias", ValueKind.LOCAL_NAME, None, ResultFunction.DECLARATIVE,
            Scope.SESSION, Phase.ALL | _DECL_ANY, Senders.INITIATOR, "RFC 7143 13.7"),
    KeySpec("TargetAddress", ValueKind.ADDRESS, None, ResultFunction.DECLARATIVE, Scope.SESSION,
            Phase.ALL | _DECL_ANY, Senders.TARGET, "RFC 7143 13.8", repeatable=True),
    KeySpec("TargetPortalGroupTag", ValueKind.NUMBER, None, ResultFunction.DECLARATIVE,
            Scope.SESSION, Phase.IO | _DECL_ANY, Senders.TARGET, "RFC 7143 13.9",
            min=0, max=65535),
    # --- 13.10 .. 13.20
    _bool("InitialR2T", "Yes", ResultFunction.OR, "RFC 7143 13.10"),
    _bool("ImmediateData", "Yes", ResultFunction.AND, "RFC 7143 13.11"),
    KeySpec("MaxRecvDataSegmentLength", ValueKind.NUMBER, "8192", ResultFunction.DECLARATIVE,
            Scope.CONNECTION, Phase.ALL | Phase.DECLARATIVE, Senders.BOTH, "RFC 7143 13.12",
            min=512, max=_MAX_24),
    _num("MaxBurstLength", 262144, 512, _MAX_24, ResultFunction.MIN, "RFC 7143 13.13"),
    _num("FirstBurstLength", 65536, 512, _MAX_24, ResultFunction.MIN, "RFC 7143 13.14"),
    _num("DefaultTime2Wait", 2, 0, 3600, ResultFunction.MAX, "RFC 7143 13.15", discovery=True),
    _num("DefaultTime2Retain", 20, 0, 3600, ResultFunction.MIN, "RFC 7143 13.16",
         discovery=True),
    _num("MaxOutstandingR2T", 1, 1, 65535, ResultFunction.MIN, "RFC 7143 13.17"),
    _bool("DataPDUInOrder", "Yes", ResultFunction.OR, "RFC 7143 13.18"),
    _bool("DataSequenceInOrder", "Yes", ResultFunction.OR, "RFC 7143 13.19"),
    _num("ErrorRecoveryLevel", 0, 0, 2, ResultFunction.MIN, "RFC 7143 13.20", discovery=True),
    # --- 13.21, 13.23, 13.24, 13.26
    KeySpec("SessionType", ValueKind.ENUM, "Normal", ResultFunction.DECLARATIVE, Scope.SESSION,
            Phase.LO | _DECL_ANY, Senders.INITIATOR, "RFC 7143 13.21",
            values=("Discovery", "Normal")),
    KeySpec("TaskReporting", ValueKind.LIST, "RFC3720", ResultFunction.LIST, Scope.SESSION,
            Phase.LO | Phase.IO, Senders.BOTH, "RFC 7143 13.23",
            values=("RFC3720", "ResponseFence", "FastAbort"), usable_in_discovery=False),
    _num("iSCSIProtocolLevel", 1, 0, 31, ResultFunction.MIN, "RFC 7143 13.24 / RFC 7144 4.2.1"),
    KeySpec("X#NodeArchitecture", ValueKind.LIST, None, ResultFunction.DECLARATIVE,
            Scope.SESSION, Phase.LO | Phase.DECLARATIVE, Senders.BOTH, "RFC 7143 13.26"),
    # --- 13.25: obsoleted RFC 3720 marker keys
    KeySpec("OFMarker", ValueKind.BOOLEAN, "No", ResultFunction.OBSOLETE, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.25"),
    KeySpec("IFMarker", ValueKind.BOOLEAN, "No", ResultFunction.OBSOLETE, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.25"),
    KeySpec("OFMarkInt", ValueKind.RANGE, "2048", ResultFunction.OBSOLETE, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.25", min=1, max=65535),
    KeySpec("IFMarkInt", ValueKind.RANGE, "2048", ResultFunction.OBSOLETE, Scope.CONNECTION,
            Phase.IO, Senders.BOTH, "RFC 7143 13.25", min=1, max=65535),
    # --- RFC 7143 12: security stage
    KeySpec("AuthMethod", ValueKind.LIST, "None", ResultFunction.LIST, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12",
            values=("KRB5", "SPKM1", "SPKM2", "SRP", "CHAP", "None")),
    KeySpec("CHAP_A", ValueKind.LIST, None, ResultFunction.AUTH, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12.1.3"),
    KeySpec("CHAP_I", ValueKind.NUMBER, None, ResultFunction.AUTH, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12.1.3", min=0, max=255),
    # RFC 7143 12.1.3: C and R are large-binary-values of at most 1024 bytes.
    KeySpec("CHAP_C", ValueKind.LARGE_BINARY, None, ResultFunction.AUTH, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12.1.3", max_length=1024),
    KeySpec("CHAP_N", ValueKind.TEXT, None, ResultFunction.AUTH, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12.1.3"),
    KeySpec("CHAP_R", ValueKind.LARGE_BINARY, None, ResultFunction.AUTH, Scope.CONNECTION,
            Phase.SECURITY, Senders.BOTH, "RFC 7143 12.1.3", max_length=1024),
)  # fmt: skip

#: Every key of RFC 7143 12/13 by name.
KEYS: dict[str, KeySpec] = {spec.name: spec for spec in _SPECS}

#: Keys whose values are fixed by the session, negotiated on the leading login only.
LEADING_ONLY: frozenset[str] = frozenset(k for k, s in KEYS.items() if s.leading_only)

#: Operational keys a Normal leading login typically offers, in a stable order.
OPERATIONAL_KEYS: tuple[str, ...] = (
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
)


def is_extension_key(name: str) -> bool:
    """Private (``X-``, RFC 7143 13.22) and public (``X#``, 13.26 / IANA) extension keys."""
    return name.startswith(("X-", "X#"))


def spec_for(name: str) -> KeySpec | None:
    """The KeySpec of ``name`` or None for an unknown key."""
    return KEYS.get(name)


def defaults(session_type: str = "Normal") -> dict[str, str]:
    """The default value of every negotiable key relevant to ``session_type``."""
    out: dict[str, str] = {}
    for name, spec in KEYS.items():
        if spec.default is None or spec.result_function is ResultFunction.OBSOLETE:
            continue
        if session_type == "Discovery" and not spec.usable_in_discovery:
            continue
        out[name] = spec.default
    return out
