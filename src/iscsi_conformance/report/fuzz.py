"""Fuzz campaigns in a report folder: the files ``fuzz --report DIR`` writes, read back
for the index's Fuzz section (one row per peer: cases, rate, failures with their
reproducers).

Theory of operation: a campaign is one JSON file ``DIR/fuzz/<peer>.json`` (format
``iscsi-conformance-fuzz``, version 1), its reproducers and their captures beside it
in ``DIR/fuzz/<peer>/``; every path in the file is relative to ``DIR``. The fields:
``peer``, ``role`` ("target" or "initiator"), ``started`` (ISO 8601), ``seconds``,
``cases``, ``pdus``, ``seed``, ``command`` (argv), ``notes`` (lines), ``peer_version`` (the
peer's, "" when not known; added later, so optional) and ``failures``,
each with ``kind``, ``place``, ``requirement``, ``level``, ``count``, ``detail`` (its
first line), ``reproducer`` and ``pcapng`` (paths, "" when none) and ``replay`` (the
command). :func:`load_campaigns` reads every such file of a folder, sorted by peer; a
file that is not one (unreadable, another format) is skipped with a note, never an
error: the rest of the report still renders. The report never imports the fuzzer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "FuzzCampaign", "FuzzFailure", "campaign_path", "load_campaigns"]

FORMAT = "iscsi-conformance-fuzz"
VERSION = 1


@dataclasses.dataclass
class FuzzFailure:
    kind: str
    place: str
    requirement: str = ""
    level: str = "MUST"
    count: int = 1
    detail: str = ""
    reproducer: str = ""
    pcapng: str = ""
    replay: str = ""


@dataclasses.dataclass
class FuzzCampaign:
    peer: str
    role: str = "target"
    started: str = ""
    seconds: float = 0.0
    cases: int = 0
    pdus: int = 0
    seed: int | None = None
    command: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    failures: list[FuzzFailure] = dataclasses.field(default_factory=list)
    peer_version: str = ""

    @property
    def anchor(self) -> str:
        return "fuzz-" + re.sub(r"[^A-Za-z0-9]+", "-", self.peer).strip("-")

    @property
    def cases_per_second(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    @property
    def pdus_per_second(self) -> float:
        return self.pdus / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        doc.update(dataclasses.asdict(self))
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> FuzzCampaign:
        """Raises ValueError for anything but a campaign file."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}, this tool reads {VERSION}")
        try:
            failures = [FuzzFailure(**f) for f in doc.get("failures", [])]
            fields = {f.name for f in dataclasses.fields(cls)} - {"failures"}
            return cls(**{k: v for k, v in doc.items() if k in fields}, failures=failures)
        except TypeError as exc:
            raise ValueError(f"malformed: {exc}") from exc


def campaign_path(out_dir: Path, peer: str) -> Path:
    """Where the campaign against ``peer`` goes in the folder ``out_dir``."""
    return Path(out_dir) / "fuzz" / (re.sub(r"[^A-Za-z0-9._-]+", "-", peer) + ".json")


def load_campaigns(out_dir: Path) -> tuple[list[FuzzCampaign], list[str]]:
    """The campaigns of a report folder, by peer, and a note per file skipped."""
    campaigns: list[FuzzCampaign] = []
    notes: list[str] = []
    for path in sorted((Path(out_dir) / "fuzz").glob("*.json")):
        try:
            campaigns.append(FuzzCampaign.from_json(json.loads(path.read_text("utf-8"))))
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            notes.append(f"fuzz/{path.name} skipped: {exc}")
    campaigns.sort(key=lambda c: (c.role, c.peer))
    return campaigns, notes
