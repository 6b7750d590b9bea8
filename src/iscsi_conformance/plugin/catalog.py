"""The requirements catalog (``conformance/requirements/*.toml``), loaded once."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

from iscsi_conformance import grading

FIELDS = ("id", "document", "section", "level", "role", "text")
# Where the row's wording was checked against its document (README.md), "" when not yet.
# Validated here but not passed on: reports carry FIELDS only.
OPTIONAL_FIELDS = ("verified",)
# RFC 2119 levels, and INFORMATIONAL for a row with no normative word behind it (a
# robustness check: what a peer does is recorded, never failed; grading.py)
LEVELS = frozenset(grading.LEVELS)
ROLES = {"target", "initiator", "both"}


def catalog_dir() -> Path:
    from iscsi_conformance.suite import suite_dir

    return suite_dir() / "requirements"


@functools.cache
def load_catalog(directory: Path | None = None) -> list[dict[str, Any]]:
    """All requirements, validated; raises ValueError naming the file and entry."""
    directory = directory or catalog_dir()
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
        for n, req in enumerate(doc.get("requirement", [])):
            where = f"{path.name}: requirement[{n}]"
            missing = [f for f in FIELDS if f not in req]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            if req["level"] not in LEVELS:
                raise ValueError(f"{where}: level {req['level']!r} is not an RFC 2119 level")
            if req["role"] not in ROLES:
                raise ValueError(f"{where}: role {req['role']!r} must be target, initiator or both")
            unknown = sorted(set(req) - set(FIELDS) - set(OPTIONAL_FIELDS))
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
            if not isinstance(req.get("verified", ""), str):
                raise ValueError(f"{where}: verified must be a string ('' when not verified)")
            if req["id"] in seen:
                raise ValueError(f"{where}: duplicate id {req['id']}")
            seen.add(req["id"])
            out.append({f: req[f] for f in FIELDS})
    return out


@functools.cache
def level_of(requirement: str) -> str | None:
    """The catalog level of one requirement id (None when the catalog lacks it, or
    cannot be found: a third-party suite may name requirements of its own)."""
    try:
        catalog = load_catalog()
    except (OSError, ValueError, SystemExit):  # suite_dir() exits when no suite is found
        return None
    return next((r["level"] for r in catalog if r["id"] == requirement), None)
