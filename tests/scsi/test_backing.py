"""RAM and sparse-file backings: same contract, checked against a bytearray model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsi_conformance.scsi.backing import CHUNK, Backing, RamBacking, SparseFileBacking

SIZE = 4 * CHUNK


@pytest.fixture(params=["ram", "file", "file-nopunch"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Backing:
    if request.param == "ram":
        return RamBacking(SIZE)
    b = SparseFileBacking(tmp_path / "lun.img", SIZE, punch_holes=request.param == "file")
    request.addfinalizer(b.close)
    return b


def test_contract(backing: Backing) -> None:
    assert isinstance(backing, Backing)
    assert backing.read(0, 100) == bytes(100)
    backing.write(CHUNK - 10, b"x" * 20)  # across a chunk boundary
    assert backing.read(CHUNK - 12, 24) == b"\0\0" + b"x" * 20 + b"\0\0"
    backing.write(2 * CHUNK, memoryview(b"abc"))
    backing.discard(CHUNK - 5, 10)
    assert backing.read(CHUNK - 10, 20) == b"x" * 5 + bytes(10) + b"x" * 5
    backing.discard(0, SIZE)
    assert backing.read(0, SIZE) == bytes(SIZE)
    backing.discard(0, 0)
    backing.flush()
    with pytest.raises(ValueError):
        backing.read(SIZE - 1, 2)
    with pytest.raises(ValueError):
        backing.write(-1, b"a")


def test_extents(backing: Backing) -> None:
    backing.write(CHUNK, b"y" * CHUNK)
    ext = backing.extents(0, SIZE)
    assert sum(n for _, n, _ in ext) == SIZE
    mapped = [(o, n) for o, n, m in ext if m]
    if isinstance(backing, SparseFileBacking) and not mapped:
        pytest.skip("file system reports no holes")
    assert any(o <= CHUNK and o + n >= 2 * CHUNK for o, n in mapped)
    assert backing.extents(0, 0) == []


def test_resize(backing: Backing) -> None:
    backing.write(SIZE - 4, b"tail")
    backing.resize(SIZE - 2)
    assert backing.size == SIZE - 2
    backing.resize(SIZE)
    assert backing.read(SIZE - 4, 4) == b"ta\0\0"


def test_ram_is_lazy() -> None:
    b = RamBacking(1 << 30)
    assert b.allocated_bytes == 0
    b.write(5 << 20, bytes(CHUNK))  # zeros into a hole stay a hole
    assert b.allocated_bytes == 0
    b.write(5 << 20, b"\1" * 100)
    assert b.allocated_bytes == CHUNK
    b.discard(5 << 20, 100)  # chunk back to all zeros: freed
    assert b.allocated_bytes == 0
    b.write(0, b"\1" * (2 * CHUNK))
    b.discard(0, CHUNK)
    assert b.allocated_bytes == CHUNK
    b.close()
    with pytest.raises(ValueError):
        RamBacking(-1)


def test_sparse_file_is_sparse_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    with SparseFileBacking(path, 1 << 30) as b:
        b.write(123 * CHUNK, b"data")
    st = os.stat(path)
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20
    with SparseFileBacking(path) as b:
        assert b.size == 1 << 30 and b.read(123 * CHUNK, 4) == b"data"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["w", "d"]), st.integers(0, SIZE - 1), st.integers(0, 3 * CHUNK)),
        max_size=12,
    )
)
def test_ram_matches_model(ops: list[tuple[str, int, int]]) -> None:
    b = RamBacking(SIZE)
    model = bytearray(SIZE)
    for i, (op, off, n) in enumerate(ops):
        n = min(n, SIZE - off)
        if op == "w":
            data = bytes([(i + 1) & 0xFF]) * n
            b.write(off, data)
            model[off : off + n] = data
        else:
            b.discard(off, n)
            model[off : off + n] = bytes(n)
    assert b.read(0, SIZE) == bytes(model)
    for off, n, mapped in b.extents(0, SIZE):
        if not mapped:
            assert model[off : off + n] == bytes(n)
