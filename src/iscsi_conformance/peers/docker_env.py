"""The Docker engine, the suite's own network, and the containers the suite starts.

Theory of operation: everything goes through the Docker Engine API (the ``docker``
Python SDK); no ``docker`` CLI. ``ensure_engine()`` returns a client, starting
``dockerd`` in the background first when no engine answers and we are root.

A run (``DockerEnv``) has an ID; its network and every container it starts carry the
label ``iscsi-conformance.run=<id>`` and an owner label (``<pid>:<process start
time>``) so that ``cleanup_stale()`` can tell what a killed run left behind (its
owner process is gone) from what a concurrent live run is using. Cleanup happens on
every exit path: the context manager, ``atexit``, and SIGTERM/SIGHUP handlers
(``process.register_cleanup``; Ctrl-C arrives as ``KeyboardInterrupt`` and unwinds
through the context manager, then atexit).
A new ``DockerEnv`` calls ``cleanup_stale()`` first, so a run right after a killed
one starts clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import PeerStartError
from iscsi_conformance.peers.process import register_cleanup, unregister_cleanup

LABEL_RUN = "iscsi-conformance.run"
LABEL_OWNER = "iscsi-conformance.owner"
LABEL_PEER = "iscsi-conformance.peer"
NETWORK_PREFIX = "iscsi-conformance-"
DOCKERD_LOG = Path(
    os.environ.get("ISCSI_CONFORMANCE_DOCKERD_LOG", "/var/log/iscsi-conformance-dockerd.log")
)
_LOCK_PATH = Path("/run/iscsi-conformance-dockerd.lock")
API_TIMEOUT = 300  # seconds, for every Engine API call after the first ping

_client_lock = threading.Lock()
_client: Any = None


class DockerUnavailable(PeerStartError):
    """No Docker engine answers and none could be started."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__("docker", message, log_tail=log_tail)


def _docker() -> Any:
    try:
        import docker  # lazy: unit tests of other layers need no engine
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise DockerUnavailable("the 'docker' Python package is not installed") from exc
    return docker


def _try_client(timeout: float = 5.0) -> Any | None:
    """A client if an engine answers ``ping`` within ``timeout``; its own API calls
    get the long ``API_TIMEOUT`` (a busy engine on 2 shared cores can be slow)."""
    docker = _docker()
    try:
        probe = docker.from_env(timeout=int(max(timeout, 1)))
        try:
            probe.ping()
        finally:
            probe.close()
        return docker.from_env(timeout=API_TIMEOUT)
    except Exception:
        return None


def engine_available() -> bool:
    """True when an engine answers now (never starts one)."""
    return _try_client(timeout=3) is not None


def docker_usable() -> bool:
    """True when an engine answers, or ``ensure_engine()`` could start one (root,
    no ``DOCKER_HOST``, ``dockerd`` installed). Starts nothing: "auto" peer modes ask
    this to choose containers, and the peers' start-up then brings the engine up."""
    try:
        _docker()
    except DockerUnavailable:
        return False
    if engine_available():
        return True
    return (
        not os.environ.get("DOCKER_HOST")
        and os.geteuid() == 0
        and shutil.which("dockerd") is not None
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_engine(*, start: bool = True, timeout: float = 60.0) -> Any:
    """A ``docker.DockerClient`` that answers ``ping``.

    When none answers, ``start`` is true, ``DOCKER_HOST`` is unset and we are root,
    start ``dockerd`` detached (own session, output in ``DOCKERD_LOG``) and wait up to
    ``timeout`` seconds for it. Concurrent callers serialise on a lock file, so only
    one of them starts the daemon.
    """
    global _client
    with _client_lock:
        if _client is not None:
            try:
                _client.ping()
                return _client
            except Exception:
                _client = None
        client = _try_client()
        if client is not None:
            _client = client
            return client
        if not start:
            raise DockerUnavailable("no Docker engine answers (not starting one: start=False)")
        if os.environ.get("DOCKER_HOST"):
            raise DockerUnavailable(
                f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}"
            )
        if os.geteuid() != 0:
            raise DockerUnavailable(
                "no Docker engine answers and we are not root, so cannot start dockerd; "
                "run ci/setup_host.sh as root or start the docker service"
            )
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerUnavailable(
                "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
            )
        _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(_LOCK_PATH, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            client = _try_client()
            if client is None:
                client = _start_dockerd(dockerd, timeout)
        _client = client
        return client


def _start_dockerd(dockerd: str, timeout: float) -> Any:
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as out:
        proc = subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives us, like a service
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = _try_client(timeout=2)
        if client is not None:
            return client
        if proc.poll() is not None:
            raise DockerUnavailable(
                f"dockerd exited with status {proc.returncode}", log_tail=_tail(DOCKERD_LOG)
            )
        time.sleep(0.5)
    raise DockerUnavailable(
        f"dockerd did not answer within {timeout:g} s", log_tail=_tail(DOCKERD_LOG)
    )


# --------------------------------------------------------------------------- ownership


def _proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (guards against PID reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after ')' are plain.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_label(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_proc_start_time(pid) or '0'}@{socket.gethostname()}"


def owner_alive(label: str) -> bool:
    """Whether the process named by an owner label still runs (on this host)."""
    try:
        pidpart, rest = label.split(":", 1)
        start, host = rest.split("@", 1)
        pid = int(pidpart)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # another machine's run on a shared engine: not ours to judge
    now = _proc_start_time(pid)
    return now is not None and now == start


def cleanup_stale(client: Any = None, *, exclude_run: str | None = None) -> list[str]:
    """Remove containers and networks left by runs whose owner process is gone.

    Returns the names of what was removed. Objects of live runs (another pytest
    worker, another engineer's run) are left alone.
    """
    client = client or ensure_engine()
    removed: list[str] = []
    for c in client.containers.list(all=True, filters={"label": LABEL_RUN}):
        labels = c.labels or {}
        if labels.get(LABEL_RUN) == exclude_run or owner_alive(labels.get(LABEL_OWNER, "")):
            continue
        with contextlib.suppress(Exception):
            c.remove(force=True, v=True)
            removed.append(f"container:{c.name}")
    for n in client.networks.list(filters={"label": LABEL_RUN}):
        labels = n.attrs.get("Labels") or {}
        if labels.get(LABEL_RUN) == exclude_run or owner_alive(labels.get(LABEL_OWNER, "")):
            continue
        with contextlib.suppress(Exception):
            n.remove()
            removed.append(f"network:{n.name}")
    return removed


# --------------------------------------------------------------------------- a run


class DockerEnv:
    """One run's network and containers; a context manager.

    ``network`` is created on first use (a bridge network the suite owns); every
    container started with ``run_container`` joins it unless told otherwise.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        client: Any = None,
        clean_stale: bool = True,
        network_name: str | None = None,
    ) -> None:
        """``network_name``: join that existing network of another process's run (an
        xdist worker joins its controller's) instead of creating one; it is then left
        for its owner to remove."""
        self.client = client or ensure_engine()
        self.run_id = run_id or f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        self.labels = {LABEL_RUN: self.run_id, LABEL_OWNER: owner_label()}
        self.network_name = network_name or NETWORK_PREFIX + self.run_id
        self._owns_network = network_name is None
        self._network: Any = None
        self._containers: dict[str, Any] = {}
        self._closed = False
        self._lock = threading.Lock()
        if clean_stale:
            self.stale_removed = cleanup_stale(self.client, exclude_run=self.run_id)
        else:
            self.stale_removed = []
        register_cleanup(self, "close")

    # -- network
    @property
    def network(self) -> Any:
        with self._lock:
            if self._network is None and not self._owns_network:
                self._network = self.client.networks.get(self.network_name)
            if self._network is None:
                self._network = self.client.networks.create(
                    self.network_name,
                    driver="bridge",
                    labels=dict(self.labels),
                    check_duplicate=True,
                )
            return self._network

    @property
    def gateway(self) -> str:
        """This host's own address on the run's network (creating it if need be): where
        containers on it reach a server of this process, such as the reference target
        or the initiator tests' recording proxy."""
        net = self.network
        net.reload()
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            gw = cfg.get("Gateway")
            if gw and ":" not in gw:
                return str(gw)
        raise PeerStartError("docker", f"network {self.network_name} has no IPv4 gateway")

    # -- containers
    def run_container(
        self,
        image: str,
        *,
        name: str,
        peer: str,
        command: list[str] | None = None,
        ports: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
        tmpfs: Mapping[str, str] | None = None,
        network_mode: str | None = None,
        privileged: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Start a detached container labelled for this run; on the run's network by
        default (``network_mode="host"`` for the host's). ``name`` is made unique."""
        full_name = f"icc-{peer}-{name}-{self.run_id}"
        labels = {**self.labels, LABEL_PEER: peer}
        net_kwargs: dict[str, Any] = {}
        if network_mode:
            net_kwargs["network_mode"] = network_mode
        else:
            net_kwargs["network"] = self.network.name
        # a peer's own log is capped: tgt 1.0.85, once stuck in conn_close, logs the same
        # line without end (22 GB in 18 minutes of a CI run); what a driver reads of it
        # (the last lines, a crash's trace) stays
        kwargs.setdefault(
            "log_config", {"type": "json-file", "config": {"max-size": "32m", "max-file": "2"}}
        )
        container = self.client.containers.run(
            image,
            command,
            name=full_name,
            detach=True,
            labels=labels,
            ports=dict(ports or {}) or None,
            environment=dict(environment or {}) or None,
            tmpfs=dict(tmpfs or {}) or None,
            privileged=privileged,
            init=True,  # reap zombies, forward SIGTERM
            **net_kwargs,
            **kwargs,
        )
        self._containers[container.id] = container
        return container

    def remove(self, container: Any) -> None:
        self._containers.pop(container.id, None)
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)

    def container_ip(self, container: Any) -> str:
        container.reload()
        nets = container.attrs["NetworkSettings"]["Networks"]
        net = nets.get(self.network_name) or next(iter(nets.values()), {})
        return str(net.get("IPAddress") or "")

    def published_port(self, container: Any, port: str) -> tuple[str, int] | None:
        """Host side (address, port) of a published container port like ``"3260/tcp"``."""
        container.reload()
        bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(port) or []
        for b in bindings:
            host = b.get("HostIp") or "127.0.0.1"
            if ":" in host and host != "::":
                continue
            return ("127.0.0.1" if host in ("0.0.0.0", "") else host, int(b["HostPort"]))
        return None

    # -- lifetime
    def close(self) -> None:
        """Remove every container and the network of this run; idempotent."""
        if self._closed:
            return
        self._closed = True
        for c in list(self._containers.values()):
            self.remove(c)
        # Containers this run started through another handle, too.
        with contextlib.suppress(Exception):
            for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}
            ):
                with contextlib.suppress(Exception):
                    c.remove(force=True, v=True)
        if self._network is not None and self._owns_network:
            with contextlib.suppress(Exception):
                self._network.remove()
        unregister_cleanup(self)

    def __enter__(self) -> DockerEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
