"""RAW mode: one TCP connection on which a test sends anything and sees what comes back.

Theory of operation: nothing here enforces a rule. :meth:`RawConnection.send` writes a
PDU (strictly encoded, or non-strictly with a :class:`~iscsi_conformance.core.pdu.Tamper`)
or plain bytes; :meth:`RawConnection.recv` reads one PDU with a timeout;
:meth:`RawConnection.expect_closed` waits for the target to drop the connection.
Everything is recorded in the connection's :class:`~.trace.PDUTrace`.

To probe full-feature phase without writing a login by hand, :meth:`RawConnection.login`
runs the reference login (the same :class:`~.login_flow.LoginFlow` over ``core.login``
as ``Session``) and then hands control back; from there the connection only *tracks*
numbers, it never answers anything by itself: ``expstatsn`` follows the StatSN of status-bearing PDUs
(RFC 7143 4.2.2.2), ``expcmdsn``/``maxcmdsn`` the window (4.2.2.1), and
:meth:`next_cmdsn` / :meth:`next_itt` hand out numbers. :meth:`build` fills the
ITT, CmdSN and ExpStatSN of a PDU the test constructs, unless the test set them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from iscsi_conformance.core.pdu import (
    PDU,
    R2T,
    AsyncMessage,
    LoginResponse,
    LogoutResponse,
    NopIn,
    Reject,
    ScsiDataIn,
    ScsiResponse,
    Tamper,
    TaskManagementResponse,
    TextResponse,
    encode,
)
from iscsi_conformance.core.serial import gt as sn_gt
from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import LoginError, ProtocolError

from .client import DEFAULT_INITIATOR_NAME, ResponseTimeout
from .engine import NONE_TAG, make_isid
from .login_flow import LoginFlow, LoginHook, LoginResult, LoginSend
from .trace import PDUTrace
from .url import format_hostport
from .wire import ConnectionClosed, decode_raw, open_connection, read_raw_pdu

__all__ = ["RawConnection"]

P = TypeVar("P", bound=PDU)

# PDUs whose StatSN advances the connection's StatSN (RFC 7143 4.2.2.2)
_STATUS = (
    ScsiResponse,
    TaskManagementResponse,
    TextResponse,
    LogoutResponse,
    Reject,
    AsyncMessage,
    LoginResponse,
)


class RawConnection:
    """``async with RawConnection(host, port) as raw:`` -- see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int = 3260,
        *,
        header_digest: bool = False,
        data_digest: bool = False,
        timeout: float = 10.0,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.host = host
        self.port = port
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.timeout = timeout
        self.rng = rng
        self.trace = PDUTrace(f"raw {format_hostport(host, port)}")
        self.received: list[PDU] = []
        self.expstatsn = 0
        self.cmdsn = 0
        self.expcmdsn = 0
        self.maxcmdsn = 0
        self.isid = 0
        self.tsih = 0
        self.login_result: LoginResult | None = None
        self._itt = 0x100
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._eof = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> RawConnection:
        self._reader, self._writer = await open_connection(
            self.host, self.port, timeout=self.timeout
        )
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), 2)
            except Exception:
                pass

    async def __aenter__(self) -> RawConnection:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ numbers

    def next_itt(self) -> int:
        itt = self._itt
        self._itt = (self._itt + 1) & 0xFFFFFFFF
        if self._itt == NONE_TAG:
            self._itt = 0
        return itt

    def next_cmdsn(self, immediate: bool = False) -> int:
        """The CmdSN for the next command; advances unless ``immediate`` (4.2.2.1)."""
        sn = self.cmdsn
        if not immediate:
            self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        return sn

    def build(self, cls: type[P], **fields: Any) -> P:
        """``cls(**fields)`` with itt / cmdsn / expstatsn filled in when the PDU has
        them and the test did not give them (CmdSN advances unless immediate)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if "itt" in names and "itt" not in fields:
            fields["itt"] = self.next_itt()
        if "cmdsn" in names and "cmdsn" not in fields:
            fields["cmdsn"] = self.next_cmdsn(bool(fields.get("immediate", False)))
        if "expstatsn" in names and "expstatsn" not in fields:
            fields["expstatsn"] = self.expstatsn
        return cls(**fields)

    def _track(self, pdu: PDU) -> None:
        statsn = getattr(pdu, "statsn", None)
        advances = (
            isinstance(pdu, _STATUS)
            or (isinstance(pdu, ScsiDataIn) and pdu.status_present)
            or (isinstance(pdu, NopIn) and pdu.itt != NONE_TAG)
        )
        if statsn is not None and advances and not isinstance(pdu, R2T):
            nxt = (statsn + 1) & 0xFFFFFFFF
            if nxt == self.expstatsn or sn_gt(nxt, self.expstatsn) or self.expstatsn == 0:
                self.expstatsn = nxt
        exp, mx = getattr(pdu, "expcmdsn", None), getattr(pdu, "maxcmdsn", None)
        if exp is not None and mx is not None:
            self.expcmdsn, self.maxcmdsn = exp, mx

    # ------------------------------------------------------------------ I/O

    async def send(
        self,
        pdu: PDU | bytes,
        *,
        strict: bool = True,
        tamper: Tamper | None = None,
        header_digest: bool | None = None,
        data_digest: bool | None = None,
    ) -> bytes:
        """Write one PDU (or raw bytes); returns the bytes written."""
        assert self._writer is not None, "not open"
        if isinstance(pdu, bytes | bytearray):
            raw, shown, note = bytes(pdu), None, "raw bytes"
        else:
            hd = self.header_digest if header_digest is None else header_digest
            dd = self.data_digest if data_digest is None else data_digest
            raw = encode(
                pdu,
                header_digest=hd,
                data_digest=dd,
                strict=strict and tamper is None,
                tamper=tamper,
            )
            shown, note = pdu, ("tampered" if tamper else ("non-strict" if not strict else ""))
        self.trace.record("send", time.monotonic(), shown, raw, note)
        self._writer.write(raw)
        await self._writer.drain()
        return raw

    async def recv_raw(self, timeout: float | None = None) -> bytes:
        """The bytes of the next PDU (framed by the BHS lengths and digest flags)."""
        assert self._reader is not None, "not open"
        t = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(
                read_raw_pdu(
                    self._reader, header_digest=self.header_digest, data_digest=self.data_digest
                ),
                t,
            )
        except TimeoutError:
            raise ResponseTimeout(f"nothing received within {t} s") from None
        except ConnectionClosed as exc:
            self._eof = True
            self.trace.record("recv", time.monotonic(), None, exc.partial, "connection closed")
            raise

    async def recv(self, timeout: float | None = None) -> PDU:
        """The next PDU. Raises ResponseTimeout, ConnectionClosed, or the decoder's
        PDUFormatError/DigestError (the raw bytes are in the trace)."""
        raw = await self.recv_raw(timeout)
        try:
            pdu = decode_raw(raw, header_digest=self.header_digest, data_digest=self.data_digest)
        except ProtocolError as exc:
            self.trace.record("recv", time.monotonic(), None, raw, f"undecodable: {exc}")
            raise
        self.trace.record("recv", time.monotonic(), pdu, raw)
        self.received.append(pdu)
        self._track(pdu)
        return pdu

    async def expect(self, cls: type[P], timeout: float | None = None) -> P:
        """The next PDU, which must be a ``cls`` (AssertionError otherwise)."""
        pdu = await self.recv(timeout)
        if not isinstance(pdu, cls):
            raise AssertionError(f"expected {cls.__name__}, received {pdu!r}")
        return pdu

    async def exchange(
        self, pdu: PDU, cls: type[P] | None = None, *, timeout: float | None = None, **kw: Any
    ) -> Any:
        """Send ``pdu`` and return the next PDU (checked against ``cls`` if given)."""
        await self.send(pdu, **kw)
        return await (self.expect(cls, timeout) if cls is not None else self.recv(timeout))

    async def expect_closed(self, timeout: float | None = None) -> list[PDU]:
        """Wait for the target to close the connection; returns the PDUs that came
        first (e.g. a Reject). AssertionError if it is still open after ``timeout``."""
        t = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + t
        before: list[PDU] = []
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(
                    f"connection still open after {t} s; received {[type(p).__name__ for p in before]}"
                )
            try:
                before.append(await self.recv(left))
            except ConnectionClosed:
                return before
            except ResponseTimeout:
                continue
            except ProtocolError:
                continue  # an undecodable PDU before the close is in the trace

    async def closed_within(self, timeout: float | None = None) -> bool:
        """True if the target closes the connection within ``timeout``."""
        try:
            await self.expect_closed(timeout)
        except AssertionError:
            return False
        return True

    @property
    def eof(self) -> bool:
        return self._eof

    # ------------------------------------------------------------------ login

    async def login(
        self,
        target_name: str | None,
        *,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        isid: int | None = None,
        tsih: int = 0,
        cid: int = 0,
        chap: ChapAccount | None = None,
        mutual_chap: ChapAccount | None = None,
        chap_algorithms: Sequence[int] = (5,),
        keys: Mapping[str, str | None] | None = None,
        session_type: str = "Normal",
        skip_security: bool = False,
        login_hook: LoginHook | None = None,
    ) -> LoginResult:
        """A normal login; afterwards digests are on as negotiated and the numbers
        (``expstatsn``, ``cmdsn``, window) are ready for full-feature PDUs."""
        self.isid = make_isid(self.rng) if isid is None else isid
        for cred in (chap, mutual_chap):
            if cred is not None:
                self.trace.add_secret(cred.secret)
        flow = LoginFlow(
            initiator_name=initiator_name,
            target_name=target_name,
            isid=self.isid,
            rng=self.rng,
            tsih=tsih,
            cid=cid,
            itt=self.next_itt(),
            cmdsn=self.cmdsn,
            session_type=session_type,
            keys=keys,
            chap_credentials=chap,
            mutual_chap=mutual_chap,
            chap_algorithms=chap_algorithms,
            skip_security=skip_security,
            login_hook=login_hook,
        )
        step: LoginSend | LoginResult = flow.start()
        while isinstance(step, LoginSend):
            if step.wire is None:
                raise LoginError("login_hook dropped the Login Request")
            await self.send(step.wire, strict=step.strict)
            try:
                pdu = await self.recv()
            except ConnectionClosed:
                flow.connection_lost()
                raise
            step = flow.receive(pdu)
        request = step
        self.login_result = request
        self.tsih = request.tsih
        self.cmdsn = request.cmdsn
        self.expstatsn = (request.statsn + 1) & 0xFFFFFFFF
        self.expcmdsn, self.maxcmdsn = request.expcmdsn, request.maxcmdsn
        self.header_digest = bool(request.negotiated.header_digest)
        self.data_digest = bool(request.negotiated.data_digest)
        return request
