"""The HTML interoperability matrix.

Theory of operation: :func:`build_view` turns a (redacted) :class:`Results` into plain
view objects (rows, cells, per-area counts, annotated hex rows); the Jinja2 templates
in ``reports/templates`` only lay them out. No numbers are computed in templates.
:func:`render_html` gives one self-contained page (CSS and JS inlined);
:func:`write_html` a report folder (``index.html``, a page and an evidence file per
cell, captures; docs/reports.md) that opens from the disk and loads nothing from
anywhere else. Without JS the matrix, the drill-down (anchors and ``<details>``) and
every section work, except the PDU traces that a cell's page reads from its evidence
file; JS adds "show only this pairing" and a filter for problems. Jinja2 autoescaping
is on for everything.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .diff import Diff, diff, history_trend
from .fuzz import FuzzCampaign, load_campaigns
from .model import (
    PAIRING_SEPARATOR,
    Pairing,
    PduEvent,
    Peer,
    Requirement,
    Results,
    TestResult,
    area_of,
    evidence_file_text,
    resource_dir,
    utcnow,
    write_text_atomic,
)
from .pcapng import write_capture
from .redact import redact
from .requirements_coverage import Coverage, compute_coverage

__all__ = ["build_view", "render_html", "write_html"]

MAX_HEX_BYTES = 1024  # longer PDUs are cut in the dump (the capture has everything)

# Order in which outcomes are shown (bars and counts): worst first. A non-strict result
# (a SHOULD broken) and an informational one (what the RFC leaves open) are shown apart
# from failures: neither fails the cell unless the run was strict (grading.py).
SHOWN = (
    "failed",
    "error",
    "xpassed",
    "non-strict",
    "xfailed",
    "informational",
    "passed",
    "skipped",
)
SYMBOL = {
    "passed": "✓",
    "failed": "✗",
    "error": "!",
    "non-strict": "△",
    "informational": "ℹ",
    "xfailed": "≈",
    "xpassed": "↑",
    "skipped": "–",
    "flaky": "~",
}
LABEL = {
    "passed": "passed",
    "failed": "failed",
    "error": "error",
    "non-strict": "non-strict (SHOULD broken)",
    "informational": "informational",
    "xfailed": "known deviation",
    "xpassed": "unexpectedly passed",
    "skipped": "skipped",
    "flaky": "flaky",
}
VERDICT_LABEL = {
    "fail": "Fails",
    "flaky": "Flaky",
    "review": "Review",
    "deviations": "Passes with deviations",
    "nonstrict": "Passes, SHOULDs broken",
    "pass": "Passes",
    "skipped": "Skipped only",
    "empty": "Not run",
}


# --------------------------------------------------------------------------- views


def _attr(outcome: str) -> str:
    return outcome.replace("-", "_")


@dataclasses.dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    error: int = 0
    non_strict: int = 0
    informational: int = 0
    xfailed: int = 0
    xpassed: int = 0
    skipped: int = 0
    flaky: int = 0

    def add(self, t: TestResult) -> None:
        if t.outcome in SHOWN:
            setattr(self, _attr(t.outcome), getattr(self, _attr(t.outcome)) + 1)
        if t.flaky:
            self.flaky += 1

    @property
    def total(self) -> int:
        return sum(getattr(self, _attr(o)) for o in SHOWN)

    @property
    def verdict(self) -> str:
        """fail > flaky > review (xpassed: a manifest is out of date) > deviations >
        nonstrict (SHOULDs broken) > pass (informational results count as runs) >
        skipped > empty."""
        if self.failed or self.error:
            return "fail"
        if self.flaky:
            return "flaky"
        if self.xpassed:
            return "review"
        if self.xfailed:
            return "deviations"
        if self.non_strict:
            return "nonstrict"
        if self.passed or self.informational:
            return "pass"
        return "skipped" if self.skipped else "empty"

    @property
    def verdict_label(self) -> str:
        return VERDICT_LABEL[self.verdict]

    @property
    def segments(self) -> list[dict[str, Any]]:
        """Non-empty bar segments: outcome, count, width percent, label."""
        total = self.total or 1
        return [
            {
                "outcome": o,
                "count": getattr(self, _attr(o)),
                "percent": round(100.0 * getattr(self, _attr(o)) / total, 2),
                "symbol": SYMBOL[o],
                "label": LABEL[o],
            }
            for o in SHOWN
            if getattr(self, _attr(o))
        ]

    @property
    def summary(self) -> str:
        """Plain text for titles and screen readers."""
        parts = [f"{s['count']} {s['label']}" for s in self.segments]
        if self.flaky:
            parts.append(f"{self.flaky} flaky")
        return ", ".join(parts) or "no results"

    def as_data(self) -> dict[str, int]:
        data = {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}
        return {**data, "total": self.total}


@dataclasses.dataclass
class HexRow:
    offset: str
    cells: list[tuple[str, str, str]]  # (hex byte, css class, title)
    ascii: str
    data: str = ""  # bytes of the data segment: one run of hex, not a span per byte


@dataclasses.dataclass
class PduView:
    event: PduEvent
    arrow: str
    rows: list[HexRow]
    fields: list[tuple[str, str, str, str]]  # (css class, range, name, value)
    length: int
    truncated: bool


@dataclasses.dataclass
class RefView:
    text: str
    level: str
    role: str
    link: str


@dataclasses.dataclass
class ReqView:
    id: str
    known: bool
    document: str = ""
    section: str = ""
    level: str = ""
    role: str = ""
    text: str = ""
    link: str = ""


@dataclasses.dataclass
class TestView:
    result: TestResult
    anchor: str
    refs: list[RefView]
    reqs: list[ReqView]
    pdus: list[PduView]
    level: str  # strongest level among the references
    pdus_total: int = 0  # the trace's length in results.json (the page may show fewer)
    capture_href: str = ""  # the test's pcapng in a report folder

    @property
    def is_problem(self) -> bool:
        return (
            self.result.outcome in ("failed", "error", "xpassed", "non-strict") or self.result.flaky
        )

    @property
    def skip_cause(self) -> str:
        """What was missing for a skipped test, in words ("capability redirect of tgt
        missing"); empty when the reason says nothing the report can name."""
        cause = self.result.skip_cause
        return "" if cause is None or cause.kind == "other" else str(cause)

    @property
    def expanded(self) -> bool:
        """Shown open: failures and errors, where the reader wants the evidence."""
        return self.result.outcome in ("failed", "error")


@dataclasses.dataclass
class AreaView:
    name: str
    counts: Counts
    tests: list[TestView]

    @property
    def unsupported(self) -> str:
        """``not supported (missing capability 'isns' (lio's manifest))`` when every
        test of the area was skipped for a capability a peer lacks; else empty."""
        causes = [tv.result.skip_cause for tv in self.tests]
        if not causes or not all(c is not None and c.kind == "capability" for c in causes):
            return ""
        return f"not supported ({', '.join(sorted({str(c) for c in causes}))})"


@dataclasses.dataclass
class PeerHeader:
    name: str
    label: str
    is_url: bool
    peers: list[Peer]


@dataclasses.dataclass
class CellView:
    initiator: PeerHeader
    target: PeerHeader
    pairing: Pairing | None
    anchor: str
    counts: Counts
    areas: list[AreaView]
    duration: float
    href: str = ""  # where the cell's details are: "#anchor", or its own page

    def __post_init__(self) -> None:
        self.href = self.href or f"#{self.anchor}"

    @property
    def run(self) -> bool:
        return self.pairing is not None


@dataclasses.dataclass
class SkippedEverywhere:
    """A test that ran on no pairing of these results, and why."""

    id: str
    pairings: int
    causes: list[str]  # distinct causes in words ("profile redirect not served by tgt")
    reasons: list[str]  # the distinct skip reasons, verbatim


@dataclasses.dataclass
class PageView:
    title: str
    generated: str
    format_version: str
    initiators: list[PeerHeader]
    targets: list[PeerHeader]
    rows: list[list[CellView]]
    cells: list[CellView]
    totals: Counts
    areas: list[str]
    peers_by_role: list[tuple[str, list[Peer]]]
    coverage: Coverage | None
    catalog: dict[str, Requirement]
    runs: list[dict[str, Any]]
    notes: list[str]
    data_file: str | None
    pairings_run: int
    skipped_everywhere: list[SkippedEverywhere] = dataclasses.field(default_factory=list)
    #: a report folder: the cells' details are pages of their own, and the index lists
    #: the problems (failures, errors, ...) across cells instead
    split: bool = False
    changes: Diff | None = None  # against a baseline
    trend_runs: list[str] = dataclasses.field(default_factory=list)
    trend: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: the folder's fuzz campaigns (report/fuzz.py), shown in their own section
    fuzz: list[FuzzCampaign] = dataclasses.field(default_factory=list)

    @property
    def problems(self) -> list[tuple[CellView, TestView]]:
        return [(c, tv) for c in self.cells for a in c.areas for tv in a.tests if tv.is_problem]


# --------------------------------------------------------------------------- building


def _slug(prefix: str, text: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:60]
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{prefix}-{readable}-{digest}"


def _peer_order(names: Iterable[str]) -> list[str]:
    """The reference implementation first, named peers alphabetically, URLs last."""
    uniq = list(dict.fromkeys(names))
    return sorted(uniq, key=lambda n: (n != "reference", "://" in n, n.lower()))


def _short_url(url: str) -> str:
    """``iscsi://192.0.2.7:3260/iqn.2003-01.org.x:disk/0`` -> ``192.0.2.7:3260 …:disk/0``."""
    rest = url.split("://", 1)[1]
    host, _, path = rest.partition("/")
    tail = path.rsplit(":", 1)[-1] if ":" in path else path[-24:]
    return f"{host} …{tail}" if path else host


def rfc_link(document: str, section: str) -> str:
    m = re.fullmatch(r"RFC\s*(\d+)", document.strip(), re.IGNORECASE)
    if not m:
        return ""
    anchor = f"#section-{section}" if re.fullmatch(r"[0-9A-Z]+(\.[0-9]+)*", section) else ""
    return f"https://www.rfc-editor.org/rfc/rfc{m.group(1)}{anchor}"


_LEVEL_ORDER = ("MUST", "MUST NOT", "REQUIRED", "SHALL", "SHALL NOT", "SHOULD", "SHOULD NOT")


def _strongest(levels: Sequence[str]) -> str:
    if not levels:
        return ""
    return min(levels, key=lambda lv: _LEVEL_ORDER.index(lv) if lv in _LEVEL_ORDER else 99)


def _annotations(raw: bytes, event: PduEvent) -> list[tuple[int, int, str, str]]:
    if event.annotations:
        return [(a.offset, a.length, a.name, a.value) for a in event.annotations]
    out: list[tuple[int, int, str, str]] = []
    if len(raw) >= 48:
        try:  # the BHS layouts are declared once, in core.layout (STYLE.md 4)
            from ..core.layout import annotate

            out = [(o, n, name, f"0x{v:x}") for o, n, name, v in annotate(raw[:48])]
        except Exception:
            out = [(0, 1, "Opcode", f"0x{raw[0]:02x}"), (4, 1, "TotalAHSLength", str(raw[4]))]
            out.append((5, 3, "DataSegmentLength", str(int.from_bytes(raw[5:8], "big"))))
            out.append((16, 4, "Initiator Task Tag", "0x" + raw[16:20].hex()))
        ahs = raw[4] * 4
        if ahs and len(raw) > 48:
            out.append((48, min(ahs, len(raw) - 48), "AHS", f"{ahs} bytes"))
        if len(raw) > 48 + ahs:
            dsl = int.from_bytes(raw[5:8], "big")
            out.append(
                (48 + ahs, len(raw) - 48 - ahs, "data segment (+padding, digests)", f"{dsl} bytes")
            )
    return out


def _pdu_view(event: PduEvent) -> PduView:
    try:
        raw = bytes.fromhex(event.hex)
    except ValueError:
        raw = b""
    truncated = len(raw) > MAX_HEX_BYTES
    shown = raw[:MAX_HEX_BYTES]
    notes = _annotations(raw, event)
    per_byte: list[list[int]] = [[] for _ in shown]
    fields: list[tuple[str, str, str, str]] = []
    colour = 0
    classes: list[str] = []
    for i, (off, length, name, value) in enumerate(notes):
        if name == "reserved":
            cls = "f-rsv"
        elif name.startswith("data segment"):
            cls = "f-data"
        else:
            cls = f"f{colour % 6}"
            colour += 1
        classes.append(cls)
        end = off + length - 1
        fields.append((cls, f"{off}" if length == 1 else f"{off}–{end}", name, value))
        for b in range(off, min(off + length, len(shown))):
            per_byte[b].append(i)
    rows: list[HexRow] = []
    data_idx = {i for i, n in enumerate(notes) if n[2].startswith("data segment")}
    for start in range(0, len(shown), 16):
        cells = []
        chunk = shown[start : start + 16]
        if all(
            per_byte[b] and set(per_byte[b]) <= data_idx for b in range(start, start + len(chunk))
        ):
            # data-segment rows: one annotation for them all (a span per byte with its
            # own title made 1 KiB of data cost 1024 elements; reports got slow)
            ascii_ = "".join(chr(c) if 32 <= c < 127 else "·" for c in chunk)
            rows.append(HexRow(f"{start:04x}", [], ascii_, " ".join(f"{c:02x}" for c in chunk)))
            continue
        for b in range(start, min(start + 16, len(shown))):
            idx = per_byte[b]
            named = [i for i in idx if notes[i][2] != "reserved"] or idx
            cls = classes[named[0]] if named else ""
            title = "; ".join(f"{notes[i][2]} = {notes[i][3]}" for i in idx)
            cells.append((f"{shown[b]:02x}", cls, f"byte {b}: {title}" if title else f"byte {b}"))
        chunk = shown[start : start + 16]
        ascii_ = "".join(chr(c) if 32 <= c < 127 else "·" for c in chunk)
        rows.append(HexRow(f"{start:04x}", cells, ascii_))
    # reserved fields clutter the legend: one line for all of them
    legend = [f for f in fields if f[2] != "reserved"]
    if any(f[2] == "reserved" for f in fields):
        legend.append(("f-rsv", "", "reserved", "(greyed)"))
    return PduView(
        event=event,
        arrow="→" if event.direction == "i->t" else "←",
        rows=rows,
        fields=legend,
        length=len(raw),
        truncated=truncated,
    )


def _test_view(t: TestResult, catalog: dict[str, Requirement], *, lazy: bool = False) -> TestView:
    refs = [
        RefView(
            text=f"{r.document} §{r.section}",
            level=r.level,
            role=r.role,
            link=rfc_link(r.document, r.section),
        )
        for r in t.spec
    ]
    reqs = []
    for rid in t.requirements:
        q = catalog.get(rid)
        if q is None:
            reqs.append(ReqView(id=rid, known=False))
        else:
            reqs.append(
                ReqView(
                    id=rid,
                    known=True,
                    document=q.document,
                    section=q.section,
                    level=q.level,
                    role=q.role,
                    text=q.text,
                    link=rfc_link(q.document, q.section),
                )
            )
    levels = [r.level for r in t.spec] + [r.level for r in reqs if r.known]
    return TestView(
        result=t,
        anchor=_slug("t", f"{t.pairing}/{t.id}"),
        refs=refs,
        reqs=reqs,
        pdus=[] if lazy else [_pdu_view(p) for p in t.evidence.pdus[: _pdus_shown(t)]],
        level=_strongest(levels),
        pdus_total=len(t.evidence.pdus),
    )


#: PDUs of a trace the page shows: a whole matrix has thousands of tests, and a passed
#: test's trace is there to illustrate, a failed one's to prove (results.json has all).
PDUS_SHOWN_PROBLEM, PDUS_SHOWN_OTHER = 400, 40


def _pdus_shown(t: TestResult) -> int:
    if t.outcome in ("failed", "error", "xpassed", "xfailed", "non-strict", "informational"):
        return PDUS_SHOWN_PROBLEM
    if t.flaky:
        return PDUS_SHOWN_PROBLEM
    return PDUS_SHOWN_OTHER


def _area_key(area: str) -> tuple[int, str]:
    canonical = ["Naming", "Login", "CHAP", "Discovery", "Digests", "FullFeature", "Reservations"]
    if area in canonical:
        return (canonical.index(area), area)
    return (len(canonical) + (1 if area[:1].islower() else 0), area)


def _fmt_ts(ts: str | None) -> str:
    if not ts:
        return "—"
    try:
        d = _dt.datetime.fromisoformat(ts)
    except ValueError:
        return ts
    if d.tzinfo is not None:
        d = d.astimezone(_dt.UTC)
    return d.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if d.tzinfo is not None else "")


def build_view(
    results: Results,
    *,
    title: str | None = None,
    generated: str | None = None,
    data_file: str | None = None,
    split: bool = False,
    baseline: Results | None = None,
) -> PageView:
    """The page's data. ``results`` should already be redacted (:func:`write_html` does).
    ``split``: the cells' details are pages of their own (the hex dumps are left to the
    page's script, which reads the cell's evidence file)."""
    catalog = results.requirement_index()
    by_pairing: dict[str, list[TestResult]] = {}
    for t in results.tests:
        by_pairing.setdefault(t.pairing, []).append(t)
    pairings = {p.id: p for p in results.pairings}
    for pid in by_pairing:  # tolerate tests whose pairing is not listed
        if pid not in pairings:
            init, _, targ = pid.partition(PAIRING_SEPARATOR)
            pairings[pid] = Pairing(init, targ or "?", pid)

    def header(name: str, role: str) -> PeerHeader:
        is_url = "://" in name
        return PeerHeader(
            name=name,
            label=_short_url(name) if is_url else name,
            is_url=is_url,
            peers=results.peers_named(name, role),
        )

    initiators = [
        header(n, "initiator") for n in _peer_order(p.initiator for p in pairings.values())
    ]
    targets = [header(n, "target") for n in _peer_order(p.target for p in pairings.values())]
    all_areas: set[str] = set()
    rows: list[list[CellView]] = []
    cells: list[CellView] = []
    totals = Counts()
    for ih in initiators:
        row: list[CellView] = []
        for th in targets:
            pid = f"{ih.name}{PAIRING_SEPARATOR}{th.name}"
            tests = by_pairing.get(pid, [])
            counts = Counts()
            areas: dict[str, AreaView] = {}
            for t in sorted(tests, key=lambda t: t.id):
                counts.add(t)
                totals.add(t)
                area = areas.setdefault(t.area, AreaView(t.area, Counts(), []))
                area.counts.add(t)
                area.tests.append(_test_view(t, catalog, lazy=split))
                all_areas.add(t.area)
            cell = CellView(
                initiator=ih,
                target=th,
                pairing=pairings.get(pid),
                anchor=_slug("pair", pid),
                href=f"cells/{_slug('pair', pid)}.html" if split else "",
                counts=counts,
                areas=[areas[a] for a in sorted(areas, key=_area_key)],
                duration=sum(t.duration for t in tests),
            )
            row.append(cell)
            if cell.run:
                cells.append(cell)
        rows.append(row)

    runs = []
    for r in results.runs:
        runs.append(
            {
                "run": r,
                "started": _fmt_ts(r.started),
                "finished": _fmt_ts(r.finished),
                "command": shlex.join(r.command_line) if r.command_line else "",
            }
        )
    by_role = [
        ("Initiators", sorted((p for p in results.peers if p.role == "initiator"), key=_peer_sort)),
        ("Targets", sorted((p for p in results.peers if p.role == "target"), key=_peer_sort)),
    ]
    return PageView(
        title=title or "iSCSI interoperability matrix",
        generated=_fmt_ts(generated or utcnow()),
        format_version=results.version,
        initiators=initiators,
        targets=targets,
        rows=rows,
        cells=cells,
        totals=totals,
        areas=sorted(all_areas, key=_area_key),
        peers_by_role=[(label, peers) for label, peers in by_role if peers],
        coverage=compute_coverage(results) if results.requirements else None,
        catalog=catalog,
        runs=runs,
        notes=list(results.notes),
        data_file=data_file,
        pairings_run=len(cells),
        skipped_everywhere=skipped_everywhere(results.tests),
        split=split,
        changes=diff(baseline, results, old_label="baseline", new_label="this run")
        if baseline is not None
        else None,
        **_trend(results),
    )


def _trend(results: Results) -> dict[str, Any]:
    """The per-cell trend, when merged runs left a history (else nothing to show)."""
    if not any(t.history for t in results.tests):
        return {}
    runs, table = history_trend(results)
    return {"trend_runs": runs, "trend": table} if len(runs) > 1 else {}


def skipped_everywhere(tests: Iterable[TestResult]) -> list[SkippedEverywhere]:
    """The tests skipped on every pairing they were collected for, each with the causes
    (what was missing) and the reasons, by test id."""
    by_id: dict[str, list[TestResult]] = {}
    for t in tests:
        by_id.setdefault(t.id, []).append(t)
    out: list[SkippedEverywhere] = []
    for tid in sorted(by_id, key=lambda i: (_area_key(area_of(i)), i)):
        results = by_id[tid]
        if not all(t.outcome == "skipped" for t in results):
            continue
        causes = [c for c in (t.skip_cause for t in results) if c and c.kind != "other"]
        out.append(
            SkippedEverywhere(
                id=tid,
                pairings=len(results),
                causes=sorted({str(c) for c in causes}),
                reasons=sorted({t.skip_reason for t in results if t.skip_reason}),
            )
        )
    return out


def _peer_sort(p: Peer) -> tuple[bool, bool, str, str]:
    return (p.name != "reference", "://" in p.name, p.name.lower(), p.version)


# --------------------------------------------------------------------------- rendering


def fmt_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s} s" if m < 60 else f"{m // 60} h {m % 60} min"


def _cluster_timeline(value: Any) -> Any:
    """The picture of a Cluster scenario's timeline (report/cluster_timeline.py)."""
    from markupsafe import Markup

    from iscsi_conformance.report.cluster_timeline import render

    return Markup(render(value))  # render() escapes every text it writes


@functools.cache
def _environment() -> Any:
    """One environment per process: compiling the templates costs more than rendering."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        autoescape=True,  # everything, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = fmt_duration
    env.filters["ts"] = _fmt_ts
    env.filters["cluster_timeline"] = _cluster_timeline
    env.globals["SYMBOL"] = SYMBOL
    env.globals["LABEL"] = LABEL
    env.globals["OUTCOMES"] = SHOWN
    return env


def render_html(
    results: Results,
    *,
    secrets: Iterable[str] = (),
    title: str | None = None,
    generated: str | None = None,
    data_file: str | None = None,
) -> str:
    """The page as a string (redacted first: ``results.secrets`` + ``secrets``)."""
    import markupsafe

    safe = redact(results, secrets)
    view = build_view(safe, title=title, generated=generated, data_file=data_file)
    env = _environment()
    tdir = resource_dir("templates")
    css = (tdir / "style.css").read_text(encoding="utf-8")
    js = (tdir / "script.js").read_text(encoding="utf-8")
    for name, text in (("style.css", css), ("script.js", js)):
        if "</" in text:  # would end the inline <style>/<script> element early
            raise ValueError(f"{name} must not contain '</'")
    return str(
        env.get_template("matrix.html.j2").render(
            view=view, css=markupsafe.Markup(css), js=markupsafe.Markup(js)
        )
    )


def write_html(
    results: Results,
    out_dir: str | Path,
    *,
    secrets: Iterable[str] = (),
    title: str | None = None,
    generated: str | None = None,
    with_data: bool = True,
    baseline: Results | None = None,
    captures: bool = True,
) -> Path:
    """Write the report folder ``out_dir`` and return its ``index.html``.

    The folder (docs/reports.md): ``index.html`` (the matrix, per-area counts, the
    problems across cells, changes against ``baseline``, coverage, runs), one page per
    cell in ``cells/`` with the cell's PDU traces beside it in ``cells/*.evidence.js``
    (loaded by the page when a test is opened: pages opened from the disk cannot fetch
    JSON), ``peers.html`` (the drivers' command logs), ``captures/*.pcapng`` (each
    test's traffic, :mod:`.pcapng`), ``assets/`` (CSS, scripts) and, with
    ``with_data``, ``results.json``: whole for one pairing, else with its PDUs left in
    the evidence files it names (``evidence_files``; :meth:`Results.load` reads them
    back). Everything is redacted first; everything opens from the disk, no server.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = redact(results, secrets)
    env = _environment()
    tdir = resource_dir("templates")
    assets = out / "assets"
    assets.mkdir(exist_ok=True)
    for name in ("style.css", "script.js", "evidence.js"):
        write_text_atomic(assets / name, (tdir / name).read_text(encoding="utf-8"))
    write_text_atomic(assets / "layouts.js", _layouts_js())
    view = build_view(
        safe,
        title=title,
        generated=generated,
        data_file="results.json" if with_data else None,
        split=True,
        baseline=baseline,
    )
    view.fuzz, fuzz_notes = load_campaigns(out)
    view.notes.extend(fuzz_notes)
    by_key = {t.key: t for t in safe.tests}
    evidence_files: dict[str, str] = {}
    cells_dir = out / "cells"
    for cell in view.cells:
        assert cell.pairing is not None
        pid = cell.pairing.id
        pdus: dict[str, list[dict[str, Any]]] = {}
        for area in cell.areas:
            for tv in area.tests:
                t = by_key.get(tv.result.key, tv.result)
                if t.evidence.pdus:
                    pdus[t.id] = [_compact(dataclasses.asdict(p)) for p in t.evidence.pdus]
                    if captures:
                        name = f"captures/{tv.anchor}.pcapng.gz"
                        if write_capture(t, out / name) is not None:
                            tv.capture_href = f"../{name}"
        evidence = f"cells/{cell.anchor}.evidence.js"
        write_text_atomic(out / evidence, evidence_file_text(pid, pdus))
        evidence_files[pid] = evidence
        page = env.get_template("cell.html.j2").render(
            view=view, cell=cell, evidence=f"{cell.anchor}.evidence.js"
        )
        write_text_atomic(cells_dir / f"{cell.anchor}.html", page)
    write_text_atomic(out / "peers.html", env.get_template("peers.html.j2").render(view=view))
    if with_data:
        doc = safe.to_json()
        if len(evidence_files) > 1:  # a matrix: PDUs once, in the evidence files
            for t in doc["tests"]:
                t["evidence"]["pdus"] = []
            doc["evidence_files"] = evidence_files
        # compact: a matrix's results.json is read by programs (an indent costs 20 %)
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
        write_text_atomic(out / "results.json", text)
    return write_text_atomic(
        out / "index.html", env.get_template("index.html.j2").render(view=view)
    )


def _compact(pdu: dict[str, Any]) -> dict[str, Any]:
    """A PDU for an evidence file without its empty fields (they are the defaults)."""
    return {k: v for k, v in pdu.items() if v not in (None, "", []) or k in ("direction", "opcode")}


def _layouts_js() -> str:
    """The BHS layouts (core.layout, STYLE.md 4) for the page's hex dumps:
    ``{opcode: [[offset, size, mask, name], ...]}``."""
    from ..core.layout import LAYOUTS, FieldKind

    table = {
        str(op): [
            [
                f.offset,
                f.size,
                f.mask,
                f.name
                if f.kind is FieldKind.VALUE
                else ("reserved" if f.kind is FieldKind.RESERVED else f.label),
            ]
            for f in lay.fields
        ]
        for op, lay in LAYOUTS.items()
    }
    return f"window.ISCSI_LAYOUTS = {json.dumps(table, separators=(',', ':'))};\n"
