"""Backing stores for a logical unit: lazily allocated RAM and a sparse file.

Theory of operation: the device logic (``device.py``) talks to a ``Backing`` only,
in bytes: ``read``, ``write``, ``discard`` (deallocate: the range reads back as
zeros afterwards, SBC-3 4.7.4.5 with LBPRZ=1), ``extents`` (which ranges are
mapped, for GET LBA STATUS), ``flush`` and ``resize``.  This is the only module of
``scsi`` that touches files; everything else stays pure.

``RamBacking`` keeps a dict of 64 KiB chunks, so a large LUN costs memory only for
what was written; a chunk that becomes all zeros is dropped again.
``SparseFileBacking`` uses pread/pwrite on a sparse file, punches holes with
``fallocate(PUNCH_HOLE)`` where the platform has it (else writes zeros), and asks the
file system for holes with ``SEEK_DATA``/``SEEK_HOLE``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Protocol, runtime_checkable

CHUNK = 64 * 1024
_ZERO_CHUNK = bytes(CHUNK)


@runtime_checkable
class Backing(Protocol):
    """What a logical unit needs from its store (all offsets and lengths in bytes)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, mapped) runs covering [offset, offset+length)."""
        ...

    def flush(self) -> None: ...

    def resize(self, size: int) -> None: ...


def _merge(runs: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    for off, ln, mapped in runs:
        if ln <= 0:
            continue
        if out and out[-1][2] == mapped and out[-1][0] + out[-1][1] == off:
            p = out[-1]
            out[-1] = (p[0], p[1] + ln, mapped)
        else:
            out.append((off, ln, mapped))
    return out


class RamBacking:
    """Memory backing, allocated lazily in 64 KiB chunks."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._chunks: dict[int, bytearray] = {}

    @property
    def size(self) -> int:
        return self._size

    @property
    def allocated_bytes(self) -> int:
        """Memory in use for data (for tests and reports)."""
        return len(self._chunks) * CHUNK

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"range {offset}+{length} outside backing of {self._size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        idx, off = divmod(offset, CHUNK)
        if off + length <= CHUNK:  # the common case: one chunk, one copy
            chunk = self._chunks.get(idx)
            if chunk is None:
                # A hole: a whole chunk is the shared zero chunk itself (no copy).
                return _ZERO_CHUNK if length == CHUNK else bytes(length)
            return bytes(memoryview(chunk)[off : off + length])
        out = bytearray(length)
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, CHUNK)
            n = min(CHUNK - off, end - pos)
            chunk = self._chunks.get(idx)
            if chunk is not None:
                out[pos - offset : pos - offset + n] = memoryview(chunk)[off : off + n]
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        pos, end = offset, offset + len(view)
        while pos < end:
            idx, off = divmod(pos, CHUNK)
            n = min(CHUNK - off, end - pos)
            piece = view[pos - offset : pos - offset + n]
            chunk = self._chunks.get(idx)
            if chunk is None:
                if piece == _ZERO_CHUNK[:n]:  # writing zeros to a hole keeps it a hole
                    pos += n
                    continue
                chunk = self._chunks[idx] = bytearray(CHUNK)
            chunk[off : off + n] = piece
            pos += n

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, CHUNK)
            n = min(CHUNK - off, end - pos)
            chunk = self._chunks.get(idx)
            if chunk is not None:
                if n == CHUNK:
                    del self._chunks[idx]
                else:
                    chunk[off : off + n] = _ZERO_CHUNK[:n]
                    if chunk == _ZERO_CHUNK:
                        del self._chunks[idx]
            pos += n

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        self._check(offset, length)
        runs: list[tuple[int, int, bool]] = []
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, CHUNK)
            n = min(CHUNK - off, end - pos)
            runs.append((pos, n, idx in self._chunks))
            pos += n
        return _merge(runs)

    def flush(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def resize(self, size: int) -> None:
        if size < self._size:
            self.discard(size, self._size - size)  # growing again must read zeros
        self._size = size

    def close(self) -> None:
        self._chunks.clear()


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


class SparseFileBacking:
    """A sparse file (created if missing, extended with ``truncate``)."""

    _fallocate = _load_fallocate()

    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, *, punch_holes: bool = True
    ) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        current = os.fstat(self._fd).st_size
        if size is None:
            size = current
        if current != size:
            os.ftruncate(self._fd, size)
        self._size = size
        self._punch = punch_holes and self._fallocate is not None

    @property
    def size(self) -> int:
        return self._size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"range {offset}+{length} outside backing of {self._size} bytes")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        data = os.pread(self._fd, length, offset)
        while len(data) < length:  # short read: a signal, or the end of a shrunk file
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))
            data += more
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if length == 0:
            return
        if self._punch and self._fallocate is not None:
            rc = self._fallocate(
                self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length
            )
            if rc == 0:
                return
            self._punch = False  # file system cannot punch: fall back for good
        pos = offset
        while pos < offset + length:
            n = min(CHUNK, offset + length - pos)
            os.pwrite(self._fd, _ZERO_CHUNK[:n], pos)
            pos += n

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        self._check(offset, length)
        end = offset + length
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        seek_data = getattr(os, "SEEK_DATA", None)
        seek_hole = getattr(os, "SEEK_HOLE", None)
        if seek_data is None or seek_hole is None:
            return [(offset, length, True)] if length else []
        while pos < end:
            try:
                data_at = os.lseek(self._fd, pos, seek_data)
            except OSError:  # ENXIO: no data after pos
                data_at = end
            data_at = min(data_at, end)
            if data_at > pos:
                runs.append((pos, data_at - pos, False))
                pos = data_at
                continue
            try:
                hole_at = os.lseek(self._fd, pos, seek_hole)
            except OSError:
                hole_at = end
            hole_at = min(max(hole_at, pos + 1), end)
            runs.append((pos, hole_at - pos, True))
            pos = hole_at
        return _merge(runs)

    def flush(self) -> None:
        os.fsync(self._fd)

    def resize(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SparseFileBacking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
