"""The protected path on this machine: namespaces, two charons, SAs, the wire, cleanup.

Needs root and strongSwan (charon with kernel-libipsec and vici): a peer test. Charon
runs kernel-libipsec here, since this host kernel has no ``esp4``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from iscsi_conformance.ipsec import (
    DEFAULT,
    PROFILES,
    Capture,
    IkeFailed,
    ProtectedPath,
    SaProfile,
    call_in,
    charon_available,
    dissect,
    unsupported,
)
from iscsi_conformance.ipsec.ca import make_ca
from iscsi_conformance.ipsec.charon import FWMARK
from iscsi_conformance.report.redact import Redactor

pytestmark = [pytest.mark.peer]


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("the IPsec path needs root (namespaces, charon)")
    why = charon_available()
    if why:
        pytest.skip(f"strongSwan missing: {why}")
    with ProtectedPath(tmp_path_factory.mktemp("ipsec")) as p:
        yield p


def _echo_server(port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    srv.settimeout(5)
    return srv


def _round_trip(path: ProtectedPath, payload: bytes, *, mark: bool = False) -> bytes:
    """Send ``payload`` from the initiator host to an echo on the target's iSCSI port."""
    srv = call_in(path.target, lambda: _echo_server(3260))
    try:

        def client() -> bytes:
            with socket.socket() as c:
                if mark:  # charon's bypass mark: leave on the link, in the clear
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(FWMARK, 16))
                c.settimeout(3)
                c.connect((path.target.address, 3260))
                peer, _ = srv.accept()
                with peer:
                    c.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        got += peer.recv(65536)
                    peer.sendall(got)
                out = b""
                while len(out) < len(payload):
                    out += c.recv(65536)
                return out

        return call_in(path.initiator, client, timeout=30)
    finally:
        srv.close()


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_each_profile_carries_tcp_as_esp_only(
    path: ProtectedPath, profile: SaProfile, tmp_path: Path
) -> None:
    why = unsupported(profile, path.backend)
    if why:
        pytest.xfail(why)  # recorded: this ESP implementation cannot carry it
    est = path.establish(profile)
    t = est.transforms()
    assert t["mode"] == "TUNNEL" and t["protocol"] == "ESP" and t["encap"] == "yes"
    if profile.esp.startswith("AES_GCM_16"):
        assert t["encr-alg"] == "AES_GCM_16" and t["encr-keysize"] == profile.esp[-3:]
    else:
        assert (t["encr-alg"], t["encr-keysize"], t["integ-alg"]) == (
            "AES_CBC", "128", "HMAC_SHA2_256_128",
        )  # fmt: skip
    with Capture(path.target, tmp_path / "wire.pcapng"):
        payload = os.urandom(200_000)
        assert _round_trip(path, payload) == payload
    wire = dissect(tmp_path / "wire.pcapng")
    assert wire.cleartext == 0, wire.describe()
    assert wire.esp > 10 and wire.udpencap == wire.esp, wire.describe()


def test_wrong_psk_fails_ike_and_nothing_connects(path: ProtectedPath) -> None:
    with pytest.raises(IkeFailed) as err:
        path.establish(DEFAULT, target_psk="not-the-same-key")
    assert "AUTHENTICATION_FAILED" in str(err.value) or "authentication" in str(err.value)
    with pytest.raises(OSError):
        _round_trip(path, b"x" * 100)


def test_untrusted_certificate_fails_ike(path: ProtectedPath) -> None:
    with pytest.raises(IkeFailed):
        path.establish(SaProfile("cert", auth="pubkey"), target_ca=make_ca("untrusted"))


def test_no_common_proposal_fails_the_child(path: ProtectedPath) -> None:
    other = SaProfile("other", esp="AES_CBC_128/HMAC_SHA2_256_128")
    with pytest.raises(IkeFailed, match="NO_PROPOSAL_CHOSEN"):
        path.establish(DEFAULT, target_profile=other)
    with pytest.raises(OSError):
        _round_trip(path, b"x" * 100)


def test_cleartext_to_the_protected_port_is_dropped(path: ProtectedPath) -> None:
    path.establish(DEFAULT)
    with pytest.raises(OSError):  # a SYN that bypasses the tunnel: dropped by the target
        _round_trip(path, b"x" * 100, mark=True)


def test_clear_route_crosses_the_link_in_the_clear_beside_the_sa(
    path: ProtectedPath, tmp_path: Path
) -> None:
    """The benchmark's baseline (``bench_ipsec.py``): with the SA up, TCP between the
    second addresses goes over the same link as plain TCP, not through the tunnel."""
    path.establish(DEFAULT)
    ini, tgt = path.clear_route()
    srv = call_in(path.target, lambda: _echo_server(3261))
    payload = os.urandom(100_000)

    def client() -> bytes:
        with socket.socket() as c:
            c.settimeout(3)
            c.bind((ini, 0))
            c.connect((tgt, 3261))
            peer, _ = srv.accept()
            with peer:
                c.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += peer.recv(65536)
            return got

    try:
        with Capture(path.target, tmp_path / "clear.pcapng"):
            assert call_in(path.initiator, client, timeout=30) == payload
    finally:
        srv.close()
    wire = dissect(tmp_path / "clear.pcapng", port=3261)
    assert wire.tcp_iscsi_port > 10 and wire.esp == 0, wire.describe()


def test_secrets_never_reach_records_or_redacted_text(path: ProtectedPath) -> None:
    path.establish(SaProfile("cert", auth="pubkey"))
    path.establish(DEFAULT)
    dump = repr([c.records for c in path.charons.values()]) + repr(path.commands)
    dump += "".join(c.log_tail(200) for c in path.charons.values())
    for secret in path.secrets:
        assert secret not in dump
    red = Redactor(path.secrets)
    text = red.text(f"psk {path.psk} key {path.creds['initiator'].key_pem}")
    assert path.psk not in text and "PRIVATE KEY-----\nM" not in text


def test_a_killed_run_is_swept_by_the_next(tmp_path: Path) -> None:
    if os.geteuid() != 0 or charon_available():
        pytest.skip("needs root and strongSwan")
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from iscsi_conformance.ipsec import ProtectedPath, DEFAULT
        p = ProtectedPath(Path({str(tmp_path)!r})).open()
        p.establish(DEFAULT)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    names = [f"isc{proc.pid}i", f"isc{proc.pid}t"]
    assert set(names) <= set(netns.listnetns())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    from iscsi_conformance.ipsec import sweep

    assert set(names) <= set(sweep())
    assert not set(names) & set(netns.listnetns())
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a charon of the killed run survived"


def test_ctrl_c_removes_everything(tmp_path: Path) -> None:
    if os.geteuid() != 0 or charon_available():
        pytest.skip("needs root and strongSwan")
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from iscsi_conformance.ipsec import ProtectedPath, DEFAULT
        with ProtectedPath(Path({str(tmp_path)!r})) as p:
            p.establish(DEFAULT)
            print("up", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    assert not {f"isc{proc.pid}i", f"isc{proc.pid}t"} & set(netns.listnetns())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout:
            break
        time.sleep(0.1)
    assert not subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout
