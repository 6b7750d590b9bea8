"""The one interface every peer driver implements.

Theory of operation: a *peer* is a real program (tgt, LIO, open-iscsi, libiscsi) or
our reference implementation, started and configured by the suite. Every driver
records each command it runs and what that printed (``CommandLog``), so the report
can show exactly how a peer was set up. Capabilities and known deviations are data,
read from the peer's ``manifest.toml`` (``targets/<name>/`` or ``initiators/<name>/``),
never ``if peer == ...`` in test code.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Literal

from iscsi_conformance.credentials import ChapAccount

from .commandlog import CommandLog, CommandRecord

__all__ = [
    "ChapAccount",
    "CommandLog",
    "CommandRecord",
]  # re-exported: drivers import them from here

Role = Literal["target", "initiator"]
Mode = Literal["embedded", "native", "container", "microvm", "external"]


@dataclasses.dataclass(frozen=True)
class LunSpec:
    size_bytes: int = 64 * 1024 * 1024
    block_size: int = 512


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """What the suite asks a target driver to serve."""

    iqn: str
    luns: tuple[LunSpec, ...] = (LunSpec(),)
    chap: ChapAccount | None = None  # initiator authenticates to target
    mutual_chap: ChapAccount | None = None  # target authenticates to initiator
    allowed_initiators: tuple[str, ...] = ()  # empty: any initiator (generate ACLs)
    header_digest: tuple[str, ...] = ("None", "CRC32C")  # target's preference, in order
    data_digest: tuple[str, ...] = ("None", "CRC32C")
    parameters: tuple[tuple[str, str], ...] = ()  # further operational keys
    # Login redirection (RFC 7143 11.13.5): answer every login with status 0101
    # (temporary) or 0102 (permanent, when redirect_permanent) and TargetAddress=redirect,
    # "host:port" (13.8). None: serve the target.
    redirect: str | None = None
    redirect_permanent: bool = False
    # Reference target only (a profile needing capability "datain_out_of_order"): a cap
    # on its Data-In segments (several PDUs per sequence) and their order under
    # DataPDUInOrder=No ("offset" or "reverse", target/config.py datain_order).
    max_send_data_segment_length: int | None = None
    datain_order: str = "offset"
    # Reference target only (capability "cmd_window_initial"): the CmdSN window its
    # logins grant a Normal session (0: closed until the test API opens it, RFC 7143
    # 4.2.2.1; target/config.py cmd_window). None: the target's default.
    cmd_window: int | None = None


@dataclasses.dataclass(frozen=True)
class TargetEndpoint:
    """Where a configured target can be reached *from the initiator's side*."""

    host: str
    port: int
    iqn: str
    luns: tuple[int, ...] = (0,)
    portal_group_tag: int = 1
    # Address reachable from the host running the suite (may differ under NAT)
    host_side: tuple[str, int] | None = None

    def url(self, lun: int = 0) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"iscsi://{host}:{self.port}/{self.iqn}/{lun}"


@dataclasses.dataclass(frozen=True)
class LoginOptions:
    chap: ChapAccount | None = None
    mutual_chap: ChapAccount | None = None
    header_digest: str = "None"  # value offered, e.g. "CRC32C,None"
    data_digest: str = "None"
    parameters: tuple[tuple[str, str], ...] = ()
    initiator_name: str | None = None


@dataclasses.dataclass
class Manifest:
    """A peer's manifest.toml: capabilities and known deviations."""

    name: str
    role: Role
    description: str = ""
    capabilities: dict[str, Any] = dataclasses.field(default_factory=dict)
    deviations: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def supports(self, capability: str) -> bool:
        value = self.capabilities.get(capability, False)
        return bool(value)


class PeerDriver(abc.ABC):
    """Common part of every driver."""

    name: str
    role: Role
    mode: Mode = "native"

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.log = CommandLog()

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the peer up; raise ``PeerStartError`` (naming it, with its log tail)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Tear everything down; idempotent; must work after a partial start."""

    @abc.abstractmethod
    def version(self) -> str:
        """The peer's version string, as the report shows it."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "mode": self.mode, "version": self.version()}

    def __enter__(self) -> PeerDriver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TargetDriver(PeerDriver):
    role: Role = "target"

    @abc.abstractmethod
    def configure(self, spec: TargetSpec) -> TargetEndpoint:
        """Create (or replace) a target as ``spec`` says; return where it listens."""

    def deconfigure(self, iqn: str) -> None:
        """Remove a target created by ``configure``."""

    def health(self) -> str | None:
        """Why the target no longer serves (its process exited, its VM powered off), or
        None while it runs or when the driver cannot tell. Cheap: called after every
        test of a run (``PeerPool.check_target``)."""
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The peer's last output lines (secrets masked), for crash reports."""
        return ""

    def health_handle(self) -> dict[str, Any]:
        """What another process (an xdist worker) needs to tell whether this target
        still runs: ``{"pid": n}`` of its process on this host or ``{"container": id}``;
        empty when there is nothing to watch (see ``handle_health``)."""
        return {}

    def restart(self) -> None:
        """Bring a dead target up again, empty: the caller configures it again."""
        self.stop()
        self.start()


@dataclasses.dataclass
class SessionHandle:
    """An initiator driver's logged-in session (opaque ``ref`` for the driver)."""

    endpoint: TargetEndpoint
    ref: Any = None
    negotiated: dict[str, str] = dataclasses.field(default_factory=dict)


class InitiatorDriver(PeerDriver):
    role: Role = "initiator"

    @abc.abstractmethod
    def discover(
        self, host: str, port: int, *, options: LoginOptions = LoginOptions()
    ) -> list[tuple[str, str]]:
        """SendTargets=All: list of (target name, 'addr:port,tpgt')."""

    @abc.abstractmethod
    def login(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = LoginOptions()
    ) -> SessionHandle:
        """Log in; raise ``LoginError``/``AuthenticationError`` when the target refuses."""

    @abc.abstractmethod
    def logout(self, session: SessionHandle) -> None: ...

    @abc.abstractmethod
    def read(self, session: SessionHandle, lun: int, lba: int, blocks: int) -> bytes: ...

    @abc.abstractmethod
    def write(self, session: SessionHandle, lun: int, lba: int, data: bytes) -> None: ...

    def inquiry(self, session: SessionHandle, lun: int) -> bytes:
        raise NotImplementedError

    def xdwriteread(self, session: SessionHandle, lun: int, lba: int, data: bytes) -> bytes:
        """XDWRITEREAD(10) of ``data`` at ``lba`` as one bidirectional command (RFC 7143
        11.3.4): the read part returned (the XOR). Only where the manifest says
        ``bidirectional``."""
        raise NotImplementedError


def handle_health(handle: dict[str, Any]) -> str | None:
    """``TargetDriver.health`` for a process that holds only ``health_handle()``:
    why the target is gone, or None while it runs (or when the handle says nothing)."""
    pid = handle.get("pid")
    if pid:
        try:
            with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return f"process {pid} is gone"
        return f"process {pid} exited" if state in ("Z", "X") else None
    container = handle.get("container")
    if container:
        try:
            from iscsi_conformance.peers.docker_env import ensure_engine

            status = ensure_engine(start=False).containers.get(container).status
        except Exception as exc:  # removed, or the engine went away
            return f"container {container[:12]} is gone ({exc})"
        return None if status in ("created", "running") else f"container {container[:12]} {status}"
    return None
