"""Helpers for the reference target's tests: a live server on loopback (fixtures) and a raw
initiator speaking PDUs from ``core.pdu`` over a real socket."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.chap import ChapClient, ChapCredentials
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

DISK = "iqn.2024-01.org.example:disk"
CHAP = "iqn.2024-01.org.example:chap"
MUTUAL = "iqn.2024-01.org.example:mutual"
ACL = "iqn.2024-01.org.example:acl"
MOVED = "iqn.2024-01.org.example:moved"
SMALL = "iqn.2024-01.org.example:small"
INITIATOR = "iqn.2024-01.org.example:initiator-1"
INITIATOR_2 = "iqn.2024-01.org.example:initiator-2"
NONE_TAG = 0xFFFFFFFF


def make_config(tmp: Path) -> dict:
    return {
        "server": {"state_dir": str(tmp / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [
            {
                "name": DISK,
                "luns": [
                    {"lun": 0, "size": "8M"},
                    {"lun": 1, "file": str(tmp / "disk1.img"), "size": "4M"},
                ],
            },
            {
                "name": CHAP,
                "luns": [{"lun": 0, "size": "1M"}],
                "chap": {"user": "alice", "secret": "alice-secret-123"},
            },
            {
                "name": MUTUAL,
                "luns": [{"lun": 0, "size": "1M"}],
                "chap": {"user": "bob", "secret": "bob-secret-12345"},
                "mutual_chap": {"user": "target", "secret": "target-secret-99"},
            },
            {"name": ACL, "luns": [{"lun": 0, "size": "1M"}], "acls": [{"initiator": INITIATOR}]},
            {"name": MOVED, "redirect": {"address": "127.0.0.1:3999", "permanent": False}},
            {
                "name": SMALL,
                "luns": [{"lun": 0, "size": "1M"}],
                "parameters": {
                    "MaxRecvDataSegmentLength": 4096,
                    "MaxBurstLength": 8192,
                    "FirstBurstLength": 4096,
                    "InitialR2T": True,
                    "ImmediateData": False,
                    "MaxOutstandingR2T": 2,
                },
                "max_send_data_segment_length": 1024,
            },
        ],
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TargetServer]:
    cfg = parse_config(make_config(tmp_path))
    srv = TargetServer(cfg)
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


class RawInitiator:
    """A minimal initiator: PDUs from core.pdu over a blocking loopback socket."""

    def __init__(
        self, addr: tuple[str, int], *, name: str = INITIATOR, isid: int = 0x400001000001
    ) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = P.PDUDecoder()
        self.name = name
        self.isid = isid
        self.itt = 0x100
        self.cmdsn = 1
        self.expstatsn = 0
        self.tsih = 0
        self.negotiated: dict[str, str] = {}
        self.hd = self.dd = False  # digests in force (after login)

    def close(self) -> None:
        self.sock.close()

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def send(self, pdu: P.PDU, **kw: object) -> None:
        kw.setdefault("header_digest", self.hd)
        kw.setdefault("data_digest", self.dd)
        self.sock.sendall(P.encode(pdu, **kw))  # type: ignore[arg-type]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> P.PDU:
        self.sock.settimeout(timeout)
        while True:
            pdu = self.decoder.next_pdu()
            if pdu is not None:
                sn = getattr(pdu, "statsn", None)
                if sn is not None and not isinstance(pdu, P.LoginResponse | P.R2T):
                    if not (isinstance(pdu, P.ScsiDataIn) and not pdu.status_present):
                        self.expstatsn = (sn + 1) & 0xFFFFFFFF
                return pdu
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed by target")
            self.decoder.feed(chunk)

    def closed_by_target(self, timeout: float = 3.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if self.decoder.next_pdu() is not None:
                    continue
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.decoder.feed(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ login

    def login(
        self,
        target: str | None = DISK,
        *,
        params: list[tuple[str, str]] | None = None,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        session_type: str = "Normal",
        tsih: int = 0,
        cid: int = 0,
    ) -> P.LoginResponse:
        """Log in; returns the final Login Response (status may be non-zero)."""
        itt = self.next_itt()
        keys = [("InitiatorName", self.name), ("SessionType", session_type)]
        if target is not None:
            keys.append(("TargetName", target))
        base = dict(isid=self.isid, tsih=tsih, itt=itt, cid=cid, cmdsn=self.cmdsn)
        if chap is not None:
            client = ChapClient(
                ChapCredentials(chap[0], chap[1].encode()),
                target=ChapCredentials(mutual[0], mutual[1].encode()) if mutual else None,
                rng=lambda n: bytes(range(7, 7 + n)),
            )
            self.send(
                P.LoginRequest(
                    csg=0, nsg=1, data=T.format_pairs([*keys, ("AuthMethod", "CHAP")]), **base
                )
            )
            rsp = self.recv()
            if rsp.status:
                return rsp
            self.send(P.LoginRequest(csg=0, nsg=1, data=T.format_pairs(client.start()), **base))
            rsp = self.recv()
            if rsp.status:
                return rsp
            answer = client.receive(dict(T.parse_pairs(rsp.data)))
            self.send(
                P.LoginRequest(transit=True, csg=0, nsg=1, data=T.format_pairs(answer), **base)
            )
            rsp = self.recv()
            if rsp.status:
                return rsp
            client.receive({k: v for k, v in T.parse_pairs(rsp.data) if k.startswith("CHAP_")})
            assert client.done
            keys = []
        ops = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]
        if session_type == "Normal" and not tsih:  # leading-only keys (RFC 7143 13)
            ops += [
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"),
                ("ErrorRecoveryLevel", "0"),
            ]
        ops += list(params or [])
        merged = dict(ops)
        self.send(
            P.LoginRequest(
                transit=True, csg=1, nsg=3, data=T.format_pairs(keys + list(merged.items())), **base
            )
        )
        rsp = self.recv()
        if rsp.status == 0:
            self.negotiated.update(dict(T.parse_pairs(rsp.data)))
            if not rsp.transit:  # the target wants another round (its own offers)
                self.send(P.LoginRequest(transit=True, csg=1, nsg=3, **base))
                rsp = self.recv()
                self.negotiated.update(dict(T.parse_pairs(rsp.data)))
            self.tsih = rsp.tsih
            self.expstatsn = (rsp.statsn + 1) & 0xFFFFFFFF
            # Digests start with the first full-feature PDU (RFC 7143 13.1).
            self.hd = self.decoder.header_digest = self.negotiated.get("HeaderDigest") == "CRC32C"
            self.dd = self.decoder.data_digest = self.negotiated.get("DataDigest") == "CRC32C"
        return rsp

    # ------------------------------------------------------------------ commands

    def command(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        read: int = 0,
        write: bytes = b"",
        immediate_data: bool = True,
        edtl: int | None = None,
        immediate: bool = False,
    ) -> P.ScsiCommand:
        length = edtl if edtl is not None else (read or len(write))
        cmd = P.ScsiCommand(
            immediate=immediate,
            final=True,
            read=bool(read),
            write=bool(write),
            lun=P.lun_to_field(lun),
            itt=self.next_itt(),
            expected_data_transfer_length=length,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            cdb=cdb,
            data=write[:65536] if immediate_data else b"",
        )
        if not immediate:
            self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        self.send(cmd)
        return cmd

    def collect(self, itt: int, write: bytes = b"") -> tuple[P.PDU, bytes, list[P.PDU]]:
        """Answer R2Ts from ``write`` and gather Data-In until the status arrives."""
        data = bytearray()
        seen: list[P.PDU] = []
        while True:
            pdu = self.recv()
            seen.append(pdu)
            if isinstance(pdu, P.R2T):
                off, n = pdu.buffer_offset, pdu.desired_data_transfer_length
                seg = int(self.negotiated.get("MaxRecvDataSegmentLength", 8192))
                for i, pos in enumerate(range(off, off + n, seg)):
                    chunk = write[pos : min(pos + seg, off + n)]
                    self.send(
                        P.ScsiDataOut(
                            final=pos + seg >= off + n,
                            lun=0,
                            itt=itt,
                            ttt=pdu.ttt,
                            expstatsn=self.expstatsn,
                            datasn=i,
                            buffer_offset=pos,
                            data=chunk,
                        )
                    )
            elif isinstance(pdu, P.ScsiDataIn):
                assert pdu.itt == itt
                data[pdu.buffer_offset : pdu.buffer_offset + len(pdu.data)] = pdu.data
                if pdu.status_present:
                    return pdu, bytes(data), seen
            elif isinstance(pdu, P.ScsiResponse):
                assert pdu.itt == itt
                return pdu, bytes(data), seen
            else:
                return pdu, bytes(data), seen

    def scsi(self, cdb: bytes, *, lun: int = 0, read: int = 0, write: bytes = b"", **kw: object):
        cmd = self.command(cdb, lun=lun, read=read, write=write, **kw)  # type: ignore[arg-type]
        return self.collect(cmd.itt, write)

    def clear_ua(self, lun: int = 0) -> None:
        for _ in range(4):
            status, _, _ = self.scsi(bytes(6), lun=lun)
            if status.status == 0:
                return

    def logout(self, reason: int = 0) -> P.PDU:
        self.send(
            P.LogoutRequest(
                immediate=True,
                reason=reason,
                itt=self.next_itt(),
                cmdsn=self.cmdsn,
                expstatsn=self.expstatsn,
            )
        )
        return self.recv()


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + struct.pack(">QIBB", lba, blocks, 0, 0)


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + struct.pack(">QIBB", lba, blocks, 0, 0)


@pytest.fixture
def connect(server: TargetServer) -> Iterator:
    opened: list[RawInitiator] = []

    def make(**kw: object) -> RawInitiator:
        ini = RawInitiator(server.portal(), **kw)  # type: ignore[arg-type]
        opened.append(ini)
        return ini

    yield make
    for ini in opened:
        ini.close()


# --------------------------------------------------------------------------- the engine alone


def sans_io_engine(iqn: str, erl: str) -> Any:
    """The reference target's sans-IO engine (no socket) serving ``iqn`` with one 4 MiB
    LU and ErrorRecoveryLevel ``erl`` offered; random bytes are zeros."""
    import dataclasses

    from iscsi_conformance.target import engine as E
    from iscsi_conformance.target.config import simple_config
    from iscsi_conformance.target.luns import LunStore

    cfg = simple_config(("127.0.0.1", 0), iqn, ["4M"])
    tc = dataclasses.replace(cfg.targets[0], parameters={"ErrorRecoveryLevel": erl})
    cfg = dataclasses.replace(cfg, targets=(tc,))
    return E.TargetEngine(cfg, LunStore(cfg).by_target, rng=lambda n: bytes(n))


def feed(engine: Any, conn: Any, *pdus: P.PDU) -> list[P.PDU]:
    """Hand ``pdus`` to ``conn`` of the sans-IO ``engine``; the PDUs it wrote to ``conn``."""
    for pdu in pdus:
        conn.receive_data(P.encode(pdu))
    dec = P.PDUDecoder()
    for c, bufs, _ in engine.take_output():
        if c is conn:
            dec.feed(b"".join(bytes(b) for b in bufs))
    return list(dec)
