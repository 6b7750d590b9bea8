"""LIO, the Linux kernel's iSCSI target, as a real peer.

Theory of operation
-------------------
LIO lives in the kernel (``target_core_mod``, ``iscsi_target_mod``) and is configured
through configfs. Where it runs depends on the host (``select_mode``):

``native``     the host kernel has LIO: a privileged container from
               ``targets/lio/Dockerfile`` configures the host's configfs directly.
``microvm``    (this project's hosts) QEMU TCG on the host boots Debian's kernel with the
               shared initramfs (``microvm.py``); the guest's port 3260 is forwarded to a
               free port on 127.0.0.1.
``container``  the same micro-VM, with QEMU inside a container built from
               ``targets/lio/Dockerfile``, reached over the run's docker network.

In every mode the configuration is the same list of ``lio <verb> ...`` calls of
``targets/lio/lio-configfs.sh`` (uploaded first), each recorded in the command log with
CHAP secrets masked; the driver never writes configfs itself, so the log is the
complete recipe. targetcli/rtslib-fb is not used: the guest has no Python (see the
script's header and the manifest's ``[capabilities] configured_with``).

NAT: in the micro-VM LIO answers SendTargets with its guest address (10.0.2.15:3260),
not the forwarded host port; ``TargetEndpoint`` says where to log in from the host.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HarnessError, PeerStartError
from . import microvm
from .base import Manifest, Mode, TargetDriver, TargetEndpoint, TargetSpec
from .registry import register_target

PEER_DIR_NAME = "lio"
GUEST_SCRIPT = "/ic/lio"
ISCSI_PORT = 3260
ISCSI_PORT_2 = 3261  # the second target port (TPG 2) of ``add_portal_group``
ENV_MODE = "ISCSI_CONFORMANCE_LIO_MODE"
LIO_MAX_ERL = 2  # the highest ErrorRecoveryLevel LIO implements (manifest: erl)

#: Operational keys LIO takes in tpgt_1/param (RFC 7143 section 13 names).
LIO_PARAMS = frozenset(
    {
        "AuthMethod", "HeaderDigest", "DataDigest", "MaxConnections", "TargetAlias",
        "InitialR2T", "ImmediateData", "MaxRecvDataSegmentLength", "MaxXmitDataSegmentLength",
        "MaxBurstLength", "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain",
        "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel",
        "IFMarker", "OFMarker", "IFMarkInt", "OFMarkInt",
    }
)  # fmt: skip


def peer_folder() -> Path:
    from .manifest import peer_folder as _folder

    return _folder("target", PEER_DIR_NAME)


def load_manifest() -> Manifest:
    from .manifest import load_peer_manifest

    return load_peer_manifest("target", PEER_DIR_NAME)


def host_has_lio() -> bool:
    """Whether the host kernel can run LIO itself (loaded, or loadable as a module)."""
    if Path("/sys/module/target_core_mod").exists() or Path("/sys/kernel/config/target").exists():
        return True
    release = os.uname().release
    moddir = Path("/lib/modules") / release
    if not moddir.is_dir():
        return False
    return any(moddir.rglob("target_core_mod.ko*")) and any(moddir.rglob("iscsi_target_mod.ko*"))


def select_mode(requested: str | None = None) -> Mode:
    """``$ISCSI_CONFORMANCE_LIO_MODE`` or ``requested`` if given ("auto" = decide):
    native when the host kernel has LIO and docker answers, else microvm when QEMU is
    installed, else container (QEMU inside a container)."""
    choice = requested or os.environ.get(ENV_MODE) or "auto"
    if choice != "auto":
        if choice not in ("native", "microvm", "container"):
            raise ConfigError(
                f"LIO mode must be native, microvm, container or auto, not {choice!r}",
                field=ENV_MODE,
            )
        return choice  # type: ignore[return-value]
    if host_has_lio():
        from .docker_env import engine_available

        if engine_available():
            return "native"
    if shutil.which("qemu-system-x86_64"):
        return "microvm"
    return "container"


@register_target("lio")
class LioTarget(TargetDriver):
    """TargetDriver for LIO. ``backstore``: "fileio" (a file in guest RAM) or "ramdisk"."""

    name = "lio"
    modes = ("native", "microvm", "container")
    docker_modes = ("native", "container")

    @classmethod
    def auto_mode(cls, docker: bool) -> str | None:
        """What "auto" means for a run: with Docker, the peer's container, on the host's
        kernel when it has LIO (native) or booting the micro-VM in it (container);
        without Docker, ``select_mode``'s choice (QEMU on this host)."""
        if docker:
            return "native" if host_has_lio() else "container"
        return select_mode("auto")

    def __init__(
        self,
        manifest: Manifest | None = None,
        *,
        mode: str | None = None,
        backstore: str = "fileio",
        memory_mb: int = 512,
        boot_timeout: float = 180.0,
        docker_env: Any = None,
        port: int | None = None,
        vm_options: dict[str, Any] | None = None,
    ) -> None:
        """``port``: the host port the micro-VM's portal is forwarded to (microvm mode
        only; None picks a free one). ``vm_options``: more :class:`microvm.MicroVM`
        arguments in microvm mode (the IPsec area's ``rootfs``, ``taps``, ``forwards``)."""
        super().__init__(manifest if manifest is not None else load_manifest())
        if backstore not in ("fileio", "ramdisk"):
            raise ConfigError(
                f"backstore must be fileio or ramdisk, not {backstore!r}", field="backstore"
            )
        self.mode = select_mode(mode)
        if port is not None and self.mode != "microvm":
            raise ConfigError(
                f"LIO in {self.mode} mode listens where its mode puts it; a port can be "
                "chosen in microvm mode only",
                field="port",
            )
        self.port = port
        self.vm_options = dict(vm_options or {})
        self.backstore = backstore
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.docker_env = docker_env
        self.vm: microvm.MicroVM | None = None
        self.shell: Any = None  # microvm.MicroVM or microvm.ContainerShell
        self._versions: dict[str, str] = {}
        self._targets: dict[str, TargetSpec] = {}
        self._container: Any = None
        self._own_env = False

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        try:
            if self.mode == "microvm":
                kernel = microvm.build_kernel(self.log)
                options = dict(self.vm_options)
                forwards = {
                    "iscsi": ISCSI_PORT,
                    "iscsi2": ISCSI_PORT_2,
                    **options.pop("forwards", {}),
                }
                self.vm = microvm.MicroVM(
                    "lio",
                    kernel,
                    log=self.log,
                    forwards=forwards,
                    memory_mb=self.memory_mb,
                    boot_timeout=self.boot_timeout,
                    host_ports={"iscsi": self.port} if self.port else None,
                    **options,
                )
                self.vm.start()
                self.shell = self.vm
            elif self.mode == "container":
                self.vm = self._start_container_vm()
                self.shell = self.vm
            else:
                self.shell = self._start_native()
            self._install_script()
            out = self.shell.run([GUEST_SCRIPT, "setup"], check=True, timeout=60).text
            for line in out.splitlines():
                key, _, value = line.partition(": ")
                if value:
                    self._versions[key] = value.strip()
        except HarnessError as exc:
            self.stop()
            if isinstance(exc, PeerStartError):
                raise
            raise PeerStartError(self.name, str(exc), log_tail=self._tail()) from exc

    def _tail(self) -> str:
        return self.vm.console_tail() if self.vm is not None else ""

    def log_tail(self, lines: int = 30) -> str:
        return self.vm.console_tail(lines) if self.vm is not None else ""

    def health(self) -> str | None:
        """A kernel target dies with its kernel: the guest boots with ``panic=-1`` and
        QEMU with ``-no-reboot``, so a panic powers the VM off and QEMU exits."""
        if self.vm is not None:
            return self.vm._exited()
        if self._container is not None:
            try:
                self._container.reload()
            except Exception as exc:
                return f"LIO tools container gone: {exc}"
            if self._container.status not in ("created", "running"):
                return f"LIO tools container {self._container.status}"
        return None

    def health_handle(self) -> dict[str, Any]:
        vm = self.vm
        if vm is not None and getattr(vm, "container", None) is not None:
            return {"container": vm.container.id}
        if vm is not None and getattr(vm, "proc", None) is not None:
            return {"pid": vm.proc.pid}
        if self._container is not None:
            return {"container": self._container.id}
        return {}

    def restart(self) -> None:
        self._targets.clear()
        super().restart()

    def _install_script(self) -> None:
        script = (peer_folder() / "lio-configfs.sh").read_bytes()
        self.shell.put(GUEST_SCRIPT, script, mode="0755")

    def _start_container_vm(self) -> microvm.MicroVM:
        env = self._env()
        kernel = microvm.build_kernel(self.log)
        return microvm.start_container_vm(
            env,
            "lio",
            kernel,
            role="target",
            peer=PEER_DIR_NAME,
            folder=peer_folder(),
            log=self.log,
            forwards={"iscsi": ISCSI_PORT, "iscsi2": ISCSI_PORT_2},
            memory_mb=self.memory_mb,
            boot_timeout=self.boot_timeout,
        )

    def _start_native(self) -> Any:
        env = self._env()
        from .images import build_peer_image

        image = build_peer_image("target", PEER_DIR_NAME, log=self.log)
        # The host's configfs and modules: LIO state is kernel-global, so the container
        # only carries the tools; --privileged for configfs writes and modprobe.
        self._container = env.run_container(
            image,
            name="native",
            peer=PEER_DIR_NAME,
            command=["sleep", "infinity"],
            privileged=True,
            network_mode="host",
            volumes={
                "/sys/kernel/config": {"bind": "/sys/kernel/config", "mode": "rw"},
                "/lib/modules": {"bind": "/lib/modules", "mode": "ro"},
            },
            tmpfs={"/var/lib/ic": "size=1g"},
        )
        shell = microvm.ContainerShell(self._container, log=self.log)
        shell.run(
            [
                "sh",
                "-c",
                "modprobe -a configfs target_core_mod target_core_file iscsi_target_mod || true",
            ]
        )
        return shell

    def _env(self) -> Any:
        if self.docker_env is None:
            from .docker_env import DockerEnv

            self.docker_env = DockerEnv()
            self._own_env = True
        return self.docker_env

    def stop(self) -> None:
        if self.mode == "native" and self.shell is not None:
            for iqn in list(self._targets):
                try:
                    self.deconfigure(iqn)
                except HarnessError:
                    pass  # recorded in the log; keep tearing down
        if self.vm is not None:
            self.vm.stop()
            self.vm = None
        if self._container is not None and self.docker_env is not None:
            self.docker_env.remove(self._container)
            self._container = None
        if self._own_env and self.docker_env is not None:
            self.docker_env.close()
            self.docker_env = None
            self._own_env = False
        self.shell = None

    def version(self) -> str:
        if not self._versions:
            return "LIO (not started)"
        # The kernel release comes first: it is what deviations are matched against
        # (LIO's own "v4.1.0" has not changed in years).
        return f"Linux {self._versions.get('kernel', '?')} ({self._versions.get('iscsi', 'LIO')})"

    def kernel_release(self) -> str:
        return self._versions.get("kernel", "")

    # ------------------------------------------------------------------ configuration

    def lio(self, *args: str, timeout: float = 60) -> str:
        """Run one verb of ``lio-configfs.sh`` in the guest; raise on failure."""
        if self.shell is None:
            raise HarnessError("LIO is not started")
        return self.shell.run([GUEST_SCRIPT, *args], check=True, timeout=timeout).text

    def plan(self, spec: TargetSpec) -> list[list[str]]:
        """The ``lio`` verbs that build ``spec`` (pure; tests read it)."""
        iqn = spec.iqn
        if spec.redirect is not None:
            # LIO never answers a login with status class 1: iscsi_target_mod has no
            # redirect setting (its configfs has only the login_redirects counter),
            # see the manifest's login_redirect.
            raise ConfigError("LIO cannot redirect a login", field="redirect")
        steps: list[list[str]] = []
        stores = []
        for i, lun in enumerate(spec.luns):
            store = f"{_short(iqn)}_lun{i}"
            stores.append(store)
            steps.append(
                ["backstore", self.backstore, store, str(lun.size_bytes), str(lun.block_size)]
            )
        steps.append(["target", iqn])
        steps.append(["portal", iqn, "0.0.0.0", str(ISCSI_PORT)])
        # The ErrorRecoveryLevel LIO answers with is the node ACL's default_erl, which
        # an ACL takes from the TPG's attrib/default_erl when it is made (the login
        # overrides the key's value with "ErrorRecoveryLevel=<default_erl>"); param/
        # ErrorRecoveryLevel alone changes nothing. The default, 0, made every session
        # run at ERL 0 whatever was offered (the key's result is the minimum, RFC 7143
        # 13.20). LIO implements 1 and 2 (iscsi_target_erl1.c, _erl2.c): hold 2, so each
        # session runs at the level its initiator offers. Set before any ACL exists.
        erl = dict(spec.parameters).get("ErrorRecoveryLevel", str(LIO_MAX_ERL))
        steps.append(["attrib", iqn, "default_erl", erl])
        for i, store in enumerate(stores):
            steps.append(["lun", iqn, str(i), self.backstore, store])
        luns = [str(i) for i in range(len(stores))]
        auth = spec.chap is not None
        if spec.mutual_chap is not None and spec.chap is None:
            raise ConfigError(
                "mutual CHAP needs one-way CHAP too (RFC 7143 12.1.3)", field="mutual_chap"
            )
        if spec.allowed_initiators:
            steps.append(["attrib", iqn, "generate_node_acls", "0"])
            # LIO's default lists every target in SendTargets, ACLs or not
            steps.append(["attrib", iqn, "demo_mode_discovery", "0"])
            for ini in spec.allowed_initiators:
                steps.append(["acl", iqn, ini, *luns])
        else:
            # demo mode: any initiator, dynamic ACLs that see every LUN, writable
            steps += [
                ["attrib", iqn, "generate_node_acls", "1"],
                ["attrib", iqn, "cache_dynamic_acls", "1"],
                ["attrib", iqn, "demo_mode_write_protect", "0"],
            ]
        if auth:
            assert spec.chap is not None
            creds = [spec.chap.user, spec.chap.secret]
            if spec.mutual_chap is not None:
                creds += [spec.mutual_chap.user, spec.mutual_chap.secret]
            for ini in spec.allowed_initiators or ("-",):
                steps.append(["auth", iqn, ini, *creds])
        steps.append(["attrib", iqn, "authentication", "1" if auth else "0"])
        steps.append(["param", iqn, "AuthMethod", "CHAP" if auth else "CHAP,None"])
        steps.append(["param", iqn, "HeaderDigest", ",".join(spec.header_digest)])
        steps.append(["param", iqn, "DataDigest", ",".join(spec.data_digest)])
        if "MaxConnections" not in {k for k, _ in spec.parameters}:
            # LIO's TPG default is 1; it implements multi-connection sessions, so let
            # the suite see them (a spec may still ask for another value)
            steps.append(["param", iqn, "MaxConnections", "8"])
        for key, value in spec.parameters:
            if key == "CHAP_A":
                # LIO has no per-target CHAP_A setting: it accepts every algorithm it
                # has (MD5, SHA-1, SHA-256, SHA3-256 on 6.1); the initiator's offer
                # decides, which is what the CHAP profiles' tests send anyway.
                continue
            if key not in LIO_PARAMS:
                raise ConfigError(f"LIO has no TPG parameter {key!r}", field="parameters")
            steps.append(["param", iqn, key, value])
        steps.append(["enable", iqn])
        return steps

    def configure(self, spec: TargetSpec) -> TargetEndpoint:
        for creds in (spec.chap, spec.mutual_chap):
            if creds is not None:
                self.log.secrets.add(creds.secret)
        if spec.iqn in self._targets:
            self.deconfigure(spec.iqn)
        steps = self.plan(spec)
        self._targets[spec.iqn] = spec
        # One agent round trip for the whole recipe (about 0.15 s each under TCG); the
        # log still shows every verb, one per line, and set -e stops at the first error.
        script = "set -e\n" + "\n".join(shlex.join([GUEST_SCRIPT, *s]) for s in steps)
        if self.shell is None:
            raise HarnessError("LIO is not started")
        self.shell.run(script, check=True, timeout=120)
        self.lio("show", spec.iqn)
        return self.endpoint(spec)

    def endpoint(self, spec: TargetSpec) -> TargetEndpoint:
        luns = tuple(range(len(spec.luns)))
        if self.mode == "microvm":
            assert self.vm is not None
            host, port = self.vm.bind_host, self.vm.host_port("iscsi")
            return TargetEndpoint(host, port, spec.iqn, luns, 1, host_side=(host, port))
        if self.mode == "container":
            assert self.vm is not None
            host, port = self.vm.bind_host, self.vm.host_port("iscsi")
            return TargetEndpoint(host, port, spec.iqn, luns, 1, host_side=(host, port))
        return TargetEndpoint(
            "127.0.0.1", ISCSI_PORT, spec.iqn, luns, 1, host_side=("127.0.0.1", ISCSI_PORT)
        )

    def deconfigure(self, iqn: str) -> None:
        self._targets.pop(iqn, None)
        self.lio("delete", iqn)

    def add_portal_group(self, iqn: str, initiators: tuple[str, ...] = ()) -> TargetEndpoint:
        """A second target port for target ``iqn`` (``lio second-tpg``): TPG 2 on port
        3261 (forwarded from the guest like 3260) with TPG 1's LUNs and no CHAP, node
        ACLs for ``initiators`` (else demo mode: LIO's ALL_TG_PT skips dynamic mapped
        LUNs); deleted with the target. Returns its endpoint (portal group tag 2)."""
        if iqn not in self._targets:
            raise HarnessError(f"LIO has no target {iqn} to add a portal group to")
        self.lio("second-tpg", iqn, str(ISCSI_PORT_2), *initiators)
        first = self.endpoint(self._targets[iqn])
        if self.vm is not None:
            port = self.vm.host_port("iscsi2")
        else:
            port = ISCSI_PORT_2
        return TargetEndpoint(first.host, port, iqn, first.luns, 2, host_side=(first.host, port))

    def power_cycle(self, iqn: str) -> str:
        """A power loss of target ``iqn``'s logical units (``lio power-cycle``): each
        device and its in-kernel persistent reservation state is freed and made again
        from its medium file, unit serial number and the APTPL file LIO wrote, restored
        as targetcli's restoreconfig does at boot. The target's sessions end (its TPG is
        disabled meanwhile); the run's other targets in the guest are not touched.
        Returns the script's report (one line per device)."""
        if iqn not in self._targets:
            raise HarnessError(f"LIO has no target {iqn} to power-cycle")
        if self.backstore != "fileio":
            raise ConfigError(
                "a power cycle keeps the medium only with the fileio backstore",
                field="backstore",
            )
        return self.lio("power-cycle", iqn, timeout=120)

    def set_discovery_auth(
        self, user: str, secret: str, mutual: tuple[str, str] | None = None
    ) -> None:
        """Require CHAP for SendTargets sessions (``iscsi/discovery_auth``)."""
        self.log.secrets.add(secret)
        args = [user, secret]
        if mutual is not None:
            self.log.secrets.add(mutual[1])
            args += list(mutual)
        self.lio("discovery-auth", *args)

    def guest(self, command: list[str] | str, **kwargs: Any) -> microvm.AgentResult:
        """Run anything in the guest (recorded), e.g. ``cat`` of a configfs file."""
        if self.shell is None:
            raise HarnessError("LIO is not started")
        return self.shell.run(command, **kwargs)


def _short(iqn: str) -> str:
    """A configfs-safe backstore name derived from the target name."""
    tail = iqn.rsplit(":", 1)[-1]
    safe = "".join(c if c.isalnum() else "_" for c in tail)[:24]
    return f"{safe}_{hashlib.sha1(iqn.encode()).hexdigest()[:6]}"


__all__ = ["LioTarget", "host_has_lio", "select_mode"]
