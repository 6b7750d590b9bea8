"""Peer name -> driver class, for targets and initiators.

Theory of operation: a driver module registers its class with a decorator when it
is imported::

    @register_target("lio")
    class LioTarget(TargetDriver): ...

The registry imports the known driver modules lazily, on the first lookup, and skips
the ones that do not exist (yet), so adding a peer is one module plus one line in
``DRIVER_MODULES``. Drivers are constructed as ``cls(manifest, mode=..., **options)``
with the manifest loaded from the peer's folder (or a bare ``Manifest`` when the peer
has no folder, like the embedded reference implementation).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers.base import InitiatorDriver, Manifest, PeerDriver, Role, TargetDriver

DRIVER_MODULES: tuple[str, ...] = (
    "iscsi_conformance.peers.tgt",
    "iscsi_conformance.peers.libiscsi",
    "iscsi_conformance.peers.lio",
    "iscsi_conformance.peers.openiscsi",
    "iscsi_conformance.peers.reference",
    "iscsi_conformance.peers.reference_target",
    "iscsi_conformance.peers.reference_initiator",
)
"""Modules imported on first lookup; missing ones are skipped."""

_REGISTRY: dict[Role, dict[str, type[PeerDriver]]] = {"target": {}, "initiator": {}}
_loaded = False
_load_lock = threading.RLock()
_import_errors: dict[str, str] = {}

D = TypeVar("D", bound=type[PeerDriver])


def register(role: Role, name: str) -> Callable[[D], D]:
    """Class decorator: make ``cls`` the driver of peer ``name`` in ``role``."""

    def deco(cls: D) -> D:
        base = TargetDriver if role == "target" else InitiatorDriver
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


def _load() -> None:
    global _loaded
    with _load_lock:
        if _loaded:
            return
        _loaded = True  # set first: a driver module may look itself up while importing
        for mod in DRIVER_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as exc:
                if exc.name == mod:  # the module itself is absent: not written yet
                    _import_errors[mod] = "not present"
                    continue
                _import_errors[mod] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a broken driver must not hide the others
                _import_errors[mod] = f"{type(exc).__name__}: {exc}"


def import_errors() -> dict[str, str]:
    """Driver modules that failed to import (other than absent ones), with why."""
    _load()
    return {m: e for m, e in _import_errors.items() if e != "not present"}


def driver_class(role: Role, name: str) -> type[PeerDriver]:
    _load()
    try:
        return _REGISTRY[role][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[role])) or "none"
        hint = "".join(f"; {m}: {e}" for m, e in import_errors().items())
        raise ConfigError(
            f"no {role} driver named {name!r} (known: {known}){hint}", field=role
        ) from None


def names(role: Role) -> list[str]:
    _load()
    return sorted(_REGISTRY[role])


def target_names() -> list[str]:
    return names("target")


def initiator_names() -> list[str]:
    return names("initiator")


def _manifest_for(role: Role, name: str) -> Manifest:
    from iscsi_conformance.peers.manifest import load_peer_manifest, peer_folders

    if name in peer_folders(role):
        return load_peer_manifest(role, name)
    return Manifest(name=name, role=role)


def get_driver(role: Role, name: str, *, mode: str | None = None, **options: Any) -> PeerDriver:
    """A new, not yet started driver for peer ``name``."""
    cls = driver_class(role, name)
    return cls(_manifest_for(role, name), mode=mode, **options)  # type: ignore[call-arg]


def get_target_driver(name: str, *, mode: str | None = None, **options: Any) -> TargetDriver:
    drv = get_driver("target", name, mode=mode, **options)
    assert isinstance(drv, TargetDriver)
    return drv


def get_initiator_driver(name: str, *, mode: str | None = None, **options: Any) -> InitiatorDriver:
    drv = get_driver("initiator", name, mode=mode, **options)
    assert isinstance(drv, InitiatorDriver)
    return drv
