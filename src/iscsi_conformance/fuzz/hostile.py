"""Fuzzing initiators: a hostile target in front of the reference target.

Theory of operation: ``HostileProxy`` listens on loopback; each connection an
initiator opens is paired with a fresh connection to an upstream reference target
(``InProcessSubject``), and what the target sends is decoded PDU by PDU and, now and
then, damaged before it goes on: a field of any PDU drawn over its whole range (Data-In
offsets, DataSN and residuals, R2T offsets and lengths, StatSN, NOP-In tags, Reject
reasons, Async events...), the keys of a Login or Text Response replaced by hostile
ones (SendTargets answers with ``../`` and control characters in names, over-long
strings, IPv6 oddities in TargetAddress, CHAP challenges of odd sizes, limits of 0 or
2**32), a PDU dropped or sent twice, or its bytes tampered (lengths, padding, digests),
or a PDU of the target's own put before it (an Async Message, a Reject, a NOP-In
asking for an answer, a burst of R2Ts beyond the one asked: ``inject``).
Which PDUs are damaged, and how, is a pure function of ``(seed, case)``: a damaged
connection draws one to three positions over its whole exchange (half the time among
its first ``DAMAGED_PREFIX`` PDUs, else exponentially spread with a scale drawn
log-uniform up to ``POSITION_SCALE`` PDUs), so that damage can land at any point of a
session, not only its start. Every damage done is recorded as a :class:`Mutation`
(connection, PDU position, what was done with the concrete values, its family): a case
is replayed by applying the same mutations again, and shrunk by ddmin over them.
Each damage has a family (``FAMILIES``: login keys, CHAP challenges, SendTargets
answers, Data-In, R2T, NOP-In, Async, Reject...), counted per campaign
(``CampaignReport.families``), so that a campaign shows which it reached.

What the initiator sends goes upstream unchanged, and is checked on the way
(``_SentChecker``): every PDU an initiator sends, whatever it was answered, must
decode, be an initiator opcode, and keep its reserved fields zero (RFC 7143 11.2.1.1;
row R7143-11-1).

A case runs one client of ``fuzz.hostile_clients`` against the proxy: the reference
initiator in this process, libiscsi's tools or ``iscsi-test-cu`` as processes, or
open-iscsi's ``iscsiadm`` and kernel initiator in the micro-VM. Each client's oracles
are its own (see that module); the proxy adds the sent-PDU checks above.

Distinct failures (kind + place) keep their first case. After the campaign, in the
time left, each is replayed from its recorded mutations, shrunk by ddmin over them
(``campaign.ddmin``), and saved (``save_reproducer``) as a reproducer of the
target-side format (``fuzz.repro``) with ``role = "initiator"``, the client, the
mutations and a pcapng of the shrunk replay's connections; ``fuzz replay FILE``
dispatches to :func:`replay_finding`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.layout import check_reserved
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.fuzz.campaign import CampaignReport, Failure, ddmin, quiet_on_interrupt
from iscsi_conformance.fuzz.capture import ConnRecord, MultiTape
from iscsi_conformance.fuzz.hostile_clients import IQN, make_client

__all__ = [
    "FAMILIES",
    "HOSTILE_VALUES",
    "HostileProxy",
    "Mutation",
    "family_table",
    "initiator_campaign",
    "replay_finding",
    "save_reproducer",
    "summary",
]

_EDGES = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
# Values a hostile target puts in its keys (RFC 7143 6.1, 13; the CVE-2026-44943 class
# of names that walk out of a directory in a SendTargets answer).
HOSTILE_VALUES = (
    "../../../../etc/passwd",
    "iqn.2024-01.x:../../../tmp/evil",
    "iqn.2024-01.x:\x01\x1b[2J\x7f",
    "a" * 300,
    "b" * 9000,
    "",
    "[::ffff:127.0.0.1%eth0]:3260,1",
    "[fe80::1%25lo]:99999,1",
    "[::1:3260,1",
    "127.0.0.1:-1,65536",
    "127.0.0.1:3260,notanumber",
    "0",
    "4294967296",
    "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
    "0x",
    "0x1",
    "0b" + "A" * 3,
    "CRC32C,None,Bogus",
    "Reject",
    "NotUnderstood",
    "Irrelevant",
)
_TEXT_KEYS = (
    "TargetName",
    "TargetAddress",
    "TargetAlias",
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxConnections",
    "ErrorRecoveryLevel",
    "TargetPortalGroupTag",
    "X-com.example.odd",
)
ACTIONS = ("drop", "twice", "tamper", "keys", "field", "inject")
#: half the damaged positions are drawn among the first PDUs of a connection (a
#: discovery's login, text and logout answers; a session's login, INQUIRY, READ
#: CAPACITY, WRITE and READ answers), the other half over the whole exchange
DAMAGED_PREFIX = 12
#: the largest scale (in PDUs) of the exponential spread of the other half
POSITION_SCALE = 512
#: the families of damage (issue 14): what the damaged or injected PDU is
FAMILIES = (
    "login",  # a Login Response's keys or fields
    "chap",  # a Login Response carrying a CHAP challenge (CHAP_A, CHAP_I, CHAP_C)
    "sendtargets",  # a Text Response answering SendTargets (names, addresses)
    "text",  # another Text Response
    "data-in",  # offsets, DataSN, residuals, status
    "r2t",  # offsets, lengths, R2TSN, too many
    "nop-in",
    "async",
    "reject",
    "scsi-response",
    "other",
)
#: the families the issue names; a campaign test checks that each is reached
ISSUE_FAMILIES = ("login", "chap", "sendtargets", "data-in", "r2t", "nop-in", "async", "reject")
_FAMILY_OF = {
    P.ScsiDataIn: "data-in",
    P.R2T: "r2t",
    P.NopIn: "nop-in",
    P.AsyncMessage: "async",
    P.Reject: "reject",
    P.ScsiResponse: "scsi-response",
}
#: the fields of a Data-In and an R2T the issue names, preferred when one is damaged
_PREFERRED = {
    P.ScsiDataIn: ("buffer_offset", "datasn", "residual_count"),
    P.R2T: ("buffer_offset", "desired_data_transfer_length", "r2tsn"),
}
_INJECTED: dict[str, type[P.PDU]] = {
    "async": P.AsyncMessage,
    "reject": P.Reject,
    "nop-in": P.NopIn,
    "r2t": P.R2T,
}
_CHAP_CHALLENGES = (
    ("CHAP_A", ("5", "7", "5,6,7,8", "999", "", "5" * 300)),
    ("CHAP_I", ("0", "255", "256", "-1", "x", "9" * 40)),
    ("CHAP_C", ("0x", "0xab", "0x" + "ab" * 16, "0x" + "ab" * 1024, "0xZZ", "0b" + "QUJD" * 8)),
)


def _family(pdu: P.PDU, action: str, data: bytes = b"") -> str:
    """The family of a damage to ``pdu`` (``data``: the new keys of a keys action)."""
    if isinstance(pdu, P.LoginResponse):
        return "chap" if b"CHAP_" in pdu.data or b"CHAP_" in data else "login"
    if isinstance(pdu, P.TextResponse):
        return "sendtargets" if b"TargetName=" in pdu.data or b"Target" in data else "text"
    return _FAMILY_OF.get(type(pdu), "other")


#: a case records at most this many bytes of its connections (for its pcapng)
RECORD_LIMIT = 4 << 20


@dataclasses.dataclass
class Mutation:
    """One damage done by the proxy: to the ``index``-th PDU (from 0) the target sent on
    the case's ``conn``-th connection (from 1). ``arg``: the Tamper fields (tamper),
    the new data segment in hex (keys), ``[field, value]`` with bytes in hex (field)."""

    conn: int
    index: int
    action: str
    arg: Any = None
    family: str = ""  # FAMILIES (older reproducers have none)

    def literal(self) -> list[Any]:
        out = [self.conn, self.index, self.action, self.arg]
        return [*out, self.family] if self.family else out

    @classmethod
    def from_literal(cls, value: Any) -> Mutation:
        """Raises ValueError for anything but ``[conn, index, action, arg(, family)]``."""
        if (
            not isinstance(value, list | tuple)
            or len(value) not in (4, 5)
            or value[2] not in ACTIONS
        ):
            raise ValueError(f"not a mutation: {value!r}")
        family = str(value[4]) if len(value) == 5 else ""
        return cls(int(value[0]), int(value[1]), str(value[2]), value[3], family)

    def describe(self) -> str:
        where = f"connection {self.conn} PDU {self.index}"
        if self.family:
            where += f" ({self.family})"
        if self.action == "inject":
            family, fields = self.arg
            return f"{where}: a {family} PDU put before it: {fields}"
        if self.action == "drop":
            return f"{where}: dropped"
        if self.action == "twice":
            return f"{where}: sent twice"
        if self.action == "tamper":
            return f"{where}: encoded with {self.arg}"
        if self.action == "keys":
            text = bytes.fromhex(self.arg).decode("utf-8", "backslashreplace")
            return f"{where}: keys {text[:160]!r}"
        name, value = self.arg
        shown = f"0x{value:x}" if isinstance(value, int) and not isinstance(value, bool) else value
        return f"{where}: {name} = {shown}"

    def apply(self, pdu: P.PDU) -> tuple[list[P.PDU], P.Tamper | None]:
        """The PDUs sent in place of ``pdu`` and the tamper of their encoding."""
        if self.action == "drop":
            return [], None
        if self.action == "twice":
            return [pdu, pdu], None
        if self.action == "tamper":
            arg = dict(self.arg)
            patch = {int(k): int(v) for k, v in arg.pop("bhs_patch", {}).items()}
            return [pdu], P.Tamper(bhs_patch=patch, **arg)
        if self.action == "keys":
            if isinstance(pdu, P.LoginResponse | P.TextResponse):
                return [dataclasses.replace(pdu, data=bytes.fromhex(self.arg))], None
            return [pdu], None
        if self.action == "inject":
            return self._inject(pdu), None
        name, value = self.arg
        if name not in {f.name for f in dataclasses.fields(pdu)}:  # type: ignore[arg-type]
            return [pdu], None
        if isinstance(value, str):
            value = bytes.fromhex(value)
        try:
            return [dataclasses.replace(pdu, **{name: value})], None  # type: ignore[type-var]
        except (TypeError, ValueError):
            return [pdu], None

    def _inject(self, pdu: P.PDU) -> list[P.PDU]:
        """The PDUs sent for an ``inject``: a PDU of the target's own before ``pdu``
        (its numbers taken from ``pdu``), or R2Ts beyond the one asked after it."""
        family, fields = self.arg
        cls = _INJECTED.get(family)
        if cls is None:
            return [pdu]
        fields = dict(fields)
        count = int(fields.pop("count", 1))
        data = bytes.fromhex(fields.pop("data", ""))
        numbers = {k: getattr(pdu, k) for k in ("statsn", "expcmdsn", "maxcmdsn")
                   if hasattr(pdu, k)}  # fmt: skip
        if family == "r2t":  # too many R2Ts: the real one, then more for its task
            if not isinstance(pdu, P.R2T):
                return [pdu]
            extra = [
                dataclasses.replace(pdu, r2tsn=(pdu.r2tsn + i) & 0xFFFFFFFF, **fields)
                for i in range(1, count + 1)
            ]
            return [pdu, *extra]
        try:
            made = cls(**numbers, **fields, data=data)  # type: ignore[call-arg]
        except (TypeError, ValueError):
            return [pdu]
        return [made, pdu]


class _Mutator:
    """Draws the damage of one connection from its own ``random.Random``, or applies a
    recorded ``plan`` (replay)."""

    def __init__(
        self,
        rng: random.Random,
        rate: float,
        conn: int,
        plan: dict[tuple[int, int], Mutation] | None = None,
    ) -> None:
        self.rng = rng
        self.conn = conn
        self.plan = plan
        # ``rate`` of the connections get one to three PDUs damaged, anywhere in their
        # exchange (module doc): the states after them stay reachable.
        self.targets: set[int] = set()
        if rng.random() < rate:
            scale = 2 ** rng.uniform(1, math.log2(POSITION_SCALE))
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:
                    self.targets.add(rng.randrange(DAMAGED_PREFIX))
                else:
                    self.targets.add(int(rng.expovariate(1 / scale)))
        self.n = 0

    def _int(self, top: int) -> int:
        if self.rng.random() < 0.5:
            return min(self.rng.choice(_EDGES), top)
        return self.rng.randrange(top + 1)

    def _text(self, data: bytes, *, send_targets: bool) -> bytes:
        rng = self.rng
        try:
            pairs = list(T.parse_pairs(data))
        except ProtocolError:
            pairs = []
        for _ in range(rng.randrange(1, 4)):
            key = rng.choice(_TEXT_KEYS)
            if send_targets and rng.random() < 0.6:  # a SendTargets answer's own keys
                key = rng.choice(("TargetName", "TargetAddress"))
            kv = (key, rng.choice(HOSTILE_VALUES))
            if pairs and rng.random() < 0.5:
                pairs[rng.randrange(len(pairs))] = kv
            else:
                pairs.insert(rng.randrange(len(pairs) + 1), kv)
        raw = T.format_pairs(pairs, strict=False)
        if rng.random() < 0.2:
            raw = raw.rstrip(b"\0") + rng.choice((b"", b"=", b"\xff\xfe", b"noequals"))
        return raw

    def _challenge(self, data: bytes) -> bytes:
        """A Login Response's keys with a CHAP challenge of odd values in them."""
        rng = self.rng
        try:
            pairs = [kv for kv in T.parse_pairs(data) if not kv[0].startswith("CHAP_")]
        except ProtocolError:
            pairs = []
        pairs = [kv for kv in pairs if kv[0] != "AuthMethod"] + [("AuthMethod", "CHAP")]
        pairs += [(key, rng.choice(values)) for key, values in _CHAP_CHALLENGES]
        return T.format_pairs(pairs, strict=False)

    def _injected(self, pdu: P.PDU) -> tuple[str, dict[str, Any]]:
        """What an ``inject`` puts in: a family and its drawn fields (module doc)."""
        rng = self.rng
        if isinstance(pdu, P.R2T) and rng.random() < 0.5:
            fields: dict[str, Any] = {"count": rng.choice((1, 2, 15, 255))}
            if rng.random() < 0.5:
                fields["buffer_offset"] = self._int(0xFFFFFFFF)
            if rng.random() < 0.5:
                fields["desired_data_transfer_length"] = self._int(0xFFFFFFFF)
            return "r2t", fields
        family = rng.choice(("async", "reject", "nop-in"))
        if family == "async":
            sense = bytes([0x70, 0, 6, 0, 0, 0, 0, 10]) + bytes(10)
            return family, {
                "async_event": rng.choice((0, 1, 2, 3, 4, 5, 248, 255)),
                "async_vcode": rng.randrange(256),
                "parameter1": self._int(0xFFFF),
                "parameter2": self._int(0xFFFF),
                "parameter3": self._int(0xFFFF),
                "data": rng.choice(
                    (b"", len(sense).to_bytes(2, "big") + sense, b"\xff\xff", rng.randbytes(64))
                ).hex(),
            }
        if family == "reject":
            return family, {
                "reason": rng.choice((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 13, 255)),
                "datasn_r2tsn": self._int(0xFFFFFFFF),
                "data": rng.choice((bytes(48), rng.randbytes(48), b"", rng.randbytes(7))).hex(),
            }
        return family, {
            "itt": 0xFFFFFFFF if rng.random() < 0.7 else self._int(0xFFFFFFFF),
            "ttt": self._int(0xFFFFFFFE),
            "data": rng.randbytes(rng.choice((0, 8, 64, 9000))).hex(),
        }

    def _draw(self, pdu: P.PDU, index: int) -> Mutation | None:
        rng = self.rng
        r = rng.random()
        m = (self.conn, index)
        family = _family(pdu, "")
        if r < 0.06:
            return Mutation(*m, "drop", family=family)
        if r < 0.11:
            return Mutation(*m, "twice", family=family)
        if r < 0.19:
            kind = rng.randrange(4)
            if kind == 0:
                arg: Any = {"data_segment_length": self._int(0xFFFFFF)}
            elif kind == 1:
                arg = {"bhs_patch": {rng.randrange(48): rng.randrange(256)}}
            elif kind == 2:
                arg = {"total_ahs_length": self._int(0xFF)}
            else:
                arg = {"opcode": rng.randrange(64)}
            return Mutation(*m, "tamper", arg, family=family)
        if r < 0.34 and not isinstance(pdu, P.LoginResponse):  # not before a login ends
            what, made = self._injected(pdu)
            return Mutation(*m, "inject", [what, made], family=what)
        if isinstance(pdu, P.LoginResponse | P.TextResponse) and rng.random() < 0.7:
            if isinstance(pdu, P.LoginResponse) and rng.random() < 0.3:
                data = self._challenge(pdu.data)
            else:
                data = self._text(pdu.data, send_targets=isinstance(pdu, P.TextResponse))
            return Mutation(*m, "keys", data.hex(), family=_family(pdu, "keys", data))
        lay = type(pdu).layout
        fields = list(lay.value_fields) if lay is not None else []
        if not fields:
            return None
        f = rng.choice(fields)
        preferred = _PREFERRED.get(type(pdu))
        if preferred and rng.random() < 0.6:
            f = next((x for x in fields if x.name == rng.choice(preferred)), f)
        value: Any
        if f.is_flag:
            value = not getattr(pdu, f.name)
        elif f.is_bytes:
            value = rng.randbytes(f.size).hex()
        else:
            value = self._int(f.max_value)
        return Mutation(*m, "field", [f.name, value], family=family)

    def damage(self, pdu: P.PDU) -> tuple[list[P.PDU], P.Tamper | None, Mutation | None]:
        """The PDUs to send in place of ``pdu`` (none, one, two), an optional tamper,
        and the mutation done (None when ``pdu`` goes on as it is)."""
        index = self.n
        self.n += 1
        if self.plan is not None:
            m = self.plan.get((self.conn, index))
        elif index in self.targets:
            m = self._draw(pdu, index)
        else:
            m = None
        if m is None:
            return [pdu], None, None
        sends, tamper = m.apply(pdu)
        if tamper is None and sends == [pdu]:
            return sends, None, None  # nothing changed (a field this PDU does not have)
        return sends, tamper, m


_BHS = 48
_COMBOS = ((False, False), (True, False), (False, True), (True, True))


class _SentChecker:
    """What an initiator sends on one connection, checked PDU by PDU (module doc).
    ``digests`` follows the login the upstream target completed; a PDU that decodes
    with another digest setting is accepted too (the initiator may have believed a
    damaged answer)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.digests = (False, False)
        self.stopped = False

    def feed(self, data: bytes) -> list[tuple[str, str, str]]:
        if self.stopped:
            return []
        self.buf += data
        out: list[tuple[str, str, str]] = []
        while len(self.buf) >= _BHS:
            result: Any = None
            for hd, dd in (self.digests, *(c for c in _COMBOS if c != self.digests)):
                try:
                    result = P.decode(self.buf, header_digest=hd, data_digest=dd)
                except (ProtocolError, ValueError):
                    continue
                break
            if result is None:
                self.stopped = True
                head = bytes(self.buf[:_BHS]).hex()
                out.append(("sent", "an undecodable PDU", f"BHS {head}"))
                break
            if isinstance(result, P.NeedMore):
                break
            pdu, used = result
            header = bytes(self.buf[:_BHS])
            del self.buf[:used]
            name = type(pdu).__name__
            if not type(pdu).is_request:
                out.append(("sent", f"a target opcode ({name})", repr(pdu)[:300]))
                continue
            for v in check_reserved(header):
                out.append(("sent", f"{name} with {v.field} not as required", str(v)))
        if len(self.buf) > (1 << 25):  # not PDUs any more: stop buffering
            self.stopped = True
        return out


_Conn = ConnRecord


class HostileProxy:
    """See the module doc. ``case`` and ``seed`` choose the damage of new connections;
    ``plan`` (replay) applies recorded mutations instead."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        seed: int,
        rate: float = 0.5,
        host: str = "127.0.0.1",
        plan: Sequence[Mutation] | None = None,
    ) -> None:
        self.upstream = upstream
        self.seed = seed
        self.rate = rate
        self.case = 0
        self._conn = 0
        self.host = host
        self.port = 0
        self.damaged = 0
        self.families: dict[str, int] = {}
        self.plan = {(m.conn, m.index): m for m in plan} if plan is not None else None
        self.applied: list[Mutation] = []
        self.sent_damaged: list[bytes] = []
        self.breaches: list[tuple[str, str, str]] = []
        self.conns: list[_Conn] = []
        self._recorded = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def new_case(self, case: int, plan: Sequence[Mutation] | None = None) -> None:
        self.case, self._conn = case, 0
        if plan is not None:
            self.plan = {(m.conn, m.index): m for m in plan}
        self.applied, self.sent_damaged, self.breaches, self.conns = [], [], [], []
        self._recorded = 0

    def _record(self, conn: _Conn, direction: str, data: bytes) -> None:
        if self._recorded + len(data) <= RECORD_LIMIT:
            self._recorded += len(data)
            conn.chunks.append((time.time(), direction, data))

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conn += 1
        n = self._conn
        rng = random.Random(f"{self.seed}/{self.case}/{n}")
        mut = _Mutator(rng, self.rate, n, self.plan)
        peer, sock = cw.get_extra_info("peername"), cw.get_extra_info("sockname")
        conn = _Conn(f"{peer[0]}:{peer[1]}", f"{sock[0]}:{sock[1]}", time.time())
        self.conns.append(conn)
        checker = _SentChecker()
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            cw.close()
            self._tasks.discard(task)
            return
        up = asyncio.create_task(self._pump_up(cr, uw, conn, checker, n))
        try:
            await self._pump_down(ur, cw, mut, conn, checker)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up.cancel()
            for w in (cw, uw):
                w.transport.abort()
            self._tasks.discard(task)

    async def _pump_up(
        self,
        cr: asyncio.StreamReader,
        uw: asyncio.StreamWriter,
        conn: _Conn,
        checker: _SentChecker,
        n: int,
    ) -> None:
        try:
            while data := await cr.read(65536):
                self._record(conn, "i->t", data)
                for kind, place, detail in checker.feed(data):
                    self.breaches.append((kind, place, f"connection {n}: {detail}"))
                uw.write(data)
                await uw.drain()
        except OSError:
            pass
        finally:
            uw.transport.abort()

    async def _pump_down(
        self,
        ur: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        mut: _Mutator,
        conn: _Conn,
        checker: _SentChecker,
    ) -> None:
        dec = P.PDUDecoder(max_data_segment_length=None)
        keys: dict[str, str] = {}
        while data := await ur.read(65536):
            dec.feed(data)
            out: list[bytes] = []
            while True:
                try:
                    pdu = dec.next_pdu()
                except ProtocolError:
                    return
                if pdu is None:
                    break
                hd, dd = dec.header_digest, dec.data_digest
                if isinstance(pdu, P.LoginResponse):
                    try:
                        keys.update(T.parse_pairs(pdu.data))
                    except ProtocolError:
                        pass
                    if pdu.transit and pdu.nsg == 3 and not pdu.status_class:
                        dec.header_digest = keys.get("HeaderDigest") == "CRC32C"
                        dec.data_digest = keys.get("DataDigest") == "CRC32C"
                        checker.digests = (dec.header_digest, dec.data_digest)
                sends, tamper, m = mut.damage(pdu)
                encoded = [
                    P.encode(p, strict=False, tamper=tamper, header_digest=hd, data_digest=dd)
                    for p in sends
                ]
                if m is not None:
                    self.damaged += 1
                    fam = m.family or "other"
                    self.families[fam] = self.families.get(fam, 0) + 1
                    self.applied.append(m)
                    # the damaged PDU as sent, its data cut at 1 KiB (the reproducer's
                    # evidence; a replay applies the mutation again)
                    self.sent_damaged.extend(e[: _BHS + 1024] for e in encoded[:1])
                out.extend(encoded)
            if out:
                raw = b"".join(out)
                self._record(conn, "t->i", raw)
                cw.write(raw)
                await cw.drain()

    def tape(self) -> _CaseTape:
        """The recorded connections of the last case, as a tape for ``repro.save``."""
        return _CaseTape(list(self.conns), self.port)


class _CaseTape(MultiTape):
    """A case's connections (several) in the pcapng of its reproducer."""


# ---------------------------------------------------------------------- campaigns


def _level(kind: str, client: str) -> str:
    # No RFC text bounds how long an initiator waits for a target that went quiet or
    # garbled a tag: a third-party initiator's hang is informational; a crash, a PDU
    # that breaks the format and unbounded memory are failures, and so is any failure
    # of our reference initiator, which promises bounded waits.
    return "INFORMATIONAL" if kind == "hang" and client != "reference" else "MUST"


def _requirement(kind: str) -> str:
    return "R7143-11-1" if kind == "sent" else ""


async def _run_case(
    client: Any, proxy: HostileProxy, limit: float, plan: Sequence[Mutation] | None = None
) -> list[tuple[str, str, str]]:
    """One case (``plan``: a replay): the failures seen, the client's first."""
    proxy.new_case(proxy.case, plan)
    found = await client.run(proxy.host, proxy.port, limit, proxy)
    await asyncio.sleep(0)  # the pumps' last reads
    out = [found] if found is not None else []
    seen = {f[:2] for f in out}
    for b in proxy.breaches:
        if b[:2] not in seen:
            seen.add(b[:2])
            out.append(b)
    return out


def initiator_campaign(
    client: str,
    *,
    seed: int = 0,
    seconds: float = 60.0,
    max_cases: int | None = None,
    limit: float | None = None,
    rate: float = 0.5,
    tool: str | None = None,
    progress: Callable[[str], None] | None = None,
    shrink: bool = True,
    saved: Callable[[Failure, Sequence[Mutation], _CaseTape | None], None] | None = None,
) -> CampaignReport:
    """Cases of ``client`` against a hostile reference target until ``seconds`` or
    ``max_cases``. A failure keeps the first case of each kind and place, with the
    mutations of that case; once generation stops (at 80% of ``seconds`` when a
    failure waits), each failure is replayed, shrunk by ddmin over its mutations and
    handed to ``saved`` with the tape of its last replay."""
    from iscsi_conformance.fuzz.reference import InProcessSubject

    impl = make_client(client, tool)
    lim = impl.limit if limit is None else limit
    report = CampaignReport(target=f"{impl.title} against a hostile reference target")
    report.notes.append(
        f"client: {impl.title}; case limit {lim:g} s; damage rate {rate:g}; "
        "PDUs counts the PDUs the hostile target damaged"
    )
    plans: dict[tuple[str, str], list[Mutation]] = {}

    async def run(subject: InProcessSubject) -> None:
        asyncio.get_running_loop().set_exception_handler(quiet_on_interrupt)
        proxy = HostileProxy((subject.host, subject.port), seed=seed, rate=rate, host=impl.host)
        await proxy.start()
        start = time.monotonic()
        try:
            await impl.setup(proxy)
            # the budget counts from the initiator being up, as a target campaign's
            # counts from its peer started: open-iscsi's micro-VM boot is not fuzzing
            start = last = time.monotonic()
            deadline = start + seconds
            case = 0
            while max_cases is None or case < max_cases:
                end = deadline - (0.2 * seconds if report.failures and shrink else 0)
                left = end - time.monotonic()
                if left < min(max(0.5, impl.min_case), lim):  # no case that cannot end
                    break
                proxy.case = case
                case_lim = min(lim, left)  # the budget is kept
                found = await _run_case(impl, proxy, case_lim)
                report.cases += 1
                for kind, place, detail in found:
                    if kind == "hang" and case_lim < lim:
                        continue  # cut short by the deadline: not a verdict
                    old = report.failures.get((kind, place))
                    if old is not None:
                        old.count += 1
                        continue
                    damage = "\n".join(m.describe() for m in proxy.applied) or "no damage"
                    report.failures[(kind, place)] = Failure(
                        kind, place, f"seed {seed} case {case}: {detail}\ndamage:\n{damage}",
                        requirement=_requirement(kind), level=_level(kind, client),
                        phase="hostile", pdus=list(proxy.sent_damaged),
                    )  # fmt: skip
                    plans[(kind, place)] = list(proxy.applied)
                subject.poll()  # the upstream target's own health is not judged here
                case += 1
                if progress is not None and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    progress(
                        f"[{last - start:6.1f} s] cases {report.cases}  damaged PDUs "
                        f"{proxy.damaged}  families {len(proxy.families)}/{len(FAMILIES)}"
                        f"  failures {len(report.failures)}"
                    )
            report.pdus = proxy.damaged
            report.families = dict(proxy.families)  # before the replays of shrinking
            report.seconds = time.monotonic() - start
            for identity, f in report.failures.items():
                tape = None
                plan = plans[identity]
                if shrink and time.monotonic() < deadline - min(1.0, lim):
                    plan, tape = await _shrink(impl, proxy, f, plan, lim, deadline)
                if saved is not None:
                    saved(f, plan, tape)
        finally:
            report.pdus = proxy.damaged
            report.seconds = time.monotonic() - start  # the peer's stop is not fuzzing
            try:
                await impl.teardown()
            finally:
                await proxy.stop()

    with InProcessSubject(IQN) as subject:
        asyncio.run(run(subject))
    if impl.memory_note:
        report.notes.append(impl.memory_note)
    return report


async def _shrink(
    impl: Any,
    proxy: HostileProxy,
    f: Failure,
    plan: list[Mutation],
    limit: float,
    deadline: float,
) -> tuple[list[Mutation], _CaseTape | None]:
    """Replay ``f`` from ``plan``; ddmin over the mutations while it still shows; the
    shrunk plan and the tape of the last replay that showed it (None if none did)."""
    best: list[_CaseTape | None] = [None]

    def time_left() -> float:
        return deadline - time.monotonic()

    async def shows(items: list[Any]) -> bool:
        if time_left() < min(1.0, limit):
            return False
        found = await _run_case(impl, proxy, min(limit, time_left()), plan=items)
        if any(x[:2] == f.identity for x in found):
            best[0] = proxy.tape()
            f.pdus = list(proxy.sent_damaged)
            return True
        return False

    if not await shows(plan):
        f.detail += "\n(did not show again on replay: kept unshrunk)"
        return plan, None
    if len(plan) > 1:
        shrunk = await ddmin(cast(list[bytes], plan), shows, time_left, max_tests=40)
        plan = cast(list[Mutation], shrunk)
        if await shows(plan):  # the tape and PDUs of the shrunk plan itself
            f.shrunk = True
    else:
        f.shrunk = True
    return plan, best[0]


def replay_finding(
    finding: dict[str, Any], *, limit: float | None = None
) -> tuple[set[tuple[str, str]], _CaseTape]:
    """Replay a saved initiator reproducer once (the same client, a fresh hostile
    reference target applying its mutations): the failures seen and the tape."""
    from iscsi_conformance.fuzz.reference import InProcessSubject

    plan = [Mutation.from_literal(m) for m in finding.get("mutations", [])]
    impl = make_client(str(finding.get("client", "reference")), finding.get("tool") or None)
    lim = limit or float(finding.get("limit") or impl.limit)
    out: dict[str, Any] = {}

    async def run(subject: InProcessSubject) -> None:
        asyncio.get_running_loop().set_exception_handler(quiet_on_interrupt)
        proxy = HostileProxy((subject.host, subject.port), seed=0, rate=0.0, host=impl.host)
        await proxy.start()
        try:
            await impl.setup(proxy)
            found = await _run_case(impl, proxy, lim, plan=plan)
            out["seen"] = {x[:2] for x in found}
            out["tape"] = proxy.tape()
        finally:
            try:
                await impl.teardown()
            finally:
                await proxy.stop()

    with InProcessSubject(IQN) as subject:
        asyncio.run(run(subject))
    return out["seen"], out["tape"]


def save_reproducer(
    f: Failure,
    plan: Sequence[Mutation],
    tape: _CaseTape | None,
    directory: Path,
    *,
    client: str,
    tool: str | None,
    seed: int,
    limit: float,
) -> Path:
    """Write ``f`` as a reproducer (``fuzz.repro`` format, role initiator)."""
    from iscsi_conformance.fuzz.repro import save

    if tape is not None:
        tape.seen = {f.identity}
    name = client if tool is None else f"{client} {tool}"
    return save(
        f, directory, target=f"{name} initiator", seed=seed, tape=tape,
        extra={"role": "initiator", "client": client, "tool": tool or "", "limit": limit,
               "mutations": [m.literal() for m in plan]},
    )  # fmt: skip


def family_table(families: dict[str, int]) -> str:
    """The damage of a campaign by family, those never reached named."""
    cells = "  ".join(f"{name} {families.get(name, 0)}" for name in FAMILIES)
    missing = [name for name in ISSUE_FAMILIES if not families.get(name)]
    tail = f" (never reached: {', '.join(missing)})" if missing else ""
    return f"damage by family: {cells}{tail}"


def summary(report: CampaignReport) -> str:
    """The end-of-campaign lines of ``initiator_campaign``."""
    lines = [
        f"fuzzed the {report.target}: {report.cases} cases, {report.pdus} damaged PDUs "
        f"in {report.seconds:.1f} s ({report.cases / max(report.seconds, 1e-9):.2f} cases/s)"
    ]
    lines.extend(report.notes)
    lines.append(family_table(report.families))
    if not report.failures:
        lines.append("no failure")
    for f in report.failures.values():
        first = f.detail.splitlines()
        lines.append(
            f"FAILURE {f.kind} at {f.place} ({f.level}): {f.count} time(s), first in "
            f"{first[0][:200]}{' (shrunk)' if f.shrunk else ''}"
        )
    return "\n".join(lines)
