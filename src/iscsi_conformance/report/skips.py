"""Why a test was skipped, read from its skip reason.

Theory of operation: a skip is not a verdict, but a reader of the matrix must see what
was missing for the test to run: a capability the peer's manifest does not declare, a
configuration (profile) the target cannot serve, a permission the run was not given,
or what the peer negotiated. The plugin's own skips and the suite's spell these in a
few fixed forms (``tgt does not declare capability 'chap_sha256' (manifest)``,
``target tgt cannot serve profile 'redirect': ...``); :func:`skip_cause` reads them
back into a :class:`SkipCause`. A reason in no known form is kind ``other``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SkipCause", "skip_cause"]


@dataclasses.dataclass(frozen=True)
class SkipCause:
    """``kind``: capability, profile, option, deviation, negotiated, pairing or other;
    ``name``: the capability, profile or option; ``peer``: who lacks it."""

    kind: str
    name: str = ""
    peer: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SkipCause:
        return cls(str(d.get("kind", "other")), str(d.get("name", "")), str(d.get("peer", "")))

    def __str__(self) -> str:
        """The cause in words: ``missing capability 'redirect' (tgt's manifest)``."""
        if self.kind == "capability":
            return f"missing capability '{self.name}'" + (
                f" ({self.peer}'s manifest)" if self.peer else ""
            )
        if self.kind == "profile":
            return f"missing profile '{self.name}'" + (
                f" ({self.peer} cannot serve it)" if self.peer else ""
            )
        if self.kind == "option":
            return f"missing option {self.name}"
        if self.kind == "deviation":
            return f"known deviation of {self.peer or 'the peer'}, not run"
        if self.kind == "negotiated":
            return "the peer negotiated it away"
        if self.kind == "pairing":
            return f"{self.peer or 'the peer'} is not in the run"
        return "other reason"


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "profile",
        re.compile(r"^target (?P<peer>\S+) cannot serve profile '(?P<name>[^']+)'"),
    ),
    ("profile", re.compile(r"\bno '(?P<name>[^']+)' target profile\b")),
    (
        "capability",
        re.compile(
            r"^(?P<peer>\S+) does not declare (?:capability )?'?(?P<name>[^'\s()]+?)'?(?:\s|$|\()"
        ),
    ),
    ("capability", re.compile(r"^(?P<peer>\S+) lacks capability '(?P<name>[^']+)'")),
    ("option", re.compile(r"(?P<name>--iscsi-[a-z-]+)")),
    ("deviation", re.compile(r"^known deviation of (?P<peer>\S+?):? ")),
    ("pairing", re.compile(r"^(?:target|initiator) '(?P<peer>[^']+)' is not part of this run")),
    ("negotiated", re.compile(r"\b(?:agreed|did not agree|negotiated)\b")),
)


def skip_cause(reason: str | None) -> SkipCause | None:
    """What ``reason`` says was missing (None for no reason)."""
    if not reason:
        return None
    for kind, pattern in _PATTERNS:
        m = pattern.search(reason)
        if m is not None:
            groups = m.groupdict()
            return SkipCause(kind, groups.get("name") or "", groups.get("peer") or "")
    return SkipCause("other")
