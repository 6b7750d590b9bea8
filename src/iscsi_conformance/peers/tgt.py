"""tgt (tgtd + tgtadm) as a target peer, in a container or directly on this host.

Theory of operation: ``tgtd -f`` runs in the foreground, started from
``targets/tgt/tgtd.conf.template``; everything after that is ``tgtadm`` over tgtd's
management socket, each call recorded (CHAP secrets masked) in ``self.log``.

- ``mode="native"``: tgtd on this host with its own management channel
  (``-C <control port>``, i.e. ``/var/run/tgtd/socket.<n>``) and its own portal on a
  free loopback port, so several tgtd (ours, another worker's, another engineer's)
  never collide. Backing files live in a private temporary folder.
- ``mode="container"``: the image built from ``targets/tgt/Dockerfile``, on the run's
  docker network; backing files on a tmpfs inside the container. The endpoint is the
  container's address on that network; ``host_side`` is the portal published on
  this host's loopback.

tgt facts this driver relies on (tgt 1.0.85): LUN 0 of each target is a controller,
so data LUNs are 1..n; CHAP accounts are global to tgtd and bound to targets
(``--outgoing`` for the mutual direction); the ACL is by initiator address or name.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError, PeerStartError
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.peers.base import (
    CommandLog,
    LunSpec,
    Manifest,
    TargetDriver,
    TargetEndpoint,
    TargetSpec,
)
from iscsi_conformance.peers.process import (
    BackgroundProcess,
    CommandResult,
    docker_exec,
    register_cleanup,
    run,
    unregister_cleanup,
    wait_until,
)
from iscsi_conformance.peers.registry import register_target

CONTAINER_PORTAL_PORT = 3260
CONTAINER_BACKING_DIR = "/var/lib/iscsi-conformance"
TGTD_RUN_DIR = Path("/var/run/tgtd")
_DEFAULT_TEMPLATE = "tgtd -f -C {control_port} --iscsi portal={portal}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_control_port() -> int:
    """A tgtd management channel number whose socket and lock file are not in use.

    tgtd keeps it in a ``short int`` (tgt 1.0.85), so it stays below 32768.
    """
    for _ in range(200):
        n = random.randint(10000, 32767)
        if (
            not (TGTD_RUN_DIR / f"socket.{n}").exists()
            and not (TGTD_RUN_DIR / f"socket.{n}.lock").exists()
        ):
            return n
    raise PeerStartError("tgt", f"no free tgtd control port in {TGTD_RUN_DIR}")


def _status(code: Any) -> str:
    """An exit status as people read it: 139 is "139 (SIGSEGV)", -11 likewise."""
    import signal

    try:
        n = int(code)
    except (TypeError, ValueError):
        return str(code)
    sig = -n if n < 0 else n - 128 if n > 128 else 0
    if sig:
        try:
            return f"{n} ({signal.Signals(sig).name})"
        except ValueError:
            pass
    return str(n)


def upstream_version(package_version: str) -> str:
    """``"1:1.0.85-1+deb12u1"`` -> ``"1.0.85"``."""
    v = package_version.strip()
    if ":" in v:
        v = v.split(":", 1)[1]
    return v.rsplit("-", 1)[0] if "-" in v else v


@register_target("tgt")
class TgtTarget(TargetDriver):
    """``TargetDriver`` for tgt. ``mode`` is ``"native"`` or ``"container"``."""

    name = "tgt"
    modes = ("native", "container")
    docker_modes = ("container",)

    @classmethod
    def auto_mode(cls, docker: bool) -> str | None:
        """What "auto" means for tgt: a container where Docker is usable, otherwise
        the driver's default (tgtd on this host)."""
        return "container" if docker else None

    def __init__(
        self,
        manifest: Manifest | None = None,
        *,
        mode: str | None = None,
        docker_env: Any = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        backing_dir: str | None = None,
        port: int | None = None,
    ) -> None:
        """``port``: the portal's port on ``host`` (native) or the published port on
        127.0.0.1 (container); None picks a free one."""
        if manifest is None:
            from iscsi_conformance.peers.manifest import load_peer_manifest

            manifest = load_peer_manifest("target", "tgt")
        super().__init__(manifest)
        if mode is None:
            mode = "native" if shutil.which("tgtd") else "container"
        if mode not in self.modes:
            raise ConfigError(f"tgt runs in modes {self.modes}, not {mode!r}", field="mode")
        self.mode = mode  # type: ignore[assignment]
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._backing_parent = backing_dir
        self._docker_env = docker_env
        self._owns_env = False
        self._container: Any = None
        self._daemon: BackgroundProcess | None = None
        self._workdir: Path | None = None
        self.control_port: int | None = None
        self.portal: tuple[str, int] | None = None
        self.host_side: tuple[str, int] | None = None
        self._targets: dict[str, dict[str, Any]] = {}  # iqn -> {tid, files, accounts}
        self._accounts: dict[str, str] = {}  # user -> secret (tgt accounts are global)
        self._next_tid = 1
        self._package_version: str | None = None
        self.startup_seconds: float | None = None
        self.image: str | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def where(self) -> str:
        return f"container:{self._container.name}" if self._container is not None else "host"

    def _exec(
        self,
        argv: list[str],
        *,
        secrets: tuple[str, ...] = (),
        check: bool = False,
        timeout: float = 30,
        log: CommandLog | None = None,
    ) -> CommandResult:
        log = log if log is not None else self.log
        if self.mode == "container":
            if self._container is None:
                raise PeerStartError("tgt", "container is not running")
            return docker_exec(
                self._container, argv, log=log, secrets=secrets, check=check, timeout=timeout
            )
        return run(argv, log=log, secrets=secrets, check=check, timeout=timeout)

    def tgtadm(
        self,
        *args: str,
        secrets: tuple[str, ...] = (),
        check: bool = True,
        log: CommandLog | None = None,
    ) -> CommandResult:
        """Run ``tgtadm`` against our tgtd; recorded in ``self.log``."""
        argv = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args]
        return self._exec(argv, secrets=secrets, check=check, log=log)

    def _daemon_argv(self, control_port: int, portal: str) -> list[str]:
        template = _DEFAULT_TEMPLATE
        folder = getattr(self.manifest, "folder", None)
        if folder is not None and (folder / "tgtd.conf.template").is_file():
            lines = [
                ln.strip()
                for ln in (folder / "tgtd.conf.template").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")
            ]
            if lines:
                template = lines[0]
        return shlex.split(template.format(control_port=control_port, portal=portal))

    def log_tail(self, lines: int = 30) -> str:
        """tgtd's last output lines (secrets masked)."""
        if self._daemon is not None:
            return self._daemon.tail(lines)
        if self._container is not None:
            with contextlib.suppress(Exception):
                text = self._container.logs(tail=lines).decode(errors="replace")
                return self.log.mask(text)
        return ""

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        started = time.monotonic()
        try:
            if self.mode == "native":
                self._start_native()
            else:
                self._start_container()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _ready(self, host: str, port: int) -> bool:
        quiet = CommandLog(secrets=self.log.secrets)  # polls are not worth a record each
        return self.tgtadm(
            "--mode", "sys", "--op", "show", check=False, log=quiet
        ).ok and port_open(host, port)

    def _start_native(self) -> None:
        if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
            raise PeerStartError(
                "tgt", "tgtd/tgtadm not installed (apt-get install tgt), or use mode='container'"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="icc-tgt-", dir=self._backing_parent))
        last_tail = ""
        for _attempt in range(3):  # a port taken between probe and bind: try another
            self.control_port = _free_control_port()
            port = self.port or free_tcp_port(self.host)
            host_fmt = f"[{self.host}]" if ":" in self.host else self.host
            argv = self._daemon_argv(self.control_port, f"{host_fmt}:{port}")
            self._daemon = BackgroundProcess(
                argv, log=self.log, log_path=self._workdir / "tgtd.log"
            )
            if wait_until(
                lambda p=port: self._ready(self.host, p),
                timeout=self.start_timeout,
                alive=self._daemon.alive,
            ):
                self.portal = (self.host, port)
                self.tgtadm("--mode", "sys", "--op", "show")
                return
            last_tail = self._daemon.tail()
            self._daemon.stop()
            self._remove_control_socket()
            if self.port:
                break  # a port asked for: another one would not do
        raise PeerStartError("tgt", "tgtd did not come up (native)", log_tail=last_tail)

    def _start_container(self) -> None:
        from iscsi_conformance.peers.docker_env import DockerEnv
        from iscsi_conformance.peers.images import build_peer_image

        if self._docker_env is None:
            self._docker_env = DockerEnv()
            self._owns_env = True
        env = self._docker_env
        self.image = build_peer_image("target", "tgt", client=env.client, log=self.log)
        register_cleanup(self, "stop")
        self.control_port = 0
        argv = self._daemon_argv(0, f"0.0.0.0:{CONTAINER_PORTAL_PORT}")
        t0 = time.monotonic()
        self._container = env.run_container(
            self.image,
            name="tgt",
            peer="tgt",
            command=argv,
            ports={f"{CONTAINER_PORTAL_PORT}/tcp": ("127.0.0.1", self.port)},
            tmpfs={CONTAINER_BACKING_DIR: "size=2g"},
        )
        self.log.add(
            [
                "docker",
                "run",
                "--network",
                env.network_name,
                "-p",
                f"127.0.0.1::{CONTAINER_PORTAL_PORT}",
                self.image,
                *argv,
            ],
            0,
            self._container.name + "\n",
            "",
            t0,
        )
        ip = env.container_ip(self._container)
        self.host_side = env.published_port(self._container, f"{CONTAINER_PORTAL_PORT}/tcp")

        def ready() -> bool:
            self._container.reload()
            if self._container.status not in ("created", "running"):
                return False
            probe = self.host_side or (ip, CONTAINER_PORTAL_PORT)
            return self._ready(*probe)

        def alive() -> bool:
            return self._container.status in ("created", "running")

        if not wait_until(ready, timeout=self.start_timeout, interval=0.2, alive=alive):
            raise PeerStartError(
                "tgt",
                f"tgtd did not come up in container {self._container.name}",
                log_tail=self.log_tail(),
            )
        self.portal = (ip, CONTAINER_PORTAL_PORT)
        self.tgtadm("--mode", "sys", "--op", "show")

    def health(self) -> str | None:
        if self._daemon is not None:
            code = self._daemon.proc.poll()
            return None if code is None else f"tgtd exited with status {_status(code)}"
        if self._container is not None:
            try:
                self._container.reload()
            except Exception as exc:  # the container was removed under us
                return f"tgt container gone: {exc}"
            if self._container.status not in ("created", "running"):
                state = self._container.attrs.get("State", {})
                return (
                    f"tgtd exited with status {_status(state.get('ExitCode'))} "
                    f"(container {self._container.name} {self._container.status})"
                )
        return None

    def health_handle(self) -> dict[str, Any]:
        if self._daemon is not None:
            return {"pid": self._daemon.pid}
        if self._container is not None:
            return {"container": self._container.id}
        return {}

    def _remove_control_socket(self) -> None:
        if self.mode == "native" and self.control_port:
            for suffix in ("", ".lock"):
                with contextlib.suppress(OSError):
                    (TGTD_RUN_DIR / f"socket.{self.control_port}{suffix}").unlink()

    def stop(self) -> None:
        unregister_cleanup(self)
        if self._daemon is not None:
            daemon = self._daemon
            if daemon.alive():
                # tgtd ignores SIGTERM and SIGINT (its handler is empty, tgt 1.0.85);
                # it leaves when told to over its management channel.
                for iqn in list(self._targets):
                    with contextlib.suppress(Exception):
                        self.deconfigure(iqn)
                with contextlib.suppress(Exception):
                    self.tgtadm("--mode", "system", "--op", "delete", check=False)
                wait_until(lambda: not daemon.alive(), timeout=5)
            daemon.stop(timeout=2)
            self._daemon = None
            self._remove_control_socket()
        if self._container is not None:
            # Keep its output in the log before the container goes.
            with contextlib.suppress(Exception):
                out = self._container.logs(tail=200).decode(errors="replace")
                self.log.add(["docker", "logs", self._container.name], 0, out, "", time.monotonic())
            self._docker_env.remove(self._container)
            self._container = None
        if self._owns_env and self._docker_env is not None:
            self._docker_env.close()
            self._docker_env = None
            self._owns_env = False
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._targets.clear()
        self._accounts.clear()

    def version(self) -> str:
        if self._package_version is None:
            res = self._exec(["dpkg-query", "-W", "-f=${Version}", "tgt"], check=False)
            self._package_version = res.stdout.strip() if res.ok else "unknown"
        return upstream_version(self._package_version)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            package_version=self._package_version,
            image=self.image,
            portal=self.portal,
            host_side=self.host_side,
        )
        return d

    # ------------------------------------------------------------------ targets

    def _backing_path(self, tid: int, lun: int) -> str:
        if self.mode == "container":
            return f"{CONTAINER_BACKING_DIR}/t{tid}-lun{lun}.img"
        assert self._workdir is not None
        return str(self._workdir / f"t{tid}-lun{lun}.img")

    def _make_backing(self, path: str, spec: LunSpec) -> None:
        if spec.size_bytes <= 0 or spec.size_bytes % spec.block_size:
            raise ConfigError(
                f"LUN size {spec.size_bytes} is not a positive multiple of {spec.block_size}",
                field="luns",
            )
        if self.mode == "container":
            self._exec(["truncate", "-s", str(spec.size_bytes), path], check=True)
        else:
            with open(path, "wb") as f:
                f.truncate(spec.size_bytes)
            self.log.add(
                ["truncate", "-s", str(spec.size_bytes), path], 0, "", "", time.monotonic()
            )

    def _ensure_account(self, user: str, secret: str) -> None:
        known = self._accounts.get(user)
        if known == secret:
            return
        if known is not None:
            raise ConfigError(
                f"tgt keeps CHAP accounts global to tgtd: user {user!r} already has another secret",
                field="chap.user",
            )
        self.tgtadm(
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            user,
            "--password",
            secret,
            secrets=(secret,),
        )
        self._accounts[user] = secret

    def configure(self, spec: TargetSpec) -> TargetEndpoint:
        if self.portal is None:
            raise PeerStartError("tgt", "configure() before start()")
        if spec.iqn in self._targets:
            self.deconfigure(spec.iqn)
        if not spec.luns:
            raise ConfigError("a target needs at least one LUN", field="luns")
        tid = self._next_tid
        self._next_tid += 1
        info: dict[str, Any] = {"tid": tid, "files": [], "accounts": []}
        self._targets[spec.iqn] = info
        self.tgtadm("--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", spec.iqn)
        luns = []
        for n, lun in enumerate(spec.luns, start=1):
            path = self._backing_path(tid, n)
            self._make_backing(path, lun)
            info["files"].append(path)
            args = [
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                str(tid),
                "--lun",
                str(n),
                "--backing-store",
                path,
            ]
            if lun.block_size != 512:
                args += ["--blocksize", str(lun.block_size)]
            self.tgtadm(*args)
            luns.append(n)
        # ACL: by initiator name when given, else every initiator address.
        if spec.allowed_initiators:
            for name in spec.allowed_initiators:
                self.tgtadm(
                    "--mode", "target", "--op", "bind", "--tid", str(tid), "--initiator-name", name
                )
        else:
            self.tgtadm(
                "--mode", "target", "--op", "bind", "--tid", str(tid), "--initiator-address", "ALL"
            )
        if spec.chap is not None:
            self._ensure_account(spec.chap.user, spec.chap.secret)
            self.tgtadm(
                "--mode", "account", "--op", "bind", "--tid", str(tid), "--user", spec.chap.user
            )
            info["accounts"].append((spec.chap.user, False))
        if spec.mutual_chap is not None:
            if spec.chap is None:
                raise ConfigError(
                    "mutual CHAP needs one-way CHAP too (RFC 7143 12.1.3)", field="mutual_chap"
                )
            self._ensure_account(spec.mutual_chap.user, spec.mutual_chap.secret)
            self.tgtadm(
                "--mode",
                "account",
                "--op",
                "bind",
                "--tid",
                str(tid),
                "--user",
                spec.mutual_chap.user,
                "--outgoing",
            )
            info["accounts"].append((spec.mutual_chap.user, True))
        for key, offered in (
            ("HeaderDigest", spec.header_digest),
            ("DataDigest", spec.data_digest),
        ):
            if offered and "None" not in offered:
                # tgt parses a digest list into a bit set that always holds None
                # (digest_str_to_val, tgt 1.0.85): it cannot refuse None.
                self.log.add(
                    [f"# {key}={','.join(offered)}"],
                    0,
                    f"note: tgt cannot require {key}; it will also accept None\n",
                    "",
                    time.monotonic(),
                )
        params: list[tuple[str, str]] = []
        if spec.header_digest:
            params.append(("HeaderDigest", ",".join(spec.header_digest)))
        if spec.data_digest:
            params.append(("DataDigest", ",".join(spec.data_digest)))
        for key, value in spec.parameters:
            if key == "CHAP_A":
                # tgt has no per-target CHAP_A setting (tgtadm refuses the name): it
                # offers what it has (MD5, and SHA-1 under CHAP_A=7); the initiator's
                # offer decides, which is what the CHAP profiles' tests send anyway
                self.log.add(
                    [f"# CHAP_A={value}"],
                    0,
                    "note: tgt cannot restrict CHAP_A per target; not set\n",
                    "",
                    time.monotonic(),
                )
                continue
            params.append((key, value))
        if spec.redirect is not None:
            # tgt's per-target redirection (usr/iscsi/target.c: RedirectAddress,
            # RedirectPort, RedirectReason Temporary|Permanent): tgtd answers 0101/0102
            # with TargetAddress=address:port, to every initiator whose own address
            # differs from the redirect address.
            address, _, port = spec.redirect.rpartition(":")
            if not address or not port.isdigit():
                raise ConfigError(
                    f"redirect {spec.redirect!r} is not host:port (RFC 7143 13.8)",
                    field="redirect",
                )
            params += [
                ("RedirectAddress", address),
                ("RedirectPort", port),
                ("RedirectReason", "Permanent" if spec.redirect_permanent else "Temporary"),
            ]
        for key, value in params:
            self.tgtadm(
                "--mode",
                "target",
                "--op",
                "update",
                "--tid",
                str(tid),
                "--name",
                key,
                "--value",
                value,
            )
        self.tgtadm("--mode", "target", "--op", "show", "--tid", str(tid))
        host, port = self.portal
        return TargetEndpoint(
            host=host,
            port=port,
            iqn=spec.iqn,
            luns=tuple(luns),
            portal_group_tag=1,
            host_side=self.host_side,
        )

    def deconfigure(self, iqn: str) -> None:
        info = self._targets.pop(iqn, None)
        if info is None:
            return
        tid = str(info["tid"])
        self.tgtadm("--mode", "target", "--op", "delete", "--force", "--tid", tid, check=False)
        still_used = {u for t in self._targets.values() for u, _ in t["accounts"]}
        for user, _outgoing in info["accounts"]:
            if user not in still_used and user in self._accounts:
                self.tgtadm("--mode", "account", "--op", "delete", "--user", user, check=False)
                del self._accounts[user]
        for path in info["files"]:
            if self.mode == "container":
                self._exec(["rm", "-f", path])
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def show(self) -> str:
        """``tgtadm --mode target --op show``: tgt's own view of its targets."""
        return self.tgtadm("--mode", "target", "--op", "show").stdout
