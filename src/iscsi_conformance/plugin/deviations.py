"""Known deviations of a peer, from its manifest, matched to a test.

A deviation names a stable test ID (which covers its parametrised cases) or a group
of IDs (``CHAP.Algorithms.*``), the peer
versions it applies to (``*``, ``>=1.0.85``, ``<6.2,>=5.10``) and the reason. A
matching deviation makes the test a *strict* expected failure: if the peer is fixed,
the test passes unexpectedly and the run says so, so the manifest gets updated.

The matching itself is ``peers.manifest.find_deviation`` (one matcher for the plugin
and the drivers); this module adapts it to any manifest the plugin holds: a loaded
``PeerManifest``, the plain ``Manifest`` an xdist worker rebuilds, or the one made up
for a third-party target.
"""

from __future__ import annotations

from typing import Any

from iscsi_conformance.peers.manifest import Deviation, find_deviation


def _deviations(manifest: Any) -> Any:
    parsed = getattr(manifest, "parsed_deviations", None)
    return parsed if parsed else getattr(manifest, "deviations", None) or []


def deviation_for(manifest: Any, test_id: str, version: str) -> str | None:
    """The reason (with its upstream report) of the deviation of ``manifest`` that
    covers ``test_id``, or None."""
    found = find_deviation(_deviations(manifest), test_id, version)
    if found is None:
        return None
    return f"{found.reason} ({found.upstream})" if found.upstream else found.reason


def matching_deviation(manifest: Any, test_id: str, version: str) -> dict[str, Any] | None:
    """The matching deviation as its manifest table (``test``, ``reason``, ``effect``...)."""
    found: Deviation | None = find_deviation(_deviations(manifest), test_id, version)
    return None if found is None else found.as_dict()
