"""The IPsec area's hosts: the protected path and a reference target on the target host.

One :class:`~iscsi_conformance.ipsec.ProtectedPath` per test module (two namespaces,
two charons, the run CA, the drop policy) and a reference target process in the target
host's namespace, serving two targets: one open, one that requires CHAP. The reference
initiator runs in-process on a thread inside the initiator host's namespace
(:func:`IPsecArea.run`). Outside CI a machine without root or strongSwan skips the
area; in CI that is a failure (the issue's start-up rule), with charon's log tail.
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
class IPsecArea:
    """What a test of the area uses: the path, the portal, the CHAP account, timings."""

    path: ProtectedPath
    workdir: Path
    chap: ChapAccount
    target_log: Path
    timings: dict[str, float]
    current: Established | None = None
    evidence: Any = None
    open_target: str = OPEN_TARGET
    chap_target: str = CHAP_TARGET
    initiator_name: str = INITIATOR_NAME

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

    @contextlib.contextmanager
    def wire(self, evidence: Any, name: str) -> Iterator[list[WireSummary]]:
        """Capture the link while the block runs; the summary is appended to the list."""
        pcap = self.workdir / f"{name}.pcapng"
        out: list[WireSummary] = []
        with Capture(self.path.target, pcap):
            yield out
        out.append(dissect(pcap))
        evidence.captures.append(str(pcap))
        evidence.note(f"wire ({self.path.target.ifname}, {pcap.name}): {out[0].describe()}")
        self.record(wire=out[0], capture=pcap)

    def record(self, *, wire: WireSummary | None = None, capture: Path | None = None) -> None:
        """The report's IPsec facts for this test (``evidence.extra["ipsec"]``): mode,
        transforms, IKE authentication, where ESP ran, the wire's summary, the timings."""
        evidence = self.evidence
        if evidence is None:
            return
        evidence.secrets.update(self.path.secrets | {self.chap.secret})
        extra = getattr(evidence, "extra", None)
        facts: dict[str, Any] = extra.setdefault("ipsec", {}) if isinstance(extra, dict) else {}
        facts.update(esp_backend=self.path.modes(), timings=dict(self.timings))
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
                evidence.note(f"IPsec {p.describe()}; negotiated {self.current.transforms()}")


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


@pytest.fixture(scope="module")
def _ipsec_area(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPsecArea]:
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces, charon)")
    why = charon_available()
    if why:
        _unavailable(f"strongSwan is missing: {why}")
    workdir = tmp_path_factory.mktemp("ipsec-area")
    chap = ChapAccount("ipsec-node", secrets.token_hex(12))
    path = ProtectedPath(workdir)
    proc: subprocess.Popen[str] | None = None
    try:
        path.open()
        cfg = _target_config(workdir, path.target.address, chap)
        log = workdir / "target.log"
        started = time.monotonic()
        argv = path.target.argv(
            sys.executable, "-m", "iscsi_conformance.cli", "target", "--config", str(cfg)
        )
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
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
        log.write_text(first)
        timings = dict(path.timings)
        timings["target_start"] = time.monotonic() - started
        yield IPsecArea(path, workdir, chap, log, timings)
    except PeerStartError as exc:
        _unavailable(str(exc))
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        path.close()


@pytest.fixture
def ipsec(request: pytest.FixtureRequest, pairing: Any, evidence: Any) -> Iterator[IPsecArea]:
    """The area for a reference x reference cell; other cells are not built yet."""
    if pairing.target != "reference" or pairing.initiator != "reference":
        pytest.skip(
            f"IPsec hosts for {pairing.initiator} x {pairing.target} are not built yet "
            "(issue 11: containers and micro-VMs); only reference x reference runs"
        )
    area: IPsecArea = request.getfixturevalue("_ipsec_area")
    area.current, area.evidence = None, evidence
    evidence.secrets.update(area.path.secrets | {area.chap.secret})
    yield area
    area.evidence = None
