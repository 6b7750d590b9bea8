"""A running target that answers no login is taken as hung (harness/peerpool.py hung()).

Seen with tgtd looping in its connection close after a stray Data-Out: the process
runs and the kernel accepts TCP connections, but no Login Response ever comes. Four
stand-in portals: one that answers, one that accepts and stays silent, one that
closes at once, and one where nothing listens.
"""

from __future__ import annotations

import socket
import threading

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.peerpool import hung
from iscsi_conformance.peers.base import TargetEndpoint


def _portal(behaviour: str) -> tuple[socket.socket, TargetEndpoint]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            seen.append(conn.recv(4096))
            if behaviour == "answers":
                conn.sendall(bytes([0x23]) + bytes(47))  # a Login Response header
            elif behaviour == "silent":
                conn.recv(4096)  # until the prober gives up and closes

    if behaviour != "nothing":
        threading.Thread(target=serve, daemon=True).start()
    port = srv.getsockname()[1]
    if behaviour == "nothing":
        srv.close()
    return srv, TargetEndpoint("127.0.0.1", port, "iqn.2024-01.org.example:t")


def test_a_target_that_answers_a_login_is_not_hung() -> None:
    srv, ep = _portal("answers")
    with srv:
        assert hung(ep, within=3) is None


def test_a_silent_target_is_hung() -> None:
    srv, ep = _portal("silent")
    with srv:
        why = hung(ep, within=1)
    assert why is not None and "no Login Response within 1 s" in why


def test_a_target_that_closes_or_refuses_is_hung() -> None:
    srv, ep = _portal("closes")
    with srv:
        why = hung(ep, within=3)
    assert why is not None and "closed a new connection" in why
    _, ep = _portal("nothing")
    why = hung(ep, within=3)
    assert why is not None and "a login to it failed" in why


def test_the_probe_is_a_valid_login_request() -> None:
    srv, ep = _portal("answers")
    got: list[bytes] = []
    real = socket.socket.sendall

    def spy(self: socket.socket, data: bytes) -> None:  # type: ignore[override]
        got.append(bytes(data))
        real(self, data)

    socket.socket.sendall = spy  # type: ignore[method-assign]
    try:
        with srv:
            assert hung(ep, within=3) is None
    finally:
        socket.socket.sendall = real  # type: ignore[method-assign]
    decoded = P.decode(got[0])
    assert not isinstance(decoded, P.NeedMore)
    pdu = decoded[0]
    assert isinstance(pdu, P.LoginRequest) and pdu.csg == 0 and not pdu.transit
    assert b"TargetName=" + ep.iqn.encode() + b"\0" in pdu.data
