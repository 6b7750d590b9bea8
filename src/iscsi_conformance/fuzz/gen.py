"""A fast, seeded generator of hostile initiator PDUs (the throughput campaigns' source).

Theory of operation: Hypothesis draws one example in about a millisecond, too slow for
campaigns of a million cases; this generator draws from a ``random.Random`` instead,
so a case is a pure function of ``(seed, index)`` and can be drawn again for replay.
A case is a short list of encoded PDUs for one *phase*: ``login`` (the first PDUs of a
connection: Login Requests with drawn stages, flags and keys, or anything else) or
``ffp`` (sent after a correct login). PDUs are built from the BHS layouts of
:mod:`core.layout` with each field drawn over its whole range or, most of the time, a
value a real initiator would send (CmdSN in the window, ExpStatSN acknowledging, a
small LUN, a real SCSI opcode), then sometimes damaged (``Tamper``: wrong lengths,
padding, reserved bits, a flipped byte). ``Session`` tracks what the initiator side
knows (CmdSN, ExpStatSN, TTTs of R2Ts) so that most cases reach deep handlers.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.keys import KEYS

__all__ = ["Case", "Gen", "Session", "cve_cases"]

_EDGES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_REQUESTS = [c for c in P.PDU_CLASSES.values() if c.is_request]
_UNDEFINED = [op for op in range(64) if op not in P.PDU_CLASSES]
# Requests that leave a session open: the deep cases (SCSI commands twice as often).
_DEEP = [c for c in _REQUESTS if c not in (P.LoginRequest, P.LogoutRequest)] + [
    P.ScsiCommand,
    P.ScsiCommand,
]
# SCSI opcodes a target implements or is likely to (SPC-4/SBC-3), plus a few others.
_CDB_OPS = (
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x1D, 0x25, 0x28, 0x2A, 0x2F, 0x35,
    0x41, 0x42, 0x4D, 0x55, 0x5A, 0x5E, 0x5F, 0x83, 0x84, 0x88, 0x89, 0x8A, 0x8F, 0x91,
    0x93, 0x9E, 0xA0, 0xA3, 0xA4, 0xA8, 0xAA, 0xFF,
)  # fmt: skip
_KEY_NAMES = sorted(KEYS)
_ODD_VALUES = (
    "",
    "Yes",
    "No",
    "None",
    "CRC32C",
    "CRC32C,None",
    "0",
    "1",
    "0x",
    "0b",
    "0xFFFFFFFFFFFFFFFFFF",
    "-1",
    "4294967296",
    "65536",
    "Reject",
    "Irrelevant",
    "NotUnderstood",
    "CHAP",
    "CHAP,None",
    "KRB5,SRP,SPKM1",
    "5",
    "7",
    "0x00",
    "0b00",
    "Discovery",
    "Normal",
    "All",
    "iqn.",
    "eui.0123456789ABCDEF",
    "naa.0123",
    "..,..",
    "a" * 300,
    "0x" + "ab" * 600,
    "0b" + "QUJD" * 400,
)


@dataclasses.dataclass
class Session:
    """What the initiator side of a connection knows (RFC 7143 3.2.2: CmdSN, StatSN)."""

    cmdsn: int = 0
    expstatsn: int = 0
    hd: bool = False  # digests negotiated (RFC 7143 13.1)
    dd: bool = False
    next_itt: int = 0x100
    ttts: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)
    # (itt, ttt, offset, length) of recent R2Ts: Data-Out answers them

    def itt(self) -> int:
        self.next_itt = (self.next_itt + 1) & 0x7FFFFFFF
        return self.next_itt

    def saw(self, pdu: P.PDU) -> None:
        """Learn from an answer: StatSN, the window, R2Ts."""
        statsn = getattr(pdu, "statsn", None)
        if statsn is not None and not isinstance(pdu, P.ScsiDataIn | P.R2T):
            self.expstatsn = (statsn + 1) & 0xFFFFFFFF
        if isinstance(pdu, P.R2T):
            self.ttts.append(
                (pdu.itt, pdu.ttt, pdu.buffer_offset, pdu.desired_data_transfer_length)
            )
            del self.ttts[:-8]


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its phase, the PDUs' bytes, and a one-line label per PDU."""

    phase: str
    pdus: tuple[bytes, ...]
    labels: tuple[str, ...]

    def hex(self) -> list[str]:
        return [p.hex() for p in self.pdus]


class Gen:
    """Draws cases from ``random.Random(seed)``."""

    def __init__(
        self,
        seed: int,
        *,
        initiator: str,
        target: str,
        max_data: int = 1024,
        mrdsl: int = 8192,
        digests: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.initiator = initiator
        self.target = target
        self.max_data = max_data
        self.mrdsl = mrdsl
        self.digests = digests

    # ------------------------------------------------------------------ values

    def _int(self, top: int) -> int:
        r = self.rng.random()
        if r < 0.3:
            edges = [e for e in _EDGES if e <= top]
            return self.rng.choice(edges) if edges else 0
        if r < 0.5:
            return self.rng.randrange(min(top, 16) + 1)
        return self.rng.randrange(top + 1)

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _data(self) -> bytes:
        r = self.rng.random()
        if r < 0.4:
            return b""
        if r < 0.7:
            return self._text()
        return self._bytes(self.rng.choice((1, 3, 4, 17, 64, 512, self.max_data)))

    def _text(self) -> bytes:
        rng = self.rng
        pairs = []
        for _ in range(rng.randrange(6)):
            r = rng.random()
            if r < 0.6:
                key = rng.choice(_KEY_NAMES)
            elif r < 0.8:
                key = "X-com.example." + "k" * rng.randrange(1, 80)
            else:
                key = rng.choice(("", "=", "K" * 64, "K" * 300, "SendTargets", "TargetAlias"))
            value = rng.choice(_ODD_VALUES) if rng.random() < 0.7 else str(self._int(0xFFFFFFFF))
            pairs.append(f"{key}={value}")
        raw = "\0".join(pairs).encode() + (b"\0" if pairs and rng.random() < 0.9 else b"")
        if rng.random() < 0.1:
            raw += rng.choice((b"\xff\xfe", b"A", b"=\0", b"\0\0", b"noequals"))
        return raw

    def _cdb(self) -> bytes:
        rng = self.rng
        size = rng.choice((6, 10, 12, 16, 16, 16, 32))
        cdb = bytearray(self._bytes(size))
        cdb[0] = rng.choice(_CDB_OPS) if rng.random() < 0.9 else rng.randrange(256)
        if rng.random() < 0.6 and size >= 10:  # small LBA and length: reach the data path
            for i in range(2, size - 1):
                cdb[i] = 0
            cdb[size - 2 if size < 16 else 13] = rng.randrange(4)
        return bytes(cdb)

    def _lun(self) -> int:
        r = self.rng.random()
        if r < 0.7:
            return P.lun_to_field(self.rng.choice((0, 0, 0, 1, 2, 255, 256, 16383)))
        return self._int((1 << 64) - 1)

    # ------------------------------------------------------------------ PDUs

    def _random_pdu(self, cls: type[P.PDU], s: Session | None, realistic: float = 0.8) -> P.PDU:
        lay = cls.layout
        assert lay is not None
        kw: dict[str, Any] = {}
        for f in lay.value_fields:
            if f.is_flag:
                kw[f.name] = self.rng.random() < 0.5
            elif f.is_bytes:
                kw[f.name] = self._bytes(f.size)
            else:
                kw[f.name] = self._int(f.max_value)
        if lay.has_data:
            kw["data"] = self._data()
        if cls is P.ScsiCommand:
            kw["cdb"] = self._cdb()
            kw["bidi_read_length"] = None
            kw["expected_data_transfer_length"] = self.rng.choice(
                (0, 512, 1024, 4096, 65536, self._int(0xFFFFFFFF))
            )
        if s is not None and self.rng.random() < realistic:
            # what a real initiator would put: the session's numbers, small LUNs
            if "cmdsn" in kw:
                kw["cmdsn"] = s.cmdsn
            if "expstatsn" in kw:
                kw["expstatsn"] = s.expstatsn
            if "itt" in kw:
                kw["itt"] = s.itt()
            if "lun" in kw:
                kw["lun"] = self._lun()
            if cls is P.ScsiDataOut and s.ttts and self.rng.random() < 0.8:
                itt, ttt, off, length = self.rng.choice(s.ttts)
                kw.update(itt=itt, ttt=ttt, buffer_offset=off + self.rng.choice((0, 0, 1, 512)))
                kw["data"] = self._bytes(
                    min(length, self.max_data, self.rng.choice((1, 512, 8192)))
                )
                kw["datasn"] = self.rng.choice((0, 0, 1, self._int(0xFFFFFFFF)))
            if cls in (P.NopOut, P.TextRequest) and self.rng.random() < 0.7:
                kw["ttt"] = 0xFFFFFFFF
            if "immediate" in kw and not kw["immediate"] and cls is not P.ScsiDataOut:
                s.cmdsn = (s.cmdsn + 1) & 0xFFFFFFFF
        return cls(**kw)

    def _tamper(self) -> P.Tamper | None:
        rng = self.rng
        r = rng.random()
        if r < 0.8:
            return None
        kind = rng.randrange(6)
        if kind == 0:
            return P.Tamper(data_segment_length=self._int(0xFFFFFF))
        if kind == 1:
            return P.Tamper(total_ahs_length=self._int(0xFF))
        if kind == 2:
            return P.Tamper(padding=self._bytes(rng.randrange(1, 4)))
        if kind == 3:
            return P.Tamper(bhs_patch={rng.randrange(48): rng.randrange(256)})
        if kind == 4:
            return P.Tamper(
                opcode=rng.choice(_UNDEFINED) if rng.random() < 0.5 else rng.randrange(64)
            )
        return P.Tamper(extra=self._bytes(rng.randrange(1, 64)))

    def _encode(self, pdu: P.PDU, s: Session | None = None) -> tuple[bytes, str]:
        tamper = self._tamper()
        if tamper is None and s is not None and (s.hd or s.dd) and self.rng.random() < 0.05:
            tamper = P.Tamper(header_digest_value=self._int(0xFFFFFFFF))
        if tamper is None and s is not None and s.dd and self.rng.random() < 0.05:
            tamper = P.Tamper(data_digest_value=self._int(0xFFFFFFFF))
        hd, dd = (s.hd, s.dd) if s is not None else (False, False)
        raw = P.encode(pdu, strict=False, tamper=tamper, header_digest=hd, data_digest=dd)
        label = type(pdu).__name__ + ("" if tamper is None else "+tamper")
        return raw, label

    def operational_keys(self) -> list[tuple[str, str]]:
        """Legal operational keys of a login (RFC 7143 13): digests, ERL, bursts."""
        rng = self.rng
        keys = [
            ("HeaderDigest", "CRC32C" if self.digests and rng.random() < 0.3 else "None"),
            ("DataDigest", "CRC32C" if self.digests and rng.random() < 0.3 else "None"),
            ("MaxRecvDataSegmentLength", str(self.mrdsl)),
        ]
        if rng.random() < 0.5:
            keys.append(("ErrorRecoveryLevel", str(rng.choice((0, 0, 1, 2)))))
        if rng.random() < 0.5:
            keys.append(("ImmediateData", rng.choice(("Yes", "No"))))
            keys.append(("InitialR2T", rng.choice(("Yes", "No"))))
        if rng.random() < 0.5:
            mbl = rng.choice((512, 4096, 65536, 262144, 16777215))
            keys.append(("MaxBurstLength", str(mbl)))
            keys.append(("FirstBurstLength", str(min(mbl, rng.choice((512, 65536))))))
        if rng.random() < 0.3:
            keys.append(("MaxOutstandingR2T", str(rng.choice((1, 2, 65535)))))
            keys.append(("DataPDUInOrder", rng.choice(("Yes", "No"))))
            keys.append(("DataSequenceInOrder", rng.choice(("Yes", "No"))))
        if rng.random() < 0.2:
            keys.append(("MaxConnections", str(rng.choice((1, 2, 4)))))
        return keys

    def login_request(self, *, legal: bool) -> P.LoginRequest:
        rng = self.rng
        keys: list[tuple[str, str]] = []
        if legal or rng.random() < 0.7:
            keys.append(("InitiatorName", self.initiator))
        if legal or rng.random() < 0.5:
            keys.append(("TargetName", self.target))
        if not legal and rng.random() < 0.3:
            keys.append(("SessionType", rng.choice(("Discovery", "Normal", "Bogus"))))
        if not legal and rng.random() < 0.3:
            keys.append(("AuthMethod", rng.choice(("None", "CHAP", "CHAP,None", "X"))))
        if legal:
            keys.extend(self.operational_keys())
        data = T.format_pairs(keys, strict=False)
        if not legal:
            data += self._text()
        csg = 1 if legal else rng.choice((0, 1, 1, 2, 3))
        return P.LoginRequest(
            transit=legal or rng.random() < 0.7,
            cont=not legal and rng.random() < 0.1,
            csg=csg,
            nsg=3 if legal else rng.choice((0, 1, 2, 3, 3)),
            version_max=0 if legal or rng.random() < 0.8 else self._int(0xFF),
            version_min=0,
            isid=0x80_0000_0000 | rng.randrange(1 << 24),
            tsih=0 if legal or rng.random() < 0.8 else self._int(0xFFFF),
            itt=rng.randrange(1 << 16),
            cid=rng.randrange(4),
            cmdsn=0,
            data=data,
        )

    # ------------------------------------------------------------------ cases

    def case(self, s: Session | None, *, hostile: bool = True) -> Case:
        """One case: ``s`` None draws a login-phase case, else a full-feature one.

        ``hostile`` False draws what keeps a session going most of the time (no damage,
        the session's numbers, no Logout or Login): the deep cases of a long session.
        """
        rng = self.rng
        if s is not None and not hostile:
            out_deep: list[tuple[bytes, str]] = []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                cls = rng.choice(_DEEP)
                deep = self._random_pdu(cls, s, realistic=1.0)
                raw = P.encode(deep, strict=False, header_digest=s.hd, data_digest=s.dd)
                out_deep.append((raw, cls.__name__))
            return Case("ffp", tuple(p for p, _ in out_deep), tuple(lab for _, lab in out_deep))
        out: list[tuple[bytes, str]] = []
        if s is None:
            req = self.login_request(legal=False)
            out.append(self._encode(req))
            if rng.random() < 0.2:  # something else during login (SPDK #3927)
                out.append(self._encode(self._random_pdu(rng.choice(_REQUESTS), None)))
            return Case("login", tuple(p for p, _ in out), tuple(lab for _, lab in out))
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if rng.random() < 0.03:
                op = rng.choice(_UNDEFINED)
                bhs = bytes([op]) + self._bytes(47)
                pdu: P.PDU = P.UnknownPDU(opcode=op, bhs=bhs, data=self._data(), ahs=b"")
            else:
                cls = rng.choice(_REQUESTS)
                if cls is P.LoginRequest and rng.random() < 0.7:
                    cls = P.ScsiCommand
                pdu = self._random_pdu(cls, s)
            out.append(self._encode(pdu, s))
        return Case("ffp", tuple(p for p, _ in out), tuple(lab for _, lab in out))


def cve_cases(initiator: str, target: str) -> list[Case]:
    """Login-phase cases of the input classes behind known target CVEs, run first by a
    campaign (issue 14): each is the class, written for this project, not an exploit.

    - ``long-key``: a key whose value fills most of a login data segment (LIO,
      CVE-2013-2850: an over-long key overflowed a buffer).
    - ``chap-r-overflow``: a CHAP exchange whose CHAP_R is far longer than any digest
      (LIO, CVE-2018-14633).
    - ``short-login``: a Login Request cut inside its header, and one whose
      DataSegmentLength announces more than comes (the short-login-PDU class).
    - ``huge-before-login``: a first PDU announcing a 16 MiB data segment (tgt,
      CVE-2011-0001: input before login reached a buffer unchecked).
    - ``non-login-during-login``: a SCSI Command after the first Login Request (SPDK
      issue 3927).
    """

    def login(
        pairs: list[tuple[str, str]], *, nsg: int = 1, transit: bool = True
    ) -> P.LoginRequest:
        return P.LoginRequest(
            transit=transit, csg=0, nsg=nsg, isid=0x80_0000_0001, itt=1, cmdsn=0,
            data=T.format_pairs(pairs, strict=False),
        )  # fmt: skip

    names = [("InitiatorName", initiator), ("TargetName", target)]
    out: list[Case] = []

    def add(label: str, *pdus: bytes) -> None:
        out.append(Case("login", tuple(pdus), tuple(f"{label}#{i}" for i in range(len(pdus)))))

    add("long-key", P.encode(login([*names, ("TargetAlias", "A" * 7000)]), strict=False))
    add("long-key", P.encode(login([*names, ("X-" + "k" * 4000, "v")]), strict=False))
    chap = login([*names, ("AuthMethod", "CHAP")], nsg=0, transit=False)
    add(
        "chap-r-overflow",
        P.encode(chap, strict=False),
        P.encode(dataclasses.replace(chap, data=T.format_pairs([("CHAP_A", "5")])), strict=False),
        P.encode(
            dataclasses.replace(
                chap,
                data=T.format_pairs(
                    [("CHAP_N", "n"), ("CHAP_R", "0x" + "ab" * 3000)], strict=False
                ),
            ),
            strict=False,
        ),
    )
    first = P.encode(login([*names, ("AuthMethod", "None")]))
    add("short-login", first[:20])
    add(
        "short-login",
        P.encode(login(names), strict=False, tamper=P.Tamper(data_segment_length=8000)),
    )
    add(
        "huge-before-login",
        P.encode(login(names), strict=False, tamper=P.Tamper(data_segment_length=0xFFFFFF)),
    )
    cmd = P.ScsiCommand(final=True, read=True, itt=2, expected_data_transfer_length=512,
                        cmdsn=0, cdb=bytes([0x12, 0, 0, 0, 36, 0]))  # fmt: skip
    add("non-login-during-login", first, P.encode(cmd, strict=False))
    return out
