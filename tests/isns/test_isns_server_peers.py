"""The reference iSNS server against a real, independent client: open-isns's isnsadm.

Our server runs as ``iscsi-conformance isns --listen 127.0.0.1:PORT --db FILE`` (a
subprocess, bounded by ``timeout`` and stopped in a ``finally``); open-isns's isnsd runs
the same way for comparison. isnsadm registers, queries, lists, registers a Discovery
Domain and deregisters against both, and what it prints must agree but for the
differences RFC 4171 decides (listed in ``_normal``). Then what only a server test can
show: DDs restrict what isnsadm sees (on both servers), the database survives a
restart, malformed messages get a status or a clean close while isnsadm is still
served, an entity whose ESI port never answers is deregistered while one that answers
stays, and an SCN reaches a registered SCN port when isnsadm registers a target.

Marked ``peer``: provisioning (tests/conftest.py, ci/setup_host.sh) installs open-isns
as root; in CI a missing tool fails, elsewhere it skips. Traffic stays on loopback.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from host_programs import host_program as _tool
from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import Attribute, FunctionId, Message, MessageDecoder, Status, Tag
from iscsi_conformance.netutil import free_tcp_port as _free_port

pytestmark = pytest.mark.peer

T1 = "iqn.2024-01.org.iscsi-conformance:isns-server-t1"
T2 = "iqn.2024-01.org.iscsi-conformance:isns-server-t2"
INI = "iqn.2024-01.org.iscsi-conformance:isns-server-ini"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the iSNS server did not start: {log.read_text()}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Server:
    """One server process on loopback; ``stop()`` then ``start()`` keeps its database."""

    def __init__(self, kind: str, tmp: Path, *extra: str) -> None:
        self.kind, self.tmp, self.extra = kind, tmp, extra
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"{kind}.log"

    def start(self) -> None:
        if self.kind == "ours":
            cmd = [sys.executable, "-m", "iscsi_conformance.cli", "isns",
                   "--listen", f"127.0.0.1:{self.port}", "--db", str(self.tmp / "isns.json"),
                   "--idle-timeout", "2", *self.extra]  # fmt: skip
        else:
            (self.tmp / "db").mkdir(exist_ok=True)
            conf = self.tmp / "isnsd.conf"
            conf.write_text(
                f"Database = {self.tmp}/db\nPIDFile = {self.tmp}/isnsd.pid\n"
                f"ControlSocket = {self.tmp}/isnsctl\nBindAddress = 127.0.0.1:{self.port}\n"
                "Security = 0\nSLPRegister = 0\nDefaultDiscoveryDomain = 1\n"
                # isnsd raises ESI intervals below ESIMinInterval (60 s by default)
                "ESIMinInterval = 1\nESIRetries = 2\n"
            )
            cmd = [_tool("isnsd"), "--config", str(conf), "--foreground"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                ["timeout", "120", *cmd], stdout=out, stderr=subprocess.STDOUT
            )
        _wait_listening(self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def isnsadm(self, source: str, *args: str) -> str:
        conf = self.tmp / f"isnsadm-{source.rsplit(':', 1)[-1]}.conf"
        conf.write_text(f"ServerAddress = 127.0.0.1:{self.port}\nSourceName = {source}\n"
                        f"Security = 0\nControlSocket = {self.tmp}/isnsctl\n")  # fmt: skip
        done = subprocess.run(["timeout", "20", _tool("isnsadm"), "--config", str(conf), *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        return f"rc={done.returncode}\n{done.stdout}{done.stderr}"


@pytest.fixture(params=["ours", "isnsd"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    _tool("isnsadm")
    s = Server(request.param, tmp_path, "--esi-threshold", "2")
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Server]:
    _tool("isnsadm")
    s = Server("ours", tmp_path, "--esi-threshold", "2")
    try:
        s.start()
        yield s
    finally:
        s.stop()


# ------------------------------------------------------------------ the same client, two servers


_SCRIPT: list[tuple[str, tuple[str, ...]]] = [
    (T1, ("--register", "entity=t1.example", "portal=127.0.0.1:3260", f"target={T1},alias=disk")),
    (INI, ("--register", "entity=ini.example", f"initiator={INI}")),
    (INI, ("--query", f"iscsi-name={T1}")),
    (INI, ("--list", "nodes")),
    (INI, ("--list", "portals")),
    (T1, ("--replace", "--register", "entity=t1.example", "portal=127.0.0.1:3261",
          f"target={T1},alias=disk-2")),
    (T1, ("--dd-register", "dd-name=pair", f"member-name={T1}", f"member-name={INI}")),
    (T1, ("--list", "dds")),
    (INI, ("--deregister", f"iscsi-name={INI}")),
    (INI, ("--query", f"iscsi-name={T1}")),
    (T1, ("--deregister", "entity=t1.example")),
]  # fmt: skip


def _normal(text: str) -> list[str]:
    """isnsadm's output without what RFC 4171 leaves to the server: indexes (6.2.7,
    6.3.6, 6.4.5, 6.5.5), the DD_ID (isnsd's first DD is 1, which 6.11.2.1 gives the
    default DD), timestamps, the Registration Period each server picks (6.2.6), and
    isnsd's implicit Entity Protocol (5.7.5.1 forbids returning implicit values)."""
    drop = re.compile(r"index|Timestamp|Registration Period|Entity protocol|DD ID")
    return [line.strip() for line in text.splitlines() if line.strip() and not drop.search(line)]


def test_isnsadm_gets_the_same_answers_from_both_servers(tmp_path: Path) -> None:
    _tool("isnsadm")
    runs = {}
    for kind in ("isnsd", "ours"):
        s = Server(kind, tmp_path / kind)
        s.tmp.mkdir()
        try:
            s.start()
            runs[kind] = [_normal(s.isnsadm(src, *args)) for src, args in _SCRIPT]
        finally:
            s.stop()
    for (_src, args), a, b in zip(_SCRIPT, runs["isnsd"], runs["ours"], strict=True):
        assert a == b, (args, a, b)
    # and what they say is right: the replace moved the portal to 3261 (5.6.5.1)
    assert any("3261/tcp" in line for line in runs["ours"][9])
    assert not any("3260/tcp" in line for line in runs["ours"][9])
    # open-isns's private deregistration tag (fixtures/isns PROVENANCE.md): 22 from both
    assert any("Invalid deregistration" in line for line in runs["ours"][10])


def test_discovery_domains_restrict_what_isnsadm_sees(server: Server) -> None:
    """5.6.5.2, 5.6.5.3: a node sees only nodes sharing a DD with it. Both servers."""
    assert "rc=0" in server.isnsadm(T1, "--register", "entity=t1.example", "portal=127.0.0.1:3260",
                                    f"target={T1}")  # fmt: skip
    assert "rc=0" in server.isnsadm(T2, "--register", "entity=t2.example", "portal=127.0.0.1:3261",
                                    f"target={T2}")  # fmt: skip
    assert "rc=0" in server.isnsadm(INI, "--register", "entity=ini.example", f"initiator={INI}")
    before = server.isnsadm(INI, "--list", "nodes")
    assert T1 in before and T2 in before  # the default DD
    assert "rc=0" in server.isnsadm(T1, "--dd-register", "dd-name=pair", f"member-name={T1}",
                                    f"member-name={INI}")  # fmt: skip
    after = server.isnsadm(INI, "--list", "nodes")
    assert T1 in after and T2 not in after, after
    assert T2 not in server.isnsadm(INI, "--query", f"iscsi-name={T2}")
    assert "3261" not in server.isnsadm(INI, "--list", "portals")


def test_the_database_survives_a_restart(ours: Server) -> None:
    assert "rc=0" in ours.isnsadm(T1, "--register", "entity=t1.example", "portal=127.0.0.1:3260",
                                  f"target={T1},alias=kept")  # fmt: skip
    assert "rc=0" in ours.isnsadm(T1, "--dd-register", "dd-name=kept-dd", f"member-name={T1}")
    before = ours.isnsadm(T1, "--query", f"iscsi-name={T1}")
    ours.stop()
    assert (ours.tmp / "isns.json").exists()
    assert not list(ours.tmp.glob(".isns.json.*"))  # no temporary file left behind
    ours.start()
    after = ours.isnsadm(T1, "--query", f"iscsi-name={T1}")
    assert _normal(after) == _normal(before) and "kept" in after
    assert "kept-dd" in ours.isnsadm(T1, "--list", "dds")


# ------------------------------------------------------------------ malformed input


class Raw:
    """A raw connection; answers decoded byte by byte."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = MessageDecoder()

    def send(self, data: bytes) -> Message | None:
        """Send; the next answer, or None if the server closed."""
        self.sock.sendall(data)
        while True:
            data = self.sock.recv(4096)
            if not data:
                return None
            for byte in data:
                self.decoder.feed(bytes([byte]))
                answer = self.decoder.next_message()
                if answer is not None:
                    return answer

    def close(self) -> None:
        self.sock.close()


def _registration(xid: int = 1, entity: str = "raw.example", node: str = INI) -> Message:
    return Message.request(FunctionId.DEV_ATTR_REG, source=Attribute.of(Tag.ISCSI_NAME, node),
                           operating=[Attribute.of(Tag.ENTITY_IDENTIFIER, entity),
                                      Attribute.of(Tag.ISCSI_NAME, node),
                                      Attribute.of(Tag.ISCSI_NODE_TYPE, 2)],
                           transaction_id=xid)  # fmt: skip


# (case, how to break a registration, our status, isnsd's status): where they differ, the
# RFC 4171 rule is named; isnsd 0.101's answers are recorded, not endorsed.
_MALFORMED: list[tuple[str, Callable[[Message], Message], int, int | None]] = [
    ("unknown-tag", lambda m: replace(m, attributes=(*m.attributes, Attribute(9999, b"junk"))),
     Status.INVALID_REGISTRATION, Status.INVALID_REGISTRATION),
    ("attribute-length-lies", lambda m: replace(m, attributes=(*m.attributes[:-1], replace(
        m.attributes[-1], length=4000))), Status.MESSAGE_FORMAT_ERROR, Status.MESSAGE_FORMAT_ERROR),
    # 5.6.1/5.4: no Source is Source Absent (7); isnsd answers Source Unknown (6)
    ("no-source", lambda m: replace(m, attributes=m.attributes[1:]), Status.SOURCE_ABSENT,
     Status.SOURCE_UNKNOWN),
    # 6.4.1: an iSCSI Name is at most 223 bytes; isnsd registers a 300-byte one
    ("over-long-name", lambda m: replace(m, attributes=(*m.attributes[:2], Attribute(
        Tag.ISCSI_NAME, b"i" * 300 + b"\0\0\0\0"))), Status.INVALID_REGISTRATION, Status.SUCCESSFUL),
    # 5.1.1: a server MAY refuse other versions (10); isnsd serves version 2
    ("version-2", lambda m: replace(m, version=2), Status.VERSION_NOT_SUPPORTED, Status.SUCCESSFUL),
    # 5.3.1: every TLV length is a multiple of 4
    ("attribute-length-not-4-aligned", lambda m: replace(m, attributes=(*m.attributes[:-1],
        Attribute(Tag.ISCSI_NODE_TYPE, b"\0\0\0\2\0"))), Status.MESSAGE_FORMAT_ERROR,
     Status.MESSAGE_FORMAT_ERROR),
    # 6.1: iSCSI Node Type is 4 bytes; isnsd answers Message Format Error, we Invalid
    # Registration (a registration that breaks an attribute's rule, 5.4)
    ("fixed-length-attribute-of-8", lambda m: replace(m, attributes=(*m.attributes[:-1],
        Attribute(Tag.ISCSI_NODE_TYPE, bytes(8)))), Status.INVALID_REGISTRATION,
     Status.MESSAGE_FORMAT_ERROR),
    # 6.4.1: an iSCSI Name is NUL-terminated
    ("unterminated-name", lambda m: replace(m, attributes=(*m.attributes[:2], Attribute(
        Tag.ISCSI_NAME, b"iqn.2024-01.org.example:abc"), m.attributes[-1])),
     Status.MESSAGE_FORMAT_ERROR, Status.MESSAGE_FORMAT_ERROR),
    # 6.1, 6.4.1: an empty iSCSI Name, the key of a Storage Node; isnsd registers it
    # (see _ISNSD_STOPS_SERVING)
    ("empty-name", lambda m: replace(m, attributes=(*m.attributes[:2], Attribute(
        Tag.ISCSI_NAME, b""), m.attributes[-1])), Status.INVALID_REGISTRATION, Status.SUCCESSFUL),
    # the tgt CVE-2010-2221 class: a name of 60000 bytes in one PDU; isnsd closes
    # (it logs "Message too long"), which a server may do with a message it cannot hold
    ("name-of-60000-bytes", lambda m: replace(m, attributes=(*m.attributes[:2], Attribute(
        Tag.ISCSI_NAME, b"i" * 60000 + b"\0\0\0\0"), m.attributes[-1])),
     Status.INVALID_REGISTRATION, None),
]  # fmt: skip

# What isnsd 0.101 does after a case that no longer serves the other clients: recorded
# (the RFC section it breaks, what was seen) and reported as an expected failure.
_ISNSD_STOPS_SERVING = {
    "empty-name": "isnsd registers a Storage Node with an empty iSCSI Name, the node's key "
    "(RFC 4171 6.1, 6.4.1); after it, another node's registration on that connection is "
    "refused (3, 'move iSCSI Storage Node to a different Network Entity') and isnsadm "
    "--list nodes lists the empty node without end",
}


@pytest.mark.parametrize(("case", "break_it", "status", "isnsd_status"), _MALFORMED,
                         ids=[c[0] for c in _MALFORMED])  # fmt: skip
def test_malformed_messages_get_a_status_and_the_server_keeps_serving(
    server: Server,
    case: str,
    break_it: Callable[[Message], Message],
    status: int,
    isnsd_status: int | None,
) -> None:
    """The RFC's error status (5.4) or, where a server may (None), a clean close; then
    the server serves others: on the same connection when it answered (the PDU header
    still frames the stream), on a new one when it closed, and isnsadm."""
    bad = break_it(_registration())
    assert I.violations(bad) or case == "empty-name"  # a zero-length TLV is well formed
    want = status if server.kind == "ours" else isnsd_status
    other = INI + "-2"
    raw = Raw(server.port)
    try:
        try:
            answer = raw.send(I.encode(bad, strict=False))
        except ConnectionResetError:
            answer = None
        if want is None:
            assert answer is None, answer
            raw.close()
            raw = Raw(server.port)
        else:
            assert answer is not None and answer.status == want, answer
        # another node and entity, since isnsd may have registered the broken message
        answer = raw.send(I.encode(_registration(2, "raw-2.example", other)))
        if server.kind == "isnsd" and case in _ISNSD_STOPS_SERVING:
            assert answer is not None and answer.status != Status.SUCCESSFUL, answer
            pytest.xfail(_ISNSD_STOPS_SERVING[case])
        assert answer is not None and answer.status == Status.SUCCESSFUL
    finally:
        raw.close()
    assert other in server.isnsadm(other, "--list", "nodes")


def test_a_message_split_over_pdus_is_answered(ours: Server) -> None:
    """5.2: a message split over PDUs is answered (isnsd drops it, see
    tests/core/test_isns_peers.py)."""
    raw = Raw(ours.port)
    try:
        answer = raw.send(I.encode(_registration(), max_payload=8))
        assert answer is not None and answer.status == Status.SUCCESSFUL
    finally:
        raw.close()


# a DevAttrQry header whose PDU LENGTH promises 400 bytes that never come
_LIAR = I.encode(I.PDU(FunctionId.DEV_ATTR_QRY, bytes(16), I.Flag.CLIENT | 0x0C00, length=400),
                 strict=False)  # fmt: skip


def test_a_message_split_across_reads_is_answered(server: Server) -> None:
    """TCP gives no message boundaries (5.2): a registration that arrives a few bytes
    per read, with pauses, is one message, answered once."""
    data = I.encode(_registration(5, "trickle.example", INI + "-trickle"))
    raw = Raw(server.port)
    try:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 3):
            raw.sock.sendall(data[i : i + 3])
            time.sleep(0.01)
        answer = raw.send(b"")
        assert answer is not None and answer.status == Status.SUCCESSFUL, answer
        assert answer.transaction_id == 5
    finally:
        raw.close()


def test_a_lying_pdu_length_holds_up_no_other_client(server: Server) -> None:
    """A connection whose PDU LENGTH promises bytes never sent (5.1.3) costs that
    connection only: isnsadm and a second raw client are served meanwhile. Ours then
    closes it after its idle time-out (2 s here); isnsd keeps it open, which RFC 4171
    allows (it sets no time-out), so the close is checked on ours only."""
    liar = Raw(server.port, timeout=10)
    try:
        liar.sock.sendall(_LIAR)
        other = Raw(server.port)
        try:
            answer = other.send(I.encode(_registration(3, "second.example", INI + "-second")))
            assert answer is not None and answer.status == Status.SUCCESSFUL, answer
        finally:
            other.close()
        assert INI + "-second" in server.isnsadm(INI, "--list", "nodes")
        if server.kind == "ours":
            started = time.monotonic()
            assert liar.sock.recv(100) == b""  # closed, no answer
            assert time.monotonic() - started < 5
    finally:
        liar.close()


# ------------------------------------------------------------------ ESI and SCN over TCP


class Listener:
    """A TCP port for ESI or SCN: records each message; answers it if ``answer``, else
    keeps the connection open and silent."""

    def __init__(self, answer: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.answer = answer
        self.received: list[Message] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(3)
            dec = MessageDecoder()
            msg = None
            try:
                while (msg := dec.next_message()) is None:
                    data = conn.recv(4096)
                    if not data:
                        break
                    dec.feed(data)
                if msg is not None:
                    self.received.append(msg)
                    if self.answer:
                        echo = (
                            msg.attributes if msg.function == FunctionId.ESI else msg.attributes[:1]
                        )
                        # from the client side whatever the request's flags said:
                        # isnsd sends ESI with the Client flag (see isns/client.py)
                        rsp = replace(msg.response(Status.SUCCESSFUL, echo), flags=I.Flag.CLIENT)
                        conn.sendall(I.encode(rsp))
            except OSError:
                pass
            if self.answer or msg is None:
                conn.close()
            else:
                self._held.append(conn)  # read, never answered, never closed

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.sock.close()


def _register_esi(port: int, node: str, entity: str, esi_port: int, portal: int) -> Message | None:
    raw = Raw(port)
    try:
        msg = Message.request(
            FunctionId.DEV_ATTR_REG, source=Attribute.of(Tag.ISCSI_NAME, node),
            keys=[Attribute.of(Tag.ENTITY_IDENTIFIER, entity)],
            operating=[Attribute.of(Tag.ENTITY_IDENTIFIER, entity),
                       Attribute.of(Tag.REGISTRATION_PERIOD, 0),
                       Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
                       Attribute.of(Tag.PORTAL_TCP_UDP_PORT, I.port_value(portal)),
                       Attribute.of(Tag.ESI_INTERVAL, 1),
                       Attribute.of(Tag.ESI_PORT, I.port_value(esi_port)),
                       Attribute.of(Tag.ISCSI_NAME, node),
                       Attribute.of(Tag.ISCSI_NODE_TYPE, 1)])  # fmt: skip
        return raw.send(I.encode(msg))
    finally:
        raw.close()


def test_esi_unanswered_deregisters_answered_stays(server: Server) -> None:
    """5.6.5.13, 6.3.4: ESI every second; the entity whose ESI port accepts but never
    answers (a client that registers and goes quiet) is gone after its retransmissions
    (ours: threshold 2; isnsd: ESIRetries 2), the one that answers stays. isnsd sends
    its ESI with the Client flag (5.1.4 wants the Server flag): recorded, not judged."""
    silent, answering = Listener(answer=False), Listener(answer=True)
    try:
        rsp = _register_esi(server.port, T1, "silent.example", silent.port, 3260)
        assert rsp is not None and rsp.status == 0
        rsp = _register_esi(server.port, T2, "answering.example", answering.port, 3261)
        assert rsp is not None and rsp.status == 0
        deadline = time.monotonic() + 15
        while T1 in server.isnsadm(INI, "--list", "nodes"):
            assert time.monotonic() < deadline, "the silent entity was never deregistered"
            time.sleep(0.5)
        assert len(silent.received) >= 2 and len(answering.received) >= 2
        assert all(m.function == FunctionId.ESI for m in silent.received)
        if server.kind == "ours":
            assert not any(I.violations(m) for m in silent.received)
        assert T2 in server.isnsadm(INI, "--list", "nodes")
    finally:
        silent.close()
        answering.close()


def test_scn_reaches_the_scn_port_when_isnsadm_registers_a_target(ours: Server) -> None:
    scn = Listener(answer=True)
    raw = Raw(ours.port)
    try:
        src = Attribute.of(Tag.ISCSI_NAME, INI)
        reg = Message.request(FunctionId.DEV_ATTR_REG, source=src, transaction_id=1, operating=[
            Attribute.of(Tag.ENTITY_IDENTIFIER, "scn.example"),
            Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
            Attribute.of(Tag.PORTAL_TCP_UDP_PORT, I.port_value(1)),
            Attribute.of(Tag.SCN_PORT, I.port_value(scn.port)), src,
            Attribute.of(Tag.ISCSI_NODE_TYPE, 2)])  # fmt: skip
        rsp = raw.send(I.encode(reg))
        assert rsp is not None and rsp.status == 0
        scn_reg = Message.request(FunctionId.SCN_REG, source=src, keys=[src], transaction_id=2,
                                  operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)])  # fmt: skip
        rsp = raw.send(I.encode(scn_reg))
        assert rsp is not None and rsp.status == 0
        assert "rc=0" in ours.isnsadm(T1, "--register", "entity=t1.example",
                                      "portal=127.0.0.1:3260", f"target={T1}")  # fmt: skip
        deadline = time.monotonic() + 10
        while not scn.received:
            assert time.monotonic() < deadline, "no SCN arrived"
            time.sleep(0.1)
        msg = scn.received[0]
        assert msg.function == FunctionId.SCN and not I.violations(msg)
        assert [a.decoded() for a in msg.attributes[2:4]] == [I.ScnEvent.OBJECT_ADDED, T1]
    finally:
        raw.close()
        scn.close()
