"""JUnit XML, as CI systems read it (Jenkins, GitLab, GitHub annotations, Azure).

Layout: ``<testsuites>`` with one ``<testsuite>`` per pairing (name = pairing id);
each result is a ``<testcase classname="<pairing>.<area>" name="<test id>">``. In the
classname, dots of the pairing id (a URL target, a version) become ``_`` so tools that
split classnames on dots still group by pairing, then area. Outcomes map as pytest's
own junitxml does: failed -> ``<failure>``, error -> ``<error>``, skipped ->
``<skipped>``, xfailed -> ``<skipped type="xfail">`` with the deviation as message;
xpassed is a pass with a property. A graded result (``grading.py``) is no failure: a
non-strict one (a SHOULD broken) and an informational one pass, with ``grade`` and
``status`` properties and their message in ``<system-out>``, unless ``strict`` asks for
a non-strict result to be a ``<failure>`` (an informational one never is). Spec
references, requirement ids, the grade and flakiness are ``<property>`` elements of the
testcase; the evidence (PDU trace) goes into the failure text and ``<system-out>``.
Everything is redacted first.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from .model import Results, TestResult, write_text_atomic
from .redact import redact

__all__ = ["junit_xml", "write_junit"]

# XML 1.0 forbids most control characters even when escaped.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _ILLEGAL_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _evidence_text(t: TestResult) -> str:
    lines: list[str] = []
    for r in t.spec:
        lines.append(f"spec: {r.document} {r.section} {r.level} ({r.role})")
    if t.requirements:
        lines.append("requirements: " + ", ".join(t.requirements))
    if t.evidence.pdus:
        lines.append("PDU trace:")
        for p in t.evidence.pdus:
            when = f"{p.time:8.3f}s " if p.time is not None else ""
            arrow = "I -> T" if p.direction == "i->t" else "I <- T"
            lines.append(f"  {when}{arrow} {p.opcode}: {p.summary}")
            if p.note:
                lines.append(f"      note: {p.note}")
    if t.evidence.capture:
        lines.append(f"capture: {t.evidence.capture}")
    return "\n".join(lines)


def _classname(t: TestResult) -> str:
    return f"{t.pairing.replace('.', '_')}.{t.area}"


def _as_failure(t: TestResult, strict: bool) -> bool:
    return t.outcome == "failed" or (strict and t.outcome == "non-strict")


def junit_xml(results: Results, *, secrets: Iterable[str] = (), strict: bool = False) -> str:
    """The JUnit document as a string (redacted: ``results.secrets`` + ``secrets``);
    ``strict``: non-strict results are failures."""
    safe = redact(results, secrets)
    host = safe.runs[0].host if safe.runs else ""
    stamp = min((r.started for r in safe.runs if r.started), default=None)
    suites_el = ET.Element("testsuites", name="iscsi-conformance")
    order = [p.id for p in safe.pairings]
    order += sorted({t.pairing for t in safe.tests} - set(order))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for pid in order:
        tests = [t for t in safe.tests if t.pairing == pid]
        if not tests:
            continue
        counts = {
            "tests": len(tests),
            "failures": sum(_as_failure(t, strict) for t in tests),
            "errors": sum(t.outcome == "error" for t in tests),
            "skipped": sum(t.outcome in ("skipped", "xfailed") for t in tests),
        }
        duration = sum(t.duration for t in tests)
        attrs = {k: str(v) for k, v in counts.items()}
        attrs.update(name=_clean(pid), time=f"{duration:.3f}", hostname=_clean(host))
        if stamp:
            attrs["timestamp"] = stamp
        suite = ET.SubElement(suites_el, "testsuite", attrs)
        pairing = safe.pairing(pid)
        props = ET.SubElement(suite, "properties")
        if pairing:
            for role, name in (("initiator", pairing.initiator), ("target", pairing.target)):
                ET.SubElement(props, "property", name=role, value=_clean(name))
                for peer in safe.peers_named(name, role):
                    ET.SubElement(
                        props,
                        "property",
                        name=f"{role}.version",
                        value=_clean(f"{peer.version} ({peer.mode})"),
                    )
        for t in tests:
            _testcase(suite, t, strict)
        for k, v in counts.items():
            totals[k] += v
        total_time += duration
    for k, v in totals.items():
        suites_el.set(k, str(v))
    suites_el.set("time", f"{total_time:.3f}")
    ET.indent(suites_el)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        + ET.tostring(suites_el, encoding="unicode")
        + "\n"
    )


def _testcase(suite: ET.Element, t: TestResult, strict: bool = False) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_clean(_classname(t)),
        name=_clean(t.id),
        time=f"{t.duration:.3f}",
    )
    props = ET.SubElement(case, "properties")
    for r in t.spec:
        ET.SubElement(
            props,
            "property",
            name="spec",
            value=_clean(f"{r.document} {r.section} {r.level} ({r.role})"),
        )
    for rid in t.requirements:
        ET.SubElement(props, "property", name="requirement", value=_clean(rid))
    if t.grade:
        ET.SubElement(props, "property", name="grade", value=t.grade)
    if t.outcome in ("non-strict", "informational"):
        ET.SubElement(props, "property", name="status", value=t.outcome)
    if t.flaky:
        history = ", ".join(a.outcome for a in t.history)
        ET.SubElement(props, "property", name="flaky", value=_clean(f"true (earlier: {history})"))
    if t.outcome == "xpassed":
        ET.SubElement(
            props,
            "property",
            name="xpassed",
            value=_clean(t.deviation or "declared deviation did not occur"),
        )
    if len(props) == 0:
        case.remove(props)
    evidence = _evidence_text(t)
    message = t.message.splitlines()[0] if t.message else ""
    failure = _as_failure(t, strict)
    if failure or t.outcome == "error":
        el = ET.SubElement(
            case,
            "failure" if failure else "error",
            message=_clean(message),
            type=t.outcome,
        )
        el.text = _clean("\n\n".join(x for x in (t.message, t.details, evidence) if x))
    elif t.outcome == "skipped":
        ET.SubElement(case, "skipped", message=_clean(t.skip_reason or message or "skipped"))
    elif t.outcome == "xfailed":
        ET.SubElement(
            case,
            "skipped",
            type="xfail",
            message=_clean(f"known deviation: {t.deviation or message}"),
        )
    graded = ""
    if not failure and t.outcome in ("non-strict", "informational"):
        what = "a SHOULD broken" if t.outcome == "non-strict" else "observed"
        graded = f"{t.outcome} ({what}): {t.message}"
    if not failure and t.outcome != "error" and (graded or evidence or t.evidence.log):
        out = ET.SubElement(case, "system-out")
        out.text = _clean("\n".join(x for x in (graded, evidence, t.evidence.log) if x))


def write_junit(
    results: Results, path: str | Path, *, secrets: Iterable[str] = (), strict: bool | None = None
) -> Path:
    """Write the JUnit XML file (redacted). ``strict`` defaults to whether any run of
    ``results`` was strict."""
    if strict is None:
        strict = any(r.strict for r in results.runs)
    return write_text_atomic(Path(path), junit_xml(results, secrets=secrets, strict=strict))
