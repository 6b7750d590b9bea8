"""What the proofs of a conformance area share: its test module loaded from
``conformance/`` (those modules are imported without a package) and a stand-in for the
evidence a test writes notes to."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_suite(relpath: str, name: str) -> Any:
    """The conformance test module at ``conformance/<relpath>``, loaded as ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "conformance" / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Notes:
    """Collects what a test notes in its evidence."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)
