"""Peers of a run: resolved from names or URLs, started once, shared with workers.

Theory of operation: ``PeerPool.from_options`` turns ``--iscsi-target`` /
``--iscsi-initiator`` values into peer entries: a registered driver name
("reference", "tgt", "lio", "libiscsi", "open-iscsi") or, for targets, an
``iscsi://`` URL of a third-party target. ``start()`` brings every peer up and
configures each target with every profile its manifest can serve; ``export()`` turns
the result into plain data that pytest-xdist hands to its workers, which
``PeerPool.attach`` rebuilds without starting anything. Only the process that
started a peer stops it.

Modes: "auto" (the default) asks each driver class what it prefers (``auto_mode``):
a container for every third-party peer where Docker is usable, else the peer on this
host (tgt, libiscsi) or QEMU on this host (LIO, open-iscsi). An explicit mode goes to
every peer that has it; "microvm" means "on this host" for the userspace peers. When
any peer runs in a container, the pool owns one ``DockerEnv`` for the run: every
container joins its network, and servers of this process that initiators in
containers must reach (the reference target, the initiator tests' proxy) listen on
this host's address on that network (``DockerEnv.gateway``) instead of loopback.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

from iscsi_conformance.errors import HarnessError, PeerStartError
from iscsi_conformance.harness.profiles import PROFILES, Credentials
from iscsi_conformance.peers.base import (
    ChapAccount,
    InitiatorDriver,
    Manifest,
    TargetDriver,
    TargetEndpoint,
)

log = logging.getLogger("iscsi_conformance.harness")


@dataclasses.dataclass
class TargetEntry:
    name: str  # "reference", "tgt", or the URL for an external target
    manifest: Manifest
    endpoints: dict[str, TargetEndpoint] = dataclasses.field(default_factory=dict)
    unservable: dict[str, str] = dataclasses.field(default_factory=dict)  # profile -> why
    driver: TargetDriver | None = None
    description: dict[str, Any] = dataclasses.field(default_factory=dict)
    external: bool = False
    lun: int = 0  # for external targets: the only LUN we may touch
    health: dict[str, Any] = dataclasses.field(default_factory=dict)  # for xdist workers
    died: str | None = None  # set in a worker once the target was seen dead

    def endpoint(self, profile: str) -> TargetEndpoint | None:
        return self.endpoints.get(profile)


@dataclasses.dataclass
class InitiatorEntry:
    name: str
    manifest: Manifest
    driver: InitiatorDriver | None = None
    description: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: bool = False

    def ensure_started(self) -> None:
        """Start the driver on first use (xdist workers start only the initiators
        their tests need: all tests of one initiator go to one worker)."""
        if self.started or self.driver is None:
            return
        self.started = True
        self.driver.start()
        self.description = self.driver.describe()


def _accepts(cls: type, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def resolve_mode(cls: type, requested: str | None, docker: bool) -> str | None:
    """The mode to construct driver class ``cls`` with (None: the driver's default).

    ``requested`` "auto"/None asks the class (``auto_mode(docker)``); an explicit mode
    goes through when the class has it; "microvm" for a peer without one means on this
    host ("native"); a class that declares no ``modes`` (the reference peers) keeps
    its own default.
    """
    modes = getattr(cls, "modes", None)
    if requested in (None, "auto"):
        auto = getattr(cls, "auto_mode", None)
        return auto(docker) if auto is not None else None
    if not modes:
        return None
    if requested in modes:
        return requested
    if requested == "microvm" and "native" in modes:
        return "native"
    return None  # e.g. "container" for an embedded-only peer: its default


def _needs_docker(cls: type, mode: str | None) -> bool:
    return mode is not None and mode in getattr(cls, "docker_modes", ())


def _external_manifest(url: str, *, chap: bool, mutual: bool) -> Manifest:
    """What we assume of a third-party target before probing it: what RFC 7143 makes
    mandatory (CRC32C and None digests, MD5 CHAP when credentials are given, ERL 0)
    plus the SCSI features a cluster disk needs. Tests that need configuration the
    suite cannot make (ACLs, extra targets) skip; writes need --iscsi-allow-dataloss."""
    caps: dict[str, Any] = {
        "external": True,
        "header_digests": ["None", "CRC32C"],
        "data_digests": ["None", "CRC32C"],
        "erl": [0],
        "persistent_reservations": True,
        "reservations_scsi2": True,
    }
    if chap:
        caps["chap_algorithms"] = [5]
    if mutual:
        caps["mutual_chap"] = True
    return Manifest(
        name=url,
        role="target",
        description="third-party target under certification",
        capabilities=caps,
    )


class PeerPool:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._user_chap: ChapAccount | None = None
        self._user_mutual: ChapAccount | None = None
        self.targets: dict[str, TargetEntry] = {}
        self.initiators: dict[str, InitiatorEntry] = {}
        self.started = False
        self.docker_env: Any = None  # the run's DockerEnv when a peer runs in a container
        self._owns_docker_env = False
        self.timings: dict[str, float] = {}  # "start <role> <name>" -> seconds

    def _docker(self, network_name: str | None = None) -> Any:
        if self.docker_env is None:
            from iscsi_conformance.peers.docker_env import DockerEnv

            self.docker_env = DockerEnv(network_name=network_name, clean_stale=not network_name)
            self._owns_docker_env = True
        return self.docker_env

    # ------------------------------------------------------------------ build

    @classmethod
    def from_options(
        cls,
        targets: list[str],
        initiators: list[str],
        *,
        chap: ChapAccount | None = None,
        mutual_chap: ChapAccount | None = None,
        mode: str = "auto",
        instrument: bool = True,
    ) -> PeerPool:
        """``instrument=False``: do not add the reference target that observes the
        initiators (the run has no initiator column)."""
        from iscsi_conformance.peers import registry

        pool = cls(Credentials.generate())
        pool._user_chap = chap
        pool._user_mutual = mutual_chap
        targets = list(targets or ["reference"])
        if instrument and any(i != "reference" for i in initiators) and "reference" not in targets:
            targets.append("reference")  # the instrument that observes initiators
        initiators = list(initiators or ["reference"])
        peers: list[tuple[str, str]] = [
            ("target", n) for n in targets if not n.startswith("iscsi://")
        ] + [("initiator", n) for n in initiators]
        classes = {(r, n): registry.driver_class(r, n) for r, n in peers}  # type: ignore[arg-type]
        docker = False
        if mode in (None, "auto") and any(hasattr(c, "auto_mode") for c in classes.values()):
            from iscsi_conformance.peers.docker_env import docker_usable

            docker = docker_usable()
        modes = {key: resolve_mode(c, mode, docker) for key, c in classes.items()}
        if any(_needs_docker(classes[k], m) for k, m in modes.items()):
            pool._docker()
        for name in targets:
            if name.startswith("iscsi://"):
                has_chap = chap is not None or "%" in name.split("://", 1)[1].split("/", 1)[0]
                manifest = _external_manifest(
                    name, chap=has_chap, mutual=has_chap and mutual_chap is not None
                )
                pool.targets[name] = TargetEntry(name=name, manifest=manifest, external=True)
                continue
            driver = registry.get_target_driver(
                name, mode=modes["target", name], **pool._driver_options(classes["target", name])
            )
            pool.targets[name] = TargetEntry(name=name, manifest=driver.manifest, driver=driver)
        for name in initiators:
            idriver = registry.get_initiator_driver(
                name,
                mode=modes["initiator", name],
                **pool._driver_options(classes["initiator", name]),
            )
            pool.initiators[name] = InitiatorEntry(
                name=name, manifest=idriver.manifest, driver=idriver
            )
        return pool

    def _driver_options(self, cls: type) -> dict[str, Any]:
        """The run's Docker environment for drivers that take one; for a server of this
        process (the reference target), the address containers reach it at."""
        options: dict[str, Any] = {}
        if self.docker_env is None:
            return options
        if _accepts(cls, "docker_env"):
            options["docker_env"] = self.docker_env
        elif not getattr(cls, "docker_modes", ()) and _accepts(cls, "host"):
            options["host"] = self.docker_env.gateway
        return options

    # ------------------------------------------------------------------ life cycle

    def start(self, *, initiators: bool = True) -> None:
        """Start every peer and configure the profiles. Raises PeerStartError.

        ``initiators=False`` (the xdist controller) starts only the targets: workers
        start the initiators their tests use.
        """
        import time

        from iscsi_conformance.peers.phases import PHASES, spent

        t_start, images_before = time.monotonic(), spent("images")
        try:
            self._start(initiators=initiators)
        finally:
            elapsed = time.monotonic() - t_start
            PHASES["startup"] = (
                PHASES.get("startup", 0.0) + elapsed - (spent("images") - images_before)
            )

    def _start(self, *, initiators: bool) -> None:
        import time

        self.started = True
        for entry in self.targets.values():
            if entry.external:
                self._configure_external(entry)
                continue
            assert entry.driver is not None
            t0 = time.monotonic()
            entry.driver.start()
            self.timings[f"start target {entry.name}"] = time.monotonic() - t0
            t0 = time.monotonic()
            self._configure_profiles(entry)
            self.timings[f"configure target {entry.name}"] = time.monotonic() - t0
            entry.description = entry.driver.describe()
        for ientry in self.initiators.values():
            assert ientry.driver is not None
            if not initiators:
                ientry.description = {
                    "name": ientry.name,
                    "role": "initiator",
                    "mode": str(ientry.driver.mode),
                    "version": "",
                }
                continue
            t0 = time.monotonic()
            ientry.ensure_started()
            self.timings[f"start initiator {ientry.name}"] = time.monotonic() - t0

    def _configure_profiles(self, entry: TargetEntry) -> None:
        """Configure on ``entry``'s driver every profile its manifest can serve."""
        assert entry.driver is not None
        entry.endpoints.clear()
        entry.unservable.clear()
        for profile in PROFILES.values():
            ok, why = profile.servable_by(entry.manifest)
            if not ok:
                entry.unservable[profile.name] = why
                continue
            spec = profile.build(self.credentials)
            entry.driver.log.secrets.update(
                c.secret for c in (spec.chap, spec.mutual_chap) if c is not None
            )
            try:
                entry.endpoints[profile.name] = entry.driver.configure(spec)
            except HarnessError as exc:
                if profile.name == "default":
                    raise
                entry.unservable[profile.name] = f"{entry.name} could not configure it: {exc}"

    def check_target(self, name: str, *, lost: bool = False) -> str | None:
        """After a test: if target ``name`` died, say why and bring it back.

        Returns None while the target serves (or when this process cannot tell: an
        external target, or an xdist worker, which holds no driver). Otherwise returns
        what happened (exit status and the tail of the peer's log), after restarting
        the target and configuring every profile again, so that one crash costs one
        test, not the rest of the run. The restart is recorded in the target's
        description (``restarts``) and its command log. ``lost``: the test lost the
        target's answer; a target still running is then asked for a login
        (:func:`hung`), and one that answers none is taken as dead too.
        """
        import time

        entry = self.targets.get(name)
        if entry is None:
            return None
        if entry.driver is None:
            return self._check_attached(entry)
        why = entry.driver.health()
        if why is None and lost and "default" in entry.endpoints:
            why = hung(entry.endpoints["default"])
        if why is None:
            return None
        tail = entry.driver.log_tail(20)
        crashes = entry.description.setdefault("crashes", [])
        log.warning("target %s died: %s; restarting it", name, why)
        t0 = time.monotonic()
        from iscsi_conformance.peers.phases import timed

        try:
            with timed("restarts"):
                entry.driver.restart()
                self._configure_profiles(entry)
        except HarnessError as exc:
            crashes.append(why)
            raise PeerStartError(
                name, f"died ({why}) and could not be restarted: {exc}", log_tail=tail
            ) from exc
        self.timings[f"restart target {name}"] = (
            self.timings.get(f"restart target {name}", 0.0) + time.monotonic() - t0
        )
        description = entry.driver.describe()
        crashes.append(why)
        description["crashes"] = crashes
        entry.description = description
        return why + (f"\n--- last lines of its log ---\n{tail}" if tail else "")

    @staticmethod
    def _check_attached(entry: TargetEntry) -> str | None:
        """In an xdist worker: the controller owns the target, so a dead one is only
        reported (once, on the test during which it died); later tests of it fail at
        once with the same words rather than one connection error each."""
        if entry.died is not None:
            return None
        from iscsi_conformance.peers.base import handle_health

        why = handle_health(entry.health)
        if why is None:
            return None
        entry.died = why
        return (
            f"{why}; an xdist worker cannot restart it (the controller owns it): later "
            "tests of this target will fail; run with --shards instead of -n to have "
            "dead targets restarted"
        )

    def _configure_external(self, entry: TargetEntry) -> None:
        from iscsi_conformance.initiator.url import parse_url

        url = parse_url(entry.name)
        endpoint = TargetEndpoint(host=url.host, port=url.port, iqn=url.target, luns=(url.lun,))
        entry.lun = url.lun
        chap = url.chap or self._user_chap
        if chap is None:
            entry.endpoints["default"] = endpoint
        else:
            entry.endpoints["chap"] = endpoint
        if self._user_mutual is not None and chap is not None:
            entry.endpoints["mutual"] = endpoint
        entry.external_chap = chap  # type: ignore[attr-defined]
        entry.external_mutual = self._user_mutual  # type: ignore[attr-defined]
        for name in PROFILES:
            if name not in entry.endpoints:
                entry.unservable[name] = (
                    "a third-party target given by URL serves only its own configuration"
                )
        entry.description = {
            "name": entry.name,
            "role": "target",
            "mode": "external",
            "version": "unknown",
        }

    def stop(self) -> None:
        """Stop every peer this process started, then remove the run's containers and
        network; idempotent, and safe after a partial start."""
        errors: list[str] = []
        for entry in [*self.initiators.values(), *self.targets.values()]:
            if entry.driver is not None:
                try:
                    entry.driver.stop()
                except Exception as exc:  # keep stopping the others
                    errors.append(f"{entry.name}: {exc}")
        if self.docker_env is not None and self._owns_docker_env:
            try:
                self.docker_env.close()
            except Exception as exc:
                errors.append(f"docker: {exc}")
        if errors:
            log.warning("errors while stopping peers: %s", "; ".join(errors))

    # ------------------------------------------------------------------ xdist

    def export(self) -> dict[str, Any]:
        """Plain data for xdist workers (credentials included: workers need them to
        log in; this never goes into a report)."""
        import json

        return json.loads(json.dumps(self._export(), default=str))  # type: ignore[no-any-return]

    def _export(self) -> dict[str, Any]:
        return {
            "credentials": {
                "initiator": _creds_data(self.credentials.initiator),
                "target": _creds_data(self.credentials.target),
            },
            "targets": {
                name: {
                    "manifest": _manifest_data(e.manifest),
                    "endpoints": {p: dataclasses.asdict(ep) for p, ep in e.endpoints.items()},
                    "unservable": e.unservable,
                    "description": e.description,
                    "external": e.external,
                    "lun": e.lun,
                    "health": e.driver.health_handle() if e.driver is not None else {},
                    "external_chap": _creds_data(getattr(e, "external_chap", None)),
                    "external_mutual": _creds_data(getattr(e, "external_mutual", None)),
                }
                for name, e in self.targets.items()
            },
            "initiators": {
                name: {
                    "manifest": _manifest_data(e.manifest),
                    "description": e.description,
                    "mode": None if e.driver is None else str(e.driver.mode),
                }
                for name, e in self.initiators.items()
            },
            "docker_network": None if self.docker_env is None else self.docker_env.network_name,
        }

    @classmethod
    def attach(cls, data: dict[str, Any], *, mode: str = "auto") -> PeerPool:
        """Rebuild, in an xdist worker, the pool the controller started.

        Targets are servers: the worker only needs their endpoints. Initiators are
        clients: each worker gets its own driver, in the controller's mode and on its
        docker network, started on first use (the collection puts all tests of one
        non-reference initiator on one worker, so each starts once).
        """
        from iscsi_conformance.peers import registry

        pool = cls(Credentials(**{k: ChapAccount(**v) for k, v in data["credentials"].items()}))
        if data.get("docker_network"):
            pool._docker(network_name=data["docker_network"])
        for name, t in data["targets"].items():
            entry = TargetEntry(
                name=name,
                manifest=Manifest(**t["manifest"]),
                endpoints={
                    p: TargetEndpoint(**_endpoint_args(ep)) for p, ep in t["endpoints"].items()
                },
                unservable=dict(t["unservable"]),
                description=dict(t["description"]),
                external=bool(t["external"]),
                lun=int(t["lun"]),
                health=dict(t.get("health") or {}),
            )
            entry.external_chap = _creds(t.get("external_chap"))  # type: ignore[attr-defined]
            entry.external_mutual = _creds(t.get("external_mutual"))  # type: ignore[attr-defined]
            pool.targets[name] = entry
        for name, i in data["initiators"].items():
            icls = registry.driver_class("initiator", name)
            driver = registry.get_initiator_driver(
                name, mode=i.get("mode"), **pool._driver_options(icls)
            )
            pool.initiators[name] = InitiatorEntry(
                name=name,
                manifest=driver.manifest,
                driver=driver,
                description=dict(i["description"]),
            )
        pool.started = True  # the initiators started here are ours to stop
        return pool

    def commands(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for entry in [*self.targets.values(), *self.initiators.values()]:
            if entry.driver is not None:
                out[entry.name] = [dataclasses.asdict(r) for r in entry.driver.log.records]
        return out


def _manifest_data(m: Manifest) -> dict[str, Any]:
    """The base Manifest fields as plain JSON data (what xdist can ship)."""
    import json

    data = {
        "name": m.name,
        "role": m.role,
        "description": m.description,
        "capabilities": m.capabilities,
        "deviations": m.deviations,
    }
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def _creds_data(c: ChapAccount | None) -> dict[str, str] | None:
    return None if c is None else {"user": c.user, "secret": c.secret}


def _creds(d: dict[str, str] | None) -> ChapAccount | None:
    return None if d is None else ChapAccount(**d)


def _endpoint_args(ep: dict[str, Any]) -> dict[str, Any]:
    ep = dict(ep)
    ep["luns"] = tuple(ep.get("luns", (0,)))
    if ep.get("host_side") is not None:
        ep["host_side"] = tuple(ep["host_side"])
    return ep


def attach_initiator_driver(name: str, mode: str = "auto") -> InitiatorDriver:
    """A worker's handle on an initiator peer (drivers are cheap to re-create; the
    heavy part (VM, container) is found by the driver from its exported state)."""
    from iscsi_conformance.peers import registry

    return registry.get_initiator_driver(name, mode=mode)


__all__ = ["InitiatorEntry", "PeerPool", "PeerStartError", "TargetEntry"]


#: How long a running target may take to answer a Login Request before it is taken as
#: hung (a TCG guest at load answers in well under a second).
HUNG_AFTER = 10.0


def hung(endpoint: Any, within: float = HUNG_AFTER) -> str | None:
    """Whether a target whose process runs answers no login: a Login Request (security
    stage, no authentication offered) to ``endpoint`` must draw a Login Response header
    within ``within`` s. Seen: tgtd after a Data-Out whose Target Transfer Tag it never
    issued, looping in its connection close at a core's worth of CPU, accepting TCP
    connections (the kernel's backlog) and answering nothing more. Returns what was
    seen, or None when any answer came."""
    import socket
    import time

    from iscsi_conformance.core import pdu as P

    host, port = endpoint.host_side or (endpoint.host, endpoint.port)
    keys = (
        b"InitiatorName=iqn.2024-01.org.iscsi-conformance:liveness\0SessionType=Normal\0"
        + b"TargetName="
        + endpoint.iqn.encode()
        + b"\0AuthMethod=None\0"
    )
    request = P.encode(
        P.LoginRequest(transit=False, csg=0, nsg=0, isid=0x80_1234_5678_9A, itt=1, data=keys)
    )
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=within) as sock:
            sock.settimeout(max(0.5, within - (time.monotonic() - started)))
            sock.sendall(request)
            got = sock.recv(48)
    except TimeoutError:
        return (
            f"hung: still running, but no Login Response within {within:g} s "
            "(it answered nothing more)"
        )
    except OSError as exc:
        return f"hung: still running, but a login to it failed: {exc}"
    if not got:
        return "hung: still running, but it closed a new connection without a Login Response"
    return None
