"""Per-connection PDU trace: what went over the wire, when, decoded and raw.

Theory of operation: the I/O adapters (``client.py``, ``raw.py``) call
:meth:`PDUTrace.record` for every PDU they send or receive, with the decoded PDU
(or None when the bytes did not decode) and the exact bytes. The trace is evidence
for the report: :meth:`PDUTrace.to_json` gives plain JSON types, :meth:`PDUTrace.format`
a readable text form.

Secrets never leave through a trace: in both forms the values of ``CHAP_R`` and
``CHAP_C`` (RFC 7143 12.1.3) in login/text data segments are replaced by ``*`` of the
same length (so offsets in the hex dump still line up), and every string registered
with :meth:`PDUTrace.add_secret` is masked wherever it appears. The raw bytes kept in
memory are untouched so a test can still inspect them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterator
from typing import Any, Literal

__all__ = ["MASKED_KEYS", "PDUTrace", "TraceEntry", "mask_key_values"]

Direction = Literal["send", "recv"]

# Keys whose values are derived from a secret or would let a replay succeed.
MASKED_KEYS: tuple[bytes, ...] = (b"CHAP_R", b"CHAP_C")
_KEY_VALUE = re.compile(rb"(?:(?<=\x00)|^)(" + b"|".join(MASKED_KEYS) + rb")=([^\x00]*)")


def mask_key_values(data: bytes, secrets: frozenset[bytes] | set[bytes] = frozenset()) -> bytes:
    """``data`` with CHAP_R/CHAP_C values and any of ``secrets`` replaced by ``*``.

    Same length as ``data``, so offsets stay valid.
    """
    out = _KEY_VALUE.sub(lambda m: m.group(1) + b"=" + b"*" * len(m.group(2)), data)
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            out = out.replace(s, b"*" * len(s))
    return out


@dataclasses.dataclass(frozen=True)
class TraceEntry:
    """One PDU (or undecodable bytes) on one connection."""

    direction: Direction
    time: float  # monotonic seconds, from the adapter's clock
    pdu: Any  # a core.pdu PDU, or None if the bytes did not decode
    raw: bytes = dataclasses.field(repr=False)
    note: str = ""  # e.g. "tampered", "digest error: ...", "connection closed"

    @property
    def name(self) -> str:
        return type(self.pdu).__name__ if self.pdu is not None else "bytes"


def _jsonable(value: Any, secrets: frozenset[bytes]) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes | bytearray):
        return mask_key_values(bytes(value), secrets).hex()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v, secrets) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, secrets) for k, v in value.items()}
    return repr(value)


def _pdu_fields(pdu: Any, secrets: frozenset[bytes]) -> dict[str, Any]:
    if dataclasses.is_dataclass(pdu) and not isinstance(pdu, type):
        out = {f.name: _jsonable(getattr(pdu, f.name), secrets) for f in dataclasses.fields(pdu)}
    else:
        out = {"repr": repr(pdu)}
    return out


def _text_of_data(data: bytes, secrets: frozenset[bytes]) -> str | None:
    """Key=value data shown as text (masked); None when it is not text."""
    if not data or b"=" not in data:
        return None
    masked = mask_key_values(data, secrets)
    try:
        parts = masked.rstrip(b"\x00").split(b"\x00")
        return " ".join(p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None


class PDUTrace:
    """The PDUs of one connection, in order. ``label`` names the connection."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.entries: list[TraceEntry] = []
        self._secrets: set[bytes] = set()

    def add_secret(self, secret: str | bytes | None) -> None:
        """Mask this string wherever it appears in the rendered forms."""
        if secret:
            self._secrets.add(secret.encode() if isinstance(secret, str) else bytes(secret))

    def record(
        self, direction: Direction, time: float, pdu: Any, raw: bytes, note: str = ""
    ) -> TraceEntry:
        entry = TraceEntry(direction, time, pdu, bytes(raw), note)
        self.entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[TraceEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def sent(self) -> list[Any]:
        return [e.pdu for e in self.entries if e.direction == "send" and e.pdu is not None]

    def received(self) -> list[Any]:
        return [e.pdu for e in self.entries if e.direction == "recv" and e.pdu is not None]

    def of_type(self, cls: type) -> list[Any]:
        return [e.pdu for e in self.entries if isinstance(e.pdu, cls)]

    # ------------------------------------------------------------------ rendering

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; secrets masked. Times relative to the first entry."""
        secrets = frozenset(self._secrets)
        t0 = self.entries[0].time if self.entries else 0.0
        out = []
        for e in self.entries:
            item: dict[str, Any] = {
                "direction": e.direction,
                "time": round(e.time - t0, 6),
                "pdu": e.name,
                "fields": _pdu_fields(e.pdu, secrets) if e.pdu is not None else {},
                "raw": mask_key_values(e.raw, secrets).hex(),
            }
            text = _text_of_data(getattr(e.pdu, "data", b"") or b"", secrets)
            if text is not None:
                item["text"] = text
            if e.note:
                item["note"] = e.note
            out.append(item)
        return {"label": self.label, "entries": out}

    def format(self) -> str:
        """One line per PDU: relative time, direction, PDU repr without its data bytes."""
        secrets = frozenset(self._secrets)
        t0 = self.entries[0].time if self.entries else 0.0
        lines = []
        for e in self.entries:
            arrow = ">>" if e.direction == "send" else "<<"
            if e.pdu is None and not e.raw:
                body = "(no bytes)"
            elif e.pdu is None:
                body = f"{len(e.raw)} undecoded bytes {mask_key_values(e.raw[:48], secrets).hex()}"
            else:
                fields = []
                for f in dataclasses.fields(e.pdu):
                    if f.name == "data":
                        continue
                    v = getattr(e.pdu, f.name)
                    if isinstance(v, bytes):
                        v = v.hex()
                    elif isinstance(v, int) and not isinstance(v, bool) and v > 0xFFFF:
                        v = hex(v)
                    fields.append(f"{f.name}={v}")
                body = f"{e.name}({', '.join(fields)})"
                data = getattr(e.pdu, "data", b"") or b""
                if data:
                    text = _text_of_data(data, secrets)
                    body += f" data[{len(data)}]" + (f": {text}" if text is not None else "")
            note = f"  # {e.note}" if e.note else ""
            lines.append(f"{e.time - t0:10.6f} {arrow} {body}{note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
