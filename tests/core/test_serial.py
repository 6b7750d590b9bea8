"""RFC 1982 serial arithmetic, the CmdSN window (RFC 7143 4.2.2.1), counters, tags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.core import serial
from iscsi_conformance.core.serial import CmdWindow, Sequence, TaskTagAllocator
from iscsi_conformance.errors import SequenceError

u32 = st.integers(0, 0xFFFFFFFF)


def test_wraparound_comparisons() -> None:
    assert serial.lt(0xFFFFFFFF, 0) and serial.gt(0, 0xFFFFFFFF)
    assert serial.lt(5, 6) and not serial.lt(6, 5) and not serial.lt(5, 5)
    assert serial.le(5, 5) and serial.ge(5, 5) and serial.le(4, 5) and serial.ge(0, 0xFFFFFFFF)
    # distance 2**31 is undefined (RFC 1982 3.2): neither less nor greater
    assert not serial.lt(0, 1 << 31) and not serial.gt(0, 1 << 31)
    assert serial.distance(0xFFFFFFFF, 1) == 2 and serial.distance(1, 0xFFFFFFFF) == -2


def test_add() -> None:
    assert serial.add(0xFFFFFFFF, 1) == 0
    assert serial.add(7, (1 << 31) - 1) == 7 + (1 << 31) - 1
    with pytest.raises(ValueError):
        serial.add(0, 1 << 31)
    with pytest.raises(ValueError):
        serial.add(0, -1)


@given(a=u32, n=st.integers(1, (1 << 31) - 1))
def test_adding_makes_greater(a: int, n: int) -> None:
    b = serial.add(a, n)
    assert serial.gt(b, a) and serial.lt(a, b) and not serial.lt(b, a)


@given(a=u32, b=u32)
def test_trichotomy_except_half(a: int, b: int) -> None:
    outcomes = [serial.lt(a, b), a == b, serial.gt(a, b)]
    if (a - b) % (1 << 32) == 1 << 31:
        assert outcomes == [False, False, False]
    else:
        assert outcomes.count(True) == 1


def test_window_wraps_and_closes() -> None:
    assert serial.in_window(0, 0xFFFFFFFE, 1)
    assert not serial.in_window(2, 0xFFFFFFFE, 1)
    assert not serial.in_window(10, 10, 9)  # MaxCmdSN = ExpCmdSN - 1: closed
    assert serial.in_window(10, 10, 10)


def test_cmd_window() -> None:
    w = CmdWindow(10, 12)
    assert w.size == 3 and w.is_open and w.accepts(12) and not w.accepts(13)
    w.check(11)
    w.check(99, immediate=True)  # immediate commands are not windowed
    with pytest.raises(SequenceError) as info:
        w.check(13)
    assert info.value.section == "RFC 7143 4.2.2.1"
    closed = CmdWindow(10, 9)
    assert closed.size == 0 and not closed.is_open and not closed.accepts(10)
    assert "expcmdsn=10" in repr(closed)
    with pytest.raises(SequenceError):
        CmdWindow(10, 8)  # MaxCmdSN < ExpCmdSN - 1


def test_cmd_window_update_rules() -> None:
    w = CmdWindow(0xFFFFFFFF, 2)
    assert not w.update(5, 3)  # invalid pair: both ignored
    assert (w.expcmdsn, w.maxcmdsn) == (0xFFFFFFFF, 2)
    assert w.update(1, 4) and (w.expcmdsn, w.maxcmdsn) == (1, 4)
    assert not w.update(0, 3)  # older values never move the window back
    assert w.update(1, 5) and w.maxcmdsn == 5


def test_sequence() -> None:
    s = Sequence(0xFFFFFFFF, name="StatSN")
    assert s.peek() == 0xFFFFFFFF and s.next() == 0xFFFFFFFF and s.next() == 0
    s.expect(1)
    with pytest.raises(SequenceError) as info:
        s.expect(5)
    assert "StatSN 5 received, 2 expected" in str(info.value)
    assert s.peek() == 2 and "StatSN" in repr(s)


def test_task_tags_skip_reserved_and_in_use() -> None:
    tags = TaskTagAllocator(0xFFFFFFFE, in_use={0})
    assert tags.allocate() == 0xFFFFFFFE
    assert tags.allocate() == 1  # 0xffffffff reserved, 0 outstanding
    assert tags.outstanding == {0, 0xFFFFFFFE, 1}
    tags.release(0)
    assert 0 not in tags.outstanding


def test_task_tags_exhaustion() -> None:
    class Full(set[int]):
        def __len__(self) -> int:  # every usable tag outstanding, without 4 G entries
            return 0xFFFFFFFF

    tags = TaskTagAllocator()
    tags._in_use = Full()
    with pytest.raises(SequenceError):
        tags.allocate()
