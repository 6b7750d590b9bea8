"""Both reference iSNS clients against a hostile scripted server: each ends with one
clear error (or, where the answer is still usable, succeeds), with no traceback and no
hang. Sections are RFC 4171's.

The server is our own server engine behind a socket, in a thread, on loopback; what it
answers to one function (DevAttrReg for the target's registration client, DevGetNext
or DevAttrQry for the initiator's discovery client, which registers itself first) goes
through a *script* that breaks it the way a broken or malicious server would: a TLV
whose length runs past the payload or is not a multiple of 4 (5.1.3, 5.3), unknown
tags, an over-long iSCSI Name (6.4.1 caps it at 224 bytes; tgt's CVE-2010-2221 was a
server-supplied name overflowing a buffer), an answer split across many reads, a PDU
LENGTH that promises bytes never sent, bytes that are not iSNSP at all, an error
status (5.4), an answer to another transaction (5.1.5), a close, silence. The clients
run in-process with a short ``timeout``; the command lines (``iscsi-conformance target
--isns`` and ``initiator discover isns://``) are run through their ``main`` for the
cases that end quickly, and must print one line and exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import Attribute, FunctionId, Message, MessageDecoder, Status, Tag
from iscsi_conformance.isns.client import NodeSpec, Registration
from iscsi_conformance.isns.client_io import ISNSClient, ISNSClientError
from iscsi_conformance.isns.engine import ServerEngine
from iscsi_conformance.netutil import free_tcp_port

T1 = "iqn.2024-01.org.example:hostile-t1"
INI = "iqn.2024-01.org.example:hostile-ini"
TIMEOUT = 0.5  # per exchange; an operation is tried twice (client_io)
SHORT = 0.3  # where the client must give up waiting: silence and its kin
LIMIT = 6.0  # what any case may take, start and stop included

CLOSE = object()  # a script step: close the connection
Step = bytes | float | object  # bytes to send, seconds to sleep, CLOSE


def _script_of(wire: bytes, *steps: Step) -> list[Step]:
    return [wire, *steps]


def _bytewise(answer: Message) -> list[Step]:
    out: list[Step] = []
    for i, byte in enumerate(I.encode(answer)):
        out += [bytes([byte])] + ([0.001] if i % 8 == 0 else [])
    return out


def _last_attribute(answer: Message, **change: object) -> Message:
    if not answer.attributes:
        return replace(answer, attributes=(Attribute(Tag.ISCSI_NAME, b"x\0\0\0", length=4000),))
    last = answer.attributes[-1]
    return replace(answer, attributes=(*answer.attributes[:-1], replace(last, **change)))


def _with_name(answer: Message, size: int) -> Message:
    long_name = Attribute(Tag.ISCSI_NAME, b"iqn.2024-01.org.example:" + b"n" * size + b"\0\0\0\0")
    attrs = tuple(long_name if a.tag == Tag.ISCSI_NAME else a for a in answer.attributes)
    return replace(answer, attributes=attrs or (long_name,))


def _lying_length(answer: Message) -> list[Step]:
    wire = bytearray(I.encode(answer))
    wire[4:6] = (int.from_bytes(wire[4:6], "big") + 400).to_bytes(2, "big")
    return [bytes(wire)]


Script = Callable[[Message], list[Step] | None]  # None: never answer


@dataclass(frozen=True)
class Case:
    name: str
    script: Script
    outcome: str  # "ok": must succeed; "error": must fail cleanly; "either"
    waits: bool = False  # the client can only time out

    @property
    def timeout(self) -> float:
        return SHORT if self.waits else TIMEOUT


CASES = [
    Case("tlv-past-payload", lambda a: [I.encode(_last_attribute(a, length=4000), strict=False)],
         "error"),
    Case("tlv-length-not-4-aligned", lambda a: [I.encode(replace(a, attributes=(
        *a.attributes, Attribute(Tag.ISCSI_NODE_TYPE, b"\0\0\0\1\0"))), strict=False)], "error"),
    Case("unknown-tag", lambda a: [I.encode(replace(a, attributes=(
        *a.attributes, Attribute(9999, b"junk"))), strict=False)], "ok"),
    Case("over-long-name", lambda a: [I.encode(_with_name(a, 4000), strict=False)], "either"),
    Case("split-across-reads", _bytewise, "ok"),
    Case("pdu-length-lies", _lying_length, "error", waits=True),
    Case("pdu-length-not-4-aligned", lambda a: [I.encode(I.PDU(a.function | 0, bytes(6),
         int(I.Flag.SERVER | I.Flag.LAST_PDU | I.Flag.FIRST_PDU), a.transaction_id, 0,
         length=6), strict=False)], "error"),
    Case("not-isnsp", lambda a: [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"],
         "error", waits=True),
    Case("error-status", lambda a: [I.encode(Message(a.function, a.transaction_id, a.flags,
         Status.INTERNAL_ERROR))], "error"),
    Case("other-transaction", lambda a: [I.encode(replace(a, transaction_id=(
        a.transaction_id + 7) & 0xFFFF))], "error", waits=True),
    Case("close", lambda a: [CLOSE], "error"),
    Case("silence", lambda a: None, "error", waits=True),
]  # fmt: skip


class HostileServer:
    """Our server engine on a socket; the answers to ``function`` go through ``script``."""

    def __init__(self, function: int, script: Script) -> None:
        self.function, self.script = function, script
        self.engine = ServerEngine(now=time.time())
        self._register_t1()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.scripted = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _register_t1(self) -> None:
        src = Attribute.of(Tag.ISCSI_NAME, T1)
        reg = Message.request(FunctionId.DEV_ATTR_REG, source=src, operating=[
            Attribute.of(Tag.ENTITY_IDENTIFIER, "hostile-t1.example"),
            Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
            Attribute.of(Tag.PORTAL_TCP_UDP_PORT, I.port_value(3260)),
            src, Attribute.of(Tag.ISCSI_NODE_TYPE, 1)])  # fmt: skip
        rsp = self.engine.handle_message(reg, time.time())
        assert rsp is not None and rsp.status == Status.SUCCESSFUL

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        decoder = MessageDecoder()
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                decoder.feed(data)
                while (msg := decoder.next_message()) is not None:
                    answer = self.engine.handle_message(msg, time.time())
                    if answer is None:
                        continue
                    if msg.function != self.function:
                        conn.sendall(I.encode(answer, strict=False))
                        continue
                    self.scripted += 1
                    steps = self.script(answer)
                    for step in steps if steps is not None else []:
                        if step is CLOSE:
                            return
                        if isinstance(step, float):
                            time.sleep(step)
                        elif isinstance(step, bytes):
                            conn.sendall(step)
        except (OSError, I.ISNSFormatError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.sock.close()


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing logged at ERROR (an unhandled task exception is logged so by asyncio),
    and no record carries a traceback."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [caplog.text]


def _bounded(run: Callable[[], object], limit: float) -> None:
    """``run()`` in a thread: what it raises is raised here; still running after
    ``limit`` seconds is a hang, and fails (the thread is a daemon, left behind)."""
    raised: list[BaseException] = []

    def body() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the test below
            raised.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"the client still ran after {limit:.0f} s: a hang")
    if raised:
        raise raised[0]


def _judge(case: Case, run: Callable[[], object], server: HostileServer) -> None:
    started = time.monotonic()
    try:
        _bounded(run, LIMIT)
    except ISNSClientError as exc:
        text = str(exc)
        assert case.outcome != "ok", f"{case.name}: refused a usable answer: {text}"
        assert text and "\n" not in text and "Traceback" not in text, text
    else:
        assert case.outcome != "error", f"{case.name}: the client accepted a broken answer"
    took = time.monotonic() - started
    assert took < LIMIT, f"{case.name}: took {took:.1f} s"
    assert server.scripted, "the scripted function was never asked"


def _target_client(port: int, timeout: float) -> ISNSClient:
    reg = Registration(entity_id="hostile-box", nodes=(NodeSpec(T1 + "-reg", I.NodeType.TARGET),),
                       portals=(("127.0.0.1", 3261),))  # fmt: skip
    return ISNSClient(("127.0.0.1", port), registration=reg, timeout=timeout)


def _initiator_client(port: int, timeout: float) -> ISNSClient:
    reg = Registration(entity_id=INI, nodes=(NodeSpec(INI, I.NodeType.INITIATOR),))
    return ISNSClient(("127.0.0.1", port), registration=reg, timeout=timeout)


@pytest.mark.usefixtures("no_tracebacks")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_target_registration_client(case: Case) -> None:
    """The target's client (5.6.5.1): the DevAttrRegRsp is the hostile one."""
    server = HostileServer(FunctionId.DEV_ATTR_REG, case.script)

    async def go() -> None:
        client = _target_client(server.port, case.timeout)
        try:
            await client.start()
        finally:
            await client.stop()

    try:
        _judge(case, lambda: asyncio.run(go()), server)
    finally:
        server.close()


# what only times out is the same wait whichever query it follows: DevGetNext alone
_DISCOVERY = [pytest.param(c, f, id=f"{c.name}-{n}") for c in CASES
              for f, n in ((FunctionId.DEV_GET_NEXT, "DevGetNext"),
                           (FunctionId.DEV_ATTR_QRY, "DevAttrQry"))
              if not (c.waits and f == FunctionId.DEV_ATTR_QRY)]  # fmt: skip


@pytest.mark.usefixtures("no_tracebacks")
@pytest.mark.parametrize(("case", "function"), _DISCOVERY)
def test_initiator_discovery_client(case: Case, function: int) -> None:
    """The initiator's discovery (5.6.5.3, 5.6.5.2): registered first, then the answers
    to one of the two queries are the hostile ones."""
    server = HostileServer(function, case.script)
    found: list[object] = []

    async def go() -> None:
        client = _initiator_client(server.port, case.timeout)
        try:
            await client.start()
            found.extend(await client.discover())
        finally:
            await client.stop()

    try:
        _judge(case, lambda: asyncio.run(go()), server)
    finally:
        server.close()
    if case.outcome == "ok":
        assert [t.name for t in found] == [T1]  # type: ignore[attr-defined]


_QUICK = [c for c in CASES if c.outcome == "error" and c.name in
          ("tlv-past-payload", "tlv-length-not-4-aligned", "error-status", "close")]  # fmt: skip


@pytest.mark.parametrize("case", _QUICK, ids=[c.name for c in _QUICK])
def test_command_lines_end_with_one_line(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    """``initiator discover isns://`` and ``target --isns`` exit 1 with one line."""
    from iscsi_conformance.initiator.cli import main as initiator_main
    from iscsi_conformance.target.cli import main as target_main

    server = HostileServer(FunctionId.DEV_GET_NEXT, case.script)
    try:
        started = time.monotonic()
        code = initiator_main(["discover", f"isns://127.0.0.1:{server.port}",
                               "--timeout", str(TIMEOUT)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and time.monotonic() - started < LIMIT
    finally:
        server.close()
    server = HostileServer(FunctionId.DEV_ATTR_REG, case.script)
    try:
        started = time.monotonic()
        listen = f"127.0.0.1:{free_tcp_port('127.0.0.1')}"
        code = target_main(["--listen", listen, "--target", T1, "--lun", "1M",
                            "--isns", f"127.0.0.1:{server.port}"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: iSNS: "), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert time.monotonic() - started < 4 * LIMIT  # the target's own timeout is 5 s
    finally:
        server.close()
