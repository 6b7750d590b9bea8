"""Hypothesis strategies for PDUs, built from the BHS layouts of :mod:`core.layout`.

Theory of operation: each PDU class gets ``st.builds(cls, **fields)`` where every
field's strategy comes from its :class:`~iscsi_conformance.core.layout.Field`: flags
draw booleans, bit groups and byte runs draw integers over their whole range, the CDB
draws bytes. Values are drawn over the full field width, so most drawn PDUs are *not*
strictly valid (undefined codes, F and C together...): they are meant for the codec's
round-trip properties with ``encode(..., strict=False)``. :func:`valid_pdus` keeps
only those that :func:`~iscsi_conformance.core.pdu.violations` accepts.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from iscsi_conformance.core.layout import LAYOUTS, Field
from iscsi_conformance.core.pdu import (
    ENUM_FIELDS,
    PDU,
    PDU_CLASSES,
    ScsiCommand,
    UnknownPDU,
    violations,
)

__all__ = [
    "ahs_bytes",
    "field_values",
    "pdu_of",
    "pdus",
    "unknown_pdus",
    "valid_pdus",
]

# Values that sit at edges worth hitting more often than uniform draws would.
_EDGES = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def field_values(f: Field) -> st.SearchStrategy[Any]:
    """A strategy over every value ``f`` can hold."""
    if f.is_flag:
        return st.booleans()
    if f.is_bytes:
        return st.binary(min_size=f.size, max_size=f.size)
    top = f.max_value
    edges = [v for v in _EDGES if v <= top]
    return st.integers(0, top) | st.sampled_from(edges)


def ahs_bytes(max_segments: int = 2) -> st.SearchStrategy[bytes]:
    """Raw AHS of a type RFC 7143 does not define (so that nothing lifts it)."""
    segment = st.tuples(
        st.integers(0, 0xFFFF), st.integers(3, 0xFF), st.binary(min_size=1, max_size=1)
    )
    return st.lists(segment, max_size=max_segments).map(
        lambda segs: b"".join(n.to_bytes(2, "big") + bytes([t]) + r for n, t, r in segs)
    )


def pdu_of(
    cls: type[PDU],
    *,
    max_data: int = 64,
    data_anywhere: bool = False,
    with_ahs: bool = False,
    defined_codes: bool = False,
) -> st.SearchStrategy[PDU]:
    """PDUs of one class, every field drawn over its full range.

    ``data_anywhere`` also draws data for opcodes that carry none (non-strict only);
    ``with_ahs`` draws raw AHS bytes; ``defined_codes`` draws coded fields (TMF
    function, reasons, stages...) from their ``codes`` enum only.
    """
    lay = cls.layout
    assert lay is not None
    kwargs: dict[str, st.SearchStrategy[Any]] = {f.name: field_values(f) for f in lay.value_fields}
    if defined_codes:
        for (owner, name), (enum, _section) in ENUM_FIELDS.items():
            if owner is cls:
                kwargs[name] = st.sampled_from([int(m) for m in enum])
    if lay.has_data or data_anywhere:
        kwargs["data"] = st.binary(max_size=max_data)
    if with_ahs:
        kwargs["ahs"] = ahs_bytes()
    if cls is ScsiCommand:
        kwargs["cdb"] = st.binary(min_size=16, max_size=16) | st.binary(min_size=17, max_size=64)
        kwargs["bidi_read_length"] = st.none() | st.integers(0, 0xFFFFFFFF)
    return st.builds(cls, **kwargs)


def unknown_pdus(max_data: int = 64) -> st.SearchStrategy[UnknownPDU]:
    """PDUs with an opcode RFC 7143 does not define."""
    undefined = [op for op in range(64) if op not in PDU_CLASSES]
    return st.builds(
        lambda op, rest, data, ahs: UnknownPDU(
            opcode=op, bhs=bytes([op | rest[0] & 0xC0]) + rest[1:], data=data, ahs=ahs
        ),
        st.sampled_from(undefined),
        st.binary(min_size=48, max_size=48),
        st.binary(max_size=max_data),
        st.lists(st.binary(min_size=4, max_size=4), max_size=2).map(b"".join),
    )


def pdus(
    *, max_data: int = 64, include_unknown: bool = False, **kwargs: Any
) -> st.SearchStrategy[PDU]:
    """PDUs of every opcode (see :func:`pdu_of` for the options)."""
    choices = [pdu_of(cls, max_data=max_data, **kwargs) for cls in PDU_CLASSES.values()]
    if include_unknown:
        choices.append(unknown_pdus(max_data))
    return st.one_of(choices)


def valid_pdus(*, max_data: int = 64) -> st.SearchStrategy[PDU]:
    """PDUs that strict encoding accepts (drawn, then filtered)."""
    return pdus(max_data=max_data, defined_codes=True).filter(lambda p: not violations(p))


# The layouts are the single source: make sure every one has a class here.
assert set(LAYOUTS) == set(PDU_CLASSES)
