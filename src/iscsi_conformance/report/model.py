"""The versioned JSON result format: what a run found, kept apart from how it is shown.

Theory of operation: one :class:`Results` document holds everything a report needs:
the runs that produced it (machine, CI job, command line), the peers that took part
(with the commands their drivers ran), the pairings (initiator x target), one
:class:`TestResult` per (test id, pairing) with its spec references and evidence, and
optionally the requirements catalog so coverage can be computed offline.

The document is JSON: ``{"format": "iscsi-conformance-results", "version": "2.0",
...}``. ``version`` is ``MAJOR.MINOR``: a minor version only *adds* optional fields, so a
reader accepts any ``2.x`` (ignoring fields it does not know). Version 2 graded the
verdicts (``grading.py``): the outcomes ``non-strict`` and ``informational``, each
test's ``grade``, its ``skip_cause``, a run's ``strict``, the level INFORMATIONAL. A
``1.x`` document is still read, checked against its own schema, and upgraded in memory
(grades come from its spec levels; its outcomes stay as they were); any other major
version is refused with :class:`ResultsFormatError`. The JSON Schemas live in
``reports/schema/results-v<MAJOR>.schema.json``; :func:`validate` checks a document
against its major version's schema with ``jsonschema`` when that is installed and with
a small built-in interpreter of the same schema otherwise, so both paths enforce one
definition.

Timestamps are ISO 8601 strings (UTC); durations are seconds. Nothing here writes
secrets: every writer (:mod:`.writer`) runs :mod:`.redact` first; the model never does.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .. import grading
from ..errors import HarnessError
from .skips import SkipCause, skip_cause

if TYPE_CHECKING:
    from ..peers.base import CommandRecord, PeerDriver

__all__ = [
    "FORMAT",
    "OUTCOMES",
    "VERSION",
    "Attempt",
    "CIInfo",
    "Command",
    "Evidence",
    "HexAnnotation",
    "Pairing",
    "PduEvent",
    "Peer",
    "Requirement",
    "Results",
    "ResultsFormatError",
    "Run",
    "SkipCause",
    "SpecRef",
    "TestResult",
    "area_of",
    "load_schema",
    "pairing_id",
    "resource_dir",
    "validate",
]

FORMAT = "iscsi-conformance-results"
VERSION = "2.1"  # 2.1: PDU connections, evidence connections, per-pairing evidence files
MAJOR = 2
READABLE_MAJORS = (1, 2)  # 1.x: read and upgraded in memory (no grades, no new outcomes)

Outcome = Literal[
    "passed", "failed", "non-strict", "informational", "skipped", "xfailed", "xpassed", "error"
]
OUTCOMES: tuple[str, ...] = (
    "passed",
    "failed",
    "non-strict",  # a SHOULD broken (grading.py); a failure only in a strict run
    "informational",  # behaviour the RFC leaves open, with what was observed
    "error",
    "xfailed",
    "xpassed",
    "skipped",
)
PEER_MODES = ("embedded", "native", "container", "microvm", "external")
ROLES = ("target", "initiator")
# RFC 2119 / RFC 8174 keywords a reference may carry, and INFORMATIONAL (grading.py).
LEVELS = grading.LEVELS
MANDATORY_LEVELS = grading.MANDATORY_LEVELS
PAIRING_SEPARATOR = "×"  # U+00D7, as in "open-iscsi×tgt"


class ResultsFormatError(HarnessError):
    """A results document is not one this version can read (wrong format, major
    version, or shape). ``source`` names the file when there is one."""

    def __init__(self, message: str, *, source: str = "", problems: Sequence[str] = ()) -> None:
        text = f"{source}: {message}" if source else message
        if problems:
            text += "\n  " + "\n  ".join(problems[:20])
            if len(problems) > 20:
                text += f"\n  ... and {len(problems) - 20} more"
        super().__init__(text)
        self.source = source
        self.problems = list(problems)


def pairing_id(initiator: str, target: str) -> str:
    """The stable id of a pairing: ``"open-iscsi×tgt"``."""
    return f"{initiator}{PAIRING_SEPARATOR}{target}"


def area_of(test_id: str) -> str:
    """The area of a test: its first dotted component (``Login``, ``CHAP``, ...).

    A peer's own suite is namespaced by the peer's (lower-case) name, and its area keeps
    the suite name too: ``libiscsi.SCSI.Read16.Simple`` is in area ``libiscsi.SCSI``.
    An area spelt as the RFCs spell it (``iSNS.Registration.X``) is not a peer's name.
    """
    parts = test_id.split(".")
    if len(parts) > 2 and parts[0][:1].islower() and not parts[0][1:2].isupper():
        return ".".join(parts[:2])
    return parts[0]


def utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def iso_from_epoch(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- pieces


@dataclasses.dataclass
class SpecRef:
    """A reference into a specification: ``RFC 7143`` ``13.12`` ``MUST`` ``target``."""

    document: str
    section: str
    level: str = "MUST"
    role: str = "target"  # "target", "initiator" or "both"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SpecRef:
        return cls(**_pick(cls, d))

    @classmethod
    def coerce(cls, ref: Any) -> SpecRef:
        """Accept a SpecRef, a dict, or anything with the four attributes
        (e.g. :class:`iscsi_conformance.plugin.spec.SpecRef`)."""
        if isinstance(ref, SpecRef):
            return ref
        if isinstance(ref, Mapping):
            return cls.from_json(ref)
        return cls(
            str(ref.document), str(ref.section), str(ref.level), str(getattr(ref, "role", "target"))
        )

    @property
    def is_mandatory(self) -> bool:
        return self.level in MANDATORY_LEVELS

    def __str__(self) -> str:
        return f"{self.document} {self.section} {self.level} ({self.role})"


@dataclasses.dataclass
class Requirement:
    """One entry of the requirements catalog (``R7143-13.12-1``), text paraphrased."""

    id: str
    document: str
    section: str
    level: str
    role: str
    text: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Requirement:
        return cls(**_pick(cls, d))

    @property
    def is_mandatory(self) -> bool:
        return self.level in MANDATORY_LEVELS


@dataclasses.dataclass
class HexAnnotation:
    """A named field of a PDU's bytes, for the annotated hex dump."""

    offset: int
    length: int
    name: str
    value: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HexAnnotation:
        return cls(**_pick(cls, d))


@dataclasses.dataclass
class PduEvent:
    """One PDU seen on the wire during a test.

    ``direction`` is ``"i->t"`` or ``"t->i"``; ``time`` seconds since the test started;
    ``opcode`` the PDU's name (``LoginRequest``); ``hex`` its bytes (BHS, AHS, digests
    and data segment, lower-case hex without separators). ``annotations`` name byte
    ranges; when empty the renderer annotates the BHS from :mod:`core.layout`.
    """

    direction: str
    opcode: str
    summary: str = ""
    hex: str = ""
    time: float | None = None
    annotations: list[HexAnnotation] = dataclasses.field(default_factory=list)
    note: str = ""  # why this PDU matters ("expected a Reject here")
    connection: int | None = None  # index into Evidence.connections (2.1)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PduEvent:
        kw = _pick(cls, d)
        kw["annotations"] = [HexAnnotation.from_json(a) for a in d.get("annotations", [])]
        return cls(**kw)

    @classmethod
    def from_bytes(
        cls,
        direction: str,
        opcode: str,
        raw: bytes,
        *,
        summary: str = "",
        time: float | None = None,
    ) -> PduEvent:
        return cls(direction=direction, opcode=opcode, summary=summary, hex=raw.hex(), time=time)


@dataclasses.dataclass
class Evidence:
    """What a test saw: the PDU trace, a packet capture, captured log text."""

    pdus: list[PduEvent] = dataclasses.field(default_factory=list)
    capture: str | None = None  # path of a .pcap(ng) attachment
    log: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the TCP connections of the trace (2.1), each ``{"label", "initiator", "target"}``
    #: with ``host:port`` addresses as the sockets had them; PduEvent.connection indexes it
    connections: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Evidence:
        kw = _pick(cls, d)
        kw["pdus"] = [PduEvent.from_json(p) for p in d.get("pdus", [])]
        return cls(**kw)

    def is_empty(self) -> bool:
        return not (self.pdus or self.capture or self.log or self.extra)


@dataclasses.dataclass
class Attempt:
    """An earlier result of the same (test, pairing) that a merge superseded."""

    outcome: str
    run: str | None = None
    start: str | None = None
    duration: float = 0.0
    message: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Attempt:
        return cls(**_pick(cls, d))


@dataclasses.dataclass
class TestResult:
    """The result of one conformance test in one pairing."""

    __test__ = False  # not a pytest test class

    id: str
    pairing: str
    outcome: str
    area: str = ""
    duration: float = 0.0
    start: str | None = None
    run: str | None = None  # Run.id
    nodeid: str = ""  # pytest node id
    spec: list[SpecRef] = dataclasses.field(default_factory=list)
    requirements: list[str] = dataclasses.field(default_factory=list)
    message: str = ""
    details: str = ""  # long failure text (traceback)
    evidence: Evidence = dataclasses.field(default_factory=Evidence)
    deviation: str | None = None  # the manifest's reason, for xfailed/xpassed
    skip_reason: str | None = None
    #: what was missing for a skipped test to run (read from skip_reason when not given)
    skip_cause: SkipCause | None = None
    #: must / should / informational (grading.py): of the requirement a failure broke,
    #: else of the strongest spec reference; a 1.x document's grade comes from its spec
    grade: str | None = None
    flaky: bool = False
    history: list[Attempt] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.area:
            self.area = area_of(self.id)
        if self.grade is None and self.spec:
            self.grade = grading.strongest(r.level for r in self.spec)
        if self.skip_cause is None and self.outcome == "skipped":
            self.skip_cause = skip_cause(self.skip_reason)

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.pairing)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TestResult:
        kw = _pick(cls, d)
        kw["spec"] = [SpecRef.from_json(s) for s in d.get("spec", [])]
        kw["evidence"] = Evidence.from_json(d.get("evidence", {}))
        kw["history"] = [Attempt.from_json(a) for a in d.get("history", [])]
        if d.get("skip_cause"):
            kw["skip_cause"] = SkipCause.from_json(d["skip_cause"])
        return cls(**kw)


@dataclasses.dataclass
class Command:
    """A command a peer driver ran (from :class:`peers.base.CommandRecord`)."""

    argv: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    started: float = 0.0  # the driver's clock: comparable only within one run
    duration: float = 0.0
    where: str = "host"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Command:
        return cls(**_pick(cls, d))

    @classmethod
    def from_record(cls, rec: CommandRecord) -> Command:
        return cls(
            argv=list(rec.argv),
            returncode=rec.returncode,
            stdout=rec.stdout,
            stderr=rec.stderr,
            started=rec.started,
            duration=rec.duration,
            where=rec.where,
        )


@dataclasses.dataclass
class Peer:
    """A program that took part: its version, how it ran, what it can do."""

    name: str
    role: str
    version: str = "unknown"
    mode: str = "native"
    description: str = ""
    capabilities: dict[str, Any] = dataclasses.field(default_factory=dict)
    deviations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    commands: list[Command] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity for merging. ``role`` is part of it: ``reference`` is both an
        initiator and a target."""
        return (self.name, self.role, self.version, self.mode)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Peer:
        kw = _pick(cls, d)
        kw["commands"] = [Command.from_json(c) for c in d.get("commands", [])]
        return cls(**kw)

    @classmethod
    def from_driver(cls, driver: PeerDriver) -> Peer:
        """Describe a running driver: version, mode, manifest data, its command log."""
        try:
            version = driver.version()
        except Exception as exc:  # a peer that cannot say its version still took part
            version = f"unknown ({type(exc).__name__})"
        m = driver.manifest
        return cls(
            name=driver.name,
            role=driver.role,
            version=version,
            mode=driver.mode,
            description=m.description,
            capabilities=dict(m.capabilities),
            deviations=[dict(d) for d in m.deviations],
            commands=[Command.from_record(r) for r in driver.log.records],
        )


@dataclasses.dataclass
class Pairing:
    """An initiator x target combination. ``target`` is a peer name, or an
    ``iscsi://`` URL for a third-party target the suite does not manage."""

    initiator: str
    target: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = pairing_id(self.initiator, self.target)

    @property
    def target_is_url(self) -> bool:
        return "://" in self.target

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Pairing:
        return cls(**_pick(cls, d))


@dataclasses.dataclass
class CIInfo:
    """The CI job that ran the suite, detected from the environment."""

    provider: str
    job: str = ""
    url: str = ""
    pipeline: str = ""
    ref: str = ""
    commit: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CIInfo:
        return cls(**_pick(cls, d))

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None) -> CIInfo | None:
        """GitHub Actions, GitLab CI, Jenkins, Buildkite, or a generic ``CI_JOB_NAME``."""
        e = os.environ if env is None else env
        if e.get("GITHUB_ACTIONS") == "true":
            server = e.get("GITHUB_SERVER_URL", "https://github.com")
            repo, run_id = e.get("GITHUB_REPOSITORY", ""), e.get("GITHUB_RUN_ID", "")
            return cls(
                provider="github-actions",
                job=e.get("GITHUB_JOB", ""),
                url=f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else "",
                pipeline=e.get("GITHUB_WORKFLOW", ""),
                ref=e.get("GITHUB_REF", ""),
                commit=e.get("GITHUB_SHA", ""),
            )
        if e.get("GITLAB_CI"):
            return cls(
                provider="gitlab-ci",
                job=e.get("CI_JOB_NAME", ""),
                url=e.get("CI_JOB_URL", ""),
                pipeline=e.get("CI_PIPELINE_ID", ""),
                ref=e.get("CI_COMMIT_REF_NAME", ""),
                commit=e.get("CI_COMMIT_SHA", ""),
            )
        if e.get("JENKINS_URL"):
            return cls(
                provider="jenkins",
                job=e.get("JOB_NAME", ""),
                url=e.get("BUILD_URL", ""),
                pipeline=e.get("BUILD_NUMBER", ""),
                ref=e.get("GIT_BRANCH", ""),
                commit=e.get("GIT_COMMIT", ""),
            )
        if e.get("BUILDKITE"):
            return cls(
                provider="buildkite",
                job=e.get("BUILDKITE_LABEL", ""),
                url=e.get("BUILDKITE_BUILD_URL", ""),
                pipeline=e.get("BUILDKITE_PIPELINE_SLUG", ""),
                ref=e.get("BUILDKITE_BRANCH", ""),
                commit=e.get("BUILDKITE_COMMIT", ""),
            )
        if e.get("CI_JOB_NAME"):
            return cls(provider="ci", job=e["CI_JOB_NAME"], url=e.get("CI_JOB_URL", ""))
        return None


@dataclasses.dataclass
class Run:
    """One invocation of the suite (one machine, one CI job, maybe one xdist worker)."""

    id: str
    started: str | None = None
    finished: str | None = None
    host: str = ""
    tool_version: str = ""
    command_line: list[str] = dataclasses.field(default_factory=list)
    ci: CIInfo | None = None
    python: str = ""
    platform: str = ""
    worker: str | None = None  # pytest-xdist worker id ("gw0")
    phases: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per phase
    strict: bool = False  # a SHOULD broken was a failure in this run (--iscsi-strict)
    #: the iSNS server the run used (2.1): name, kind, version, mode, address
    isns_server: dict[str, str] | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.id, self.worker)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Run:
        kw = _pick(cls, d)
        kw["ci"] = CIInfo.from_json(d["ci"]) if d.get("ci") else None
        return cls(**kw)

    @classmethod
    def collect(
        cls,
        *,
        argv: Sequence[str] | None = None,
        run_id: str | None = None,
        started: str | None = None,
        worker: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Run:
        """Describe the current process: host, versions, command line, CI job."""
        from .. import __version__

        return cls(
            id=run_id or uuid.uuid4().hex[:12],
            started=started or utcnow(),
            host=socket.gethostname(),
            tool_version=__version__,
            command_line=list(sys.argv if argv is None else argv),
            ci=CIInfo.detect(env),
            python=platform.python_version(),
            platform=platform.platform(),
            worker=worker,
        )


# --------------------------------------------------------------------------- document


@dataclasses.dataclass
class Results:
    """A results document (see the module docstring).

    ``secrets`` is never serialised: values registered there (CHAP secrets of the run)
    are masked by every writer, on top of the key-based masking of :mod:`.redact`.
    """

    runs: list[Run] = dataclasses.field(default_factory=list)
    peers: list[Peer] = dataclasses.field(default_factory=list)
    pairings: list[Pairing] = dataclasses.field(default_factory=list)
    tests: list[TestResult] = dataclasses.field(default_factory=list)
    requirements: list[Requirement] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    version: str = VERSION  # the version this document was read as (written: VERSION)
    secrets: set[str] = dataclasses.field(default_factory=set, repr=False, compare=False)

    # ------------------------------------------------------------------ building

    def add_run(self, run: Run) -> Run:
        self.runs.append(run)
        return run

    def add_peer(self, peer: Peer) -> Peer:
        """Add a peer, replacing one with the same (name, role, version, mode)."""
        self.peers = [p for p in self.peers if p.key != peer.key]
        self.peers.append(peer)
        return peer

    def add_pairing(self, initiator: str, target: str) -> Pairing:
        pid = pairing_id(initiator, target)
        for p in self.pairings:
            if p.id == pid:
                return p
        pairing = Pairing(initiator, target, pid)
        self.pairings.append(pairing)
        return pairing

    def add_test(self, result: TestResult) -> TestResult:
        if result.pairing not in {p.id for p in self.pairings}:
            init, sep, targ = result.pairing.partition(PAIRING_SEPARATOR)
            if not sep:
                raise ValueError(f"unknown pairing {result.pairing!r}: add_pairing() it first")
            self.add_pairing(init, targ)
        self.tests.append(result)
        return result

    def add_secret(self, *values: str) -> None:
        self.secrets.update(v for v in values if v)

    # ------------------------------------------------------------------ queries

    def pairing(self, pid: str) -> Pairing | None:
        return next((p for p in self.pairings if p.id == pid), None)

    def peers_named(self, name: str, role: str | None = None) -> list[Peer]:
        return [p for p in self.peers if p.name == name and (role is None or p.role == role)]

    def requirement_index(self) -> dict[str, Requirement]:
        return {r.id: r for r in self.requirements}

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for f in dataclasses.fields(self):
            if f.name in ("version", "secrets"):
                continue
            doc[f.name] = [_asdict(x) for x in getattr(self, f.name)]
        return doc

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "", check: bool = True) -> Results:
        """Read a document; refuse other formats and major versions (``source`` names
        the file in errors). ``check`` validates against the schema first."""
        if not isinstance(doc, dict):
            raise ResultsFormatError(
                "not a results document (top level is not an object)", source=source
            )
        if doc.get("format") != FORMAT:
            raise ResultsFormatError(
                f"not an {FORMAT} document (format is {doc.get('format')!r})", source=source
            )
        version = doc.get("version")
        major, minor = _parse_version(version)
        if major is None:
            raise ResultsFormatError(f"unreadable format version {version!r}", source=source)
        if major not in READABLE_MAJORS:
            raise ResultsFormatError(
                f"format version {version} cannot be read by this tool, which reads "
                f"versions {' and '.join(f'{m}.x' for m in READABLE_MAJORS)} (format major "
                f"versions differ: "
                f"{'upgrade iscsi-conformance' if major > MAJOR else 'convert or re-run the older results'})",
                source=source,
            )
        if check:
            newest = _parse_version(VERSION)[1] if major == MAJOR else _LAST_MINOR[major]
            problems = validate(doc, allow_unknown=minor > newest)
            if problems:
                raise ResultsFormatError(
                    "does not match the results schema", source=source, problems=problems
                )
        try:
            return cls(
                runs=[Run.from_json(r) for r in doc.get("runs", [])],
                peers=[Peer.from_json(p) for p in doc.get("peers", [])],
                pairings=[Pairing.from_json(p) for p in doc.get("pairings", [])],
                tests=[TestResult.from_json(t) for t in doc.get("tests", [])],
                requirements=[Requirement.from_json(r) for r in doc.get("requirements", [])],
                notes=list(doc.get("notes", [])),
                version=str(version),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ResultsFormatError(f"malformed document: {exc}", source=source) from exc

    @classmethod
    def loads(cls, text: str, *, source: str = "") -> Results:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsFormatError(f"not JSON: {exc}", source=source) from exc
        return cls.from_json(doc, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Results:
        """Read a results file; PDU traces kept in per-pairing evidence files beside it
        (``evidence_files``, written by the report folder) are read back in, so the
        loaded document is whole and merges or renders like one written inline."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ResultsFormatError(f"cannot read: {exc.strerror}", source=str(p)) from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsFormatError(f"not JSON: {exc}", source=str(p)) from exc
        results = cls.from_json(doc, source=str(p))
        files = doc.get("evidence_files") if isinstance(doc, dict) else None
        if files:
            _attach_evidence(results, {k: p.parent / v for k, v in files.items()}, source=str(p))
        return results

    def validate(self) -> list[str]:
        return validate(self.to_json())


# --------------------------------------------------------------------------- evidence files

#: A per-pairing evidence file is JavaScript that a page loads with ``<script src>``
#: (pages opened from the disk cannot fetch JSON) and JSON for everything else: one
#: call of this function with one JSON object, ``{"pairing", "tests": {id: [pdu]}}``.
EVIDENCE_CALL = "iscsiEvidence"


def evidence_file_text(
    pairing: str, pdus_by_test: Mapping[str, Sequence[Mapping[str, Any]]]
) -> str:
    """The file's text: ``{"pairing", "fields", "tests": {id: [pdu, ...]}}`` where a PDU
    is an array in the order of ``fields`` (trailing empty values left out; a matrix has
    tens of thousands of PDUs, whose key names alone would weigh megabytes) and its
    bytes are base64, a third smaller than the hex of results.json (the page decodes
    them with ``atob``)."""
    tests = {tid: [_packed(p) for p in pdus] for tid, pdus in pdus_by_test.items()}
    body = {"pairing": pairing, "fields": list(EVIDENCE_FIELDS), "tests": tests}
    return f"{EVIDENCE_CALL}({json.dumps(body, ensure_ascii=False, separators=(',', ':'))});\n"


#: The order of a PDU's values in an evidence file ("b64" holds PduEvent.hex).
EVIDENCE_FIELDS = (
    "direction",
    "opcode",
    "summary",
    "b64",
    "time",
    "note",
    "connection",
    "annotations",
)
_EMPTY: tuple[Any, ...] = (None, "", [])


def _packed(pdu: Mapping[str, Any]) -> list[Any]:
    raw = pdu.get("hex") or ""
    values = dict(pdu, b64=base64.b64encode(bytes.fromhex(raw)).decode("ascii") if raw else "")
    out = [values.get(k) for k in EVIDENCE_FIELDS]
    while len(out) > 2 and out[-1] in _EMPTY:
        out.pop()
    return out


def _unpacked(values: Sequence[Any] | Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    if isinstance(values, Mapping):  # a folder written before "fields": one object a PDU
        pdu = dict(values)
    else:
        pdu = {k: v for k, v in zip(fields, values, strict=False) if v not in _EMPTY}
    b64 = pdu.pop("b64", "")
    if b64:
        pdu["hex"] = base64.b64decode(b64).hex()
    return pdu


def read_evidence_file(path: Path) -> dict[str, Any]:
    """An evidence file's object, its PDUs as objects with ``hex`` again, as in
    results.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsFormatError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    start, end = text.find(f"{EVIDENCE_CALL}("), text.rstrip().rfind(");")
    try:
        if start < 0 or end < start:
            raise ValueError(f"no {EVIDENCE_CALL}(...) call")
        body = json.loads(text[start + len(EVIDENCE_CALL) + 1 : end])
        if not isinstance(body, dict) or not isinstance(body.get("tests"), dict):
            raise ValueError("not an evidence object")
        fields = body.get("fields") or EVIDENCE_FIELDS
        body["tests"] = {
            tid: [_unpacked(p, fields) for p in pdus] for tid, pdus in body["tests"].items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultsFormatError(f"not an evidence file: {exc}", source=str(path)) from exc
    return body


def _attach_evidence(results: Results, files: Mapping[str, Path], *, source: str) -> None:
    """Put the PDUs of each pairing's evidence file back into its tests."""
    for pid, path in files.items():
        body = read_evidence_file(path)
        if body.get("pairing") != pid:
            raise ResultsFormatError(
                f"evidence file {path.name} is for {body.get('pairing')!r}, not {pid!r}",
                source=source,
            )
        tests = body["tests"]
        for t in results.tests:
            if t.pairing == pid and t.id in tests and not t.evidence.pdus:
                t.evidence.pdus = [PduEvent.from_json(d) for d in tests[t.id]]


# --------------------------------------------------------------------------- helpers


def _pick(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``d`` that are fields of ``cls`` (unknown keys: a newer minor version)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _asdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def _parse_version(v: Any) -> tuple[int | None, int]:
    if isinstance(v, int):
        return v, 0
    m = re.fullmatch(r"(\d+)\.(\d+)", str(v))
    if not m:
        return None, 0
    return int(m.group(1)), int(m.group(2))


def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resource_dir(kind: Literal["templates", "schema"]) -> Path:
    """``reports/<kind>`` of a source checkout, or ``iscsi_conformance/_<kind>`` of a wheel."""
    pkg = Path(__file__).resolve().parent.parent
    installed = pkg / f"_{kind}"
    if installed.is_dir():
        return installed
    source = pkg.parent.parent / "reports" / kind
    if source.is_dir():
        return source
    raise HarnessError(f"report {kind} not found (looked in {installed} and {source})")


_SCHEMA_CACHE: dict[str, Any] = {}


#: The newest minor version of each older major version this tool reads.
_LAST_MINOR = {1: 0}


def load_schema(major: int = MAJOR) -> dict[str, Any]:
    key = f"v{major}"
    if key not in _SCHEMA_CACHE:
        path = resource_dir("schema") / f"results-{key}.schema.json"
        _SCHEMA_CACHE[key] = json.loads(path.read_text(encoding="utf-8"))
    return cast(dict[str, Any], _SCHEMA_CACHE[key])


def _major_of(doc: Any) -> int:
    """The schema a document is checked against: its own major version when this tool
    reads it, else the current one (which then names the wrong version)."""
    major = _parse_version(doc.get("version") if isinstance(doc, dict) else None)[0]
    return major if major in READABLE_MAJORS else MAJOR


def validate(
    doc: Any, *, allow_unknown: bool = False, use_jsonschema: bool | None = None
) -> list[str]:
    """Problems of ``doc`` against the schema of its major version (empty list: valid).

    ``allow_unknown`` accepts properties the schema does not know (a newer minor
    version). ``use_jsonschema``: None = when installed; False forces the built-in check.
    """
    major = _major_of(doc)
    schema = load_schema(major)
    if allow_unknown:
        schema = _relax(schema)
    if use_jsonschema is not False:
        validator = _jsonschema_validator(major, allow_unknown, required=bool(use_jsonschema))
        if validator is not None:
            if validator.is_valid(doc):  # fast path; collecting errors is slower
                return []
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            return [f"{_path_str(e.absolute_path)}: {e.message}" for e in errors]
    problems: list[str] = []
    _check(doc, schema, schema, "$", problems)
    return problems


_VALIDATORS: dict[tuple[int, bool], Any] = {}


def _jsonschema_validator(major: int, allow_unknown: bool, *, required: bool) -> Any:
    """A cached ``jsonschema`` validator (building one costs more than validating)."""
    key = (major, allow_unknown)
    if key not in _VALIDATORS:
        try:
            import jsonschema  # type: ignore[import-untyped]
        except ImportError:
            if required:
                raise
            return None
        schema = load_schema(major)
        _VALIDATORS[key] = jsonschema.Draft202012Validator(
            _relax(schema) if allow_unknown else schema
        )
    return _VALIDATORS[key]


def _relax(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: (True if k == "additionalProperties" and v is False else _relax(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_relax(x) for x in schema]
    return schema


def _path_str(path: Iterable[Any]) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES[name])


def _check(value: Any, schema: Any, root: dict[str, Any], where: str, out: list[str]) -> None:
    """The subset of JSON Schema 2020-12 that the results schemas use."""
    if schema is True or schema is None:
        return
    if schema is False:
        out.append(f"{where}: not allowed")
        return
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"built-in schema check cannot follow {ref}")
        _check(value, root["$defs"][ref.rsplit("/", 1)[1]], root, where, out)
    if "anyOf" in schema:
        if all(_sub_problems(value, s, root, where) for s in schema["anyOf"]):
            out.append(f"{where}: {value!r} matches none of the allowed forms")
            return
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {schema['const']!r} was expected")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            out.append(f"{where}: {value!r} is not of type {' or '.join(types)}")
            return
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{where}: {value!r} is too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    if _is_type(value, "number") and "minimum" in schema and value < schema["minimum"]:
        out.append(f"{where}: {value!r} is less than the minimum of {schema['minimum']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{i}]", out)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{where}: {key!r} is a required property")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{where}.{key}", out)
            elif extra is False:
                out.append(f"{where}: additional property {key!r} is not allowed")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{where}.{key}", out)


def _sub_problems(value: Any, schema: Any, root: dict[str, Any], where: str) -> list[str]:
    sub: list[str] = []
    _check(value, schema, root, where, sub)
    return sub
