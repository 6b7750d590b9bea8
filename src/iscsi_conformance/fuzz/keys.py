"""Hypothesis strategies for text keys and their values (RFC 7143 6.1, 13).

Theory of operation: the strategies are derived from the KeySpec table in
:mod:`iscsi_conformance.core.keys`, so a new key there is fuzzed without touching
this file.  ``values_for(spec)`` yields legal values of a key, ``local_values()`` a
whole local configuration for a Negotiator, ``pairs()`` arbitrary well-formed
key=value lists (unknown and X- keys included), ``raw_segments()`` byte strings
that may or may not parse.
"""

from __future__ import annotations

from hypothesis import strategies as st

from iscsi_conformance.core import text
from iscsi_conformance.core.keys import KEYS, KeySpec, ResultFunction, ValueKind

_LABEL_CHARS = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_"
)
_TEXT_CHARS = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_/[]:"
)

#: Keys that take part in operational negotiation (numbers, booleans, lists).
NEGOTIABLE = tuple(
    name
    for name, spec in KEYS.items()
    if spec.result_function
    in (
        ResultFunction.LIST,
        ResultFunction.AND,
        ResultFunction.OR,
        ResultFunction.MIN,
        ResultFunction.MAX,
    )
    and not spec.security
)


def key_names() -> st.SearchStrategy[str]:
    """Legal key names: 1..63 label characters."""
    return st.text(_LABEL_CHARS, min_size=1, max_size=63)


def extension_keys() -> st.SearchStrategy[str]:
    """Private ``X-`` keys (RFC 7143 13.22)."""
    return st.text(_LABEL_CHARS, min_size=1, max_size=40).map(lambda s: "X-com.example." + s)


def text_values(max_size: int = 255) -> st.SearchStrategy[str]:
    """text-value strings."""
    return st.text(_TEXT_CHARS, max_size=max_size)


def local_names() -> st.SearchStrategy[str]:
    """iSCSI-local-name values: any UTF-8 without NUL, at most 255 bytes."""
    return st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=60)


def number_encodings(n: int) -> st.SearchStrategy[str]:
    """``n`` written as decimal, hex or base64."""
    return st.sampled_from(["decimal", "hex", "base64"]).map(lambda e: text.format_number(n, e))


def values_for(spec: KeySpec) -> st.SearchStrategy[str]:
    """Legal values for one key."""
    kind = spec.kind
    if kind is ValueKind.BOOLEAN:
        return st.sampled_from(["Yes", "No"])
    if kind is ValueKind.NUMBER:
        lo = spec.min if spec.min is not None else 0
        hi = spec.max if spec.max is not None else text.MAX_NUMERICAL
        return st.integers(lo, hi).map(str)
    if kind is ValueKind.RANGE:
        lo = spec.min or 0
        hi = spec.max if spec.max is not None else 65535
        return st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(
            lambda t: text.format_range(min(t), max(t))
        )
    if kind in (ValueKind.LIST, ValueKind.ENUM) and spec.values:
        if kind is ValueKind.ENUM:
            return st.sampled_from(spec.values)
        return st.lists(st.sampled_from(spec.values), min_size=1, unique=True).map(",".join)
    if kind is ValueKind.LIST:
        return st.lists(st.text(_TEXT_CHARS, min_size=1, max_size=20), min_size=1, max_size=4).map(
            ",".join
        )
    if kind in (ValueKind.BINARY, ValueKind.LARGE_BINARY):
        return binary_values(max_size=min(spec.max_length, 64))
    if kind is ValueKind.LOCAL_NAME:
        return local_names()
    if kind is ValueKind.ISCSI_NAME:
        return st.text(_TEXT_CHARS, min_size=1, max_size=60).map(lambda s: "iqn.2024-01.x:" + s)
    if kind is ValueKind.ADDRESS:
        return st.integers(1, 65535).map(lambda p: f"127.0.0.1:{p},1")
    return text_values(max_size=spec.max_length)


def binary_values(max_size: int = 1024) -> st.SearchStrategy[str]:
    """binary-values in hex or base64, up to ``max_size`` bytes."""
    return st.tuples(
        st.binary(min_size=1, max_size=max_size), st.sampled_from(["hex", "base64"])
    ).map(lambda t: text.format_binary(*t))


@st.composite
def local_values(draw: st.DrawFn, keys: tuple[str, ...] = NEGOTIABLE) -> dict[str, str]:
    """A random local configuration: some negotiable keys with legal values."""
    chosen = draw(st.lists(st.sampled_from(keys), unique=True))
    out = {k: draw(values_for(KEYS[k])) for k in chosen}
    if "MaxBurstLength" in out and "FirstBurstLength" in out:
        fbl, mbl = int(out["FirstBurstLength"]), int(out["MaxBurstLength"])
        if fbl > mbl:
            out["FirstBurstLength"], out["MaxBurstLength"] = str(mbl), str(fbl)
    return out


def pairs(max_pairs: int = 10) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Well-formed key=value lists: known keys with legal values, and unknown keys."""
    known = st.sampled_from(sorted(KEYS)).flatmap(
        lambda k: st.tuples(st.just(k), values_for(KEYS[k]))
    )
    unknown = st.tuples(st.one_of(extension_keys(), key_names()), local_names())
    return st.lists(st.one_of(known, unknown), max_size=max_pairs)


def raw_segments() -> st.SearchStrategy[bytes]:
    """Bytes that look like text data segments, often malformed."""
    return st.one_of(
        pairs().map(lambda p: text.format_pairs(p, strict=False)),
        st.binary(max_size=200),
        st.lists(st.sampled_from([b"A=1", b"=", b"\0", b"Key", b"\xff", b"X-a=b"])).map(b"".join),
    )
