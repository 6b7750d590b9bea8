"""The iSNS server of a run (RFC 4171), and the targets the iSNS area registers with it.

Theory of operation: a run has at most one iSNS server, started on first use by the
iSNS area and stopped with the run's peers (``stop()``, also registered as an exit
cleanup, so Ctrl-C leaves nothing behind). Two kinds:

- ``isnsd``: open-isns's server in a container built from ``isns-servers/isnsd`` like
  the peers' images, on the run's docker network; the default wherever the run has one;
- ``reference``: our server (``iscsi-conformance isns``) as a process of this host,
  listening where the run's own servers listen (the docker gateway, else loopback).

``address`` is where peers reach the server (tgt's ``iSNSServerIP``, iscsiadm in the
micro-VM); ``host_side`` is where this process reaches it. The server is judged by no
test here: it is the instrument through which targets and initiators meet.
``discover`` and ``register_dd`` speak iSNSP through the reference client and codec
(5.6.5.2, 5.6.5.3, 5.6.5.9), which both servers answer alike for what the area needs.

``register_target`` makes a target of the run register (a context manager that
deregisters on exit): the reference target as a dedicated ``iscsi-conformance target
--isns`` process, tgt through ``tgtadm`` (``iSNSServerIP``, ``iSNSServerPort``,
``iSNSAccessControl Off``, ``iSNS On``, and ``iSNS Off`` at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError, HarnessError, PeerStartError

ISNS_PORT = 3205  # RFC 4171 5.1.1 (the well-known iSNS port)
KINDS = ("isnsd", "reference")
#: ``run --isns-server`` / ``--iscsi-isns-server``: "auto" is isnsd where the run has a
#: docker network, else the reference server.
CHOICES = ("auto", *KINDS)
CONTAINER_FOLDER = "isns-servers/isnsd"
START_TIMEOUT = 30.0


def isnsd_folder() -> Path:
    """The isnsd image's folder (a checkout, or the installed wheel's data)."""
    from iscsi_conformance.peers.manifest import peer_roots

    for root in peer_roots():
        folder = root / CONTAINER_FOLDER
        if (folder / "Dockerfile").is_file():
            return folder
    raise ConfigError(f"no {CONTAINER_FOLDER}/Dockerfile found", field="isns-server")


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def resolve_kind(requested: str | None, *, docker: bool) -> str:
    """The server a run uses: ``requested``, or for "auto" isnsd when ``docker``."""
    requested = requested or "auto"
    if requested not in CHOICES:
        raise ConfigError(
            f"iSNS server must be one of {', '.join(CHOICES)}, not {requested!r}",
            field="isns-server",
        )
    if requested == "auto":
        return "isnsd" if docker else "reference"
    return requested


@dataclasses.dataclass(frozen=True)
class RegisteredTarget:
    """A target that registered with the run's iSNS server: its iSCSI name, the portal
    it serves as peers on the run's network reach it, that portal's TPGT, and the same
    portal as this process reaches it."""

    iqn: str
    portal: tuple[str, int]
    tpgt: int
    host_side: tuple[str, int]


@dataclasses.dataclass
class ReferenceTargetProcess:
    """A reference target process registered with the run's iSNS server."""

    registered: RegisteredTarget
    process: Any  # peers.process.BackgroundProcess

    def kill(self) -> None:
        """SIGKILL: the target ends without deregistering and answers no more ESI."""
        with contextlib.suppress(ProcessLookupError):
            self.process.proc.kill()
        self.process.proc.wait(5)


@dataclasses.dataclass
class DedicatedTgt:
    """A tgtd of a test's own (native, on this host) registered with the run's iSNS
    server: the run's tgtd is shared, so a test that kills its target needs its own."""

    registered: RegisteredTarget
    driver: Any  # peers.tgt.TgtTarget

    def kill(self) -> None:
        """SIGKILL: tgtd ends without deregistering (it ignores SIGTERM anyway)."""
        daemon = self.driver._daemon
        if daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.kill()
            daemon.proc.wait(5)


@dataclasses.dataclass(frozen=True)
class IsnsadmView:
    """isnsadm's ``--query`` answer for one node: its Storage Node objects
    (name, node type) and its Portal Groups (address, port, PGT) named after it."""

    nodes: tuple[tuple[str, str], ...]
    portal_groups: tuple[tuple[str, int, int | None], ...]
    log: str

    @classmethod
    def parse(cls, text: str, iqn: str, *, log: str = "") -> IsnsadmView:
        """Read isnsadm's object dump (``object[N] = <...>`` then ``TAG type : Name = v``
        lines): iSCSI name/node type (tags 32/33), Portal Group name/address/port/tag
        (48-51; RFC 4171 6.5)."""
        objects: list[dict[str, str]] = []
        for line in text.splitlines():
            if line.startswith("object[") or line.startswith("Object "):
                objects.append({})
                continue
            parts = line.split(None, 2)
            if objects and len(parts) == 3 and len(parts[0]) == 4 and "=" in parts[2]:
                value = parts[2].split("=", 1)[1].strip().strip('"')
                objects[-1][parts[0].lower()] = value
        nodes = tuple((o["0020"], o.get("0021", "")) for o in objects if "0020" in o)
        groups = []
        for o in objects:
            if o.get("0030") == iqn and "0031" in o and "0032" in o:
                tag = o.get("0033")
                port = int(o["0032"].split("/", 1)[0])
                groups.append((o["0031"], port, int(tag) if tag and tag.isdigit() else None))
        return cls(nodes, tuple(groups), log or text)


class RunIsnsServer:
    """One iSNS server for a run; ``start()`` once, ``stop()`` on every exit."""

    def __init__(
        self, kind: str, *, docker_env: Any = None, listen_host: str = "127.0.0.1"
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown iSNS server {kind!r}", field="isns-server")
        self.kind = kind
        self.docker_env = docker_env
        self.listen_host = listen_host
        self.address: tuple[str, int] = ("", 0)
        self.version = ""
        self.started = False
        self._owns_env = False
        self._container: Any = None
        self._process: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        from iscsi_conformance.peers.base import CommandLog

        self.log = CommandLog()

    @property
    def host_side(self) -> tuple[str, int]:
        return self.address  # both kinds listen on an address this host routes to

    def describe(self) -> dict[str, Any]:
        """What the report says of the server (run metadata)."""
        host, port = self.address
        return {
            "name": "isnsd" if self.kind == "isnsd" else "reference iSNS server",
            "kind": self.kind,
            "version": self.version,
            "mode": "container" if self.kind == "isnsd" else "process",
            "address": f"{host}:{port}",
        }

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        from iscsi_conformance.peers.process import register_cleanup

        register_cleanup(self, "stop")
        self.started = True
        if self.kind == "isnsd":
            self._start_isnsd()
        else:
            self._start_reference()

    def _start_isnsd(self) -> None:
        from iscsi_conformance.peers.docker_env import DockerEnv
        from iscsi_conformance.peers.images import build_peer_image
        from iscsi_conformance.peers.process import docker_exec, wait_until

        if self.docker_env is None:
            self.docker_env = DockerEnv()
            self._owns_env = True
        env = self.docker_env
        image = build_peer_image(
            "isns",  # type: ignore[arg-type]  # tags the image iscsi-conformance/isns-isnsd
            "isnsd",
            client=env.client,
            log=self.log,
            folder=isnsd_folder(),
        )
        self._container = env.run_container(
            image, name="isnsd", peer="isnsd", tmpfs={"/var/lib/isns": "size=16m"}
        )
        self.address = (env.container_ip(self._container), ISNS_PORT)

        def alive() -> bool:
            self._container.reload()
            return self._container.status in ("created", "running")

        if not wait_until(lambda: _reachable(*self.address), timeout=START_TIMEOUT, alive=alive):
            raise PeerStartError(
                "isnsd", f"isnsd did not listen on {self.address[0]}:{ISNS_PORT}",
                log_tail=self.log_tail(),
            )  # fmt: skip
        done = docker_exec(
            self._container,
            ["dpkg-query", "-W", "-f=${Version}", "open-isns-server"],
            log=self.log,
            timeout=15,
        )
        self.version = done.stdout.strip() if done.returncode == 0 else ""

    def _start_reference(self) -> None:
        from iscsi_conformance import __version__
        from iscsi_conformance.netutil import free_tcp_port
        from iscsi_conformance.peers.process import BackgroundProcess, wait_until

        self._dir = tempfile.TemporaryDirectory(prefix="icc-isns-")
        port = free_tcp_port(self.listen_host)
        self.address = (self.listen_host, port)
        argv = [sys.executable, "-m", "iscsi_conformance.cli", "isns",
                "--listen", f"{self.listen_host}:{port}",
                "--db", str(Path(self._dir.name) / "isns.json")]  # fmt: skip
        self._process = BackgroundProcess(
            argv, log=self.log, log_path=Path(self._dir.name) / "isns.log"
        )
        if not wait_until(
            lambda: _reachable(*self.address), timeout=START_TIMEOUT, alive=self._process.alive
        ):
            raise PeerStartError(
                "reference iSNS server", f"did not listen on {self.listen_host}:{port}",
                log_tail=self.log_tail(),
            )  # fmt: skip
        self.version = __version__

    def alive(self) -> str | None:
        """None while the server serves; otherwise what became of it."""
        if self._container is not None:
            try:
                self._container.reload()
            except Exception as exc:
                return f"isnsd container is gone ({exc})"
            if self._container.status not in ("created", "running"):
                code = self._container.attrs.get("State", {}).get("ExitCode")
                return f"isnsd exited with status {code}"
            return None
        if self._process is not None and not self._process.alive():
            return f"the reference iSNS server exited with status {self._process.proc.poll()}"
        return None

    def log_tail(self, lines: int = 20) -> str:
        if self._container is not None:
            with contextlib.suppress(Exception):
                text = self._container.logs(tail=lines).decode(errors="replace")
                return str(text)
            return ""
        if self._process is not None:
            return str(self._process.tail(lines))
        return ""

    def restart(self) -> None:
        """Start a dead server again (a fresh database: registrations are per test)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Stop the server; idempotent, safe after a partial start."""
        from iscsi_conformance.peers.process import unregister_cleanup

        if self._container is not None and self.docker_env is not None:
            with contextlib.suppress(Exception):
                self.docker_env.remove(self._container)
        self._container = None
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._process.stop()
            self._process = None
        if self._owns_env and self.docker_env is not None:
            with contextlib.suppress(Exception):
                self.docker_env.close()
            self.docker_env, self._owns_env = None, False
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        self.started = False
        unregister_cleanup(self)

    # ------------------------------------------------------------------ iSNSP

    def discover(self, source: str, *, timeout: float = 5.0) -> list[Any]:
        """The targets ``source`` (an initiator, registered for the query so that the
        server scopes it to its discovery domains, 5.6.5.2/5.6.5.3) finds; deregistered
        after. Returns ``isns.client.DiscoveredTarget`` items."""
        from iscsi_conformance.core.isns import NodeType
        from iscsi_conformance.isns.client import NodeSpec, Registration
        from iscsi_conformance.isns.client_io import ISNSClient

        reg = Registration(entity_id=source, nodes=(NodeSpec(source, NodeType.INITIATOR),))

        async def ask() -> list[Any]:
            client = ISNSClient(self.host_side, registration=reg, timeout=timeout)
            try:
                await client.start()
                return list(await client.discover())
            finally:
                await client.stop()

        return asyncio.run(ask())

    def _call(self, message: Any, timeout: float = 5.0) -> Any:
        """Send one request, return the response ``Message`` (5.1.5)."""
        from iscsi_conformance.core import isns as I

        with socket.create_connection(self.host_side, timeout=timeout) as sock:
            sock.sendall(I.encode(message))
            buf = b""
            pdus: list[Any] = []
            deadline = time.monotonic() + timeout
            while True:
                got = I.decode_pdu(buf)
                if isinstance(got, I.NeedMore):
                    if time.monotonic() > deadline:
                        raise HarnessError("the iSNS server did not answer in time")
                    data = sock.recv(65536)
                    if not data:
                        raise HarnessError("the iSNS server closed the connection")
                    buf += data
                    continue
                pdu, used = got
                buf = buf[used:]
                pdus.append(pdu)
                if pdu.flags & I.Flag.LAST_PDU:
                    return I.assemble(pdus)

    def register_dd(self, name: str, members: Sequence[str], *, source: str) -> int:
        """DDReg (5.6.5.9): a new discovery domain ``name`` holding ``members`` (iSCSI
        names); ``source`` must be a registered node. Returns its DD_ID."""
        from iscsi_conformance.core.isns import Attribute, FunctionId, Message, Status, Tag

        ops = [Attribute.of(Tag.DD_SYMBOLIC_NAME, name)]
        ops += [Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, m) for m in members]
        msg = Message.request(
            FunctionId.DD_REG, source=Attribute.of(Tag.ISCSI_NAME, source), operating=ops,
            transaction_id=int(time.monotonic() * 1000) & 0xFFFF,
        )  # fmt: skip
        rsp = self._call(msg)
        if rsp.status != Status.SUCCESSFUL:
            raise HarnessError(f"DDReg of {name!r} refused with status {rsp.status}")
        dd = rsp.first(Tag.DD_ID)
        if dd is None:
            raise HarnessError(f"DDRegRsp for {name!r} names no DD_ID")
        return int(dd.decoded())

    def deregister_dd(self, dd_id: int, *, source: str) -> None:
        """DDDereg (5.6.5.10) of a whole discovery domain; errors are ignored."""
        from iscsi_conformance.core.isns import Attribute, FunctionId, Message, Tag

        msg = Message.request(
            FunctionId.DD_DEREG, source=Attribute.of(Tag.ISCSI_NAME, source),
            keys=[Attribute.of(Tag.DD_ID, dd_id)],
            transaction_id=int(time.monotonic() * 1000) & 0xFFFF,
        )  # fmt: skip
        with contextlib.suppress(HarnessError, OSError):
            self._call(msg)

    def isnsadm_view(self, iqn: str, *, observer: str, timeout: float = 20.0) -> IsnsadmView:
        """What open-isns's ``isnsadm`` (this host's, a client independent of ours) sees
        of node ``iqn``: registered as the initiator ``observer`` of the default
        Discovery Domain, it asks DevAttrQry ``--query iscsi-name=IQN`` (5.6.5.2), and
        deregisters. Raises ``PeerStartError`` when isnsadm is not installed."""
        import shutil
        import subprocess

        tool = shutil.which("isnsadm") or shutil.which("isnsadm", path="/usr/sbin:/sbin")
        if tool is None:
            raise PeerStartError("isnsadm", "open-isns-utils is not installed on this host")
        host, port = self.host_side
        entity = f"{observer.rsplit(':', 1)[-1]}.isnsadm"
        with tempfile.TemporaryDirectory(prefix="icc-isnsadm-") as tmp:
            conf = Path(tmp) / "isnsadm.conf"
            conf.write_text(f"ServerAddress = {host}:{port}\nSourceName = {observer}\n"
                            f"Security = 0\nControlSocket = {tmp}/isnsctl\n")  # fmt: skip

            def run(*args: str) -> str:
                argv = [tool, "--config", str(conf), *args]
                try:
                    done = subprocess.run(
                        argv, capture_output=True, text=True, timeout=timeout,
                        stdin=subprocess.DEVNULL,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    return f"$ isnsadm {' '.join(args)}\n(no answer within {timeout:.0f} s)\n"
                return (f"$ isnsadm {' '.join(args)}\n(exit {done.returncode})\n"
                        f"{done.stdout}{done.stderr}")  # fmt: skip

            before = run("--register", f"entity={entity}", f"initiator={observer}")
            after = ""
            try:
                answer = run("--query", f"iscsi-name={iqn}")
            finally:
                after = run("--deregister", f"iscsi-name={observer}")
        return IsnsadmView.parse(answer, iqn, log=before + answer + after)

    # ------------------------------------------------------------------ targets

    @contextlib.contextmanager
    def register_target(
        self, entry: Any, *, iqn: str, listen_host: str, timeout: float = 20.0
    ) -> Iterator[RegisteredTarget]:
        """Make target ``entry`` (a ``PeerPool`` target entry) register with this
        server; deregister on exit. The reference target: a dedicated process serving
        ``iqn`` on ``listen_host``; tgt: the running tgtd (every target it serves)."""
        if entry.name == "reference":
            with self._reference_target(iqn, listen_host, timeout) as reg:
                yield reg
        elif entry.name == "tgt":
            with self._tgt(entry, timeout) as reg:
                yield reg
        else:
            raise HarnessError(f"no way to make target {entry.name} register with iSNS")

    @contextlib.contextmanager
    def _reference_target(
        self, iqn: str, listen_host: str, timeout: float
    ) -> Iterator[RegisteredTarget]:
        with self.reference_target(iqn, listen_host, timeout=timeout) as running:
            yield running.registered

    @contextlib.contextmanager
    def reference_target(
        self,
        iqn: str,
        listen_host: str,
        *,
        port: int | None = None,
        esi_interval: int | None = None,
        timeout: float = 20.0,
    ) -> Iterator[ReferenceTargetProcess]:
        """A dedicated ``iscsi-conformance target --isns`` process serving ``iqn`` on
        ``listen_host:port`` (a free port by default), its entity named after ``iqn``;
        yielded once it says it registered. Stopped with SIGTERM on exit (it
        deregisters, 5.6.5.4) unless the test killed it."""
        from iscsi_conformance.netutil import free_tcp_port
        from iscsi_conformance.peers.process import BackgroundProcess, wait_until

        port = port or free_tcp_port(listen_host)
        host, isns_port = self.address
        with tempfile.TemporaryDirectory(prefix="icc-isns-target-") as tmp:
            log_path = Path(tmp) / "target.log"
            argv = [sys.executable, "-m", "iscsi_conformance.cli", "target",
                    "--listen", f"{listen_host}:{port}", "--target", iqn, "--lun", "1M",
                    "--isns", f"{host}:{isns_port}"]  # fmt: skip
            if esi_interval is not None:
                argv += ["--isns-esi-interval", str(esi_interval)]
            proc = BackgroundProcess(argv, log=self.log, log_path=log_path)
            try:
                if not wait_until(
                    lambda: "registered with iSNS" in log_path.read_text(errors="replace"),
                    timeout=timeout, interval=0.2, alive=proc.alive,
                ):  # fmt: skip
                    raise HarnessError(
                        f"the reference target did not register with the {self.kind} iSNS "
                        f"server: {proc.tail(10)}"
                    )
                reg = RegisteredTarget(iqn, (listen_host, port), 1, (listen_host, port))
                yield ReferenceTargetProcess(reg, proc)
            finally:
                proc.stop(timeout=10.0)  # SIGTERM: the target deregisters (5.6.5.4)

    @contextlib.contextmanager
    def tgt_target(
        self, iqn: str, listen_host: str, *, timeout: float = 20.0
    ) -> Iterator[DedicatedTgt]:
        """A tgtd of its own (native) serving ``iqn`` on ``listen_host`` at a free port,
        its iSNS client switched on towards this server (``iSNSServerIP``,
        ``iSNSServerPort``, ``iSNSAccessControl Off``, ``iSNS On``); yielded once the
        server lists ``iqn`` at its portal. Stopped on exit unless the test killed it."""
        from iscsi_conformance.peers.base import LunSpec, TargetSpec
        from iscsi_conformance.peers.process import wait_until
        from iscsi_conformance.peers.tgt import TgtTarget

        driver = TgtTarget(mode="native", host=listen_host)
        try:
            driver.start()
            ep = driver.configure(TargetSpec(iqn, luns=(LunSpec(1 << 20),)))
            host, port = self.address
            for name, value in (("iSNSServerIP", host), ("iSNSServerPort", str(port)),
                                ("iSNSAccessControl", "Off"), ("iSNS", "On")):  # fmt: skip
                driver.tgtadm("--op", "update", "--mode", "sys", "--name", name, "--value", value)
            portal = (ep.host, ep.port)

            def listed() -> bool:
                return any(
                    t.name == iqn and any((h, p) == portal for h, p, _tag in t.portals)
                    for t in self.discover(_OBSERVER)
                )

            if not wait_until(listed, timeout=timeout, interval=0.3):
                raise HarnessError(
                    f"tgt did not register {iqn} at {portal[0]}:{portal[1]} with the "
                    f"{self.kind} iSNS server"
                )
            yield DedicatedTgt(RegisteredTarget(iqn, portal, ep.portal_group_tag, portal), driver)
        finally:
            driver.stop()

    @contextlib.contextmanager
    def _tgt(self, entry: Any, timeout: float) -> Iterator[RegisteredTarget]:
        from iscsi_conformance.peers.process import wait_until

        driver = entry.driver
        if driver is None:
            raise HarnessError("tgt's iSNS client is switched on by the process that runs tgtd")
        ep = entry.endpoint("default")
        host, port = self.address
        for name, value in (("iSNSServerIP", host), ("iSNSServerPort", str(port)),
                            ("iSNSAccessControl", "Off"), ("iSNS", "On")):  # fmt: skip
            driver.tgtadm("--op", "update", "--mode", "sys", "--name", name, "--value", value)
        try:
            found = wait_until(
                lambda: any(t.name == ep.iqn for t in self.discover(_OBSERVER)),
                timeout=timeout, interval=0.5,
            )  # fmt: skip
            if not found:
                raise HarnessError(f"tgt did not register {ep.iqn} with the {self.kind} server")
            yield RegisteredTarget(
                ep.iqn, (ep.host, ep.port), ep.portal_group_tag, ep.host_side or (ep.host, ep.port)
            )
        finally:
            with contextlib.suppress(Exception):
                driver.tgtadm(
                    "--op", "update", "--mode", "sys", "--name", "iSNS", "--value", "Off",
                    check=False,
                )  # fmt: skip


#: The name the harness queries under when it only checks what is registered.
_OBSERVER = "iqn.2024-01.org.iscsi-conformance:isns-observer"

__all__ = [
    "CHOICES",
    "KINDS",
    "DedicatedTgt",
    "IsnsadmView",
    "ReferenceTargetProcess",
    "RegisteredTarget",
    "RunIsnsServer",
    "resolve_kind",
]
