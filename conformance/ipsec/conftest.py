"""The IPsec area's hosts: each peer of a pairing on a host of its own, a charon on each.

One :class:`~iscsi_conformance.ipsec.ProtectedPath` per pairing (built when the first
test of that pairing asks, closed when another pairing's test comes or the module
ends; the area's tests are ordered by pairing so each is built once): two hosts joined
by one veth, a charon on each, the run CA, the drop policy. A host is

- a network namespace of its own for a reference peer: the reference target is a
  process in it, the reference initiator runs in-process on a thread inside it;
- the peer's own container (its image, on a docker network of the area) for tgt and
  libiscsi: the container's network namespace gets the veth end and a charon from
  this machine (``ip netns attach``), the peer's tools run through ``docker exec``.

- the micro-VM for LIO: its guest (kernel ESP, a charon of its image reached over
  VICI through a forwarded port) is the target host; the VM's second NIC is a tap in
  the initiator host's namespace, the link that is captured.

- the micro-VM for open-iscsi: its guest (kernel ESP, charon as for LIO) is the
  initiator host, its tap goes into the target host's namespace and is the link
  captured (tunnel mode: the target's end is kernel-libipsec). For open-iscsi x LIO
  both taps go on a bridge in a namespace of their own, which is captured: ESP in a
  kernel at both ends, so transport mode and ESN run there.

Outside CI a machine without root, Docker or
strongSwan skips the area; in CI that is a failure (the issue's start-up rule), with
charon's log tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import PeerStartError
from iscsi_conformance.ipsec import (
    DEFAULT,
    Capture,
    Established,
    ProtectedPath,
    SaProfile,
    WireSummary,
    call_in,
    charon_available,
    dissect,
)

T = TypeVar("T")
OPEN_TARGET = "iqn.2024-01.org.example.ipsec:open"
CHAP_TARGET = "iqn.2024-01.org.example.ipsec:chap"
INITIATOR_NAME = "iqn.2024-01.org.example.ipsec:initiator"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(why: str) -> None:
    if _in_ci():
        pytest.fail(f"IPsec area cannot start: {why}")
    pytest.skip(f"IPsec area not run: {why}")


@dataclasses.dataclass
class Exchange:
    """What one login over the protected path did (the initiator's account of it)."""

    moved: int = 0
    inquiry: bytes = b""
    authenticated: str = ""  # "CHAP" or "None" where the initiator says; "" unknown
    digests: tuple[bool, bool] = (False, False)
    note: str = ""


class ReferenceInitiator:
    """The reference initiator, in-process on a thread inside the initiator host."""

    name = "reference"
    data_digest = True
    holds_session = True  # one login can outlive an SA change (SA deletion, rekey)

    def __init__(self, area: IPsecArea) -> None:
        self.area = area

    def discover(self) -> set[str]:
        from iscsi_conformance.initiator.client import discover

        host, port = self.area.portal
        found = self.area.run(
            lambda: discover(host, port, initiator_name=self.area.initiator_name, timeout=10)
        )
        return {t.name for t in found}

    def exchange(
        self,
        target: str,
        *,
        chap: ChapAccount | None = None,
        digests: bool = False,
        sizes: tuple[int, ...] = (),
        inquiry: bool = False,
        timeout: float = 10,
    ) -> Exchange:
        from iscsi_conformance.initiator.client import Session

        area = self.area
        host, port = area.portal
        keys = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"} if digests else None

        async def go() -> Exchange:
            kw: dict[str, Any] = {"chap": chap} if chap else {}
            if keys:
                kw["keys"] = keys
            s = await Session.connect(
                host, port, target, initiator_name=area.initiator_name, timeout=timeout, **kw
            )
            try:
                out = Exchange()
                if inquiry:
                    out.inquiry = bytes((await s.inquiry(area.lun)).data)
                if sizes:
                    bs = await s.block_size(area.lun)
                    out.moved = await _write_read_ref(s, area.lun, bs, sizes)
                r = s.login_result
                out.authenticated = r.authenticated if r is not None else ""
                out.digests = (s.negotiated.header_digest, s.negotiated.data_digest)
                return out
            finally:
                await s.logout()

        return area.run(go)


async def _write_read_ref(s: Any, lun: int, bs: int, sizes: tuple[int, ...], lba: int = 0) -> int:
    from iscsi_conformance.plugin import require

    done = 0
    for size in sizes:
        data = os.urandom(size)
        await s.write(lun, lba, data)
        back = await s.read(lun, lba, size // bs)
        require(back == data, "R7146-2-1", f"{size} bytes read back differ from those written")
        lba += size // bs
        done += size
    return done


class DriverInitiator:
    """A third-party initiator's driver, whose tools run on its host (libiscsi: inside
    its container; open-iscsi: in its micro-VM guest)."""

    # the mid-session steps (SA deleted, rekey) drive the reference initiator's own
    # session; a driver logs in per exchange (libiscsi's tools do so anyway)
    holds_session = False

    def __init__(self, area: IPsecArea, driver: Any) -> None:
        self.area, self.driver = area, driver
        self.name = driver.name
        # open-iscsi's session lives in the guest's kernel between commands: the SA can
        # go from under it (IPsec.Negative.SaDeletedMidSession's kernel variant)
        self.kernel_session = driver.name == "open-iscsi"
        # libiscsi 1.19 always offers DataDigest=None; open-iscsi offers what it is set to
        self.data_digest = driver.name == "open-iscsi"

    def discover(self) -> set[str]:
        host, port = self.area.portal
        from iscsi_conformance.peers.base import LoginOptions

        opts = LoginOptions(initiator_name=self.area.initiator_name)
        return {name for name, _addr in self.driver.discover(host, port, options=opts)}

    def exchange(
        self,
        target: str,
        *,
        chap: ChapAccount | None = None,
        digests: bool = False,
        sizes: tuple[int, ...] = (),
        inquiry: bool = False,
        timeout: float = 10,
    ) -> Exchange:
        from iscsi_conformance.peers.base import LoginOptions, TargetEndpoint
        from iscsi_conformance.plugin import require

        area = self.area
        host, port = area.portal
        endpoint = TargetEndpoint(host, port, target, luns=(area.lun,))
        opts = LoginOptions(
            chap=chap,
            header_digest="CRC32C" if digests else "None",
            data_digest="CRC32C" if digests and self.data_digest else "None",
            initiator_name=area.initiator_name,
        )
        saved = getattr(self.driver, "timeout", None)
        if timeout < 10 and saved is not None:  # a login expected to fail: end sooner
            self.driver.timeout = timeout + 1
        try:
            session = self.driver.login(endpoint, options=opts)
        finally:
            if saved is not None:
                self.driver.timeout = saved
        try:
            negotiated = dict(getattr(session, "negotiated", None) or {})
            if "HeaderDigest" in negotiated:  # what the initiator reports it agreed
                agreed = (
                    negotiated["HeaderDigest"] == "CRC32C",
                    negotiated.get("DataDigest") == "CRC32C",
                )
                note = f"{self.name} reports HeaderDigest={negotiated['HeaderDigest']}, DataDigest={negotiated.get('DataDigest')}"
            else:
                agreed = (digests, False)
                note = f"{self.name} offered HeaderDigest=CRC32C alone and the login succeeded"
            out = Exchange(
                authenticated="CHAP" if chap else "None",
                digests=agreed,
                note=note if digests else "",
            )
            if inquiry:
                out.inquiry = self.driver.inquiry(session, area.lun)
            lba = 0
            for size in sizes:
                data = os.urandom(size)
                self.driver.write(session, area.lun, lba, data)
                back = self.driver.read(session, area.lun, lba, size // 512)
                require(
                    back == data, "R7146-2-1", f"{size} bytes read back differ from those written"
                )
                lba += size // 512
                out.moved += size
            return out
        finally:
            self.driver.logout(session)


@dataclasses.dataclass
class IPsecArea:
    """What a test of the area uses: the path, the portal, the initiator, timings."""

    path: ProtectedPath
    workdir: Path
    chap: ChapAccount
    timings: dict[str, float]
    pairing: str = "reference x reference"
    lun: int = 0
    target_desc: str = ""
    initiator_desc: str = ""
    initiator: Any = None  # ReferenceInitiator | DriverInitiator
    current: Established | None = None
    evidence: Any = None
    open_target: str = OPEN_TARGET
    chap_target: str = CHAP_TARGET
    initiator_name: str = INITIATOR_NAME
    closers: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    @property
    def portal(self) -> tuple[str, int]:
        return (self.path.target.address, 3260)

    def protect(self, profile: SaProfile = DEFAULT, **load: Any) -> Established:
        started = time.monotonic()
        try:
            self.current = self.path.establish(profile, **load)
        finally:
            self.timings["ike"] = self.timings.get("ike", 0.0) + time.monotonic() - started
            self.record()
        return self.current

    def run(self, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 120) -> T:
        """Run the reference initiator's ``coro()`` on the initiator host."""
        started = time.monotonic()
        try:
            return call_in(self.path.initiator, lambda: asyncio.run(coro()), timeout=timeout)
        finally:
            self.timings["tests"] = self.timings.get("tests", 0.0) + time.monotonic() - started

    def refused(self, target: str | None = None) -> str:
        """Why a login to the open target failed now ('' if it succeeded)."""
        from iscsi_conformance.errors import ISCSIConformanceError

        try:
            self.initiator.exchange(target or self.open_target, timeout=2)
        except (OSError, TimeoutError, ISCSIConformanceError) as exc:
            return f"{type(exc).__name__}: {str(exc)[:300]}"
        return ""

    @contextlib.contextmanager
    def wire(self, evidence: Any, name: str) -> Iterator[list[WireSummary]]:
        """Capture the link while the block runs; the summary is appended to the list."""
        pcap = self.workdir / f"{name}.pcapng"
        out: list[WireSummary] = []
        started = time.monotonic()
        try:
            with Capture(self.path.capture_host, pcap):
                yield out
        finally:
            self.timings["tests"] = self.timings.get("tests", 0.0) + time.monotonic() - started
        out.append(dissect(pcap))
        evidence.captures.append(str(pcap))
        evidence.note(f"wire ({self.path.capture_host.ifname}, {pcap.name}): {out[0].describe()}")
        self.record(wire=out[0], capture=pcap)

    def record(self, *, wire: WireSummary | None = None, capture: Path | None = None) -> None:
        """The report's IPsec facts for this test (``evidence.extra["ipsec"]``): the
        hosts, mode, transforms, IKE authentication, where ESP ran, the wire's summary,
        the timings."""
        evidence = self.evidence
        if evidence is None:
            return
        evidence.secrets.update(self.path.secrets | {self.chap.secret})
        extra = getattr(evidence, "extra", None)
        facts: dict[str, Any] = extra.setdefault("ipsec", {}) if isinstance(extra, dict) else {}
        facts.update(
            pairing=self.pairing, esp_backend=self.path.modes(), timings=dict(self.timings),
            hosts={
                h.role: (
                    f"micro-VM guest {h.ifname}" if h.shell is not None
                    else f"container pid {h.attached} {h.netns}" if h.attached
                    else f"network namespace {h.netns}"
                ) + f", {h.address}"
                for h in self.path.link.hosts
            },
            target=self.target_desc,
            initiator=self.initiator_desc or self.initiator_name,
        )  # fmt: skip
        if wire is not None:
            facts["wire"] = dataclasses.asdict(wire) | {"capture": str(capture)}
        if self.current is not None:
            p = self.current.profile
            facts.update(
                profile=p.name, mode=p.mode, ike_auth=p.auth, esn=p.esn,
                replay_window=p.replay_window, negotiated=self.current.transforms(),
                list_sas=self.current.sas,
            )  # fmt: skip
            if wire is None:
                where = ", ".join(f"{r} host {m}" for r, m in self.path.modes().items())
                evidence.note(
                    f"IPsec {p.describe()}; ESP in {where}; pairing {self.pairing} "
                    f"({self.target_desc}); negotiated {self.current.transforms()}"
                )

    def close(self) -> None:
        while self.closers:
            with contextlib.suppress(Exception):
                self.closers.pop()()
        self.path.close()


def _target_config(workdir: Path, address: str, chap: ChapAccount) -> Path:
    cfg = workdir / "target.toml"
    cfg.write_text(
        f"""[server]
state_dir = "{workdir / "state"}"
login_timeout = 15

[[portal_groups]]
tag = 1
portals = ["{address}:3260"]

[[targets]]
name = "{OPEN_TARGET}"
portal_groups = [1]
[[targets.luns]]
lun = 0
size = "16M"

[[targets]]
name = "{CHAP_TARGET}"
portal_groups = [1]
[[targets.luns]]
lun = 0
size = "4M"
[[targets.acls]]
initiator = "{INITIATOR_NAME}"
chap = {{ user = "{chap.user}", secret = "{chap.secret}" }}
"""
    )
    return cfg


def _start_reference_target(area: IPsecArea) -> None:
    path = area.path
    cfg = _target_config(area.workdir, path.target.address, area.chap)
    started = time.monotonic()
    argv = path.target.argv(
        sys.executable, "-m", "iscsi_conformance.cli", "target", "--config", str(cfg)
    )
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    area.closers.append(stop)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "listening on" not in first:
        proc.kill()
        rest = proc.stdout.read()
        raise PeerStartError(
            f"reference target on the target host ({path.target.netns})",
            "no 'listening on' line",
            log_tail=path.charons["target"].mask((first + rest)[-2000:]),
        )
    (area.workdir / "target.log").write_text(first)
    area.timings["target_start"] = time.monotonic() - started
    area.target_desc = f"reference target (process in {path.target.netns})"


#: Where each peer's host comes from; LIO and open-iscsi run in the micro-VM.
CONTAINER_TARGETS = ("tgt",)
CONTAINER_INITIATORS = ("libiscsi",)
MICROVM_TARGETS = ("lio",)
MICROVM_INITIATORS = ("open-iscsi",)


#: The pairings the default CI run builds: all nine. open-iscsi's three joined them on
#: 2026-12-08, once its driver logged in with one guest round trip (75 to 90 s of tests a
#: pairing here, docs/ipsec.md). ``ISCSI_CONFORMANCE_IPSEC_PAIRINGS``, a comma list of
#: ``initiator@target``, narrows a run; ``all`` is the default's spelling too.
DEFAULT_PAIRINGS = tuple(
    f"{i}@{t}" for i in ("reference", "libiscsi", "open-iscsi") for t in ("reference", "tgt", "lio")
)


def _selected(initiator: str, target: str) -> bool:
    chosen = os.environ.get("ISCSI_CONFORMANCE_IPSEC_PAIRINGS", "").strip()
    if chosen == "all":
        return True
    names = [n.strip() for n in chosen.split(",") if n.strip()] or list(DEFAULT_PAIRINGS)
    return f"{initiator}@{target}" in names


def _container_pid(container: Any) -> int:
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    if pid <= 0:
        raise PeerStartError(f"container {container.name}", "has no process (not running)")
    return pid


def _start_lio(
    chap: ChapAccount, closers: list[Callable[[], None]], end: str = "i"
) -> tuple[Any, Any]:
    """LIO in a micro-VM booted from the IPsec image (charon), with a tap as second NIC."""
    from iscsi_conformance.harness.ipsec_guests import boot_guest
    from iscsi_conformance.peers.base import LunSpec, TargetSpec
    from iscsi_conformance.peers.lio import LioTarget

    tdriver = LioTarget(mode="microvm")
    tdriver.log.secrets.add(chap.secret)
    boot_guest(tdriver, closers, end)
    ep = tdriver.configure(TargetSpec(OPEN_TARGET, luns=(LunSpec(16 << 20),)))
    tdriver.configure(TargetSpec(CHAP_TARGET, luns=(LunSpec(4 << 20),), chap=chap))
    return tdriver, ep


def _start_open_iscsi(closers: list[Callable[[], None]], end: str = "i") -> Any:
    """open-iscsi in a micro-VM booted from the IPsec image (charon), with a tap as second
    NIC: the guest is the initiator host, its tap goes into the target's namespace."""
    from iscsi_conformance.harness.ipsec_guests import boot_guest
    from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator

    probe = OpenIscsiInitiator(mode="microvm", login_timeout=5)
    boot_guest(probe, closers, end)
    return probe


def build_area(workdir: Path, initiator: str, target: str) -> IPsecArea:
    """Start the pairing's peers on their hosts and the protected path between them."""
    chap = ChapAccount("ipsec-node", secrets.token_hex(12))
    timings: dict[str, float] = {}
    closers: list[Callable[[], None]] = []
    attach: dict[str, int] = {}
    tdriver: Any = None
    idriver: Any = None
    env: Any = None
    try:
        if target in CONTAINER_TARGETS or initiator in CONTAINER_INITIATORS:
            from iscsi_conformance.peers.docker_env import DockerEnv, docker_usable

            if not docker_usable():
                raise PeerStartError("docker", "no usable Docker engine for the peers' hosts")
            env = DockerEnv()
            closers.append(env.close)
        if target == "tgt":
            from iscsi_conformance.peers.base import LunSpec, TargetSpec
            from iscsi_conformance.peers.tgt import TgtTarget

            started = time.monotonic()
            tdriver = TgtTarget(mode="container", docker_env=env)
            tdriver.log.secrets.add(chap.secret)
            closers.append(tdriver.stop)
            tdriver.start()
            ep = tdriver.configure(TargetSpec(OPEN_TARGET, luns=(LunSpec(16 << 20),)))
            tdriver.configure(TargetSpec(CHAP_TARGET, luns=(LunSpec(4 << 20),), chap=chap))
            attach["target"] = _container_pid(tdriver._container)
            timings["target_start"] = time.monotonic() - started
        if initiator == "libiscsi":
            from iscsi_conformance.peers.libiscsi import LibiscsiInitiator

            started = time.monotonic()
            idriver = LibiscsiInitiator(mode="container", docker_env=env)
            idriver.log.secrets.add(chap.secret)
            closers.append(idriver.stop)
            idriver.start()
            attach["initiator"] = _container_pid(idriver._container)
            timings["initiator_start"] = time.monotonic() - started
        guests: dict[str, tuple[Any, tuple[str, int]]] = {}
        if initiator == "open-iscsi":
            started = time.monotonic()
            idriver = _start_open_iscsi(closers)
            vm = idriver.vm
            guests["initiator"] = (vm, (vm.bind_host, vm.host_port("vici")))
            timings["initiator_start"] = time.monotonic() - started
        if target == "lio":
            started_lio = time.monotonic()
            # the target guest of two has the link's second tap
            tdriver, ep = _start_lio(chap, closers, end="t" if guests else "i")
            vm = tdriver.vm
            guests["target"] = (vm, (vm.bind_host, vm.host_port("vici")))
            timings["target_start"] = time.monotonic() - started_lio
        path = ProtectedPath(workdir, attach=attach, guests=guests)
        area = IPsecArea(
            path, workdir, chap, timings, pairing=f"{initiator} x {target}", closers=closers
        )
        path.open()
        timings.update(path.timings)
        link = f"its tap NIC in {path.link.namespace_side.netns} is the link"
        if path.link.bridge is not None:
            link = f"its tap NIC on the bridge {path.link.bridge.netns}/br0 is the link"
        if "initiator" in guests:
            area.initiator_desc = (
                f"open-iscsi, Linux {idriver.vm.kernel.kernel_release} (micro-VM guest: the "
                f"initiator host, kernel ESP; {link})"
            )
        if tdriver is not None and target == "lio":
            area.lun = ep.luns[0]
            area.target_desc = (
                f"LIO, Linux {tdriver.vm.kernel.kernel_release} (micro-VM guest: the target "
                f"host, kernel ESP; {link})"
            )
        elif tdriver is not None:
            area.lun = ep.luns[0]
            area.target_desc = (
                f"tgt {tdriver.version()} (container {tdriver._container.name}, "
                f"its network namespace is the target host)"
            )
        else:
            _start_reference_target(area)
        area.initiator = (
            DriverInitiator(area, idriver) if idriver is not None else ReferenceInitiator(area)
        )
        return area
    except BaseException:
        while closers:
            with contextlib.suppress(Exception):
                closers.pop()()
        raise


class Areas:
    """At most one area alive: the one of the pairing being tested."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.current: tuple[str, IPsecArea] | None = None
        self.failed: dict[str, str] = {}

    def get(self, initiator: str, target: str) -> IPsecArea:
        key = f"{initiator} x {target}"
        if self.current is not None and self.current[0] == key:
            return self.current[1]
        self.close()
        if key in self.failed:
            pytest.fail(f"IPsec area could not be built: {self.failed[key]}", pytrace=False)
        try:
            area = build_area(self.factory.mktemp("ipsec-area"), initiator, target)
        except PeerStartError as exc:
            self.failed[key] = f"{key}: {exc}"
            _unavailable(self.failed[key])
            raise
        except Exception as exc:  # one clear error per test, not one rebuild per test
            self.failed[key] = f"{key}: {type(exc).__name__}: {exc}"
            raise
        self.current = (key, area)
        return area

    def close(self) -> None:
        if self.current is not None:
            _key, area = self.current
            self.current = None
            area.close()


@pytest.fixture(scope="module")
def _ipsec_areas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Areas]:
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces, charon)")
    why = charon_available()
    if why:
        _unavailable(f"strongSwan is missing: {why}")
    areas = Areas(tmp_path_factory)
    try:
        yield areas
    finally:
        areas.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The area's tests in pairing order (stable, in their own slots), so that each
    pairing's hosts are built once."""
    here = Path(__file__).parent
    slots = [n for n, item in enumerate(items) if Path(str(item.fspath)).parent == here]

    def key(item: pytest.Item) -> str:
        callspec = getattr(item, "callspec", None)
        return str(callspec.params.get("pairing", "")) if callspec is not None else ""

    ordered = sorted((items[n] for n in slots), key=key)
    for n, item in zip(slots, ordered, strict=True):
        items[n] = item


@pytest.fixture
def ipsec(request: pytest.FixtureRequest, pairing: Any, evidence: Any) -> Iterator[IPsecArea]:
    """The area of this test's pairing: its peers on their hosts, the path between them."""
    built = (
        "reference",
        *CONTAINER_TARGETS,
        *CONTAINER_INITIATORS,
        *MICROVM_TARGETS,
        *MICROVM_INITIATORS,
    )
    for side, name in (("target", pairing.target), ("initiator", pairing.initiator)):
        if name not in built:
            pytest.skip(f"IPsec: no host is built for {side} {name}")
    if not _selected(pairing.initiator, pairing.target):
        pytest.skip(
            f"IPsec: {pairing.initiator}@{pairing.target} is outside this run's "
            f"ISCSI_CONFORMANCE_IPSEC_PAIRINGS={os.environ.get('ISCSI_CONFORMANCE_IPSEC_PAIRINGS')}"
        )
    areas: Areas = request.getfixturevalue("_ipsec_areas")
    area = areas.get(pairing.initiator, pairing.target)
    area.current, area.evidence = None, evidence
    evidence.secrets.update(area.path.secrets | {area.chap.secret})
    yield area
    area.evidence = None
