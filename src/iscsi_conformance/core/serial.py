"""Sequence numbers: RFC 1982 serial arithmetic, the CmdSN window, counters, task tags.

Theory of operation: every iSCSI sequence number (CmdSN, StatSN, DataSN, R2TSN) is a
32-bit serial number that wraps (RFC 7143 4.2.2). Comparisons follow RFC 1982 3.2 with
SERIAL_BITS = 32: ``a < b`` when the forward distance from ``a`` to ``b`` is between 1
and 2**31 - 1; at a distance of exactly 2**31 neither is less (undefined in the RFC).
:class:`CmdWindow` holds ExpCmdSN..MaxCmdSN with the update rules of RFC 7143 4.2.2.1;
:class:`Sequence` is a wrapping counter that can check what a peer sent;
:class:`TaskTagAllocator` hands out Initiator Task Tags, never the reserved 0xffffffff.
"""

from __future__ import annotations

from collections.abc import Iterable

from iscsi_conformance.errors import SequenceError

__all__ = [
    "MOD",
    "RESERVED_TAG",
    "CmdWindow",
    "Sequence",
    "TaskTagAllocator",
    "add",
    "add_mod",
    "distance",
    "ge",
    "gt",
    "in_window",
    "le",
    "lt",
]

MOD = 1 << 32
_HALF = 1 << 31
RESERVED_TAG = 0xFFFFFFFF  # RFC 7143 11.2.1.8: never used as a task tag


def add(s: int, n: int) -> int:
    """``s + n`` (RFC 1982 3.1); ``n`` must be in 0 .. 2**31 - 1."""
    if not 0 <= n < _HALF:
        raise ValueError(f"serial addition is defined for 0 <= n < 2**31, got {n}")
    return (s + n) % MOD


def add_mod(s: int, n: int) -> int:
    """``(s + n) mod 2**32`` for any integer ``n``, negative included.

    Not RFC 1982 3.1 addition (:func:`add`, restricted to 0 <= n < 2**31): this is the
    plain wrap-around of the 32-bit sequence-number fields of RFC 7143 4.2.2 (StatSN + 1,
    ExpCmdSN + 1, ExpCmdSN + window - 1 for MaxCmdSN, ExpCmdSN - 1, BegRun + RunLength),
    kept cheap for the engines' hot paths.
    """
    return (s + n) & 0xFFFFFFFF  # literals, not MOD/_HALF: no global look-ups here


def distance(a: int, b: int) -> int:
    """Signed forward distance from ``a`` to ``b`` in -2**31 .. 2**31 - 1."""
    d = (b - a) % MOD
    return d - MOD if d >= _HALF else d


def lt(a: int, b: int) -> bool:
    """``a < b`` in serial arithmetic (RFC 1982 3.2)."""
    return 0 < (b - a) & 0xFFFFFFFF < 0x80000000


def gt(a: int, b: int) -> bool:
    """``a > b`` in serial arithmetic (RFC 1982 3.2)."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


def le(a: int, b: int) -> bool:
    """``a <= b``: equal or less (RFC 1982 3.2, RFC 7143 4.2.2.1)."""
    # distance 0 (equal) or 1 .. 2**31 - 1 (less); ``a == b`` first, the common case
    return a == b or (b - a) & 0xFFFFFFFF < 0x80000000


def ge(a: int, b: int) -> bool:
    """``a >= b``: equal or greater (RFC 1982 3.2, RFC 7143 4.2.2.1)."""
    # distance 0 (equal) or 1 .. 2**31 - 1 (greater); ``a == b`` first, the common case
    return a == b or (a - b) & 0xFFFFFFFF < 0x80000000


def in_window(sn: int, low: int, high: int) -> bool:
    """``low <= sn <= high`` in serial arithmetic; empty when ``high == low - 1``."""
    width = (high - low) % MOD
    if width == MOD - 1:  # high == low - 1: the closed window (RFC 7143 4.2.2.1)
        return False
    return (sn - low) % MOD <= width


class CmdWindow:
    """The command window ExpCmdSN .. MaxCmdSN (RFC 7143 4.2.2.1).

    ``MaxCmdSN == ExpCmdSN - 1`` is the closed window: no non-immediate command may be
    sent. A window with ``MaxCmdSN < ExpCmdSN - 1`` is invalid, and an initiator
    ignores both values when a PDU carries one (:meth:`update`).
    """

    def __init__(self, expcmdsn: int, maxcmdsn: int) -> None:
        if not self.valid(expcmdsn, maxcmdsn):
            raise SequenceError(
                f"MaxCmdSN {maxcmdsn} < ExpCmdSN {expcmdsn} - 1", section="RFC 7143 4.2.2.1"
            )
        self.expcmdsn = expcmdsn % MOD
        self.maxcmdsn = maxcmdsn % MOD

    def __repr__(self) -> str:
        return f"CmdWindow(expcmdsn={self.expcmdsn}, maxcmdsn={self.maxcmdsn})"

    @staticmethod
    def valid(expcmdsn: int, maxcmdsn: int) -> bool:
        """False when MaxCmdSN < ExpCmdSN - 1 in serial arithmetic (4.2.2.1)."""
        return not lt(maxcmdsn, (expcmdsn - 1) % MOD)

    @property
    def size(self) -> int:
        """How many CmdSNs the window holds (0 when closed)."""
        return (self.maxcmdsn - self.expcmdsn + 1) % MOD

    @property
    def is_open(self) -> bool:
        """True unless MaxCmdSN == ExpCmdSN - 1."""
        return self.size != 0

    def accepts(self, cmdsn: int) -> bool:
        """True if a non-immediate command with ``cmdsn`` lies in the window."""
        return in_window(cmdsn, self.expcmdsn, self.maxcmdsn)

    def check(self, cmdsn: int, *, immediate: bool = False) -> None:
        """Raise :class:`SequenceError` for a non-immediate command outside the window.

        RFC 7143 4.2.2.1: such a command is silently ignored by the target; immediate
        commands are not subject to the window (their CmdSN is not advanced).
        """
        if not immediate and not self.accepts(cmdsn):
            raise SequenceError(
                f"CmdSN {cmdsn} outside the window {self.expcmdsn}..{self.maxcmdsn}",
                section="RFC 7143 4.2.2.1",
            )

    def update(self, expcmdsn: int, maxcmdsn: int) -> bool:
        """Apply ExpCmdSN/MaxCmdSN from a target PDU the way an initiator must.

        RFC 7143 4.2.2.1: both are ignored if MaxCmdSN < ExpCmdSN - 1; otherwise each
        replaces the local value only if it is greater. Returns True if anything changed.
        """
        if not self.valid(expcmdsn, maxcmdsn):
            return False
        changed = False
        if gt(maxcmdsn, self.maxcmdsn):
            self.maxcmdsn, changed = maxcmdsn % MOD, True
        if gt(expcmdsn, self.expcmdsn):
            self.expcmdsn, changed = expcmdsn % MOD, True
        return changed


class Sequence:
    """A wrapping 32-bit counter for StatSN, DataSN, R2TSN, CmdSN."""

    def __init__(self, start: int = 0, *, name: str = "sequence number") -> None:
        self.value = start % MOD
        self.name = name

    def __repr__(self) -> str:
        return f"Sequence({self.value}, name={self.name!r})"

    def next(self) -> int:
        """Return the current value and advance by one."""
        value = self.value
        self.value = (value + 1) % MOD
        return value

    def peek(self) -> int:
        """The value :meth:`next` would return."""
        return self.value

    def expect(self, received: int, *, section: str = "RFC 7143 4.2.2") -> None:
        """Check that a peer sent the expected number, then advance.

        Raises :class:`SequenceError` (without advancing) on a mismatch.
        """
        if received % MOD != self.value:
            raise SequenceError(
                f"{self.name} {received} received, {self.value} expected", section=section
            )
        self.next()


class TaskTagAllocator:
    """Initiator Task Tags: unique among outstanding tasks, never 0xffffffff.

    RFC 7143 11.2.1.8: the tag identifies a task uniquely within a session, and
    0xffffffff is reserved.
    """

    def __init__(self, start: int = 0, *, in_use: Iterable[int] = ()) -> None:
        self._next = start % MOD
        self._in_use = set(in_use)

    def allocate(self) -> int:
        """A tag not outstanding and not reserved."""
        if len(self._in_use) >= MOD - 1:
            raise SequenceError("no free task tag", section="RFC 7143 11.2.1.8")
        tag = self._next
        while tag == RESERVED_TAG or tag in self._in_use:
            tag = (tag + 1) % MOD
        self._next = (tag + 1) % MOD
        self._in_use.add(tag)
        return tag

    def release(self, tag: int) -> None:
        """Mark ``tag`` free again (its task ended)."""
        self._in_use.discard(tag)

    @property
    def outstanding(self) -> frozenset[int]:
        """Tags allocated and not yet released."""
        return frozenset(self._in_use)
