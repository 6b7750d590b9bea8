"""Known deviations of a peer, from its manifest, matched to a test.

A deviation names a stable test ID or an ID prefix (``CHAP.Algorithms``), the peer
versions it applies to (``*``, ``>=1.0.85``, ``<6.2,>=5.10``) and the reason. A
matching deviation makes the test a *strict* expected failure: if the peer is fixed,
the test passes unexpectedly and the run says so, so the manifest gets updated.
"""

from __future__ import annotations

import re
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

_VERSION_IN_TEXT = re.compile(r"(\d+(?:\.\d+)+)")


def version_matches(spec: str, version: str) -> bool:
    spec = (spec or "*").strip()
    if spec in ("*", ""):
        return True
    found = _VERSION_IN_TEXT.search(version or "")
    if not found:
        return True  # unknown version: assume the deviation still applies
    try:
        return Version(found.group(1)) in SpecifierSet(spec)
    except (InvalidSpecifier, InvalidVersion):
        return True


def id_matches(pattern: str, test_id: str) -> bool:
    base = pattern.rstrip(".")
    return test_id == pattern or test_id.startswith((base + ".", base + "["))


def deviation_for(manifest: Any, test_id: str, version: str) -> str | None:
    """The reason of the deviation of ``manifest`` that covers ``test_id`` (the longest
    matching prefix wins), or None."""
    found = matching_deviation(manifest, test_id, version)
    if found is None:
        return None
    reason = str(found.get("reason", "known deviation"))
    upstream = found.get("upstream")
    return f"{reason} ({upstream})" if upstream else reason


def matching_deviation(manifest: Any, test_id: str, version: str) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for dev in getattr(manifest, "deviations", None) or []:
        pattern = str(dev.get("test", ""))
        if not pattern or not id_matches(pattern, test_id):
            continue
        if not version_matches(str(dev.get("versions", "*")), version):
            continue
        if best is None or len(pattern) > len(str(best.get("test", ""))):
            best = dev
    return best
