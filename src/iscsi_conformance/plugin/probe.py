"""Building blocks of conformance tests: a login driven PDU by PDU.

Theory of operation: a conformance test must be able to do the wrong thing on
purpose (repeat a key, skip a stage, send T and C together) and see exactly what the
target answers. ``LoginProbe`` drives a login over a raw connection one Login
Request at a time, keeps every request and response (they become the failure
message and the report's evidence), parses the answered keys, and offers the
common paths (``security_none``, ``chap``, ``operational``, ``to_full_feature``) so
that each test only spells out the step it is about.

Outcomes a test asserts on:

- ``LoginStep.response``: the Login Response (``None`` when the target closed the
  connection or said nothing before the timeout: both count as refusal evidence);
- ``LoginStep.keys``: the keys the target answered, as a dict (last value wins, and
  ``repeated`` lists keys it sent twice);
- ``LoginStep.status``: class<<8|detail, ``None`` without a response.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.chap import ChapAlgorithm, chap_response
from iscsi_conformance.core.text import format_binary, format_pairs, parse_binary, parse_pairs

SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3
DEFAULT_TIMEOUT = 5.0

Pairs = Sequence[tuple[str, str]]


def random_isid() -> int:
    """A random-type ISID (T=10b, RFC 7143 11.12.5)."""
    raw = int.from_bytes(os.urandom(6), "big")
    return (raw & ~(0b11 << 46)) | (0b10 << 46)


@dataclasses.dataclass
class LoginStep:
    request: Any
    response: Any | None
    closed: bool = False

    @property
    def status(self) -> int | None:
        r = self.response
        return None if r is None else (r.status_class << 8) | r.status_detail

    @property
    def succeeded(self) -> bool:
        return self.response is not None and self.response.status_class == 0

    @property
    def keys(self) -> dict[str, str]:
        if self.response is None or not self.response.data:
            return {}
        try:
            return dict(parse_pairs(self.response.data))
        except Exception:
            return {}

    @property
    def pairs(self) -> list[tuple[str, str]]:
        if self.response is None or not self.response.data:
            return []
        return list(parse_pairs(self.response.data))

    @property
    def repeated(self) -> list[str]:
        names = [k for k, _ in self.pairs]
        return sorted({k for k in names if names.count(k) > 1})

    @property
    def refused(self) -> bool:
        """The target refused: an error status, or it closed / went silent."""
        return self.response is None or self.response.status_class != 0


class LoginProbe:
    """One connection's login, step by step (see module docstring)."""

    def __init__(
        self,
        raw: Any,
        *,
        initiator_name: str,
        target_name: str | None,
        session_type: str = "Normal",
        isid: int | None = None,
        tsih: int = 0,
        cid: int = 0,
        cmdsn: int = 1,
        itt: int = 0x1000,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.raw = raw
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.session_type = session_type
        self.isid = random_isid() if isid is None else isid
        self.tsih = tsih
        self.cid = cid
        self.cmdsn = cmdsn
        self.itt = itt
        self.expstatsn = 0
        self.timeout = timeout
        self.steps: list[LoginStep] = []
        self.first = True
        self.negotiated: dict[str, str] = {}

    # ------------------------------------------------------------------ evidence

    @property
    def sent(self) -> list[Any]:
        return [s.request for s in self.steps]

    @property
    def received(self) -> list[Any]:
        return [s.response for s in self.steps if s.response is not None]

    # ------------------------------------------------------------------ primitives

    def leading_keys(self) -> list[tuple[str, str]]:
        keys = [("InitiatorName", self.initiator_name), ("SessionType", self.session_type)]
        if self.target_name is not None and self.session_type == "Normal":
            keys.insert(1, ("TargetName", self.target_name))
        return keys

    def build(
        self,
        pairs: Pairs = (),
        *,
        csg: int,
        nsg: int,
        transit: bool,
        cont: bool = False,
        with_leading: bool | None = None,
        version_max: int = 0,
        version_min: int = 0,
        data: bytes | None = None,
        **fields: Any,
    ) -> Any:
        """The next Login Request (not sent). ``data`` overrides the text segment."""
        if with_leading is None:
            with_leading = self.first
        body = list(pairs)
        if with_leading:
            present = {k for k, _ in body}
            body = [kv for kv in self.leading_keys() if kv[0] not in present] + body
        segment = data if data is not None else format_pairs(body, strict=False) if body else b""
        kw: dict[str, Any] = dict(
            transit=transit,
            cont=cont,
            csg=csg,
            nsg=nsg if transit else 0,
            version_max=version_max,
            version_min=version_min,
            isid=self.isid,
            tsih=self.tsih,
            itt=self.itt,
            cid=self.cid,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            data=segment,
        )
        kw.update(fields)
        return P.LoginRequest(**kw)

    async def send(self, request: Any, *, strict: bool = False) -> LoginStep:
        """Send one Login Request (encoded non-strictly: it may be illegal on purpose)."""
        await self.raw.send(P.encode(request, strict=strict) if not strict else request)
        self.first = False
        response = await self.raw.recv(timeout=self.timeout)
        closed = response is None
        if response is not None and not isinstance(response, P.LoginResponse):
            # anything but a Login Response during login is itself evidence; keep it
            step = LoginStep(request, response, closed=False)
            self.steps.append(step)
            return step
        if response is not None:
            self.expstatsn = (response.statsn + 1) & 0xFFFFFFFF
            if response.tsih:
                self.tsih = response.tsih
            if response.status_class == 0:
                for k, v in parse_pairs(response.data) if response.data else []:
                    self.negotiated[k] = v
        step = LoginStep(request, response, closed=closed)
        self.steps.append(step)
        return step

    async def step(self, pairs: Pairs = (), **kw: Any) -> LoginStep:
        return await self.send(self.build(pairs, **kw))

    # ------------------------------------------------------------------ common paths

    async def security_none(self, *, nsg: int = OPERATIONAL, extra: Pairs = ()) -> LoginStep:
        """Security stage with AuthMethod=None, transiting to ``nsg``."""
        return await self.step(
            [("AuthMethod", "None"), *extra], csg=SECURITY, nsg=nsg, transit=True
        )

    async def chap(
        self,
        user: str,
        secret: str,
        *,
        algorithms: Iterable[int] = (5,),
        mutual: tuple[str, str] | None = None,
        encoding: str = "hex",
        challenge: bytes | None = None,
        nsg: int = OPERATIONAL,
    ) -> LoginStep:
        """A whole CHAP exchange (RFC 7143 12.1.3); returns the final step.

        ``mutual`` is (target user, target secret): the target must prove it too, and
        its CHAP_R is verified here (a wrong one raises AssertionError with the PDUs).
        """
        s1 = await self.step([("AuthMethod", "CHAP")], csg=SECURITY, nsg=nsg, transit=False)
        if s1.refused or s1.keys.get("AuthMethod") != "CHAP":
            return s1
        algs = ",".join(str(a) for a in algorithms)
        s2 = await self.step([("CHAP_A", algs)], csg=SECURITY, nsg=nsg, transit=False)
        if s2.refused:
            return s2
        k = s2.keys
        try:
            alg = ChapAlgorithm(int(k["CHAP_A"]))
            ident = int(k["CHAP_I"], 0)
            target_challenge = parse_binary(k["CHAP_C"])
        except (KeyError, ValueError):
            return s2
        response = chap_response(alg, ident, secret.encode(), target_challenge)
        pairs = [("CHAP_N", user), ("CHAP_R", format_binary(response, encoding))]
        my_ident = 0
        my_challenge = b""
        if mutual is not None:
            my_ident = 0x42
            my_challenge = challenge if challenge is not None else os.urandom(alg.digest_size)
            pairs += [("CHAP_I", str(my_ident)), ("CHAP_C", format_binary(my_challenge, encoding))]
        s3 = await self.step(pairs, csg=SECURITY, nsg=nsg, transit=True)
        self.chap_algorithm = alg
        self.target_challenge = target_challenge
        if mutual is not None and s3.succeeded:
            t_user, t_secret = mutual
            got = s3.keys.get("CHAP_R")
            expected = chap_response(alg, my_ident, t_secret.encode(), my_challenge)
            if got is None or parse_binary(got) != expected or s3.keys.get("CHAP_N") != t_user:
                raise AssertionError(
                    "R7143-12.1.3-9: the target's mutual CHAP answer (CHAP_N/CHAP_R) does not prove "
                    f"the configured target secret; CHAP_N={s3.keys.get('CHAP_N')!r}"
                )
        return s3

    async def operational(
        self, keys: Mapping[str, str] | Pairs = (), *, transit: bool = True, nsg: int = FULL_FEATURE
    ) -> LoginStep:
        """Operational stage: offer ``keys``; keep answering until the target transits."""
        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        step = await self.step(pairs, csg=OPERATIONAL, nsg=nsg, transit=transit)
        # A target may need another round (it offers keys of its own or has not set T).
        rounds = 0
        while transit and step.succeeded and not step.response.transit and rounds < 4:
            rounds += 1
            step = await self.step([], csg=OPERATIONAL, nsg=nsg, transit=True)
        return step

    async def to_full_feature(
        self,
        keys: Mapping[str, str] | Pairs = (),
        *,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        algorithms: Iterable[int] = (5, 6, 7, 8),
    ) -> LoginStep:
        """The whole login: security (None or CHAP), then operational with ``keys``."""
        if chap is None:
            s = await self.security_none()
        else:
            s = await self.chap(chap[0], chap[1], algorithms=algorithms, mutual=mutual)
        if s.refused:
            return s
        if s.response.transit and s.response.nsg == FULL_FEATURE:
            return s
        return await self.operational(keys)

    @property
    def in_full_feature(self) -> bool:
        last = self.steps[-1].response if self.steps else None
        return bool(
            last is not None
            and last.status_class == 0
            and last.transit
            and last.nsg == FULL_FEATURE
        )


def text_of(pairs: Pairs) -> bytes:
    return format_pairs(list(pairs), strict=False)


__all__ = [
    "FULL_FEATURE",
    "OPERATIONAL",
    "SECURITY",
    "LoginProbe",
    "LoginStep",
    "random_isid",
    "text_of",
]
