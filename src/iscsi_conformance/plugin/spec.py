"""How a conformance test says what it checks.

Theory of operation: every conformance test carries one ``@spec(...)`` decorator. It
gives the test a stable dotted ID (``Login.Keys.MaxRecvDataSegmentLengthBelowMinimum``:
users select by prefix and peers' manifests name deviations by it), the
specification references with their level (MUST/SHOULD/MAY) and the role they
constrain, the requirement-catalog IDs it covers, what the pairing must be able to do
(``needs``), and which side is under test (``pairing``):

- ``"target"``: the reference initiator is the instrument; the test runs once per
  target in the run (cell: reference x target);
- ``"initiator"``: the reference target is the instrument and observes the initiator;
  runs once per initiator (cell: initiator x reference);
- ``"all"``: interoperability: runs for every initiator x target pairing, through
  the drivers' common interface.

``violation()`` builds the failure message: which requirement broke, and the PDUs.
It may name the level of what broke (``level="SHOULD"``); otherwise the plugin takes
the level of the requirement from the catalog, and failing that the test's own
references. That level grades the failure (``grading.py``): a MUST broken fails, a
SHOULD broken is non-strict, an informational check records what it observed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import pytest

from iscsi_conformance import grading

PairingKind = Literal["target", "initiator", "all"]
Level = Literal[
    "MUST",
    "MUST NOT",
    "SHOULD",
    "SHOULD NOT",
    "MAY",
    "REQUIRED",
    "SHALL",
    "SHALL NOT",
    "INFORMATIONAL",  # no normative word behind it: recorded, never failed
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class SpecRef:
    """One reference: ``SpecRef("RFC 7143", "13.12", "MUST", "target")``."""

    document: str
    section: str
    level: str = "MUST"
    role: str = "target"

    def __str__(self) -> str:
        return f"{self.document} {self.section} ({self.level}, {self.role})"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SpecInfo:
    """Everything ``@spec`` attaches to a test (kept on the ``iscsi`` marker)."""

    test_id: str
    refs: tuple[SpecRef, ...]
    requirements: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    pairing: PairingKind = "target"
    dataloss: bool = False  # writes to the LUN: needs --iscsi-allow-dataloss on external targets
    summary: str = ""

    @property
    def area(self) -> str:
        return self.test_id.split(".", 1)[0]

    @property
    def level(self) -> str:
        """The strongest level among the references (MUST beats SHOULD beats MAY);
        the first reference's wording among equals."""
        levels = [r.level for r in self.refs] or ["MAY"]
        return min(levels, key=lambda lv: grading.GRADES.index(grading.grade_of(lv)))

    @property
    def grade(self) -> grading.Grade:
        """What a failure of this test weighs when it names no requirement of its own."""
        return grading.grade_of(self.level)

    @property
    def is_must(self) -> bool:
        return self.grade == grading.MUST


def _parse_ref(ref: str | SpecRef | tuple[str, ...], level: str, role: str) -> SpecRef:
    if isinstance(ref, SpecRef):
        return ref
    if isinstance(ref, tuple):
        return SpecRef(*ref)
    # "RFC 7143 13.12" -> document "RFC 7143", section "13.12"
    parts = ref.rsplit(" ", 1)
    if len(parts) != 2:
        raise ValueError(f"spec reference {ref!r} must look like 'RFC 7143 13.12'")
    return SpecRef(parts[0], parts[1], level, role)


def spec(
    test_id: str,
    *refs: str | SpecRef | tuple[str, ...],
    level: str = "MUST",
    role: str | None = None,
    requirements: Iterable[str] = (),
    needs: Iterable[str] = (),
    pairing: PairingKind = "target",
    dataloss: bool = False,
) -> Callable[[F], F]:
    """Declare what a conformance test checks (see module docstring)."""
    if not refs:
        raise ValueError(f"{test_id}: a conformance test must cite at least one section")
    if test_id.count(".") < 2:
        raise ValueError(f"{test_id}: test IDs are Area.Suite.Test")
    default_role = role or ("initiator" if pairing == "initiator" else "target")
    info = SpecInfo(
        test_id=test_id,
        refs=tuple(_parse_ref(r, level, default_role) for r in refs),
        requirements=tuple(requirements),
        needs=tuple(needs),
        pairing=pairing,
        dataloss=dataloss,
    )

    def decorate(fn: F) -> F:
        info2 = dataclasses.replace(info, summary=(fn.__doc__ or "").strip().split("\n")[0])
        return pytest.mark.iscsi(info2)(fn)  # type: ignore[no-any-return]

    return decorate


def info_of(item: pytest.Item) -> SpecInfo | None:
    marker = item.get_closest_marker("iscsi")
    if marker is None or not marker.args:
        return None
    info = marker.args[0]
    return info if isinstance(info, SpecInfo) else None


class ConformanceViolation(AssertionError):
    """A peer broke a requirement. Raised by ``violation()``; reported as a failure."""

    def __init__(
        self,
        text: str,
        *,
        requirement: str = "",
        pdus: Sequence[Any] = (),
        level: str | None = None,
    ) -> None:
        super().__init__(text)
        self.requirement = requirement
        self.pdus = list(pdus)
        self.level = level  # of the requirement broken, when the test names it


class PeerDied(ConformanceViolation):
    """The peer under test died during the test (its process exited, its VM went
    down). Whatever the test asserted, a peer must not crash on what it was sent."""

    def __init__(self, text: str, *, requirement: str = "") -> None:
        super().__init__(
            f"{requirement}: {text}" if requirement else text, requirement=requirement, level="MUST"
        )


SHOWN_BYTES = 32  # of a PDU's data segment (or AHS) in a failure message


def _pdu_line(pdu: Any) -> str:
    """One PDU as a failure message shows it: every field, with long byte strings
    (a 1 MiB data segment) cut to their first ``SHOWN_BYTES`` bytes and their length."""
    if getattr(pdu, "no_answer", False) is True:  # harness.probe.NoAnswer
        return str(pdu)
    summary = getattr(pdu, "summary", None)
    if callable(summary):
        return str(summary())
    if not dataclasses.is_dataclass(pdu):
        return repr(pdu)
    parts = []
    for f in dataclasses.fields(pdu):
        value = getattr(pdu, f.name)
        if isinstance(value, bytes | bytearray | memoryview) and len(value) > SHOWN_BYTES:
            shown = f"{bytes(value[:SHOWN_BYTES])!r}... ({len(value)} bytes)"
        else:
            shown = repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(pdu).__name__}({', '.join(parts)})"


def violation(
    requirement: str,
    message: str,
    *,
    sent: Sequence[Any] = (),
    received: Sequence[Any] = (),
    level: Level | None = None,
) -> ConformanceViolation:
    """Build the failure: which requirement broke, what was sent, what came back.

    ``level`` is the level of what broke, when it is not the catalog's level of
    ``requirement`` (a test that checks a SHOULD sentence of a MUST row)."""
    lines = [f"{requirement}: {message}"]
    if sent:
        lines.append("  sent:")
        lines += _shown(sent, "    > ")
    if received:
        lines.append("  received:")
        lines += _shown(received, "    < ")
    pdus = [p for p in (*sent, *received) if getattr(p, "no_answer", False) is not True]
    return ConformanceViolation("\n".join(lines), requirement=requirement, pdus=pdus, level=level)


MAX_PDUS_SHOWN = 40  # a peer that floods (100000 Data-In PDUs) must not flood the report


def _shown(pdus: Sequence[Any], prefix: str) -> list[str]:
    if len(pdus) <= MAX_PDUS_SHOWN:
        return [prefix + _pdu_line(p) for p in pdus]
    head, tail = MAX_PDUS_SHOWN - 5, 5
    return (
        [prefix + _pdu_line(p) for p in pdus[:head]]
        + [f"{prefix}... {len(pdus) - head - tail} more PDUs ..."]
        + [prefix + _pdu_line(p) for p in pdus[-tail:]]
    )


def require(
    condition: object,
    requirement: str,
    message: str,
    *,
    sent: Sequence[Any] = (),
    received: Sequence[Any] = (),
    level: Level | None = None,
) -> None:
    """``assert``, but the failure names the requirement and shows the PDUs."""
    __tracebackhide__ = True
    if not condition:
        raise violation(requirement, message, sent=sent, received=received, level=level)
