"""Build the logical units a configuration describes, and persist their state.

Theory of operation: each ``LunConfig`` becomes a ``scsi.device.LogicalUnit`` over a
``RamBacking`` or a ``SparseFileBacking`` (created sparse at the configured size when
missing). Persistent-reservation state with APTPL (SPC-4 5.9.5) lives in a JSON file:
beside a file LUN (``disk.img.pr.json``), or for a RAM LUN in the server's
``state_dir`` (``<target>_<lun>.pr.json``) when one is configured. ``LunStore.flush()``
writes data and state out; it runs on clean shutdown (SIGINT/SIGTERM) and after every
PERSISTENT RESERVE OUT that changed state, so a crash loses at most what the SCSI
layer had not yet reported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.target.config import LunConfig, ServerConfig

_XDWRITEREAD_10 = 0x53  # SBC-3 5.48: left out of a target configured without it

log = logging.getLogger("iscsi_conformance.target")


@dataclasses.dataclass
class LunEntry:
    target: str
    config: LunConfig
    lu: Any
    backing: Any
    state_path: Path | None
    last_state: str | None = None


def _state_path(cfg: ServerConfig, target: str, lun: LunConfig) -> Path | None:
    if lun.file is not None:
        return lun.file.with_name(lun.file.name + ".pr.json")
    if cfg.state_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", target)
        return cfg.state_dir / f"{safe}_{lun.lun}.pr.json"
    return None


def _reservations_of(lu: Any) -> Any:
    for name in ("reservations", "pr", "reservation_state"):
        r = getattr(lu, name, None)
        if r is not None and hasattr(r, "to_json"):
            return r
    return None


class LunStore:
    """All logical units of a server, by target name and LUN."""

    def __init__(self, config: ServerConfig) -> None:
        from iscsi_conformance.scsi.backing import RamBacking, SparseFileBacking
        from iscsi_conformance.scsi.device import LogicalUnit

        self.entries: list[LunEntry] = []
        self._by_lu: dict[int, LunEntry] = {}
        self.by_target: dict[str, dict[int, Any]] = {}
        for ti, t in enumerate(config.targets):
            units: dict[int, Any] = {}
            for li, lc in enumerate(t.luns):
                field = f"targets[{ti}].luns[{li}]"
                if lc.file is not None:
                    try:
                        if lc.size is None and not lc.file.exists():
                            raise ConfigError(
                                "file does not exist and no size given", field=f"{field}.file"
                            )
                        backing = SparseFileBacking(lc.file, lc.size)
                    except OSError as exc:
                        raise ConfigError(
                            f"cannot open {lc.file}: {exc.strerror}", field=f"{field}.file"
                        ) from None
                else:
                    assert lc.size is not None
                    backing = RamBacking(lc.size)
                if backing.size % lc.block_size:
                    raise ConfigError(
                        f"size {backing.size} is not a multiple of block_size",
                        field=f"{field}.size",
                    )
                state_path = _state_path(config, t.name, lc)
                kwargs: dict[str, Any] = {"block_size": lc.block_size}
                if lc.read_only:
                    kwargs["read_only"] = True
                if lc.serial:
                    kwargs["serial"] = lc.serial
                kwargs["lun"] = lc.lun
                reservations, saved = self._load_state(state_path)
                if reservations is not None:
                    kwargs["reservations"] = reservations
                lu = LogicalUnit(backing, **kwargs)
                if not t.xdwriteread:
                    # the LU without XDWRITEREAD(10): INVALID COMMAND OPERATION CODE
                    # for it, and not listed by REPORT SUPPORTED OPERATION CODES
                    lu._table = {k: v for k, v in lu._table.items() if k[0] != _XDWRITEREAD_10}
                entry = LunEntry(t.name, lc, lu, backing, state_path, saved)
                self._by_lu[id(lu)] = entry
                units[lc.lun] = lu
                self.entries.append(entry)
            self.by_target[t.name] = units
            inventory = sorted(units)
            for lu in units.values():
                # REPORT LUNS lists the target's LUNs (SPC-4 6.33).
                lu.lun_inventory = lambda inv=inventory: inv

    @staticmethod
    def _load_state(path: Path | None) -> tuple[Any, str | None]:
        """Reservation state saved by an earlier run (APTPL, SPC-4 5.9.5)."""
        from iscsi_conformance.scsi.reservations import ReservationState

        if path is None or not path.exists():
            return None, None
        try:
            text = path.read_text(encoding="utf-8")
            return ReservationState.from_json(text), text
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable reservation state %s: %s", path, exc)
            return None, None

    def pr_changed(self, lu: Any) -> None:
        """Called after a PERSISTENT RESERVE OUT changed state: persist at once."""
        entry = self._by_lu.get(id(lu))
        if entry is not None:
            try:
                self.save_state(entry)
            except OSError as exc:
                log.error("saving reservation state %s failed: %s", entry.state_path, exc)

    def save_state(self, entry: LunEntry) -> None:
        """Write the APTPL state if it changed (atomically: temp file + rename)."""
        path = entry.state_path
        if path is None:
            return
        res = entry.lu.reservations
        if not res.aptpl:
            # Without APTPL nothing survives a power loss (SPC-4 5.9.5): no state file.
            if entry.last_state is not None or path.exists():
                path.unlink(missing_ok=True)
                entry.last_state = None
            return
        text = res.to_json()
        if text == entry.last_state:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        entry.last_state = text

    def flush(self) -> None:
        """Flush file-backed data and reservation state of every LU."""
        for e in self.entries:
            try:
                e.backing.flush()
            except OSError as exc:
                log.error("flush of %s LUN %d failed: %s", e.target, e.config.lun, exc)
            try:
                self.save_state(e)
            except OSError as exc:
                log.error("saving reservation state %s failed: %s", e.state_path, exc)

    def flush_state(self) -> None:
        for e in self.entries:
            try:
                self.save_state(e)
            except OSError as exc:
                log.error("saving reservation state %s failed: %s", e.state_path, exc)

    def close(self) -> None:
        self.flush()
        for e in self.entries:
            close = getattr(e.backing, "close", None)
            if close is not None:
                close()
