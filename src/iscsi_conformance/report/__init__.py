"""Results model (versioned JSON), merge, and rendering (HTML matrix, JUnit XML).

Data and rendering are kept apart: :mod:`.model` is the format, :mod:`.merge` combines
documents, :mod:`.render_html` / :mod:`.render_junit` turn one into a report, and
:mod:`.redact` runs before anything is written. See docs/reports.md.
"""

from __future__ import annotations

from .merge import merge, merge_files
from .model import (
    FORMAT,
    VERSION,
    Attempt,
    CIInfo,
    Command,
    Evidence,
    HexAnnotation,
    Pairing,
    PduEvent,
    Peer,
    Requirement,
    Results,
    ResultsFormatError,
    Run,
    SpecRef,
    TestResult,
    area_of,
    pairing_id,
    validate,
)
from .redact import Redactor, redact
from .render_html import render_html, write_html
from .render_junit import junit_xml, write_junit

__all__ = [
    "FORMAT",
    "VERSION",
    "Attempt",
    "CIInfo",
    "Command",
    "Evidence",
    "HexAnnotation",
    "Pairing",
    "PduEvent",
    "Peer",
    "Redactor",
    "Requirement",
    "Results",
    "ResultsFormatError",
    "Run",
    "SpecRef",
    "TestResult",
    "area_of",
    "junit_xml",
    "merge",
    "merge_files",
    "pairing_id",
    "redact",
    "render_html",
    "validate",
    "write_html",
    "write_junit",
]
