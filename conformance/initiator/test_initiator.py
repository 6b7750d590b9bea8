"""Initiator: what each initiator under test puts on the wire, judged PDU by PDU.

These tests run once per initiator of the run (``pairing="initiator"``): the
initiator's driver logs in to the reference target through the recording proxy
(``observed``, harness/observer.py), does some I/O, logs out, and the test then judges
the PDUs the initiator sent against what the target had told it. Some tests have the
proxy rewrite what the target says (a wrong mutual CHAP_R, a smaller command window,
a ping, a corrupted Data-In) and check that the initiator refuses or obeys.

Every check judges the initiator only against what it actually received (the
``seen_by_initiator`` view, after any rewriting), and each one names a behaviour a
careless initiator gets wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest

from iscsi_conformance.core import serial
from iscsi_conformance.core.digest import crc32c
from iscsi_conformance.core.keys import KEYS, Senders
from iscsi_conformance.core.negotiation import check_value
from iscsi_conformance.core.pdu import (
    PDU,
    R2T,
    AsyncMessage,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    ScsiCommand,
    ScsiDataIn,
    ScsiDataOut,
    ScsiResponse,
    Tamper,
    TaskManagementRequest,
    TextRequest,
    lun_to_field,
)
from iscsi_conformance.core.text import format_binary, format_pairs, parse_binary, parse_pairs
from iscsi_conformance.errors import ISCSIConformanceError
from iscsi_conformance.harness.observer import Forged, ObservedConnection, Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require as _require
from iscsi_conformance.plugin import spec
from iscsi_conformance.plugin import violation as _violation

BLOCK = 512
LUN = 0
LBA = 4096
BLOCKS = 128  # 64 KiB: several R2Ts and Data-Outs under the small-limit profiles
NONE_TAG = 0xFFFFFFFF
FULL_FEATURE = 3
PING_TTT = 0x1CE0_0001  # a Target Transfer Tag the reference target never uses
MAX_SHOWN = 8  # PDUs shown in a failure message

_STATUS_PDUS = ("ScsiResponse", "TaskManagementResponse", "LogoutResponse", "TextResponse",
                "AsyncMessage", "Reject", "LoginResponse")  # fmt: skip
_REQUESTS = (ScsiCommand, TaskManagementRequest, TextRequest, LogoutRequest, NopOut)
_READS = {0x08: (6, 1), 0x28: (10, 2), 0xA8: (12, 6), 0x88: (16, 10)}  # opcode: (len, lba end)
_WRITES = {0x0A: (6, 1), 0x2A: (10, 2), 0xAA: (12, 6), 0x8A: (16, 10)}


# --------------------------------------------------------------------------- reporting


class _Brief:
    """A PDU shown in a failure message: its fields, and its data only by length."""

    def __init__(self, pdu: Any) -> None:
        self.pdu = pdu

    def summary(self) -> str:
        if not dataclasses.is_dataclass(self.pdu):
            return repr(self.pdu)
        fields = []
        for f in dataclasses.fields(self.pdu):
            value = getattr(self.pdu, f.name)
            if f.name in ("data", "ahs", "cdb"):
                if f.name == "cdb":
                    fields.append(f"cdb={value.hex()}")
                elif value:
                    fields.append(f"{f.name}[{len(value)}]")
                continue
            fields.append(
                f"{f.name}={hex(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF else value}"
            )
        return f"{type(self.pdu).__name__}({', '.join(fields)})"


def _brief(pdus: Any) -> list[_Brief]:
    return [_Brief(p) for p in pdus if p is not None][:MAX_SHOWN]


def require(
    condition: object,
    requirement: str,
    message: str,
    *,
    sent: Any = (),
    received: Any = (),
    level: Any = None,
) -> None:
    """``plugin.require`` with PDUs shown briefly (no data bytes)."""
    __tracebackhide__ = True
    _require(
        condition,
        requirement,
        message,
        sent=_brief(sent),
        received=_brief(received),
        level=level,
    )


def violation(requirement: str, message: str, *, sent: Any = (), received: Any = ()) -> Exception:
    return _violation(requirement, message, sent=_brief(sent), received=_brief(received))


def _minus_one(sn: int) -> int:
    return (sn - 1) & 0xFFFFFFFF


# --------------------------------------------------------------------------- driving


def _options(target: Any, profile: str = "default", **kw: Any) -> LoginOptions:
    chap, mutual = target.chap_for(profile)
    return LoginOptions(chap=chap, mutual_chap=mutual, **kw)


def _payload(blocks: int = BLOCKS) -> bytes:
    return os.urandom(blocks * BLOCK)


def _run(
    initiator: Any,
    target: Any,
    observed: Any,
    profile: str = "default",
    *,
    tamper: Any = None,
    options: LoginOptions | None = None,
    write: bool = True,
    read: bool = True,
) -> Observer:
    """Log in through the proxy, write and read 64 KiB, log out; the observer."""
    ep, obs = observed(profile, tamper)
    try:
        handle = initiator.driver.login(ep, options=options or _options(target, profile))
    except ISCSIConformanceError:
        _harness_check(obs)
        raise
    try:
        if write:
            initiator.driver.write(handle, LUN, LBA, _payload())
        if read:
            initiator.driver.read(handle, LUN, LBA, BLOCKS)
    finally:
        initiator.driver.logout(handle)
    _settle(obs)
    return obs


def _harness_check(obs: Observer) -> None:
    """Blame the harness, not the initiator, when the proxy itself failed."""
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")


def _settle(obs: Observer) -> None:
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")


def _logged_in(obs: Observer, session_type: str = "Normal") -> list[ObservedConnection]:
    """Connections of ``session_type`` that reached full feature phase (at least one)."""
    conns = [c for c in obs if c.session_type == session_type and c.in_full_feature]
    if not conns:
        raise violation(
            "harness",
            f"no {session_type} connection reached full feature phase through the proxy "
            f"({len(obs.connections)} connections; errors: {obs.harness_errors})",
        )
    return conns


def _all_connections(obs: Observer) -> list[ObservedConnection]:
    conns = [c for c in obs if c.sent_by_initiator(LoginRequest)]
    if not conns:
        raise violation("harness", "the initiator never logged in through the proxy")
    return conns


def _shown(pdus: list[Any]) -> list[Any]:
    return pdus[:MAX_SHOWN]


def _login_requests(conn: ObservedConnection) -> list[LoginRequest]:
    return [e.pdu for e in conn.sent_by_initiator(LoginRequest)]  # type: ignore[misc]


def _first_request_pairs(conn: ObservedConnection) -> list[tuple[str, str]]:
    """Keys of the first Login Request (its text reassembled over C=1 PDUs)."""
    data = b""
    for req in _login_requests(conn):
        data += req.data
        if not req.cont:
            break
    return parse_pairs(data) if data else []


def _ffp_requests(conn: ObservedConnection) -> list[Any]:
    """Entries of requests with a CmdSN the initiator sent in full feature phase."""
    return [e for e in conn.sent_by_initiator(_REQUESTS) if e.full_feature]


def _block_command(cdb: bytes) -> tuple[str, int] | None:
    """("read"|"write", transfer length in blocks) for READ/WRITE(6/10/12/16)."""
    op = cdb[0] if cdb else -1
    for kind, table in (("read", _READS), ("write", _WRITES)):
        if op in table:
            size, _ = table[op]
            if op in (0x08, 0x0A):
                n = cdb[4] or 256
            elif size == 10:
                n = int.from_bytes(cdb[7:9], "big")
            elif size == 12:
                n = int.from_bytes(cdb[6:10], "big")
            else:
                n = int.from_bytes(cdb[10:14], "big")
            return kind, n
    return None


def _sequences(conn: ObservedConnection) -> dict[tuple[int, int], list[ScsiDataOut]]:
    """Data-Out PDUs grouped by (ITT, TTT): one unsolicited burst or one R2T's sequence."""
    out: dict[tuple[int, int], list[ScsiDataOut]] = {}
    for e in conn.sent_by_initiator(ScsiDataOut):
        pdu: ScsiDataOut = e.pdu  # type: ignore[assignment]
        out.setdefault((pdu.itt, pdu.ttt), []).append(pdu)
    return out


def _require_data_out(obs: Observer) -> list[ObservedConnection]:
    conns = _logged_in(obs)
    if not any(c.sent_by_initiator(ScsiDataOut) for c in conns):
        pytest.skip("the initiator sent no Data-Out PDU (nothing to judge here)")
    return conns


# --------------------------------------------------------------------------- Login


@spec(
    "Initiator.Login.InitiatorName",
    "RFC 7143 13.5",
    "RFC 7143 6.3",
    pairing="initiator",
    requirements=["R7143-13.5-1"],
)
def test_initiator_name(initiator: Any, target: Any, observed: Any) -> None:
    """The first Login Request of every connection (normal and discovery) carries InitiatorName."""
    ep, obs = observed()
    initiator.driver.discover(ep.host, ep.port)
    initiator.driver.logout(initiator.driver.login(ep, options=_options(target)))
    _settle(obs)
    for conn in _all_connections(obs):
        keys = dict(_first_request_pairs(conn))
        require(
            keys.get("InitiatorName"),
            "R7143-13.5-1",
            f"{initiator.name}'s first Login Request ({conn.session_type} session) has no InitiatorName",
            sent=_shown(_login_requests(conn)),
        )


@spec(
    "Initiator.Login.TargetName",
    "RFC 7143 13.4",
    pairing="initiator",
    requirements=["R7143-13.4-2"],
)
def test_target_name(initiator: Any, target: Any, observed: Any) -> None:
    """The first Login Request of a Normal session names the target it logs in to."""
    obs = _run(initiator, target, observed, write=False, read=False)
    for conn in _logged_in(obs):
        keys = dict(_first_request_pairs(conn))
        require(
            keys.get("TargetName") == target.endpoint().iqn,
            "R7143-13.4-2",
            f"first Login Request of a Normal session has TargetName={keys.get('TargetName')!r}, "
            f"expected {target.endpoint().iqn!r}",
            sent=_shown(_login_requests(conn)),
        )


@spec(
    "Initiator.Login.DiscoverySessionType",
    "RFC 7143 13.21",
    pairing="initiator",
    requirements=["R7143-13.21-1"],
)
def test_discovery_session_type(initiator: Any, target: Any, observed: Any) -> None:
    """A discovery login declares SessionType=Discovery in its first Login Request."""
    ep, obs = observed()
    initiator.driver.discover(ep.host, ep.port)
    _settle(obs)
    conns = _all_connections(obs)
    for conn in conns:
        keys = dict(_first_request_pairs(conn))
        require(
            keys.get("SessionType") == "Discovery",
            "R7143-13.21-1",
            f"a SendTargets login declared SessionType={keys.get('SessionType')!r} "
            "(default Normal) in its first Login Request",
            sent=_shown(_login_requests(conn)),
        )


@spec(
    "Initiator.Login.IsidType",
    "RFC 7143 11.12.5",
    pairing="initiator",
    requirements=["R7143-11.12-4"],
)
def test_isid_type(initiator: Any, target: Any, observed: Any) -> None:
    """The ISID's type field (its top two bits) is never the reserved 11b."""
    ep, obs = observed()
    initiator.driver.discover(ep.host, ep.port)
    initiator.driver.logout(initiator.driver.login(ep, options=_options(target)))
    _settle(obs)
    for conn in _all_connections(obs):
        for req in _login_requests(conn):
            require(
                (req.isid >> 46) != 0b11,
                "R7143-11.12-4",
                f"ISID 0x{req.isid:012x} uses the reserved type 11b",
                sent=[req],
            )


@spec(
    "Initiator.Login.TsihZero",
    "RFC 7143 11.12.6",
    pairing="initiator",
    requirements=["R7143-11.12-6"],
)
def test_tsih_zero(initiator: Any, target: Any, observed: Any) -> None:
    """A new session's leading login carries TSIH 0 (the target assigns the TSIH)."""
    obs = _run(initiator, target, observed, write=False, read=False)
    for conn in _all_connections(obs):
        first = _login_requests(conn)[0]
        require(
            first.tsih == 0,
            "R7143-11.12-6",
            f"the leading login of a new session has TSIH {first.tsih}",
            sent=[first],
        )


@spec(
    "Initiator.Login.ConstantFields",
    "RFC 7143 11.12",
    "RFC 7143 11.12.4",
    pairing="initiator",
    requirements=["R7143-11.12-7"],
)
def test_constant_fields(initiator: Any, target: Any, observed: Any) -> None:
    """TSIH, CID, Version-max and Version-min stay the same through the login; min <= max.

    RFC 7143 11.12.4-11.12.7 bind those four with MUST; no keyword binds the ISID to stay
    the same (11.12.5), so a changed ISID is reported as informational (R7143-11.12-7)."""
    obs = _run(initiator, target, observed, "chap", write=False, read=False)
    for conn in _all_connections(obs):
        reqs = _login_requests(conn)
        first = reqs[0]
        for req in reqs:
            for name in ("isid", "tsih", "cid", "version_max", "version_min"):
                require(
                    getattr(req, name) == getattr(first, name),
                    "R7143-11.12-7",
                    f"{name} changed during the login: {getattr(first, name)} then {getattr(req, name)}",
                    sent=_shown(reqs),
                    level="INFORMATIONAL" if name == "isid" else None,
                )
            require(
                req.version_min <= req.version_max,
                "R7143-11.12-7",
                f"Version-min {req.version_min} is above Version-max {req.version_max}",
                sent=[req],
            )


@spec(
    "Initiator.Login.TransitContinue",
    "RFC 7143 11.12.2",
    pairing="initiator",
    requirements=["R7143-11.12-1"],
)
def test_transit_continue(initiator: Any, target: Any, observed: Any) -> None:
    """No Login Request has both T and C set."""
    obs = _run(initiator, target, observed, "chap", write=False, read=False)
    for conn in _all_connections(obs):
        for req in _login_requests(conn):
            require(
                not (req.transit and req.cont),
                "R7143-11.12-1",
                "a Login Request sets both T (transit) and C (continue)",
                sent=[req],
            )


@spec(
    "Initiator.Login.Stages",
    ("RFC 7143", "11.12.3", "INFORMATIONAL", "initiator"),
    ("RFC 7143", "6.3", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-6.3-9"],
)
def test_stages(initiator: Any, target: Any, observed: Any) -> None:
    """CSG is the stage in force, NSG (with T=1) a later legal stage, across a CHAP login.

    A robustness check: no keyword read binds how the initiator sets CSG (R7143-6.3-9)."""
    obs = _run(initiator, target, observed, "chap", write=False, read=False)
    for conn in _all_connections(obs):
        stage: int | None = None
        shown: list[Any] = []
        for e in conn.delivered():
            pdu = e.pdu
            if isinstance(pdu, LoginResponse):
                shown.append(pdu)
                if pdu.transit and pdu.status == 0:
                    stage = pdu.nsg
                continue
            if not isinstance(pdu, LoginRequest):
                continue
            shown.append(pdu)
            require(
                pdu.csg in (0, 1) and (stage is None or pdu.csg == stage),
                "R7143-6.3-9",
                f"Login Request CSG={pdu.csg}, but the stage in force is {stage}",
                sent=_shown(shown[-MAX_SHOWN:]),
            )
            if pdu.transit:
                require(
                    pdu.nsg in (1, 3) and pdu.nsg > pdu.csg,
                    "R7143-6.3-9",
                    f"Login Request asks to go from stage {pdu.csg} to NSG={pdu.nsg}",
                    sent=[pdu],
                )
            stage = pdu.csg


@spec(
    "Initiator.Login.Immediate",
    "RFC 7143 11.12",
    level="INFORMATIONAL",
    pairing="initiator",
    requirements=["R7143-11.12-8"],
)
def test_login_immediate(initiator: Any, target: Any, observed: Any) -> None:
    """Every Login Request has the I (immediate) bit set."""
    obs = _run(initiator, target, observed, write=False, read=False)
    for conn in _all_connections(obs):
        for e in conn.sent_by_initiator(LoginRequest):
            require(
                e.raw[0] & 0x40,
                "R7143-11.12-8",
                f"Login Request byte 0 is 0x{e.raw[0]:02x}: the I bit is not set",
                sent=[e.pdu],
            )


@spec(
    "Initiator.Login.OnlyLoginBeforeFullFeature",
    ("RFC 7143", "6.3", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-6.3-8"],
)
def test_only_login_before_ffp(initiator: Any, target: Any, observed: Any) -> None:
    """Until the final Login Response, the initiator sends only Login Requests.

    A robustness check: the keywords read bind the target's answer to another PDU during
    login, not the initiator (R7143-6.3-8)."""
    obs = _run(initiator, target, observed, "chap", read=False)
    for conn in _all_connections(obs):
        early = [e.pdu for e in conn.sent_by_initiator() if not e.full_feature]
        others = [p for p in early if not isinstance(p, LoginRequest)]
        require(
            not others,
            "R7143-6.3-8",
            f"{type(others[0]).__name__ if others else ''} sent before the login completed",
            sent=_shown(early),
        )


@spec(
    "Initiator.Login.KeysNotRepeated",
    ("RFC 7143", "6.3", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-6.3-12"],
)
def test_keys_not_repeated(initiator: Any, target: Any, observed: Any) -> None:
    """The initiator sends each key at most once per login."""
    obs = _run(initiator, target, observed, "mutual", write=False, read=False)
    for conn in _all_connections(obs):
        seen: set[str] = set()
        for key, _value in conn.initiator_keys:
            require(
                key not in seen,
                "R7143-6.3-12",
                f"key {key} sent twice in one login",
                sent=_shown(_login_requests(conn)),
            )
            seen.add(key)


@spec(
    "Initiator.Login.KeySenders",
    ("RFC 7143", "6.2", "INFORMATIONAL", "initiator"),
    ("RFC 7143", "13.9", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-6.2-6"],
)
def test_key_senders(initiator: Any, target: Any, observed: Any) -> None:
    """The initiator never sends a key only targets may send (TargetAlias, TargetPortalGroupTag...)."""
    ep, obs = observed()
    initiator.driver.discover(ep.host, ep.port)
    initiator.driver.logout(initiator.driver.login(ep, options=_options(target)))
    _settle(obs)
    for conn in _all_connections(obs):
        for key, _value in conn.initiator_keys:
            spec_ = KEYS.get(key)
            if spec_ is None:
                continue
            require(
                Senders.INITIATOR in spec_.senders,
                "R7143-6.2-6",
                f"the initiator sent {key}, which only a target sends ({spec_.section})",
                sent=_shown(_login_requests(conn)),
            )


@spec(
    "Initiator.Login.KeyValues",
    ("RFC 7143", "6.1", "INFORMATIONAL", "initiator"),
    ("RFC 7143", "13", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-6.1-6", "R7143-6.1-2"],
)
def test_key_values(initiator: Any, target: Any, observed: Any) -> None:
    """Every value the initiator sends for a standard key is well formed and in range.

    A robustness check: value types and ranges are definitions, no keyword binds the
    sender to them (R7143-6.1-6)."""
    obs = _run(initiator, target, observed, "chap", write=False, read=False)
    for conn in _all_connections(obs):
        for key, value in conn.initiator_keys:
            spec_ = KEYS.get(key)
            if spec_ is None or value in ("NotUnderstood", "Irrelevant", "Reject"):
                continue
            try:
                check_value(spec_, value)
            except ISCSIConformanceError as exc:
                raise violation(
                    "R7143-6.1-6",
                    f"{key}={value!r} is not a legal value: {exc}",
                    sent=_shown(_login_requests(conn)),
                ) from None


@spec(
    "Initiator.Login.StopsAfterFailure",
    "RFC 7143 11.13.5",
    pairing="initiator",
    requirements=["R7143-11.13-4"],
)
def test_stops_after_failure(initiator: Any, target: Any, observed: Any) -> None:
    """After a Login Response with a non-zero status (unknown target), the initiator sends nothing more."""
    ep, obs = observed()
    missing = dataclasses.replace(ep, iqn=ep.iqn + "-no-such-target")
    try:
        handle = initiator.driver.login(missing, options=_options(target))
    except ISCSIConformanceError:
        handle = None
    if handle is not None:
        initiator.driver.logout(handle)
    _settle(obs)
    failed = 0
    for conn in _all_connections(obs):
        entries = conn.delivered()
        refusal = next(
            (
                i
                for i, e in enumerate(entries)
                if isinstance(e.pdu, LoginResponse) and e.pdu.status_class != 0
            ),
            None,
        )
        if refusal is None:
            continue
        failed += 1
        after = [e.pdu for e in entries[refusal + 1 :] if e.direction == "i->t"]
        require(
            not after,
            "R7143-11.13-4",
            f"the initiator went on after Login status 0x{entries[refusal].pdu.status:04x}",
            sent=_shown(after),
            received=[entries[refusal].pdu],
        )
        require(
            "i->t" in conn.closed,
            "R7143-11.13-4",
            "the initiator kept the connection open after a failed login",
            received=[entries[refusal].pdu],
        )
    require(failed, "harness", "the reference target did not refuse the unknown target name")
    require(
        handle is None, "R7143-11.13-4", f"{initiator.name}'s driver reported a successful login"
    )


# --------------------------------------------------------------------------- CHAP


def _rewrite_chap(key: str, change: Callable[[str, ObservedConnection], str]) -> Any:
    """A rewrite hook changing the value of ``key`` in the target's Login Responses."""

    def tamper(conn: ObservedConnection, direction: str, pdu: PDU) -> Any:
        if direction != "t->i" or not isinstance(pdu, LoginResponse) or not pdu.data:
            return pdu
        pairs = parse_pairs(pdu.data)
        if not any(k == key for k, _ in pairs):
            return pdu
        pairs = [(k, change(v, conn) if k == key else v) for k, v in pairs]
        return dataclasses.replace(pdu, data=format_pairs(pairs, strict=False))

    return tamper


def _flip(value: str, conn: ObservedConnection) -> str:
    raw = bytearray(parse_binary(value))
    raw[-1] ^= 0x01
    return format_binary(bytes(raw))


def _truncate(value: str, conn: ObservedConnection) -> str:
    return format_binary(parse_binary(value)[:-1])


def _reflect(value: str, conn: ObservedConnection) -> str:
    own = conn.declared_by_initiator("CHAP_R")
    return own if own else _flip(value, conn)


def _base64(value: str, conn: ObservedConnection) -> str:
    return format_binary(parse_binary(value), "base64")


@pytest.mark.parametrize("corruption", ["flipped", "truncated", "reflected"])
@spec(
    "Initiator.Chap.MutualWrongResponse",
    "RFC 7143 12.1.3",
    pairing="initiator",
    requirements=["R7143-12.1.3-9"],
    needs=("initiator:mutual_chap",),
)
def test_mutual_wrong_response(initiator: Any, target: Any, observed: Any, corruption: str) -> None:
    """With mutual CHAP, a wrong target CHAP_R (one bit, one byte short, or the initiator's own) fails the login."""
    change = {"flipped": _flip, "truncated": _truncate, "reflected": _reflect}[corruption]
    ep, obs = observed("mutual", _rewrite_chap("CHAP_R", change))
    try:
        handle = initiator.driver.login(ep, options=_options(target, "mutual"))
    except ISCSIConformanceError:
        handle = None
    else:
        initiator.driver.logout(handle)
    _settle(obs)
    for conn in _all_connections(obs):
        tampered = [e for e in conn.entries if e.note == "tampered"]
        if not tampered:
            continue
        after = [e.pdu for e in conn.sent_by_initiator() if e.time > tampered[0].time]
        require(
            not after,
            "R7143-12.1.3-9",
            f"the initiator went on after a {corruption} target CHAP_R",
            sent=_shown(after),
            received=[tampered[0].pdu],
        )
    require(
        handle is None,
        "R7143-12.1.3-9",
        f"{initiator.name} accepted a {corruption} CHAP_R from the target (login reported successful)",
    )
    require(
        any(e.note == "tampered" for c in obs for e in c.entries),
        "harness",
        "the target's CHAP_R never passed the proxy",
    )


@spec(
    "Initiator.Chap.OwnChallenge",
    "RFC 7143 9.2.1",
    pairing="initiator",
    requirements=["R7143-12.1.3-11"],
    needs=("initiator:mutual_chap",),
)
def test_own_challenge(initiator: Any, target: Any, observed: Any) -> None:
    """In mutual CHAP the initiator's CHAP_C is its own, not the target's challenge sent back."""
    obs = _run(initiator, target, observed, "mutual", write=False, read=False)
    for conn in _logged_in(obs):
        theirs = conn.declared_by_target("CHAP_C")
        ours = conn.declared_by_initiator("CHAP_C")
        require(ours, "R7143-12.1.3-11", "mutual CHAP login without an initiator CHAP_C")
        require(
            theirs is None or parse_binary(ours) != parse_binary(theirs),
            "R7143-12.1.3-11",
            "the initiator reflected the target's CHAP challenge",
            sent=_shown(_login_requests(conn)),
        )


@spec(
    "Initiator.Chap.Base64Challenge",
    "RFC 7143 12.1.3",
    "RFC 7143 6.1",
    pairing="initiator",
    requirements=["R7143-12.1.3-7"],
    needs=("initiator:chap_algorithms",),
)
def test_base64_challenge(initiator: Any, target: Any, observed: Any) -> None:
    """The initiator accepts the target's CHAP_C in base64 (0b...) and answers it correctly."""
    ep, obs = observed("chap", _rewrite_chap("CHAP_C", _base64))
    try:
        handle = initiator.driver.login(ep, options=_options(target, "chap"))
    except ISCSIConformanceError as exc:
        _settle(obs)
        raise violation(
            "R7143-12.1.3-7",
            f"login failed once CHAP_C was base64-encoded: {exc}",
            sent=_shown([p for c in obs for p in _login_requests(c)]),
        ) from None
    initiator.driver.logout(handle)
    _settle(obs)
    require(_logged_in(obs), "R7143-12.1.3-7", "no full feature phase")


@spec(
    "Initiator.Chap.Base64Response",
    "RFC 7143 12.1.3",
    "RFC 7143 6.1",
    pairing="initiator",
    requirements=["R7143-12.1.3-7"],
    needs=("initiator:mutual_chap",),
)
def test_base64_response(initiator: Any, target: Any, observed: Any) -> None:
    """The initiator verifies a correct mutual CHAP_R sent in base64 (0b...) and logs in."""
    ep, obs = observed("mutual", _rewrite_chap("CHAP_R", _base64))
    try:
        handle = initiator.driver.login(ep, options=_options(target, "mutual"))
    except ISCSIConformanceError as exc:
        _settle(obs)
        raise violation(
            "R7143-12.1.3-7",
            f"login failed once the target's (correct) CHAP_R was base64-encoded: {exc}",
            sent=_shown([p for c in obs for p in _login_requests(c)]),
        ) from None
    initiator.driver.logout(handle)
    _settle(obs)
    _logged_in(obs)


# --------------------------------------------------------------------------- sequencing


def _check_window(conn: ObservedConnection) -> None:
    """Every non-immediate request's CmdSN <= the MaxCmdSN the initiator knew then."""
    maxcmdsn: int | None = None
    last: list[Any] = []
    for e in conn.delivered():
        pdu = e.pdu
        if e.direction == "t->i" and hasattr(pdu, "maxcmdsn") and hasattr(pdu, "expcmdsn"):
            exp, mx = pdu.expcmdsn, pdu.maxcmdsn  # type: ignore[union-attr]
            # RFC 7143 4.2.2.1: ignore both when MaxCmdSN < ExpCmdSN - 1; never shrink
            if not serial.lt(mx, _minus_one(exp)) and (maxcmdsn is None or serial.gt(mx, maxcmdsn)):
                maxcmdsn = mx
            last = [pdu]
        elif e.direction == "i->t" and isinstance(pdu, _REQUESTS) and e.full_feature:
            if pdu.immediate or maxcmdsn is None:
                continue
            require(
                serial.le(pdu.cmdsn, maxcmdsn),
                "R7143-4.2.2.1-3",
                f"non-immediate {type(pdu).__name__} with CmdSN {pdu.cmdsn} beyond MaxCmdSN {maxcmdsn}",
                sent=[pdu],
                received=last,
            )


@spec(
    "Initiator.Sequencing.CmdSNWithinWindow",
    ("RFC 7143", "4.2.2.1", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-4.2.2.1-3"],
)
def test_cmdsn_within_window(initiator: Any, target: Any, observed: Any) -> None:
    """No non-immediate command goes beyond the MaxCmdSN the target announced."""
    obs = _run(initiator, target, observed)
    for conn in _logged_in(obs):
        _check_window(conn)


def _narrow(conn: ObservedConnection, direction: str, pdu: PDU) -> Any:
    """Announce a window of one command: MaxCmdSN = ExpCmdSN on every target PDU."""
    if direction != "t->i" or not hasattr(pdu, "maxcmdsn") or not hasattr(pdu, "expcmdsn"):
        return pdu
    if not serial.ge(pdu.maxcmdsn, pdu.expcmdsn):  # type: ignore[attr-defined]
        return pdu
    return dataclasses.replace(pdu, maxcmdsn=pdu.expcmdsn)  # type: ignore[type-var]


@spec(
    "Initiator.Sequencing.NarrowWindow",
    ("RFC 7143", "4.2.2.1", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-4.2.2.1-3"],
)
def test_narrow_window(initiator: Any, target: Any, observed: Any) -> None:
    """With a command window of one (MaxCmdSN = ExpCmdSN), the initiator keeps within it."""
    obs = _run(initiator, target, observed, tamper=_narrow)
    for conn in _logged_in(obs):
        _check_window(conn)


REOPEN_DELAY = 0.5


def _closed_at_login(conn: ObservedConnection, direction: str, pdu: PDU) -> Any:
    """Close the window in the final Login Response; a NOP-In reopens it later."""
    if (
        direction != "t->i"
        or not isinstance(pdu, LoginResponse)
        or pdu.status != 0
        or not (pdu.transit and pdu.nsg == FULL_FEATURE)
        or conn.session_type != "Normal"
    ):
        return pdu
    reopen = NopIn(
        lun=0,
        itt=NONE_TAG,
        ttt=NONE_TAG,
        statsn=serial.add(pdu.statsn, 1),  # the next StatSN; not advanced (11.19)
        expcmdsn=pdu.expcmdsn,
        maxcmdsn=pdu.maxcmdsn,
    )
    conn.inject(reopen, delay=REOPEN_DELAY, note="window reopened")
    return dataclasses.replace(pdu, maxcmdsn=_minus_one(pdu.expcmdsn))


@spec(
    "Initiator.Sequencing.WindowClosedAtLogin",
    ("RFC 7143", "4.2.2.1", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-4.2.2.1-3"],
)
def test_window_closed_at_login(initiator: Any, target: Any, observed: Any) -> None:
    """A window closed by the final Login Response holds commands back until a NOP-In opens it."""
    ep, obs = observed("default", _closed_at_login)
    handle = None
    try:
        handle = initiator.driver.login(ep, options=_options(target))
        initiator.driver.write(handle, LUN, LBA, _payload(8))
    except ISCSIConformanceError as exc:
        _settle(obs)
        raise violation(
            "R7143-4.2.2.1-3",
            f"the initiator did not resume once a NOP-In opened the window: {exc}",
            sent=_shown([p for c in obs for p in c.pdus("i->t")][-MAX_SHOWN:]),
        ) from None
    finally:
        if handle is not None:
            initiator.driver.logout(handle)
    _settle(obs)
    for conn in _logged_in(obs):
        reopened = [e for e in conn.entries if e.note == "window reopened"]
        opened_at = reopened[0].time if reopened else float("inf")
        early = [
            e.pdu
            for e in _ffp_requests(conn)
            if not e.pdu.immediate and e.time < opened_at  # type: ignore[union-attr]
        ]
        require(
            not early,
            "R7143-4.2.2.1-3",
            "non-immediate command sent while MaxCmdSN = ExpCmdSN - 1 (window closed)",
            sent=_shown(early),
        )
        _check_window(conn)


@spec(
    "Initiator.Sequencing.CmdSNNumbering",
    "RFC 7143 4.2.2.1",
    "RFC 7143 11.12.8",
    pairing="initiator",
    requirements=["R7143-4.2.2.1-5", "R7143-11.12-5"],
)
def test_cmdsn_numbering(initiator: Any, target: Any, observed: Any) -> None:
    """The first command reuses the login's CmdSN; each non-immediate request adds one, immediate ones none."""
    obs = _run(initiator, target, observed)
    for conn in _logged_in(obs):
        expected = _login_requests(conn)[-1].cmdsn
        for e in _ffp_requests(conn):
            pdu = e.pdu
            require(
                pdu.cmdsn == expected,  # type: ignore[union-attr]
                "R7143-4.2.2.1-5",
                f"{type(pdu).__name__} carries CmdSN {pdu.cmdsn}, expected {expected}",  # type: ignore[union-attr]
                sent=[pdu],
            )
            if not pdu.immediate:  # type: ignore[union-attr]
                expected = serial.add(expected, 1)


@spec(
    "Initiator.Sequencing.ExpStatSN",
    ("RFC 7143", "4.2.2.2", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=["R7143-4.2.2.2-1"],
)
def test_expstatsn(initiator: Any, target: Any, observed: Any) -> None:
    """ExpStatSN acknowledges only status received: at most the highest StatSN seen plus one."""
    obs = _run(initiator, target, observed)
    for conn in _logged_in(obs):
        highest: int | None = None
        last: list[Any] = []
        for e in conn.delivered():
            pdu = e.pdu
            if e.direction == "t->i" and pdu is not None:
                advances = type(pdu).__name__ in _STATUS_PDUS or (
                    isinstance(pdu, ScsiDataIn) and pdu.status_present
                )
                if isinstance(pdu, NopIn):
                    advances = pdu.itt != NONE_TAG
                if advances:
                    sn = pdu.statsn  # type: ignore[attr-defined]
                    if highest is None or serial.gt(sn, highest):
                        highest = sn
                    last = [pdu]
            elif e.direction == "i->t" and e.full_feature and hasattr(pdu, "expstatsn"):
                if highest is None:
                    continue
                require(
                    serial.le(pdu.expstatsn, serial.add(highest, 1)),  # type: ignore[union-attr]
                    "R7143-4.2.2.2-1",
                    f"ExpStatSN {pdu.expstatsn} acknowledges status beyond the highest StatSN "  # type: ignore[union-attr]
                    f"received ({highest})",
                    sent=[pdu],
                    received=last,
                    level="INFORMATIONAL",  # the row binds the target; the spec line is informational
                )


@spec(
    "Initiator.Sequencing.TaskTags",
    "RFC 7143 11.2.1.8",
    pairing="initiator",
    requirements=["R7143-11.2.1-4"],
)
def test_task_tags(initiator: Any, target: Any, observed: Any) -> None:
    """Task tags are never 0xffffffff and never shared by two outstanding commands."""
    obs = _run(initiator, target, observed)
    for conn in _logged_in(obs):
        outstanding: dict[int, Any] = {}
        for e in conn.delivered():
            pdu = e.pdu
            if e.direction == "i->t" and isinstance(pdu, ScsiCommand | TaskManagementRequest):
                require(
                    pdu.itt != NONE_TAG,
                    "R7143-11.2.1-4",
                    "a task uses the reserved tag 0xffffffff",
                    sent=[pdu],
                )
                require(
                    pdu.itt not in outstanding,
                    "R7143-11.2.1-4",
                    f"ITT 0x{pdu.itt:08x} reused while its task is outstanding",
                    sent=[outstanding.get(pdu.itt), pdu],
                )
                if isinstance(pdu, ScsiCommand):
                    outstanding[pdu.itt] = pdu
            elif e.direction == "t->i" and (
                isinstance(pdu, ScsiResponse)
                or (isinstance(pdu, ScsiDataIn) and pdu.status_present)
            ):
                outstanding.pop(pdu.itt, None)


# --------------------------------------------------------------------------- commands and data


@spec(
    "Initiator.Data.CommandFlags",
    "RFC 7143 11.3.1",
    pairing="initiator",
    requirements=["R7143-11.3-2"],
)
def test_command_flags(initiator: Any, target: Any, observed: Any) -> None:
    """W/R bits follow the data direction and ExpectedDataTransferLength the CDB's transfer length."""
    obs = _run(initiator, target, observed)
    judged = 0
    for conn in _logged_in(obs):
        for e in conn.sent_by_initiator(ScsiCommand):
            cmd: ScsiCommand = e.pdu  # type: ignore[assignment]
            if not cmd.read and not cmd.write:
                require(
                    cmd.expected_data_transfer_length == 0 and not cmd.data,
                    "R7143-11.3-2",
                    "a command with neither R nor W expects or carries data",
                    sent=[cmd],
                )
            require(
                cmd.write or cmd.final,
                "R7143-11.3-2",
                "F=0 (unsolicited data follows) on a command without W",
                sent=[cmd],
            )
            block = _block_command(cmd.cdb)
            if block is None:
                continue
            judged += 1
            kind, blocks = block
            want = (kind == "read", kind == "write")
            require(
                (cmd.read, cmd.write) == want,
                "R7143-11.3-2",
                f"a {kind.upper()} CDB with R={int(cmd.read)} W={int(cmd.write)}",
                sent=[cmd],
            )
            require(
                cmd.expected_data_transfer_length == blocks * BLOCK,
                "R7143-11.3-2",
                f"{kind.upper()} of {blocks} blocks with ExpectedDataTransferLength "
                f"{cmd.expected_data_transfer_length} (expected {blocks * BLOCK})",
                sent=[cmd],
            )
    require(judged, "harness", "no READ or WRITE command passed the proxy")


def _declared_mrdsl(conn: ObservedConnection) -> int:
    value = conn.declared_by_target("MaxRecvDataSegmentLength")
    return int(value) if value is not None else 8192  # default, RFC 7143 13.12


@pytest.mark.parametrize("profile", ["small-bursts", "r2t-only"])
@spec(
    "Initiator.Data.SegmentWithinMaxRecv",
    "RFC 7143 13.12",
    pairing="initiator",
    requirements=["R7143-13.12-2", "R7143-11.7-4"],
)
def test_segment_within_mrdsl(initiator: Any, target: Any, observed: Any, profile: str) -> None:
    """No PDU from the initiator carries more data than the target's MaxRecvDataSegmentLength (4096)."""
    obs = _run(initiator, target, observed, profile)
    for conn in _require_data_out(obs):
        limit = _declared_mrdsl(conn)
        for e in conn.sent_by_initiator():
            if not e.full_feature:
                continue
            size = len(getattr(e.pdu, "data", b""))
            require(
                size <= limit,
                "R7143-13.12-2",
                f"{e.name} carries {size} bytes; the target declared MaxRecvDataSegmentLength={limit}",
                sent=[e.pdu],
            )


def _unsolicited(conn: ObservedConnection) -> dict[int, tuple[ScsiCommand, int, list[Any]]]:
    """Per write command: (command, unsolicited bytes, the PDUs carrying them)."""
    out: dict[int, tuple[ScsiCommand, int, list[Any]]] = {}
    for e in conn.sent_by_initiator((ScsiCommand, ScsiDataOut)):
        pdu = e.pdu
        if isinstance(pdu, ScsiCommand):
            if pdu.write:
                out[pdu.itt] = (pdu, len(pdu.data), [pdu])
        elif pdu.ttt == NONE_TAG and pdu.itt in out:  # type: ignore[union-attr]
            cmd, n, pdus = out[pdu.itt]  # type: ignore[union-attr]
            out[pdu.itt] = (cmd, n + len(pdu.data), [*pdus, pdu])  # type: ignore[union-attr]
    return out


@spec(
    "Initiator.Data.FirstBurstLength",
    "RFC 7143 13.14",
    pairing="initiator",
    requirements=["R7143-13.14-2"],
)
def test_first_burst_length(initiator: Any, target: Any, observed: Any) -> None:
    """Immediate plus unsolicited data of a write stays within FirstBurstLength (2048 < MRDSL 4096)."""
    obs = _run(initiator, target, observed, "small-bursts", read=False)
    judged = 0
    for conn in _logged_in(obs):
        first_burst = int(conn.negotiated("FirstBurstLength", "65536") or 65536)
        for cmd, n, pdus in _unsolicited(conn).values():
            judged += 1
            require(
                n <= min(first_burst, cmd.expected_data_transfer_length),
                "R7143-13.14-2",
                f"{n} bytes of unsolicited data for a {cmd.expected_data_transfer_length}-byte "
                f"write; FirstBurstLength={first_burst}",
                sent=_shown(pdus),
            )
    require(judged, "harness", "no write command passed the proxy")


@spec(
    "Initiator.Data.NoImmediateData",
    "RFC 7143 13.11",
    pairing="initiator",
    requirements=["R7143-13.11-2"],
)
def test_no_immediate_data(initiator: Any, target: Any, observed: Any) -> None:
    """With ImmediateData=No, no SCSI Command carries data."""
    obs = _run(initiator, target, observed, "r2t-only", read=False)
    for conn in _logged_in(obs):
        require(conn.negotiated("ImmediateData") == "No", "harness", "ImmediateData was not No")
        for e in conn.sent_by_initiator(ScsiCommand):
            require(
                not e.pdu.data,  # type: ignore[union-attr]
                "R7143-13.11-2",
                f"a SCSI Command carries {len(e.pdu.data)} bytes of immediate data with ImmediateData=No",  # type: ignore[union-attr]
                sent=[e.pdu],
            )


@spec(
    "Initiator.Data.InitialR2T",
    "RFC 7143 13.10",
    pairing="initiator",
    requirements=["R7143-13.10-2", "R7143-13.11-2"],
)
def test_initial_r2t(initiator: Any, target: Any, observed: Any) -> None:
    """With InitialR2T=Yes, every Data-Out answers an R2T (no unsolicited Data-Out)."""
    obs = _run(initiator, target, observed, "r2t-only", read=False)
    for conn in _require_data_out(obs):
        require(conn.negotiated("InitialR2T") == "Yes", "harness", "InitialR2T was not Yes")
        for e in conn.sent_by_initiator(ScsiDataOut):
            require(
                e.pdu.ttt != NONE_TAG,  # type: ignore[union-attr]
                "R7143-13.10-2",
                "unsolicited Data-Out (TTT 0xffffffff) with InitialR2T=Yes",
                sent=[e.pdu],
            )


@pytest.mark.parametrize("profile", ["small-bursts", "r2t-only"])
@spec(
    "Initiator.Data.DataSN",
    "RFC 7143 4.2.2.4",
    "RFC 7143 11.7.5",
    pairing="initiator",
    requirements=["R7143-4.2.2.3-3"],
)
def test_data_sn(initiator: Any, target: Any, observed: Any, profile: str) -> None:
    """Data-Out DataSN restarts at 0 for every R2T (and the unsolicited burst) and counts up by one."""
    obs = _run(initiator, target, observed, profile, read=False)
    for conn in _require_data_out(obs):
        for (_itt, _ttt), pdus in _sequences(conn).items():
            sns = [p.datasn for p in pdus]
            require(
                sns == list(range(len(pdus))),
                "R7143-4.2.2.3-3",
                f"DataSN of one Data-Out sequence is {sns}",
                sent=_shown(pdus),
            )


@pytest.mark.parametrize("profile", ["small-bursts", "r2t-only"])
@spec(
    "Initiator.Data.AnswersR2T",
    "RFC 7143 11.7",
    "RFC 7143 11.8",
    "RFC 7143 13.18",
    pairing="initiator",
    requirements=["R7143-11.7-5", "R7143-11.7-4"],
)
def test_answers_r2t(initiator: Any, target: Any, observed: Any, profile: str) -> None:
    """Data-Out for an R2T echo its TTT and LUN and carry exactly its range in order, F=1 on the last."""
    obs = _run(initiator, target, observed, profile, read=False)
    for conn in _require_data_out(obs):
        r2ts = {e.pdu.ttt: e.pdu for e in conn.seen_by_initiator(R2T)}  # type: ignore[union-attr]
        for (itt, ttt), pdus in _sequences(conn).items():
            if ttt == NONE_TAG:
                continue
            r2t = r2ts.get(ttt)
            require(
                r2t is not None and r2t.itt == itt,
                "R7143-11.7-5",
                f"Data-Out with TTT 0x{ttt:08x} answers no R2T of ITT 0x{itt:08x}",
                sent=_shown(pdus),
            )
            assert r2t is not None
            offset = r2t.buffer_offset
            for i, p in enumerate(pdus):
                require(
                    p.buffer_offset == offset and p.lun == r2t.lun,
                    "R7143-11.7-5",
                    f"Data-Out at offset {p.buffer_offset} LUN {p.lun:#x}; expected offset "
                    f"{offset} LUN {r2t.lun:#x} (R2T wanted {r2t.desired_data_transfer_length} "
                    f"bytes from {r2t.buffer_offset})",
                    sent=_shown(pdus),
                    received=[r2t],
                )
                offset += len(p.data)
                require(
                    p.final == (i == len(pdus) - 1),
                    "R7143-11.7-4",
                    f"F={int(p.final)} on Data-Out {i + 1} of {len(pdus)} of an R2T's sequence",
                    sent=_shown(pdus),
                    received=[r2t],
                )
            require(
                offset == r2t.buffer_offset + r2t.desired_data_transfer_length,
                "R7143-11.7-5",
                f"the R2T asked for {r2t.desired_data_transfer_length} bytes, the initiator sent "
                f"{offset - r2t.buffer_offset}",
                sent=_shown(pdus),
                received=[r2t],
            )


@spec(
    "Initiator.Data.UnsolicitedSequence",
    "RFC 7143 11.7",
    pairing="initiator",
    requirements=["R7143-11.7-5", "R7143-11.7-4"],
)
def test_unsolicited_sequence(initiator: Any, target: Any, observed: Any) -> None:
    """Unsolicited Data-Out continue right after the immediate data and end with F=1."""
    obs = _run(initiator, target, observed, "small-bursts", read=False)
    judged = 0
    for conn in _logged_in(obs):
        for cmd, _n, pdus in _unsolicited(conn).values():
            outs = [p for p in pdus if isinstance(p, ScsiDataOut)]
            if not outs:
                require(
                    cmd.final,
                    "R7143-11.7-5",
                    "F=0 on a write command, but no unsolicited Data-Out followed",
                    sent=[cmd],
                )
                continue
            judged += 1
            offset = len(cmd.data)
            for i, p in enumerate(outs):
                require(
                    p.buffer_offset == offset and p.final == (i == len(outs) - 1),
                    "R7143-11.7-5",
                    f"unsolicited Data-Out {i + 1}/{len(outs)}: offset {p.buffer_offset} "
                    f"(expected {offset}), F={int(p.final)}",
                    sent=_shown(pdus),
                )
                offset += len(p.data)
    if not judged:
        pytest.skip(
            f"{initiator.name} sent no unsolicited Data-Out (it may ask for InitialR2T=Yes)"
        )


# --------------------------------------------------------------------------- digests


@pytest.mark.parametrize("which", ["header", "both"])
@spec(
    "Initiator.Digests.Valid",
    "RFC 7143 13.1",
    pairing="initiator",
    requirements=["R7143-13.1-2", "R7143-13.1-3"],
    needs=("initiator:header_digests=CRC32C",),
)
def test_digests_valid(initiator: Any, target: Any, observed: Any, which: str) -> None:
    """With CRC32C agreed, every full-feature PDU from the initiator carries correct digests."""
    if which == "both" and "CRC32C" not in (
        initiator.manifest.capabilities.get("data_digests") or []
    ):
        pytest.skip(f"{initiator.name} does not declare data_digests=CRC32C (manifest)")
    options = _options(
        target, header_digest="CRC32C", data_digest="CRC32C" if which == "both" else "None"
    )
    obs = _run(initiator, target, observed, options=options)
    for conn in _logged_in(obs):
        require(
            conn.header_digest and (conn.data_digest or which == "header"),
            "R7143-13.1-2",
            f"offered CRC32C ({which}) but the login agreed HeaderDigest="
            f"{conn.negotiated('HeaderDigest')} DataDigest={conn.negotiated('DataDigest')}",
            sent=_shown(_login_requests(conn)),
        )
        bad = [(d, exc) for d, exc in conn.errors if d == "i->t"]
        require(
            not bad,
            "R7143-13.1-2",
            f"PDU from the initiator failed its digest check: {bad[0][1] if bad else ''}",
            sent=_shown([e.pdu for e in conn.entries if e.direction == "i->t" and e.pdu is None]),
        )


def _corrupt_first_data_in(conn: ObservedConnection, direction: str, pdu: PDU) -> Any:
    """Flip a data byte of the first Data-In, keeping the digest of the original data."""
    if direction != "t->i" or not isinstance(pdu, ScsiDataIn) or not pdu.data:
        return pdu
    if any(e.note.startswith("forged") for e in conn.entries):
        return pdu
    padded = pdu.data + b"\0" * (-len(pdu.data) % 4)
    bad = bytearray(pdu.data)
    bad[0] ^= 0xFF
    return Forged(
        dataclasses.replace(pdu, data=bytes(bad)), Tamper(data_digest_value=crc32c(padded))
    )


@spec(
    "Initiator.Digests.CorruptDataIn",
    "RFC 7143 7.8",
    "RFC 7143 13.1",
    pairing="initiator",
    requirements=["R7143-7.8-5"],
    needs=("initiator:data_digests=CRC32C",),
)
def test_corrupt_data_in(initiator: Any, target: Any, observed: Any) -> None:
    """A Data-In whose data no longer matches its digest is never returned to the application."""
    ep, obs = observed("default")
    payload = _payload(16)
    options = _options(target, header_digest="CRC32C", data_digest="CRC32C")
    handle = initiator.driver.login(ep, options=options)
    initiator.driver.write(handle, LUN, LBA, payload)
    obs.wait_quiet(0.05, 1.0)
    obs.rewrite = _corrupt_first_data_in
    back: bytes | None = None
    try:
        back = initiator.driver.read(handle, LUN, LBA, 16)
    except ISCSIConformanceError:
        back = None
    finally:
        try:
            initiator.driver.logout(handle)
        except ISCSIConformanceError:
            pass
    _settle(obs)
    forged = [e for c in obs for e in c.entries if e.note.startswith("forged")]
    require(forged, "harness", "no Data-In passed the proxy to corrupt")
    require(
        back is None or back == payload,
        "R7143-7.8-5",
        f"{initiator.name} returned data from a Data-In that failed its data digest",
        received=[forged[0].pdu],
    )


# --------------------------------------------------------------------------- NOP


def _ping_before_status() -> Any:
    """A rewrite hook: a target ping (NOP-In, TTT=PING_TTT, LUN 1) just before the first
    SCSI status; the initiator's answer is kept from the target, which never issued it."""
    pinged: list[NopIn] = []

    def tamper(conn: ObservedConnection, direction: str, pdu: PDU) -> Any:
        if direction == "i->t":
            if isinstance(pdu, NopOut) and pdu.ttt == PING_TTT:
                return None
            return pdu
        if pinged or not (
            isinstance(pdu, ScsiResponse) or (isinstance(pdu, ScsiDataIn) and pdu.status_present)
        ):
            return pdu
        ping = NopIn(
            lun=lun_to_field(1),
            itt=NONE_TAG,
            ttt=PING_TTT,
            statsn=pdu.statsn,  # the next StatSN, which this NOP-In does not advance (11.19)
            expcmdsn=pdu.expcmdsn,
            maxcmdsn=pdu.maxcmdsn,
        )
        pinged.append(ping)
        return [ping, pdu]

    return tamper


def _ping_answers(initiator: Any, target: Any, observed: Any) -> tuple[Any, list[NopOut]]:
    obs = _run(initiator, target, observed, tamper=_ping_before_status())
    obs.wait_for(lambda: any(c.sent_by_initiator(NopOut) for c in obs), 1.0)
    pings = [e for c in obs for e in c.seen_by_initiator(NopIn) if e.pdu.ttt == PING_TTT]  # type: ignore[union-attr]
    require(pings, "harness", "no SCSI status passed the proxy to put a ping before")
    answers = [
        e.pdu
        for c in obs
        for e in c.sent_by_initiator(NopOut)
        if e.pdu.ttt == PING_TTT  # type: ignore[union-attr]
    ]
    return pings[0].pdu, answers  # type: ignore[return-value]


@spec(
    "Initiator.Nop.AnswersPing",
    "RFC 7143 11.19",
    "RFC 7143 11.18",
    pairing="initiator",
    requirements=["R7143-11.19-1"],
)
def test_answers_ping(initiator: Any, target: Any, observed: Any) -> None:
    """A target NOP-In with a Target Transfer Tag is answered by a NOP-Out echoing that tag."""
    ping, answers = _ping_answers(initiator, target, observed)
    require(
        answers,
        "R7143-11.19-1",
        f"no NOP-Out echoed the ping's TTT 0x{PING_TTT:08x}",
        received=[ping],
    )
    require(
        len(answers) == 1,
        "R7143-11.19-1",
        f"{len(answers)} NOP-Outs answered one ping",
        sent=_shown(answers),
        received=[ping],
    )


@spec(
    "Initiator.Nop.PingReplyFields",
    "RFC 7143 11.18",
    pairing="initiator",
    requirements=["R7143-11.18-3"],
)
def test_ping_reply_fields(initiator: Any, target: Any, observed: Any) -> None:
    """The ping's answer has ITT 0xffffffff, I=1, the ping's LUN, and does not advance CmdSN."""
    ping, answers = _ping_answers(initiator, target, observed)
    if not answers:
        pytest.skip("the initiator did not answer the ping (Initiator.Nop.AnswersPing)")
    answer = answers[0]
    require(
        answer.itt == NONE_TAG and answer.immediate and answer.lun == ping.lun,
        "R7143-11.18-3",
        f"ping answer has ITT 0x{answer.itt:08x}, I={int(answer.immediate)}, LUN {answer.lun:#x} "
        f"(expected 0xffffffff, 1, {ping.lun:#x})",
        sent=[answer],
        received=[ping],
    )


# --------------------------------------------------------------------------- logout


@spec(
    "Initiator.Logout.NothingAfterLogout",
    "RFC 7143 11.14",
    pairing="initiator",
    requirements=["R7143-11.14-4"],
)
def test_nothing_after_logout(initiator: Any, target: Any, observed: Any) -> None:
    """After its Logout Request the initiator sends nothing more, and the connection closes."""
    obs = _run(initiator, target, observed, read=False)
    judged = 0
    for conn in _logged_in(obs):
        entries = conn.sent_by_initiator()
        at = next((i for i, e in enumerate(entries) if isinstance(e.pdu, LogoutRequest)), None)
        if at is None:
            continue
        judged += 1
        logout: LogoutRequest = entries[at].pdu  # type: ignore[assignment]
        require(
            logout.reason in (0, 1, 2) and logout.itt != NONE_TAG,
            "R7143-11.14-4",
            f"Logout Request with reason {logout.reason}, ITT 0x{logout.itt:08x}",
            sent=[logout],
        )
        after = [e.pdu for e in entries[at + 1 :]]
        require(
            not after,
            "R7143-11.14-4",
            "the initiator sent more requests after its Logout Request",
            sent=_shown([logout, *after]),
        )
        answered = any(isinstance(p, LogoutResponse) for p in conn.pdus("t->i"))
        if answered:
            require(
                obs.wait_for(lambda c=conn: "i->t" in c.closed, 5.0),  # type: ignore[misc]
                "R7143-11.14-4",
                "the connection stayed open 5 s after the Logout Response",
                sent=[logout],
            )
    require(judged, "R7143-11.14-4", f"{initiator.name} never sent a Logout Request")


# --------------------------------------------------------------------------- async messages

ASYNC_DEADLINE = 2  # Parameter3 of the Async Messages below: the initiator's seconds to act


def _live_session(initiator: Any, target: Any, observed: Any) -> tuple[Any, Observer, Any]:
    """Log in through the proxy and keep the session: (handle, observer, the open
    full-feature connection). An initiator whose driver holds no session between
    operations (libiscsi's runs one program per command) skips: no Async Message can
    reach it outside a command."""
    ep, obs = observed()
    handle = initiator.driver.login(ep, options=_options(target))
    obs.wait_quiet(0.1, 2.0)
    live = [c for c in obs if c.in_full_feature and c.session_type == "Normal" and not c.closed]
    if not live:
        with contextlib.suppress(ISCSIConformanceError):
            initiator.driver.logout(handle)
        pytest.skip(
            f"{initiator.name} keeps no session open after login (its driver logs in per "
            "operation): an Async Message has no session to reach"
        )
    return handle, obs, live[0]


def _tsih(conn: ObservedConnection) -> int:
    answers = [e.pdu for e in conn.seen_by_initiator(LoginResponse) if e.pdu.tsih]  # type: ignore[union-attr]
    if not answers:
        raise violation("harness", "no Login Response with a TSIH passed the proxy")
    return int(answers[-1].tsih)


def _after_async(
    initiator: Any, target: Any, observed: Any, event: int, wanted: tuple[type, ...]
) -> tuple[ObservedConnection, Any, list[Any], float | None]:
    """Have the reference target send Async Message ``event`` (Parameter3 =
    ASYNC_DEADLINE) on a live session and wait for the initiator's answer: (connection,
    the Async Message as delivered, what the initiator sent after it, seconds from the
    message to its first PDU of a ``wanted`` type, or None)."""
    handle, obs, conn = _live_session(initiator, target, observed)
    try:
        target.send_async(_tsih(conn), event, time_to_logout=ASYNC_DEADLINE)

        def answered() -> bool:
            return any(
                isinstance(e.pdu, wanted) and e.time >= sent.time
                for e in conn.sent_by_initiator()
                for sent in conn.seen_by_initiator(AsyncMessage)[:1]
            )

        obs.wait_for(answered, ASYNC_DEADLINE + 2.0)
    finally:
        with contextlib.suppress(ISCSIConformanceError):
            initiator.driver.logout(handle)
        _settle(obs)
    seen = conn.seen_by_initiator(AsyncMessage)
    require(seen, "harness", f"the reference target sent no Async Message (event {event})")
    at = seen[0].time
    after = [e for e in conn.sent_by_initiator() if e.time >= at]
    first = next((e for e in after if isinstance(e.pdu, wanted)), None)
    return conn, seen[0].pdu, [e.pdu for e in after], (first.time - at) if first else None


@spec(
    "Initiator.Async.LogoutRequest",
    "RFC 7143 11.9.1",
    "RFC 7143 11.14.1",
    pairing="initiator",
    requirements=["R7143-11.9-3", "R7143-11.9-5"],
    needs=("target:async_messages",),
)
def test_async_logout_request(initiator: Any, target: Any, observed: Any) -> None:
    """Asked by an Async Message (event 1) to log out within Parameter3 seconds, the
    initiator sends a Logout Request, "close the connection" or "close the session",
    in time, and issues no new command meanwhile (SHOULD NOT)."""
    _conn, msg, after, delay = _after_async(initiator, target, observed, 1, (LogoutRequest,))
    require(
        delay is not None and delay <= ASYNC_DEADLINE,
        "R7143-11.9-3",
        f"{initiator.name} sent no Logout Request within Parameter3 = {ASYNC_DEADLINE} s of "
        "the target's logout request"
        + (f" (it came after {delay:.1f} s)" if delay is not None else ""),
        sent=_shown(after),
        received=[msg],
    )
    logout = next(p for p in after if isinstance(p, LogoutRequest))
    require(
        logout.reason in (0, 1),
        "R7143-11.9-3",
        f"the Logout Request answering event 1 has reason {logout.reason} "
        "(close the session 0 or close the connection 1 expected)",
        sent=[logout],
        received=[msg],
    )
    commands = [p for p in after[: after.index(logout)] if isinstance(p, ScsiCommand)]
    require(
        not commands,
        "R7143-11.9-5",
        f"{initiator.name} issued {len(commands)} new command(s) after the logout request",
        sent=_shown(commands),
        received=[msg],
        level="SHOULD NOT",
    )


@spec(
    "Initiator.Async.Renegotiation",
    "RFC 7143 11.9.1",
    "RFC 7143 11.10",
    pairing="initiator",
    requirements=["R7143-11.9-4"],
    needs=("target:async_messages",),
)
def test_async_renegotiation(initiator: Any, target: Any, observed: Any) -> None:
    """Asked by an Async Message (event 4) to renegotiate, the initiator sends a Text
    Request (it may be empty) on that connection, or a Logout Request, within
    Parameter3 seconds; dropping the connection is neither."""
    conn, msg, after, delay = _after_async(
        initiator, target, observed, 4, (TextRequest, LogoutRequest)
    )
    require(
        delay is not None and delay <= ASYNC_DEADLINE,
        "R7143-11.9-4",
        f"{initiator.name} sent neither a Text Request nor a Logout Request within "
        f"Parameter3 = {ASYNC_DEADLINE} s of the target's renegotiation request"
        + (f" (one came after {delay:.1f} s)" if delay is not None else "")
        + ("; it closed the connection instead" if "i->t" in conn.closed and not after else ""),
        sent=_shown(after),
        received=[msg],
    )


TIME2WAIT = 2  # Parameter2 of the drop below: the seconds the initiator waits to reconnect


@spec(
    "Initiator.Async.ConnectionDrop",
    "RFC 7143 11.9.1",
    pairing="initiator",
    level="INFORMATIONAL",
    requirements=["R7143-11.9-10"],
    needs=("target:async_messages",),
)
def test_async_connection_drop(initiator: Any, target: Any, observed: Any) -> None:
    """After the target announces that it drops the connection (event 2, Time2Wait =
    TIME2WAIT s) and drops it, the initiator does not log in again before Time2Wait
    has passed (reconnecting later, or not at all, both conform)."""
    handle, obs, conn = _live_session(initiator, target, observed)
    try:
        cid = _login_requests(conn)[0].cid
        target.send_async(_tsih(conn), 2, cid=cid, time2wait=TIME2WAIT, time2retain=20)
        obs.wait_for(lambda: len(obs.connections) > 1, TIME2WAIT + 0.5)
    finally:
        with contextlib.suppress(ISCSIConformanceError):
            initiator.driver.logout(handle)
        _settle(obs)
    seen = conn.seen_by_initiator(AsyncMessage)
    require(seen, "harness", "the reference target sent no Async Message (event 2)")
    at = seen[0].time
    logins = [e for c in obs if c is not conn for e in c.sent_by_initiator(LoginRequest)[:1]]
    early = [e for e in logins if e.time - at < TIME2WAIT - 0.2]
    require(
        not early,
        "R7143-11.9-10",
        f"{initiator.name} logged in again {early[0].time - at:.1f} s after the drop "
        f"announced Time2Wait = {TIME2WAIT} s"
        if early
        else "",
        sent=_shown([e.pdu for e in early]),
        received=[seen[0].pdu],
    )


@spec(
    "Initiator.Async.VendorEvent",
    "RFC 7143 11.9.4",
    pairing="initiator",
    level="INFORMATIONAL",
    requirements=["R7143-11.9-9"],
    needs=("target:async_messages",),
)
def test_async_vendor_event(initiator: Any, target: Any, observed: Any) -> None:
    """A vendor-specific event (255) with data the initiator cannot understand leaves
    the session going: the initiator does not close the connection over it (it may
    ignore the data and process the rest of the PDU)."""
    handle, obs, conn = _live_session(initiator, target, observed)
    try:
        data = bytes(2) + b"vendor event nobody knows"
        target.send_async(_tsih(conn), 255, vcode=0x7E, data=data)
        obs.wait_for(lambda: "i->t" in conn.closed, 1.0)
        dropped = "i->t" in conn.closed
        logged_out = any(conn.sent_by_initiator(LogoutRequest))
    finally:
        with contextlib.suppress(ISCSIConformanceError):
            initiator.driver.logout(handle)
        _settle(obs)
    seen = conn.seen_by_initiator(AsyncMessage)
    require(seen, "harness", "the reference target sent no Async Message (event 255)")
    require(
        not dropped or logged_out,
        "R7143-11.9-9",
        f"{initiator.name} closed the connection within 1 s of a vendor-specific Async "
        "Message instead of ignoring what it did not understand",
        received=[seen[0].pdu],
    )


# --------------------------------------------------------------------------- discovery


@spec(
    "Initiator.Discovery.SendTargetsAll",
    "RFC 7143 13.3",
    "RFC 7143 C",
    "RFC 7143 11.10",
    pairing="initiator",
    requirements=["R7143-13.3-5"],
    needs=("initiator:send_targets",),
)
def test_send_targets_all(initiator: Any, target: Any, observed: Any) -> None:
    """Discovery asks SendTargets=All in a final Text Request with a real ITT and TTT 0xffffffff.

    The single-PDU, single-key request is a MUST (RFC 7143 C), and so is an ITT other than
    0xffffffff (RFC 7143 11.2.1.8); the F bit and TTT clauses have no keyword and are
    checked as informational (R7143-13.3-5)."""
    ep, obs = observed()
    found = initiator.driver.discover(ep.host, ep.port)
    _settle(obs)
    conns = _logged_in(obs, "Discovery")
    for conn in conns:
        texts = [e.pdu for e in conn.sent_by_initiator(TextRequest)]
        require(texts, "R7143-13.3-5", "a discovery session without a Text Request")
        first: TextRequest = texts[0]  # type: ignore[assignment]
        pairs = parse_pairs(first.data) if first.data and not first.cont else []
        require(
            ("SendTargets", "All") in pairs and not first.cont,
            "R7143-13.3-5",
            f"SendTargets request: pairs {pairs}, C={int(first.cont)}: not a single Text "
            "Request PDU carrying SendTargets=All (RFC 7143 C)",
            sent=[first],
        )
        require(
            first.itt != NONE_TAG,
            "R7143-13.3-5",
            "SendTargets request with the reserved ITT 0xffffffff (RFC 7143 11.2.1.8)",
            sent=[first],
        )
        require(
            first.final and first.ttt == NONE_TAG,
            "R7143-13.3-5",
            f"SendTargets request: F={int(first.final)}, TTT 0x{first.ttt:08x} "
            "(F=1 and TTT 0xffffffff expected)",
            sent=[first],
            level="INFORMATIONAL",
        )
    require(
        any(name == target.endpoint().iqn for name, _ in found),
        "harness",
        f"{initiator.name} did not report the target it discovered: {found}",
    )


@spec(
    "Initiator.Discovery.NoScsi",
    "RFC 7143 4.3",
    level="INFORMATIONAL",
    pairing="initiator",
    requirements=["R7143-4.3-1"],
    needs=("initiator:send_targets",),
)
def test_discovery_no_scsi(initiator: Any, target: Any, observed: Any) -> None:
    """A Discovery session carries no SCSI commands, task management or data."""
    ep, obs = observed()
    initiator.driver.discover(ep.host, ep.port)
    _settle(obs)
    for conn in _logged_in(obs, "Discovery"):
        bad = [
            e.pdu for e in conn.sent_by_initiator((ScsiCommand, TaskManagementRequest, ScsiDataOut))
        ]
        require(
            not bad,
            "R7143-4.3-1",
            f"{type(bad[0]).__name__ if bad else ''} sent in a Discovery session",
            sent=_shown(bad),
        )
