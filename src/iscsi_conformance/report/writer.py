"""Writing a results document: always redacted first, always atomically.

The model (:mod:`.model`) only knows how to become JSON; masking secrets is the
writer's job, so there is one place where a document leaves the process and it
cannot skip :func:`.redact.redact`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .model import Results, write_text_atomic
from .redact import redact


def dumps_results(results: Results, *, secrets: Iterable[str] = (), indent: int | None = 1) -> str:
    """Serialise, *redacted* (registered secrets + key-based masking)."""
    doc = redact(results, secrets).to_json()
    return json.dumps(doc, indent=indent, ensure_ascii=False, sort_keys=False) + "\n"


def dump_results(
    results: Results, path: str | os.PathLike[str], *, secrets: Iterable[str] = ()
) -> Path:
    """Write atomically (xdist workers and CI jobs may share a directory)."""
    return write_text_atomic(Path(path), dumps_results(results, secrets=secrets))
