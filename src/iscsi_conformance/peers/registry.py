"""Peer name -> driver class, for targets and initiators.

Theory of operation: a peer is one folder, ``targets/<name>/`` or
``initiators/<name>/`` (found by ``peers.manifest.peer_folders``: the source
checkout, the installed wheel's package data, ``$ISCSI_CONFORMANCE_PEERS_DIR``). Its
``manifest.toml`` names the driver class and the peer's shard weight::

    [peer]
    name = "tgt"
    role = "target"
    driver = "iscsi_conformance.peers.tgt:TgtTarget"
    shard_weight = 1

so adding a peer is its folder plus its driver module; nothing here lists peers. The
registry knows the peers by scanning the folders and imports a driver only when it is
looked up (``driver_class``): listing peers or weighing shards imports no driver. A
manifest whose driver is missing, malformed, does not import, or is not a driver of
its role is a ``ConfigError`` naming the manifest file and ``peer.driver``.

Drivers are constructed as ``cls(manifest, mode=..., **options)`` with the manifest
loaded from the peer's folder. ``@register_target("name")`` /
``@register_initiator("name")`` still register a class directly; that serves drivers
without a folder (a test's stand-in), which then get a bare ``Manifest``. A peer
folder wins over such a registration of the same name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers.base import InitiatorDriver, Manifest, PeerDriver, Role, TargetDriver
from iscsi_conformance.peers.manifest import (
    DEFAULT_SHARD_WEIGHT,
    DRIVER_EXAMPLE,
    PeerManifest,
    load_manifest,
    manifest_error,
    peer_folders,
)

_REGISTRY: dict[Role, dict[str, type[PeerDriver]]] = {"target": {}, "initiator": {}}
"""Classes registered by decorator (the folderless ones are looked up here)."""

_ROLES: tuple[Role, ...] = ("target", "initiator")

D = TypeVar("D", bound=type[PeerDriver])


def _base(role: Role) -> type[PeerDriver]:
    return TargetDriver if role == "target" else InitiatorDriver


def register(role: Role, name: str) -> Callable[[D], D]:
    """Class decorator: make ``cls`` the driver of peer ``name`` in ``role`` when
    ``name`` has no peer folder (one that has is driven by its manifest's class)."""

    def deco(cls: D) -> D:
        base = _base(role)
        if not issubclass(cls, base):
            raise TypeError(f"{cls.__name__} is not a {base.__name__}")
        existing = _REGISTRY[role].get(name)
        if (
            existing is not None
            and existing is not cls
            and existing.__qualname__ != cls.__qualname__
        ):
            raise ConfigError(
                f"{role} driver {name!r} is already {existing.__module__}.{existing.__qualname__}",
                field="name",
            )
        _REGISTRY[role][name] = cls
        return cls

    return deco


def register_target(name: str) -> Callable[[D], D]:
    return register("target", name)


def register_initiator(name: str) -> Callable[[D], D]:
    return register("initiator", name)


# --------------------------------------------------------------------------- discovery


def _folders(role: Role) -> dict[str, Path]:
    return peer_folders(role)


def _peer_manifest(role: Role, name: str) -> PeerManifest | None:
    """The manifest of peer ``name``, or ``None`` when it has no folder."""
    folder = _folders(role).get(name)
    return None if folder is None else load_manifest(folder, role=role)


def import_driver(role: Role, manifest: PeerManifest) -> type[PeerDriver]:
    """Import the class ``manifest.driver`` names (``"package.module:Class"``) and check
    that it is a concrete driver of ``role``; ``ConfigError`` naming the manifest file
    and ``peer.driver`` otherwise."""
    where, spec = manifest.path, manifest.driver
    if not spec:
        raise manifest_error(
            where, "peer.driver", f"missing (required), e.g. driver = {DRIVER_EXAMPLE!r}"
        )
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise manifest_error(
                where, "peer.driver", f"{spec!r}: there is no module {module_name!r}"
            ) from None
        raise manifest_error(
            where, "peer.driver", f"{spec!r}: importing {module_name} failed: {exc}"
        ) from exc
    except Exception as exc:  # a broken driver: say which and why
        raise manifest_error(
            where,
            "peer.driver",
            f"{spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}",
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise manifest_error(
                where, "peer.driver", f"{spec!r}: module {module_name} has no {qualname!r}"
            ) from None
    base = _base(role)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise manifest_error(where, "peer.driver", f"{spec!r} is not a {base.__name__} subclass")
    if inspect.isabstract(obj):
        raise manifest_error(
            where, "peer.driver", f"{spec!r} is abstract (it does not implement every method)"
        )
    return obj


def _resolve(role: Role, name: str) -> tuple[type[PeerDriver], Manifest]:
    """Peer ``name``'s driver class and the manifest it is constructed with."""
    manifest = _peer_manifest(role, name)
    if manifest is not None:
        return import_driver(role, manifest), manifest
    try:
        return _REGISTRY[role][name], Manifest(name=name, role=role)
    except KeyError:
        known = ", ".join(names(role)) or "none"
        raise ConfigError(f"no {role} driver named {name!r} (known: {known})", field=role) from None


def driver_class(role: Role, name: str) -> type[PeerDriver]:
    """The driver class of peer ``name``: its manifest's ``peer.driver``, imported now."""
    return _resolve(role, name)[0]


def import_errors() -> dict[str, str]:
    """Peers whose manifest or driver is bad, keyed by driver module (or manifest
    file), with the error; imports every peer's driver (``iscsi-conformance peers``)."""
    errors: dict[str, str] = {}
    for role in _ROLES:
        for folder in _folders(role).values():
            try:
                manifest = load_manifest(folder, role=role)
            except ConfigError as exc:
                errors[str(folder / "manifest.toml")] = str(exc)
                continue
            try:
                import_driver(role, manifest)
            except ConfigError as exc:
                errors[manifest.driver.partition(":")[0] or str(manifest.path)] = str(exc)
    return errors


def names(role: Role) -> list[str]:
    """Every peer of ``role``: its folders (no driver imported) and folderless
    registrations."""
    return sorted(set(_folders(role)) | set(_REGISTRY[role]))


def target_names() -> list[str]:
    return names("target")


def initiator_names() -> list[str]:
    return names("initiator")


def shard_weight(role: Role, name: str) -> float:
    """Peer ``name``'s ``peer.shard_weight``: the relative cost of its share of a run,
    by which ``run --shards`` balances shards. A name without a peer folder (an
    ``iscsi://`` target, a folderless driver) weighs ``DEFAULT_SHARD_WEIGHT``."""
    manifest = _peer_manifest(role, name)
    return DEFAULT_SHARD_WEIGHT if manifest is None else float(manifest.shard_weight)


def shard_weights(role: Role) -> dict[str, float]:
    """``shard_weight`` of every peer of ``role`` that has a folder."""
    return {name: shard_weight(role, name) for name in _folders(role)}


def _manifest_for(role: Role, name: str) -> Manifest:
    """Peer ``name``'s manifest (a bare ``Manifest`` for a folderless driver)."""
    manifest = _peer_manifest(role, name)
    return Manifest(name=name, role=role) if manifest is None else manifest


def get_driver(role: Role, name: str, *, mode: str | None = None, **options: Any) -> PeerDriver:
    """A new, not yet started driver for peer ``name``."""
    cls, manifest = _resolve(role, name)
    return cls(manifest, mode=mode, **options)  # type: ignore[call-arg]


def get_target_driver(name: str, *, mode: str | None = None, **options: Any) -> TargetDriver:
    drv = get_driver("target", name, mode=mode, **options)
    assert isinstance(drv, TargetDriver)
    return drv


def get_initiator_driver(name: str, *, mode: str | None = None, **options: Any) -> InitiatorDriver:
    drv = get_driver("initiator", name, mode=mode, **options)
    assert isinstance(drv, InitiatorDriver)
    return drv
