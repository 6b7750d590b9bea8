"""Peers of a run: resolved from names or URLs, started once, shared with workers.

Theory of operation: ``PeerPool.from_options`` turns ``--iscsi-target`` /
``--iscsi-initiator`` values into peer entries: a registered driver name
("reference", "tgt", "lio", "libiscsi", "open-iscsi") or, for targets, an
``iscsi://`` URL of a third-party target. ``start()`` brings every peer up and
configures each target with every profile its manifest can serve; ``export()`` turns
the result into plain data that pytest-xdist hands to its workers, which
``PeerPool.attach`` rebuilds without starting anything. Only the process that
started a peer stops it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from iscsi_conformance.errors import HarnessError, PeerStartError
from iscsi_conformance.peers.base import (
    ChapCredentials,
    InitiatorDriver,
    Manifest,
    TargetDriver,
    TargetEndpoint,
)
from iscsi_conformance.plugin.profiles import PROFILES, Credentials

log = logging.getLogger("iscsi_conformance.plugin")


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

    def endpoint(self, profile: str) -> TargetEndpoint | None:
        return self.endpoints.get(profile)


@dataclasses.dataclass
class InitiatorEntry:
    name: str
    manifest: Manifest
    driver: InitiatorDriver | None = None
    description: dict[str, Any] = dataclasses.field(default_factory=dict)


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
        self._user_chap: ChapCredentials | None = None
        self._user_mutual: ChapCredentials | None = None
        self.targets: dict[str, TargetEntry] = {}
        self.initiators: dict[str, InitiatorEntry] = {}
        self.started = False

    # ------------------------------------------------------------------ build

    @classmethod
    def from_options(
        cls,
        targets: list[str],
        initiators: list[str],
        *,
        chap: ChapCredentials | None = None,
        mutual_chap: ChapCredentials | None = None,
        mode: str = "auto",
    ) -> PeerPool:
        from iscsi_conformance.peers import registry

        pool = cls(Credentials.generate())
        pool._user_chap = chap
        pool._user_mutual = mutual_chap
        targets = list(targets or ["reference"])
        if any(i != "reference" for i in initiators) and "reference" not in targets:
            targets.append("reference")  # the instrument that observes initiators
        for name in targets:
            if name.startswith("iscsi://"):
                pool.targets[name] = TargetEntry(
                    name=name, manifest=_external_manifest(name), external=True
                )
                continue
            driver = registry.get_target_driver(name, mode=None if mode == "auto" else mode)
            pool.targets[name] = TargetEntry(name=name, manifest=driver.manifest, driver=driver)
        for name in initiators or ["reference"]:
            idriver = registry.get_initiator_driver(name, mode=None if mode == "auto" else mode)
            pool.initiators[name] = InitiatorEntry(
                name=name, manifest=idriver.manifest, driver=idriver
            )
        return pool

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start every peer and configure the profiles. Raises PeerStartError."""
        self.started = True
        for entry in self.targets.values():
            if entry.external:
                self._configure_external(entry)
                continue
            assert entry.driver is not None
            entry.driver.start()
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
            entry.description = entry.driver.describe()
        for ientry in self.initiators.values():
            assert ientry.driver is not None
            ientry.driver.start()
            ientry.description = ientry.driver.describe()

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
        errors: list[str] = []
        for entry in [*self.initiators.values(), *self.targets.values()]:
            if entry.driver is not None:
                try:
                    entry.driver.stop()
                except Exception as exc:  # keep stopping the others
                    errors.append(f"{entry.name}: {exc}")
        if errors:
            log.warning("errors while stopping peers: %s", "; ".join(errors))

    # ------------------------------------------------------------------ xdist

    def export(self) -> dict[str, Any]:
        """Plain data for xdist workers (credentials included: workers need them to
        log in; this never goes into a report)."""
        return {
            "credentials": {
                "initiator": _creds_data(self.credentials.initiator),
                "target": _creds_data(self.credentials.target),
            },
            "targets": {
                name: {
                    "manifest": dataclasses.asdict(e.manifest),
                    "endpoints": {p: dataclasses.asdict(ep) for p, ep in e.endpoints.items()},
                    "unservable": e.unservable,
                    "description": e.description,
                    "external": e.external,
                    "lun": e.lun,
                    "external_chap": _creds_data(getattr(e, "external_chap", None)),
                    "external_mutual": _creds_data(getattr(e, "external_mutual", None)),
                }
                for name, e in self.targets.items()
            },
            "initiators": {
                name: {"manifest": dataclasses.asdict(e.manifest), "description": e.description}
                for name, e in self.initiators.items()
            },
        }

    @classmethod
    def attach(cls, data: dict[str, Any], *, mode: str = "auto") -> PeerPool:
        """Rebuild, in an xdist worker, the pool the controller started.

        Targets are servers: the worker only needs their endpoints. Initiators are
        clients: each worker gets its own driver, started here (the collection puts all
        tests of one non-reference initiator on one worker, so each starts once).
        """
        from iscsi_conformance.peers import registry

        pool = cls(Credentials(**{k: ChapCredentials(**v) for k, v in data["credentials"].items()}))
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
            )
            entry.external_chap = _creds(t.get("external_chap"))  # type: ignore[attr-defined]
            entry.external_mutual = _creds(t.get("external_mutual"))  # type: ignore[attr-defined]
            pool.targets[name] = entry
        for name, i in data["initiators"].items():
            driver = registry.get_initiator_driver(name, mode=None if mode == "auto" else mode)
            pool.initiators[name] = InitiatorEntry(
                name=name,
                manifest=driver.manifest,
                driver=driver,
                description=dict(i["description"]),
            )
            driver.start()
        pool.started = True  # the initiators started here are ours to stop
        return pool

    def commands(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for entry in [*self.targets.values(), *self.initiators.values()]:
            if entry.driver is not None:
                out[entry.name] = [dataclasses.asdict(r) for r in entry.driver.log.records]
        return out


def _creds_data(c: ChapCredentials | None) -> dict[str, str] | None:
    return None if c is None else {"user": c.user, "secret": c.secret}


def _creds(d: dict[str, str] | None) -> ChapCredentials | None:
    return None if d is None else ChapCredentials(**d)


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
