"""open-iscsi in its micro-VM against tgt on the host's loopback (peers/openiscsi.py).

The guest reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU user-net); the driver does
that rewrite. One VM for the module (boot about 6 s); tgt runs natively on free ports.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from iscsi_conformance.errors import AuthenticationError, ConfigError, LoginError
from iscsi_conformance.peers import openiscsi as oi
from iscsi_conformance.peers.base import (
    ChapAccount,
    LoginOptions,
    LunSpec,
    TargetEndpoint,
    TargetSpec,
)
from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator

CHAP = ChapAccount("oi-user", "oi-secret-0123")
MUTUAL = ChapAccount("oi-target", "oi-mutual-4567")

# --------------------------------------------------------------------------- pure


def test_loopback_addresses_become_the_user_net_gateway() -> None:
    assert oi.guest_address("127.0.0.1", "microvm") == "10.0.2.2"
    assert oi.guest_address("localhost", "microvm") == "10.0.2.2"
    assert oi.guest_address("::1", "microvm") == "10.0.2.2"
    assert oi.guest_address("172.18.0.5", "container") == "172.18.0.5"
    assert oi.guest_address("127.0.0.1", "native") == "127.0.0.1"


def test_node_settings_for_mutual_chap_digests_and_keys() -> None:
    opts = LoginOptions(
        chap=CHAP,
        mutual_chap=MUTUAL,
        header_digest="CRC32C,None",
        data_digest="CRC32C",
        parameters=(("MaxRecvDataSegmentLength", "65536"), ("CHAP_A", "7,5")),
    )
    got = dict(oi.node_settings(opts))
    assert got["node.session.auth.authmethod"] == "CHAP"
    assert got["node.session.auth.username"] == CHAP.user
    assert got["node.session.auth.password_in"] == MUTUAL.secret
    assert got["node.conn[0].iscsi.HeaderDigest"] == "CRC32C,None"
    assert got["node.conn[0].iscsi.DataDigest"] == "CRC32C"
    assert got["node.conn[0].iscsi.MaxRecvDataSegmentLength"] == "65536"
    assert got["node.session.auth.chap_algs"] == "SHA256,MD5"
    assert dict(oi.node_settings(LoginOptions()))["node.session.auth.authmethod"] == "None"
    with pytest.raises(ConfigError):
        oi.node_settings(LoginOptions(mutual_chap=MUTUAL))
    with pytest.raises(ConfigError):
        oi.node_settings(LoginOptions(parameters=(("Bogus", "1"),)))


def test_parsers() -> None:
    assert oi.parse_discovery("10.0.2.15:3260,1 iqn.a:b\n[::1]:3260,2 iqn.a:c\n") == [
        ("iqn.a:b", "10.0.2.15:3260,1"),
        ("iqn.a:c", "[::1]:3260,2"),
    ]
    assert oi.parse_sessions("tcp: [3] 10.0.2.2:40000,1 iqn.a:b (non-flash)\n") == [
        (3, "10.0.2.2:40000,1", "iqn.a:b")
    ]
    text = (
        "\t\t************************\n\t\tNegotiated iSCSI params:\n\t\t************************\n"
        "\t\tHeaderDigest: CRC32C\n\t\tDataDigest: None\n\t\tMaxRecvDataSegmentLength: 262144\n"
    )
    assert oi.parse_negotiated(text) == {
        "HeaderDigest": "CRC32C",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "262144",
    }


def test_one_script_per_login_reports_through_markers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The login's one agent round trip: the generated shell parses, a failing setup
    step ends it with SETUP_FAILED before the login, and the markers read back."""
    import subprocess

    attach = oi.attach_script("iqn.a:b", "[::1]:3260", (0, 1), timeout=0.4)
    setup = oi._setup_script(["true", "false || true", "false", "echo never"])
    for script in (attach, setup):
        assert subprocess.run(["bash", "-n"], input=script.encode()).returncode == 0
    ran = subprocess.run(["bash"], input=setup.encode(), capture_output=True)
    assert ran.returncode == oi.SETUP_FAILED and b"never" not in ran.stdout
    assert "ic-setup-done" not in oi.parse_markers(ran.stdout.decode())
    ok = subprocess.run(["bash"], input=oi._setup_script(["true"]).encode(), capture_output=True)
    assert ok.returncode == 0 and "ic-setup-done" in oi.parse_markers(ok.stdout.decode())
    # the session is found by target name and portal, as iscsiadm -m session lists them
    fake = tmp_path / "iscsiadm"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$3" = "-r" ]; then echo "Negotiated iSCSI params:"; echo "HeaderDigest: None"; exit 0; fi\n'
        "echo 'tcp: [2] [::1]:3261,1 iqn.a:b (non-flash)'\n"
        "echo 'tcp: [7] [::1]:3260,1 iqn.a:b (non-flash)'\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    ran = subprocess.run(["bash"], input=attach.encode(), capture_output=True, env=env)
    marks = oi.parse_markers(ran.stdout.decode())
    assert marks["ic-sid"] == ["7"] and ran.returncode == 92  # no /sys here: no device
    assert b"no block device for session 7 LUN 0" in ran.stderr
    assert oi.parse_negotiated(ran.stdout.decode().split("@@ic-keys-end")[0]) == {
        "HeaderDigest": "None"
    }
    assert oi._without_markers("@@ic-sid 3\n10.0.2.2:3260,1 iqn.x\n") == "10.0.2.2:3260,1 iqn.x"
    assert oi._name_values([("a", "1"), ("b", "2")]) == ["-n", "a", "-v", "1", "-n", "b", "-v", "2"]


# --------------------------------------------------------------------------- real peers

HAVE = shutil.which("qemu-system-x86_64") and shutil.which("tgtd") and shutil.which("debootstrap")
peer = pytest.mark.skipif(not HAVE, reason="needs qemu-system-x86, tgt, debootstrap")


@pytest.fixture(scope="module")
def initiator():  # type: ignore[no-untyped-def]
    o = OpenIscsiInitiator(mode="microvm")
    o.start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def tgt():  # type: ignore[no-untyped-def]
    from iscsi_conformance.peers.tgt import TgtTarget

    t = TgtTarget(mode="native")
    t.start()
    yield t
    t.stop()


def _spec(name: str, **kw) -> TargetSpec:  # type: ignore[no-untyped-def]
    return TargetSpec(
        iqn=f"iqn.2024-01.org.example:oi-{name}", luns=(LunSpec(size_bytes=16 << 20),), **kw
    )


@peer
@pytest.mark.peer
def test_version(initiator: OpenIscsiInitiator) -> None:
    assert "iscsiadm version 2." in initiator.version()
    assert initiator.vm is not None and initiator.vm.boot_seconds is not None


@peer
@pytest.mark.peer
def test_discovery_through_the_gateway(initiator: OpenIscsiInitiator, tgt) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(_spec("disc"))
    try:
        found = initiator.discover(ep.host, ep.port)
        assert any(name == ep.iqn for name, _ in found)
        # tgt reports the portal it listens on (127.0.0.1): from the VM that is not
        # where it is, which is why login never uses the SendTargets answer.
        assert any(
            portal.startswith(f"127.0.0.1:{ep.port}") for name, portal in found if name == ep.iqn
        )
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_login_write_read_back_logout(initiator: OpenIscsiInitiator, tgt) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(_spec("io"))
    try:
        started = time.monotonic()
        s = initiator.login(ep)
        assert time.monotonic() - started < 60
        lun = ep.luns[0]
        assert initiator.device(s, lun).startswith("/dev/sd")
        data = os.urandom(512 * 24)
        initiator.write(s, lun, 3, data)
        assert initiator.read(s, lun, 3, 24) == data
        inq = initiator.inquiry(s, lun)
        assert inq[0] & 0x1F == 0  # direct-access block device
        assert inq[8:16].strip() == b"IET"
        initiator.logout(s)
        assert str(s.ref["sid"]) not in initiator.iscsiadm("-m", "session").text.split("]")[0]
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_chap(initiator: OpenIscsiInitiator, tgt, mutual: bool) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(
        _spec(f"chap{int(mutual)}", chap=CHAP, mutual_chap=MUTUAL if mutual else None)
    )
    try:
        good = LoginOptions(chap=CHAP, mutual_chap=MUTUAL if mutual else None)
        s = initiator.login(ep, options=good)
        data = os.urandom(4096)
        initiator.write(s, ep.luns[0], 0, data)
        assert initiator.read(s, ep.luns[0], 0, 8) == data
        initiator.logout(s)
        with pytest.raises(AuthenticationError):
            initiator.login(
                ep, options=LoginOptions(chap=ChapAccount(CHAP.user, "wrong-secret-99"))
            )
        logged = "\n".join(" ".join(r.argv) + r.stdout + r.stderr for r in initiator.log.records)
        assert CHAP.secret not in logged and MUTUAL.secret not in logged
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_mutual_chap_with_the_wrong_target_secret_fails(initiator: OpenIscsiInitiator, tgt) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(_spec("mutualbad", chap=CHAP, mutual_chap=MUTUAL))
    try:
        bad = LoginOptions(chap=CHAP, mutual_chap=ChapAccount(MUTUAL.user, "not-the-mutual-1"))
        with pytest.raises(LoginError):
            initiator.login(ep, options=bad)
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_digests_are_negotiated(initiator: OpenIscsiInitiator, tgt) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(
        _spec("digest", header_digest=("CRC32C", "None"), data_digest=("CRC32C", "None"))
    )
    try:
        s = initiator.login(ep, options=LoginOptions(header_digest="CRC32C", data_digest="CRC32C"))
        assert s.negotiated.get("HeaderDigest") == "CRC32C"
        assert s.negotiated.get("DataDigest") == "CRC32C"
        data = os.urandom(512 * 130)  # more than one Data-Out PDU
        initiator.write(s, ep.luns[0], 100, data)
        assert initiator.read(s, ep.luns[0], 100, 130) == data
        initiator.logout(s)
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
def test_persistent_reservations(initiator: OpenIscsiInitiator, tgt) -> None:  # type: ignore[no-untyped-def]
    ep = tgt.configure(_spec("pr"))
    try:
        s = initiator.login(ep)
        lun = ep.luns[0]
        assert initiator.persistent_reserve_out(s, lun, "register", sa_key=0x1234).returncode == 0
        assert initiator.registered_keys(s, lun) == [0x1234]
        assert (
            initiator.persistent_reserve_out(s, lun, "reserve", key=0x1234, prout_type=5).returncode
            == 0
        )
        assert "0x1234" in initiator.persistent_reserve_in(s, lun, "read-reservation").text
        assert (
            initiator.persistent_reserve_out(s, lun, "release", key=0x1234, prout_type=5).returncode
            == 0
        )
        assert (
            initiator.persistent_reserve_out(s, lun, "register", key=0x1234, sa_key=0).returncode
            == 0
        )
        initiator.logout(s)
    finally:
        tgt.deconfigure(ep.iqn)


@peer
@pytest.mark.peer
@pytest.mark.slow
def test_open_iscsi_against_lio_two_vms(initiator: OpenIscsiInitiator) -> None:
    """Both kernel peers, each in its VM: guest -> 10.0.2.2:fwd -> host -> LIO's VM."""
    from iscsi_conformance.peers.lio import LioTarget

    lio = LioTarget(mode="microvm")
    lio.start()
    try:
        ep = lio.configure(
            TargetSpec(
                iqn="iqn.2024-01.org.example:oi-lio",
                chap=CHAP,
                allowed_initiators=(initiator.initiator_name,),
            )
        )
        assert isinstance(ep, TargetEndpoint)
        s = initiator.login(ep, options=LoginOptions(chap=CHAP, header_digest="CRC32C"))
        assert s.negotiated.get("HeaderDigest") == "CRC32C"
        data = os.urandom(8192)
        initiator.write(s, 0, 7, data)
        assert initiator.read(s, 0, 7, 16) == data
        assert initiator.inquiry(s, 0)[8:16] == b"LIO-ORG "
        initiator.logout(s)
    finally:
        lio.stop()
