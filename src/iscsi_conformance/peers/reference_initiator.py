"""The reference initiator as an ``InitiatorDriver`` (mode ``"embedded"``).

Theory of operation: the reference initiator is asyncio code; the driver interface is
synchronous. The driver owns one event loop running in a daemon thread and submits
each operation to it (``asyncio.run_coroutine_threadsafe``), so a ``SessionHandle``
keeps a live :class:`~iscsi_conformance.initiator.client.Session` (one long-lived
login, unlike one-shot tools) across calls. Every operation is recorded in
``self.log`` like a command a native driver runs (argv-like, secrets masked), so the
report shows what the initiator did. ``session(handle)`` and ``run(coro)`` give a test
the full asynchronous API when the common interface is not enough.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from iscsi_conformance.errors import ConfigError, ISCSIConformanceError, PeerStartError
from iscsi_conformance.peers.base import (
    InitiatorDriver,
    LoginOptions,
    Manifest,
    SessionHandle,
    TargetEndpoint,
)
from iscsi_conformance.peers.registry import register_initiator

T = TypeVar("T")
_NO_OPTIONS = LoginOptions()  # frozen: safe as a shared default

__all__ = ["ReferenceInitiator"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("iscsi-conformance")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "0+unknown"


@register_initiator("reference")
class ReferenceInitiator(InitiatorDriver):
    """``InitiatorDriver`` over :mod:`iscsi_conformance.initiator` (in-process)."""

    name = "reference"
    mode = "embedded"
    modes = ("embedded",)

    def __init__(
        self, manifest: Manifest | None = None, *, mode: str | None = None, timeout: float = 15.0
    ) -> None:
        if manifest is None:
            try:
                from iscsi_conformance.peers.manifest import load_peer_manifest

                manifest = load_peer_manifest("initiator", "reference")
            except Exception:
                manifest = Manifest(name="reference", role="initiator")
        super().__init__(manifest)
        if mode not in (None, "embedded"):
            raise ConfigError(f"the reference initiator runs embedded, not {mode!r}", field="mode")
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="reference-initiator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self.run(asyncio.sleep(0), timeout=5)
        except Exception as exc:  # pragma: no cover - a loop that cannot run
            raise PeerStartError("reference", f"event loop did not start: {exc}") from exc

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        for s in list(self._sessions):
            try:
                self.run(s.close(), timeout=5)
            except Exception:
                pass
        self._sessions.clear()
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        loop.close()
        self._loop = self._thread = None

    def version(self) -> str:
        return _version()

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run a coroutine on the driver's loop and wait for its result."""
        if self._loop is None:
            self.start()
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout if timeout is not None else self.timeout * 4)

    # ------------------------------------------------------------------ helpers

    def _record(
        self, argv: list[str], started: float, *, ok: bool, out: str = "", err: str = ""
    ) -> None:
        self.log.add(
            ["reference-initiator", *argv], 0 if ok else 1, out, err, started, where="embedded"
        )

    def _secrets(self, options: LoginOptions) -> None:
        for cred in (options.chap, options.mutual_chap):
            if cred is not None:
                self.log.secrets.add(cred.secret)

    @staticmethod
    def _keys(options: LoginOptions) -> dict[str, str]:
        keys = {"HeaderDigest": options.header_digest, "DataDigest": options.data_digest}
        keys.update((k, v) for k, v in options.parameters if k != "CHAP_A")
        return keys

    @staticmethod
    def _chap_algorithms(options: LoginOptions) -> tuple[int, ...]:
        """The CHAP_A list to offer: parameter CHAP_A (e.g. "7" or "7,5"), else MD5."""
        value = dict(options.parameters).get("CHAP_A")
        if value is None:
            return (5,)
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(
                f"CHAP_A={value!r}: numbers, comma-separated", field="parameters"
            ) from None

    def _call(self, argv: list[str], coro: Coroutine[Any, Any, T]) -> T:
        started = time.monotonic()
        try:
            result = self.run(coro)
        except ISCSIConformanceError as exc:
            self._record(argv, started, ok=False, err=str(exc))
            raise
        self._record(argv, started, ok=True, out=_summary(result))
        return result

    @staticmethod
    def session(handle: SessionHandle) -> Any:
        """The live :class:`~iscsi_conformance.initiator.client.Session` of a handle."""
        return handle.ref

    # ------------------------------------------------------------------ interface

    def discover(
        self, host: str, port: int, *, options: LoginOptions = _NO_OPTIONS
    ) -> list[tuple[str, str]]:
        from iscsi_conformance.initiator.client import DEFAULT_INITIATOR_NAME, discover

        self._secrets(options)
        targets = self._call(
            ["discover", f"{host}:{port}"],
            discover(
                host,
                port,
                initiator_name=options.initiator_name or DEFAULT_INITIATOR_NAME,
                chap=options.chap,
                mutual_chap=options.mutual_chap,
                keys=self._keys(options),
                timeout=self.timeout,
            ),
        )
        return [(t.name, str(p)) for t in targets for p in (t.addresses or ())]

    def login(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = _NO_OPTIONS
    ) -> SessionHandle:
        from iscsi_conformance.initiator.client import DEFAULT_INITIATOR_NAME, Session

        self._secrets(options)
        host, port = endpoint.host_side or (endpoint.host, endpoint.port)

        async def connect() -> Any:
            return await Session.connect(
                host,
                port,
                endpoint.iqn,
                initiator_name=options.initiator_name or DEFAULT_INITIATOR_NAME,
                chap=options.chap,
                mutual_chap=options.mutual_chap,
                keys=self._keys(options),
                chap_algorithms=self._chap_algorithms(options),
                timeout=self.timeout,
            )

        session = self._call(
            ["login", endpoint.url(endpoint.luns[0] if endpoint.luns else 0)], connect()
        )
        self._sessions.append(session)
        return SessionHandle(
            endpoint=endpoint, ref=session, negotiated=dict(session.negotiated.values)
        )

    def logout(self, session: SessionHandle) -> None:
        s = session.ref
        try:
            self._call(["logout", session.endpoint.iqn], s.logout())
        finally:
            self.run(s.close())
            if s in self._sessions:
                self._sessions.remove(s)

    def read(self, session: SessionHandle, lun: int, lba: int, blocks: int) -> bytes:
        data: bytes = self._call(
            ["read", f"lun={lun}", f"lba={lba}", f"blocks={blocks}"],
            session.ref.read(lun, lba, blocks),
        )
        return data

    def write(self, session: SessionHandle, lun: int, lba: int, data: bytes) -> None:
        self._call(
            ["write", f"lun={lun}", f"lba={lba}", f"bytes={len(data)}"],
            session.ref.write(lun, lba, data),
        )

    def xdwriteread(self, session: SessionHandle, lun: int, lba: int, data: bytes) -> bytes:
        result = self._call(
            ["xdwriteread", f"lun={lun}", f"lba={lba}", f"bytes={len(data)}"],
            session.ref.xdwriteread(lun, lba, data),
        )
        return bytes(result.raise_for_status().data)

    def inquiry(self, session: SessionHandle, lun: int) -> bytes:
        result = self._call(["inquiry", f"lun={lun}"], session.ref.inquiry(lun))
        return bytes(result.data)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "capabilities": dict(self.manifest.capabilities)}


def _summary(result: Any) -> str:
    if isinstance(result, bytes | bytearray):
        return f"{len(result)} bytes"
    if isinstance(result, list):
        return "\n".join(str(x) for x in result)
    return type(result).__name__
