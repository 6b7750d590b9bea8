"""tgt driver: unit parts, then the real tgtd (native and in a container), checked
from the host with libiscsi's own tools (iscsi-inq, iscsi-ls)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.peers.base import ChapAccount, TargetEndpoint, TargetSpec
from iscsi_conformance.peers.registry import get_target_driver, target_names
from iscsi_conformance.peers.tgt import TGTD_RUN_DIR, TgtTarget, upstream_version

IQN = "iqn.2024-01.org.example.conformance:tgt"
USER, SECRET = "alice", "alice-secret-12"
MUSER, MSECRET = "tgt-out", "target-secret-34"


def test_upstream_version() -> None:
    assert upstream_version("1:1.0.85-1+deb12u1") == "1.0.85"
    assert upstream_version("1.0.85") == "1.0.85"


def test_registry_knows_tgt() -> None:
    assert "tgt" in target_names()
    drv = get_target_driver("tgt", mode="native")
    assert isinstance(drv, TgtTarget) and drv.mode == "native"
    assert drv.manifest.capabilities["first_lun"] == 1
    with pytest.raises(ConfigError, match="modes"):
        TgtTarget(mode="microvm")


def test_daemon_argv_comes_from_template() -> None:
    drv = TgtTarget(mode="native")
    assert drv._daemon_argv(123, "127.0.0.1:4000") == [
        "tgtd",
        "-f",
        "-C",
        "123",
        "--iscsi",
        "portal=127.0.0.1:4000",
    ]


# --------------------------------------------------------------------------- real tgtd


def _have_native() -> bool:
    return shutil.which("tgtd") is not None and shutil.which("iscsi-inq") is not None


def _inq(url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        ["iscsi-inq", url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def _url(ep: TargetEndpoint, lun: int, cred: str = "", query: str = "") -> str:
    host, port = ep.host_side or (ep.host, ep.port)
    return f"iscsi://{cred}{host}:{port}/{ep.iqn}/{lun}{query}"


@pytest.fixture(scope="module", params=["native", "container"])
def tgt(request: pytest.FixtureRequest) -> Iterator[TgtTarget]:
    if not _have_native():
        pytest.skip("needs tgt and libiscsi-bin on this host (ci/setup_host.sh)")
    if request.param == "container":
        from iscsi_conformance.peers.docker_env import DockerUnavailable, ensure_engine

        try:
            ensure_engine()
        except DockerUnavailable as exc:
            pytest.skip(str(exc))
    drv = TgtTarget(mode=request.param)
    drv.start()
    try:
        yield drv
    finally:
        drv.stop()


@pytest.mark.peer
def test_start_version_and_show(tgt: TgtTarget) -> None:
    assert tgt.version() == "1.0.85" or tgt.version()[0].isdigit()
    assert tgt.startup_seconds is not None and tgt.startup_seconds < 30
    assert "State: ready" in tgt.tgtadm("--mode", "sys", "--op", "show").stdout
    d = tgt.describe()
    assert d["name"] == "tgt" and d["mode"] == tgt.mode


@pytest.mark.peer
def test_one_way_chap(tgt: TgtTarget) -> None:
    ep = tgt.configure(TargetSpec(iqn=IQN + ":chap", chap=ChapAccount(USER, SECRET)))
    assert ep.luns == (1,)
    ok = _inq(_url(ep, 1, f"{USER}%{SECRET}@"))
    assert ok.returncode == 0, ok.stderr
    assert "DIRECT_ACCESS" in ok.stdout
    bad = _inq(_url(ep, 1, f"{USER}%wrong-secret-99@"))
    assert bad.returncode != 0 and "Authentication failure" in bad.stderr + bad.stdout
    none = _inq(_url(ep, 1))
    assert none.returncode != 0
    # The secret never reaches the log.
    assert all(SECRET not in " ".join(r.argv) + r.stdout + r.stderr for r in tgt.log.records)
    assert any("***" in " ".join(r.argv) for r in tgt.log.records)
    tgt.deconfigure(ep.iqn)
    assert ep.iqn not in tgt.show()


@pytest.mark.peer
def test_mutual_chap(tgt: TgtTarget) -> None:
    spec = TargetSpec(
        iqn=IQN + ":mutual",
        chap=ChapAccount(USER, SECRET),
        mutual_chap=ChapAccount(MUSER, MSECRET),
    )
    ep = tgt.configure(spec)
    good = {"LIBISCSI_CHAP_TARGET_USERNAME": MUSER, "LIBISCSI_CHAP_TARGET_PASSWORD": MSECRET}
    assert _inq(_url(ep, 1, f"{USER}%{SECRET}@"), good).returncode == 0
    bad = {
        "LIBISCSI_CHAP_TARGET_USERNAME": MUSER,
        "LIBISCSI_CHAP_TARGET_PASSWORD": "not-the-secret",
    }
    res = _inq(_url(ep, 1, f"{USER}%{SECRET}@"), bad)
    assert res.returncode != 0 and "CHAP_R" in res.stderr + res.stdout
    assert MSECRET not in repr(tgt.log.records)
    tgt.deconfigure(ep.iqn)


@pytest.mark.peer
def test_header_digest_settings(tgt: TgtTarget) -> None:
    ep = tgt.configure(
        TargetSpec(iqn=IQN + ":digest", header_digest=("CRC32C",), data_digest=("CRC32C", "None"))
    )
    tid = str(tgt._targets[ep.iqn]["tid"])
    params = tgt.tgtadm("--mode", "target", "--op", "show", "--tid", tid).stdout
    # tgt keeps digests as a bit set and shows only the strongest one
    assert "HeaderDigest=CRC32C" in params and "DataDigest=CRC32C" in params
    assert _inq(_url(ep, 1, query="?header_digest=crc32c")).returncode == 0
    # tgt 1.0.85 always adds None to the set (digest_str_to_val starts from DIGEST_NONE),
    # so it cannot require CRC32C: an initiator that offers only None still gets in.
    assert _inq(_url(ep, 1, query="?header_digest=none")).returncode == 0
    assert not tgt.manifest.supports("digest_required")
    assert any("cannot require" in r.stdout for r in tgt.log.records)
    tgt.deconfigure(ep.iqn)


@pytest.mark.peer
@pytest.mark.parametrize("permanent", [False, True], ids=["temporary", "permanent"])
def test_redirect(tgt: TgtTarget, permanent: bool) -> None:
    import asyncio

    from iscsi_conformance.initiator.client import Session
    from iscsi_conformance.initiator.login_flow import TargetRedirected

    spec = TargetSpec(iqn=IQN + ":moved", redirect="127.0.0.2:3260", redirect_permanent=permanent)
    ep = tgt.configure(spec)
    tid = str(tgt._targets[ep.iqn]["tid"])
    shown = tgt.tgtadm("--mode", "target", "--op", "show", "--tid", tid).stdout
    assert "RedirectAddress=127.0.0.2" in shown and "RedirectPort=3260" in shown
    host, port = ep.host_side or (ep.host, ep.port)

    async def login() -> None:
        session = await Session.connect(host, port, ep.iqn, follow_redirects=False, timeout=10)
        await session.close()

    # tgtd answers 0101 or 0102 with TargetAddress=address:port (usr/iscsi/iscsid.c)
    with pytest.raises(TargetRedirected) as info:
        asyncio.run(login())
    assert info.value.address == "127.0.0.2:3260"
    assert info.value.login_status == (0x0102 if permanent else 0x0101)
    tgt.deconfigure(ep.iqn)


@pytest.mark.peer
def test_discovery_luns_and_acl(tgt: TgtTarget) -> None:
    from iscsi_conformance.peers.base import LunSpec

    spec = TargetSpec(
        iqn=IQN + ":acl",
        luns=(LunSpec(size_bytes=8 << 20), LunSpec(size_bytes=16 << 20, block_size=4096)),
        allowed_initiators=("iqn.2024-01.org.example:allowed",),
    )
    ep = tgt.configure(spec)
    assert ep.luns == (1, 2)
    host, port = ep.host_side or (ep.host, ep.port)
    ls = subprocess.run(
        ["iscsi-ls", "-i", "iqn.2024-01.org.example:allowed", "-s", f"iscsi://{host}:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ls.returncode == 0, ls.stderr
    assert ep.iqn in ls.stdout and "Lun:2" in ls.stdout
    rc16 = subprocess.run(
        ["iscsi-readcapacity16", "-i", "iqn.2024-01.org.example:allowed", _url(ep, 2)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "LOGICAL BLOCK LENGTH IN BYTES:4096" in rc16.stdout
    denied = subprocess.run(
        ["iscsi-inq", "-i", "iqn.2024-01.org.example:someone-else", _url(ep, 1)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode != 0
    tgt.deconfigure(ep.iqn)


@pytest.mark.peer
def test_reconfigure_replaces_and_global_accounts(tgt: TgtTarget) -> None:
    ep = tgt.configure(TargetSpec(iqn=IQN + ":again", chap=ChapAccount(USER, SECRET)))
    ep2 = tgt.configure(TargetSpec(iqn=IQN + ":again"))  # replaced, no CHAP now
    assert ep2.iqn == ep.iqn and _inq(_url(ep2, 1)).returncode == 0
    tgt.configure(TargetSpec(iqn=IQN + ":a1", chap=ChapAccount(USER, SECRET)))
    with pytest.raises(ConfigError, match="global"):
        tgt.configure(TargetSpec(iqn=IQN + ":a2", chap=ChapAccount(USER, "another-secret-1")))
    for iqn in (IQN + ":again", IQN + ":a1", IQN + ":a2"):
        tgt.deconfigure(iqn)


@pytest.mark.peer
def test_native_stop_is_clean() -> None:
    if not _have_native():
        pytest.skip("needs tgt on this host")
    drv = TgtTarget(mode="native")
    drv.start()
    port = drv.control_port
    ep = drv.configure(TargetSpec(iqn=IQN + ":stop"))
    assert ep.host == "127.0.0.1" and ep.port != 3260
    daemon_record = drv.log.records[0]
    drv.stop()
    drv.stop()  # idempotent
    assert daemon_record.returncode == 0  # left through `tgtadm --mode system --op delete`
    assert not (TGTD_RUN_DIR / f"socket.{port}").exists()
    # Nothing listens on the portal any more.
    from iscsi_conformance.peers.tgt import port_open

    assert not port_open(ep.host, ep.port)


@pytest.mark.peer
def test_two_native_tgtd_side_by_side() -> None:
    if not _have_native():
        pytest.skip("needs tgt on this host")
    a, b = TgtTarget(mode="native"), TgtTarget(mode="native")
    a.start()
    try:
        b.start()
        try:
            assert a.control_port != b.control_port and a.portal != b.portal
            ea = a.configure(TargetSpec(iqn=IQN + ":a"))
            eb = b.configure(TargetSpec(iqn=IQN + ":b"))
            assert _inq(_url(ea, 1)).returncode == 0 and _inq(_url(eb, 1)).returncode == 0
        finally:
            b.stop()
    finally:
        a.stop()
    assert free_tcp_port() > 0
