"""What a driver ran and what it printed: the record every peer keeps for the report.

A leaf module (it imports nothing of ours), so that the process runner, the Docker
helper and the drivers can all record commands without importing the driver interface.
Secrets are masked as a command is recorded, never later.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence


@dataclasses.dataclass
class CommandRecord:
    """One command a driver ran, with what it printed (secrets already masked)."""

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    started: float
    duration: float
    where: str = "host"  # "host", "container:<name>", "microvm:<name>"


@dataclasses.dataclass
class CommandLog:
    """Everything a driver ran. ``secrets`` are replaced by ``***`` before recording."""

    records: list[CommandRecord] = dataclasses.field(default_factory=list)
    secrets: set[str] = dataclasses.field(default_factory=set)

    def mask(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
        return text

    def add(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        started: float,
        *,
        where: str = "host",
    ) -> CommandRecord:
        rec = CommandRecord(
            argv=[self.mask(a) for a in argv],
            returncode=returncode,
            stdout=self.mask(stdout),
            stderr=self.mask(stderr),
            started=started,
            duration=time.monotonic() - started,
            where=where,
        )
        self.records.append(rec)
        return rec
