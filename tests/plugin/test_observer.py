"""The recording proxy (harness/observer.py): byte-exact forwarding, the digest switch
after login, rewriting, malformed input, shutdown.

Both ends are plain sockets held by the test: ``initiator`` connects to the proxy,
``target`` is the connection the proxy opened to our listening socket.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from iscsi_conformance.core.pdu import (
    LoginRequest,
    LoginResponse,
    NopIn,
    NopOut,
    ScsiDataIn,
    Tamper,
    decode,
    encode,
)
from iscsi_conformance.core.text import format_pairs
from iscsi_conformance.harness.observer import Forged, Observer
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.plugin.observed import observed  # noqa: F401  (import check)

DIGESTS = format_pairs([("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])


@dataclasses.dataclass
class Link:
    observer: Observer
    initiator: socket.socket
    target: socket.socket


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture
def make_link() -> Iterator[object]:
    made: list[tuple[Observer, list[socket.socket]]] = []

    def make(rewrite: object = None) -> Link:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)
        obs = Observer("127.0.0.1", listener.getsockname()[1], rewrite=rewrite)  # type: ignore[arg-type]
        obs.start()
        ini = socket.create_connection(("127.0.0.1", obs.port), timeout=5)
        tgt, _ = listener.accept()
        tgt.settimeout(5)
        listener.close()
        made.append((obs, [ini, tgt]))
        return Link(obs, ini, tgt)

    yield make
    for obs, socks in made:
        for s in socks:
            s.close()
        obs.stop()


def _login(link: Link, *, digests: bool) -> None:
    """A one-round login to full feature phase, optionally agreeing on CRC32C digests."""
    req = LoginRequest(transit=True, csg=1, nsg=3, isid=0x400001, itt=1,
                       data=DIGESTS if digests else b"")  # fmt: skip
    link.initiator.sendall(encode(req))
    assert _recv_exact(link.target, len(encode(req))) == encode(req)
    resp = LoginResponse(transit=True, csg=1, nsg=3, isid=0x400001, tsih=7, itt=1, statsn=5,
                         expcmdsn=1, maxcmdsn=8, data=DIGESTS if digests else b"")  # fmt: skip
    link.target.sendall(encode(resp))
    assert _recv_exact(link.initiator, len(encode(resp))) == encode(resp)


def test_forwards_byte_exactly_and_records_both_directions(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=False)
    nop = encode(NopOut(immediate=True, itt=9, cmdsn=1, expstatsn=6, data=b"ping!"))
    # fed in awkward pieces: the proxy frames whole PDUs itself
    for i in range(0, len(nop), 7):
        link.initiator.sendall(nop[i : i + 7])
    assert _recv_exact(link.target, len(nop)) == nop
    assert link.observer.wait_for(lambda: len(link.observer.connections[0].entries) == 3)
    conn = link.observer.connections[0]
    assert [e.direction for e in conn.entries] == ["i->t", "t->i", "i->t"]
    assert conn.entries[2].raw == nop
    assert isinstance(conn.entries[2].pdu, NopOut) and conn.entries[2].pdu.data == b"ping!"
    assert conn.in_full_feature and not conn.header_digest
    assert conn.entries[2].full_feature and not conn.entries[0].full_feature
    trace = conn.trace.to_json()
    assert [e["direction"] for e in trace["entries"]] == ["send", "recv", "send"]


def test_digests_switch_after_the_final_login_response(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=True)
    conn = link.observer.connections[0]
    assert conn.header_digest and conn.data_digest
    nop = encode(NopOut(immediate=True, itt=9, cmdsn=1, expstatsn=6, data=b"abc"),
                 header_digest=True, data_digest=True)  # fmt: skip
    link.initiator.sendall(nop)
    assert _recv_exact(link.target, len(nop)) == nop
    nopin = encode(NopIn(itt=9, statsn=6, expcmdsn=1, maxcmdsn=8, data=b"abc"),
                   header_digest=True, data_digest=True)  # fmt: skip
    link.target.sendall(nopin)
    assert _recv_exact(link.initiator, len(nopin)) == nopin
    assert link.observer.wait_for(lambda: len(conn.entries) == 4)
    assert not conn.errors
    assert isinstance(conn.entries[3].pdu, NopIn)


def test_data_digest_error_is_recorded_and_forwarded(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=True)
    bad = encode(NopOut(immediate=True, itt=9, cmdsn=1, expstatsn=6, data=b"abc"),
                 header_digest=True, data_digest=True, strict=False,
                 tamper=Tamper(data_digest_value=0x1234))  # fmt: skip
    good = encode(NopOut(immediate=True, itt=10, cmdsn=1, expstatsn=6), header_digest=True)
    link.initiator.sendall(bad + good)
    assert _recv_exact(link.target, len(bad + good)) == bad + good
    conn = link.observer.connections[0]
    assert link.observer.wait_for(lambda: len(conn.entries) == 4)
    assert conn.entries[2].pdu is None and "data digest" in conn.entries[2].note
    assert isinstance(conn.entries[3].pdu, NopOut)  # still in step
    assert len(conn.errors) == 1 and conn.errors[0][0] == "i->t"


def test_malformed_input_turns_into_a_byte_pipe(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=True)
    bad = encode(NopOut(immediate=True, itt=9, cmdsn=1, expstatsn=6), header_digest=True,
                 strict=False, tamper=Tamper(header_digest_value=0))  # fmt: skip
    junk = bytes(range(256)) * 3
    link.initiator.sendall(bad)
    assert _recv_exact(link.target, len(bad)) == bad
    link.initiator.sendall(junk)
    assert _recv_exact(link.target, len(junk)) == junk
    conn = link.observer.connections[0]
    assert link.observer.wait_for(
        lambda: sum(len(e.raw) for e in conn.entries[2:]) == len(bad + junk)
    )
    assert conn.errors and conn.errors[0][0] == "i->t"
    # the other direction still decodes
    nopin = encode(NopIn(itt=9, statsn=6, expcmdsn=1, maxcmdsn=8), header_digest=True)
    link.target.sendall(nopin)
    assert _recv_exact(link.initiator, len(nopin)) == nopin
    assert link.observer.wait_for(lambda: isinstance(conn.entries[-1].pdu, NopIn))


def test_rewrite_hook_replaces_drops_and_forges(make_link: object) -> None:
    def rewrite(conn: object, direction: str, pdu: object) -> object:
        if isinstance(pdu, NopIn):
            return dataclasses.replace(pdu, maxcmdsn=pdu.expcmdsn)
        if isinstance(pdu, NopOut) and pdu.itt == 66:
            return None
        if isinstance(pdu, ScsiDataIn):
            return Forged(pdu, Tamper(data_digest_value=0xDEAD))
        return pdu

    link: Link = make_link(rewrite)  # type: ignore[operator]
    _login(link, digests=True)
    link.target.sendall(encode(NopIn(itt=9, statsn=6, expcmdsn=1, maxcmdsn=8), header_digest=True))
    got = decode(_recv_exact(link.initiator, 52), header_digest=True)
    assert not isinstance(got, type(None)) and got[0].maxcmdsn == 1  # type: ignore[union-attr,index]
    link.initiator.sendall(encode(NopOut(immediate=True, itt=66, cmdsn=1), header_digest=True))
    marker = encode(NopOut(immediate=True, itt=67, cmdsn=1), header_digest=True)
    link.initiator.sendall(marker)
    assert _recv_exact(link.target, len(marker)) == marker  # itt 66 never arrived
    data_in = ScsiDataIn(final=True, itt=9, statsn=6, expcmdsn=1, maxcmdsn=8, data=b"xyzw")
    link.target.sendall(encode(data_in, header_digest=True, data_digest=True))
    raw = _recv_exact(link.initiator, 48 + 4 + 4 + 4)
    assert raw[-4:] == (0xDEAD).to_bytes(4, "little")
    conn = link.observer.connections[0]
    assert link.observer.wait_for(lambda: any(e.note.startswith("forged") for e in conn.entries))
    assert [e.pdu.itt for e in conn.sent_by_initiator(NopOut)] == [66, 67]  # type: ignore[union-attr]
    assert [e.pdu.maxcmdsn for e in conn.seen_by_initiator(NopIn)] == [1]  # type: ignore[union-attr]


def test_injection_reaches_the_initiator(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=False)
    conn = link.observer.connections[0]
    ping = NopIn(itt=0xFFFFFFFF, ttt=0x42, statsn=6, expcmdsn=1, maxcmdsn=8)
    conn.inject(ping)
    assert decode(_recv_exact(link.initiator, 48))[0] == ping  # type: ignore[index]
    assert link.observer.wait_for(lambda: conn.seen_by_initiator(NopIn) != [])


def test_half_close_and_stop(make_link: object) -> None:
    link: Link = make_link()  # type: ignore[operator]
    _login(link, digests=False)
    link.initiator.shutdown(socket.SHUT_WR)
    assert link.target.recv(10) == b""  # EOF forwarded
    link.target.close()
    assert link.observer.wait_closed(5)
    port = link.observer.port
    link.observer.stop()
    link.observer.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_unreachable_target_is_a_harness_error() -> None:
    port = free_tcp_port()  # nothing listens there now
    with Observer("127.0.0.1", port, connect_timeout=2) as obs:
        ini = socket.create_connection(("127.0.0.1", obs.port), timeout=5)
        assert ini.recv(10) == b""
        ini.close()
        assert obs.wait_for(lambda: bool(obs.harness_errors), 5)
