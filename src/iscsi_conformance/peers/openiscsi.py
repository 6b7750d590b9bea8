"""open-iscsi (iscsid + iscsiadm, the Linux kernel initiator) as a real peer.

Theory of operation
-------------------
open-iscsi's data path is the kernel's ``iscsi_tcp``; the host kernel may lack it, so
the initiator runs in a QEMU TCG micro-VM booting the Debian rootfs (``microvm.py``:
open-iscsi, sg3-utils) with the modules loaded by the shared initramfs. Mode
``microvm`` runs QEMU on the host, ``container`` inside a container built from
``initiators/open-iscsi/Dockerfile``; ``native`` (host kernel has ``iscsi_tcp``) runs
iscsid in a privileged host-network container.

Everything goes through ``iscsiadm`` in the guest and is recorded (secrets masked):
a node record is created explicitly for the portal *as the guest reaches it*, never
taken from a SendTargets answer, because a target behind NAT (LIO in its own micro-VM)
answers with an address only valid inside its own VM. Addresses on the host's loopback
are rewritten to QEMU's user-net gateway 10.0.2.2, which slirp maps back to 127.0.0.1.

I/O uses the SCSI disk the kernel creates for each LUN (``/dev/sdX``, found through
``/sys/class/iscsi_session``): ``dd`` with ``O_DIRECT`` for reads and writes, sg3-utils
for INQUIRY (``sg_inq --raw``) and persistent reservations (``sg_persist``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AuthenticationError, ConfigError, HarnessError, LoginError, PeerStartError
from . import microvm
from .base import (
    InitiatorDriver,
    LoginOptions,
    Manifest,
    Mode,
    SessionHandle,
    TargetEndpoint,
)
from .registry import register_initiator

PEER_DIR_NAME = "open-iscsi"
_NO_OPTIONS = LoginOptions()
ENV_MODE = "ISCSI_CONFORMANCE_OPENISCSI_MODE"
DEFAULT_INITIATOR = "iqn.2004-10.com.ubuntu:01:iscsi-conformance"  # overridden in __init__
SETUP_SCRIPT = "/ic/open-iscsi-setup"

#: iscsiadm exit codes (open-iscsi include/iscsi_err.h) the driver tells apart.
ISCSI_ERR_TRANS = 4
ISCSI_ERR_SESS_NOT_FOUND = 2
ISCSI_ERR_TRANS_TIMEOUT = 8
ISCSI_ERR_SESS_EXISTS = 15
ISCSI_ERR_NO_OBJS_FOUND = 21
ISCSI_ERR_LOGIN_AUTH_FAILED = 24

#: RFC 7143 key -> open-iscsi node record key.
NODE_KEYS = {
    "HeaderDigest": "node.conn[0].iscsi.HeaderDigest",
    "DataDigest": "node.conn[0].iscsi.DataDigest",
    "MaxRecvDataSegmentLength": "node.conn[0].iscsi.MaxRecvDataSegmentLength",
    "MaxXmitDataSegmentLength": "node.conn[0].iscsi.MaxXmitDataSegmentLength",
    "InitialR2T": "node.session.iscsi.InitialR2T",
    "ImmediateData": "node.session.iscsi.ImmediateData",
    "FirstBurstLength": "node.session.iscsi.FirstBurstLength",
    "MaxBurstLength": "node.session.iscsi.MaxBurstLength",
    "MaxOutstandingR2T": "node.session.iscsi.MaxOutstandingR2T",
    "ErrorRecoveryLevel": "node.session.iscsi.ERL",
    "MaxConnections": "node.session.iscsi.MaxConnections",
    "DefaultTime2Wait": "node.session.iscsi.DefaultTime2Wait",
    "DefaultTime2Retain": "node.session.iscsi.DefaultTime2Retain",
}

#: CHAP algorithm numbers (RFC 7143 12.1.3) -> open-iscsi's names (node.session.auth.chap_algs).
CHAP_ALG_NAMES = {"5": "MD5", "6": "SHA1", "7": "SHA256", "8": "SHA3-256"}

#: sg_persist --out service actions.
PR_OUT_ACTIONS = {
    "register": "--register",
    "register-ignore": "--register-ignore",
    "reserve": "--reserve",
    "release": "--release",
    "clear": "--clear",
    "preempt": "--preempt",
    "preempt-abort": "--preempt-abort",
}
PR_IN_ACTIONS = {
    "read-keys": "--read-keys",
    "read-reservation": "--read-reservation",
    "report-capabilities": "--report-capabilities",
    "read-full-status": "--read-full-status",
}


def peer_folder() -> Path:
    from .manifest import peer_folder as _folder

    return _folder("initiator", PEER_DIR_NAME)


def load_manifest() -> Manifest:
    from .manifest import load_peer_manifest

    return load_peer_manifest("initiator", PEER_DIR_NAME)


def host_has_iscsi_tcp() -> bool:
    if Path("/sys/module/iscsi_tcp").exists() or Path("/sys/class/iscsi_transport/tcp").exists():
        return True
    moddir = Path("/lib/modules") / os.uname().release
    return moddir.is_dir() and any(moddir.rglob("iscsi_tcp.ko*"))


def select_mode(requested: str | None = None) -> Mode:
    """Like ``lio.select_mode``: native with a host ``iscsi_tcp`` and docker, else
    microvm with QEMU on the host, else container."""
    choice = requested or os.environ.get(ENV_MODE) or "auto"
    if choice != "auto":
        if choice not in ("native", "microvm", "container"):
            raise ConfigError(
                f"open-iscsi mode must be native, microvm, container or auto, not {choice!r}",
                field=ENV_MODE,
            )
        return choice  # type: ignore[return-value]
    if host_has_iscsi_tcp():
        from .docker_env import engine_available

        if engine_available():
            return "native"
    if shutil.which("qemu-system-x86_64"):
        return "microvm"
    return "container"


def guest_address(host: str, mode: str) -> str:
    """``host`` as the initiator in the VM reaches it (the NAT rewrite).

    In a micro-VM the host's loopback is 10.0.2.2 (slirp's gateway); every other
    address is reached as is (through the host's routes).
    """
    if mode not in ("microvm", "container"):
        return host
    if host == "localhost":
        return microvm.HOST_FROM_GUEST
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return microvm.HOST_FROM_GUEST if ip.is_loopback else host


#: The largest transfer one dd call asks the block layer for.
MAX_TRANSFER = 1 << 20


def _transfer_size(size: int, block: int) -> int:
    """dd's block size for ``size`` bytes of direct I/O: the largest power-of-two
    multiple of the logical block that divides ``size``, up to :data:`MAX_TRANSFER`.
    One dd block is one direct request, so a 1 MiB write is one or a few SCSI
    commands (the kernel splits at its max_sectors), not 2,048 of 512 bytes: through a
    TCG guest the per-command cost dominated every write and read-back."""
    chunk = block
    while chunk * 2 <= MAX_TRANSFER and size % (chunk * 2) == 0:
        chunk *= 2
    return chunk


def _portal(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@register_initiator("open-iscsi")
class OpenIscsiInitiator(InitiatorDriver):
    """InitiatorDriver for open-iscsi."""

    name = "open-iscsi"
    modes = ("native", "microvm", "container")
    docker_modes = ("native", "container")

    @classmethod
    def auto_mode(cls, docker: bool) -> str | None:
        """Like ``LioTarget.auto_mode``: with Docker, native on a host kernel that has
        ``iscsi_tcp``, else the micro-VM inside the container; without, ``select_mode``."""
        if docker:
            return "native" if host_has_iscsi_tcp() else "container"
        return select_mode("auto")

    def __init__(
        self,
        manifest: Manifest | None = None,
        *,
        mode: str | None = None,
        initiator_name: str = "iqn.2024-01.org.iscsi-conformance:open-iscsi",
        memory_mb: int = 512,
        boot_timeout: float = 180.0,
        login_timeout: int = 15,
        docker_env: Any = None,
        vm_options: dict[str, Any] | None = None,
        vm_name: str = "open-iscsi",
    ) -> None:
        """``vm_options``: more :class:`microvm.MicroVM` arguments in microvm mode (the
        IPsec area's ``rootfs``, ``taps``, ``forwards``, ``extra_cmdline``). ``vm_name``
        tells a second host's VM (and its container) from the first (a cluster's node B)."""
        super().__init__(manifest if manifest is not None else load_manifest())
        self.mode = select_mode(mode)
        self.initiator_name = initiator_name
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.login_timeout = login_timeout
        self.docker_env = docker_env
        self.vm_options = dict(vm_options or {})
        self.vm_name = vm_name
        self._own_env = False
        self.vm: microvm.MicroVM | None = None
        self.shell: Any = None
        self._container: Any = None
        self._versions: dict[str, str] = {}
        self._sessions: list[SessionHandle] = []

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        try:
            if self.mode == "microvm":
                kernel = microvm.build_kernel(self.log)
                options = dict(self.vm_options)
                rootfs = options.pop("rootfs", None) or microvm.build_rootfs(self.log)
                self.vm = microvm.MicroVM(
                    self.vm_name,
                    kernel,
                    log=self.log,
                    rootfs=rootfs,
                    memory_mb=self.memory_mb,
                    boot_timeout=self.boot_timeout,
                    **options,
                )
                self.vm.start()
                self.shell = self.vm
            elif self.mode == "container":
                env = self._env()
                self.vm = microvm.start_container_vm(
                    env,
                    self.vm_name,
                    microvm.build_kernel(self.log),
                    role="initiator",
                    peer=PEER_DIR_NAME,
                    folder=peer_folder(),
                    log=self.log,
                    rootfs=microvm.build_rootfs(self.log),
                    memory_mb=self.memory_mb,
                    boot_timeout=self.boot_timeout,
                )
                self.shell = self.vm
            else:
                self.shell = self._start_native()
            self._setup_guest()
        except HarnessError as exc:
            tail = self.vm.console_tail() if self.vm is not None else ""
            self.stop()
            if isinstance(exc, PeerStartError):
                raise
            raise PeerStartError(self.name, str(exc), log_tail=tail) from exc

    def _start_native(self) -> Any:
        from .images import build_peer_image

        env = self._env()
        image = build_peer_image("initiator", PEER_DIR_NAME, log=self.log)
        self._container = env.run_container(
            image,
            name="native",
            peer=PEER_DIR_NAME,
            command=["sleep", "infinity"],
            privileged=True,
            network_mode="host",
            volumes={"/lib/modules": {"bind": "/lib/modules", "mode": "ro"}},
        )
        shell = microvm.ContainerShell(self._container, log=self.log)
        shell.run(["sh", "-c", "modprobe -a iscsi_tcp sd_mod sg || true"])
        return shell

    def _env(self) -> Any:
        if self.docker_env is None:
            from .docker_env import DockerEnv

            self.docker_env = DockerEnv()
            self._own_env = True
        return self.docker_env

    def _setup_guest(self) -> None:
        folder = peer_folder()
        conf = (
            (folder / "iscsid.conf.template")
            .read_text()
            .format(login_timeout=self.login_timeout, login_retries=1, replacement_timeout=15)
        )
        self.shell.put("/etc/iscsi/iscsid.conf", conf.encode())
        self.shell.put(SETUP_SCRIPT, (folder / "guest-setup.sh").read_bytes(), mode="0755")
        out = self.shell.run([SETUP_SCRIPT, self.initiator_name], check=True, timeout=60).text
        for line in out.splitlines():
            key, _, value = line.partition(": ")
            if value:
                self._versions[key] = value.strip()

    def stop(self) -> None:
        if self.shell is not None:
            for s in list(self._sessions):
                try:
                    self.logout(s)
                except (HarnessError, LoginError):
                    pass  # recorded; the VM goes anyway
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
        self._sessions.clear()

    def version(self) -> str:
        if not self._versions:
            return "open-iscsi (not started)"
        return f"{self._versions.get('open-iscsi', 'open-iscsi')}; Linux {self._versions.get('kernel', '?')}"

    # ------------------------------------------------------------------ helpers

    def iscsiadm(self, *args: str, timeout: float = 60, check: bool = False) -> microvm.AgentResult:
        if self.shell is None:
            raise HarnessError("open-iscsi is not started")
        return self.shell.run(["iscsiadm", *args], timeout=timeout, check=check)

    def guest(self, command: list[str] | str, **kwargs: Any) -> microvm.AgentResult:
        """Run anything in the guest (recorded)."""
        if self.shell is None:
            raise HarnessError("open-iscsi is not started")
        return self.shell.run(command, **kwargs)

    def _mask(self, options: LoginOptions) -> None:
        for creds in (options.chap, options.mutual_chap):
            if creds is not None:
                self.log.secrets.add(creds.secret)

    def _iface_lines(self, initiator_name: str | None) -> tuple[str, list[str]]:
        """The iface carrying ``initiator_name`` (open-iscsi has one name per iface) and
        the shell lines that make it (none for the default iface)."""
        if not initiator_name or initiator_name == self.initiator_name:
            return "default", []
        iface = "ic" + hashlib.sha1(initiator_name.encode()).hexdigest()[:10]
        return iface, [
            f"iscsiadm -m iface -I {iface} >/dev/null 2>&1 || iscsiadm -m iface -I {iface} -o new",
            f"iscsiadm -m iface -I {iface} -o update -n iface.transport_name -v tcp",
            f"iscsiadm -m iface -I {iface} -o update -n iface.initiatorname -v {shlex.quote(initiator_name)}",
        ]

    def _iface(self, initiator_name: str | None) -> str:
        iface, lines = self._iface_lines(initiator_name)
        if lines:
            self.shell.run("\n".join(lines), check=True)
        return iface

    # ------------------------------------------------------------------ discovery

    def discover(
        self, host: str, port: int, *, options: LoginOptions = _NO_OPTIONS
    ) -> list[tuple[str, str]]:
        """SendTargets through ``iscsiadm -m discoverydb``; raw answer (NAT addresses kept)."""
        self._mask(options)
        portal = _portal(guest_address(host, self.mode), port)
        iface, lines = self._iface_lines(options.initiator_name)
        base = ["iscsiadm", "-m", "discoverydb", "-t", "sendtargets", "-p", portal, "-I", iface]
        lines.append(shlex.join([*base, "-o", "new"]))
        settings = [("discovery.sendtargets.auth.authmethod", "None")]
        if options.chap is not None:
            settings = [
                ("discovery.sendtargets.auth.authmethod", "CHAP"),
                ("discovery.sendtargets.auth.username", options.chap.user),
                ("discovery.sendtargets.auth.password", options.chap.secret),
            ]
            if options.mutual_chap is not None:
                settings += [
                    ("discovery.sendtargets.auth.username_in", options.mutual_chap.user),
                    ("discovery.sendtargets.auth.password_in", options.mutual_chap.secret),
                ]
        lines.append(shlex.join([*base, "-o", "update", *_name_values(settings)]))
        # one agent round trip (each costs a process start in a TCG guest): the record,
        # then -o nonpersistent lists what the target says without creating node records
        res = self.shell.run(
            _setup_then(
                lines,
                shlex.join([*base, "--discover", "-o", "nonpersistent"]),
                after=shlex.join([*base, "-o", "delete"]),
            ),
            timeout=self.login_timeout * 2 + 30,
        )
        _check_setup(res, f"discovery record for {portal}")
        if res.returncode == ISCSI_ERR_LOGIN_AUTH_FAILED:
            raise AuthenticationError(
                f"open-iscsi: discovery CHAP failed: {self.log.mask(res.error_text).strip()}"
            )
        if res.returncode != 0:
            raise LoginError(
                f"open-iscsi: discovery on {portal} failed ({res.returncode}): {self.log.mask(res.error_text).strip()}"
            )
        return parse_discovery(_without_markers(res.text))

    # ------------------------------------------------------------------ sessions

    def login(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = _NO_OPTIONS
    ) -> SessionHandle:
        self._mask(options)
        host = guest_address(endpoint.host, self.mode)
        portal = _portal(host, endpoint.port)
        iface, setup = self._iface_lines(options.initiator_name)
        node = ["iscsiadm", "-m", "node", "-T", endpoint.iqn, "-p", portal, "-I", iface]
        settings = node_settings(options)
        # a stale record (an earlier failed run) would keep its old settings
        setup.append(shlex.join([*node, "-o", "delete"]) + " >/dev/null 2>&1 || true")
        setup.append(
            shlex.join(
                [*node[:5], "-p", f"{portal},{endpoint.portal_group_tag}", "-I", iface, "-o", "new"]
            )
        )
        if settings:  # iscsiadm takes every -n/-v pair of one update at once
            setup.append(shlex.join([*node, "-o", "update", *_name_values(settings)]))
        login_timeout = self.login_timeout * 3 + 30
        # One agent round trip for the record, the login, the session's id, its
        # negotiated keys and its LUNs' block devices: each round trip costs a process
        # start in a TCG guest, and a test logs in often.
        script = "\n".join(
            [
                _setup_script(setup),
                "t0=$(date +%s%N)",
                shlex.join([*node, "--login"]),
                "rc=$?",
                'echo "@@ic-login-ns $(( $(date +%s%N) - t0 ))"',
                f"[ $rc -eq 0 ] || {{ {shlex.join([*node, '-o', 'delete'])} >/dev/null 2>&1; exit $rc; }}",
                "echo @@ic-logged-in",
                attach_script(endpoint.iqn, portal, endpoint.luns, timeout=60),
            ]
        )
        res = self.shell.run(script, timeout=login_timeout + 90)
        _check_setup(res, f"node record for {endpoint.iqn} at {portal}")
        marks = parse_markers(res.text)
        if "ic-login-ns" not in marks:  # the agent ended the script during the login
            raise LoginError(
                f"open-iscsi: login did not end within {login_timeout} s: "
                f"{self.log.mask(res.error_text).strip()}"
            )
        if "ic-logged-in" not in marks:
            msg = self.log.mask(res.error_text or _without_markers(res.text)).strip()
            if res.returncode == ISCSI_ERR_LOGIN_AUTH_FAILED:
                raise AuthenticationError(f"open-iscsi: {msg}")
            raise LoginError(
                f"open-iscsi: login failed (iscsiadm exit {res.returncode}): {msg}",
                login_status=_status_from(res.returncode),
            )
        handle = SessionHandle(
            endpoint=endpoint,
            ref={
                "portal": portal,
                "iface": iface,
                "login_seconds": int(marks["ic-login-ns"][0]) / 1e9,
            },
        )
        self._sessions.append(handle)
        self._attached(handle, res)
        return handle

    def _attached(self, handle: SessionHandle, res: microvm.AgentResult) -> None:
        """Fill ``handle`` from the output of :func:`attach_script`, or raise what broke."""
        marks = parse_markers(res.text)
        iqn, portal = handle.endpoint.iqn, handle.ref["portal"]
        if "ic-sid" not in marks:
            raise HarnessError(
                f"open-iscsi: logged in to {iqn} at {portal} but no session is listed"
            )
        sid = int(marks["ic-sid"][0])
        handle.ref["sid"] = sid
        handle.ref["devices"], handle.ref["block_sizes"] = {}, {}
        for lun, dev, size in (m.split() for m in marks.get("ic-dev", [])):
            handle.ref["devices"][int(lun)] = dev
            handle.ref["block_sizes"][int(lun)] = int(size)
        if res.returncode != 0 or "ic-attached" not in marks:
            raise HarnessError(
                f"open-iscsi: session {sid} to {iqn}: "
                f"{self.log.mask(res.error_text).strip() or f'exit {res.returncode}'}"
            )
        handle.negotiated = parse_negotiated(res.text.split("@@ic-keys-end")[0])

    def negotiated(self, session: SessionHandle) -> dict[str, str]:
        """The operational keys as ``iscsiadm -m session -P 2`` reports them."""
        res = self.iscsiadm("-m", "session", "-r", str(session.ref["sid"]), "-P", "2", check=True)
        return parse_negotiated(res.text)

    def _wait_device(self, sid: int, lun: int, timeout: float = 60) -> str:
        """``/dev/sdX`` of ``lun`` in session ``sid``, once the kernel's scan made it."""
        script = (
            f"for i in $(seq 1 {int(timeout * 5)}); do "
            f"for b in /sys/class/iscsi_session/session{sid}/device/target*/*:*:*:{lun}/block/*; do "
            '[ -e "$b" ] && [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; exit 0; }; done; '
            "sleep 0.2; done; exit 1"
        )
        res = self.shell.run(script, timeout=timeout + 10)
        if res.returncode != 0:
            raise HarnessError(f"open-iscsi: no block device for session {sid} LUN {lun}")
        return res.text.strip()

    def device(self, session: SessionHandle, lun: int) -> str:
        devices: dict[int, str] = session.ref["devices"]
        if lun not in devices:
            devices[lun] = self._wait_device(session.ref["sid"], lun)
        return devices[lun]

    def logout(self, session: SessionHandle) -> None:
        ref = session.ref
        node = ["iscsiadm", "-m", "node", "-T", session.endpoint.iqn, "-p", ref["portal"]]
        node += ["-I", ref["iface"]]
        res = self.shell.run(
            f"{shlex.join([*node, '--logout'])}; rc=$?; "
            f"{shlex.join([*node, '-o', 'delete'])} >/dev/null 2>&1; exit $rc",
            timeout=60,
        )
        if session in self._sessions:
            self._sessions.remove(session)
        if res.returncode not in (0, ISCSI_ERR_NO_OBJS_FOUND):
            raise HarnessError(
                f"open-iscsi: logout failed ({res.returncode}): {res.error_text.strip()}"
            )

    def can_reboot(self) -> bool:
        """Whether ``reboot`` can reset this initiator's host: its micro-VM (not a
        native host kernel, which is this machine's)."""
        return self.vm is not None

    def reboot(self, session: SessionHandle) -> tuple[SessionHandle, float]:
        """Reset the host of ``session`` (a real reboot of the micro-VM, no Logout) and
        let it log in again as a host set to log in at boot does: the session's node
        record is set to ``node.startup = automatic`` first and kept across the reset
        (the guest's /etc/iscsi, as a persistent root keeps it), then the booted guest
        starts iscsid and runs ``iscsiadm -m node --loginall=automatic``, what
        open-iscsi's boot service runs. Returns the new session (the LUNs' block devices
        found again, no hand) and the seconds from the reset to the login."""
        if self.vm is None:
            raise ConfigError("open-iscsi reboots only in a micro-VM (mode microvm or container)")
        ref = session.ref
        node = ["-m", "node", "-T", session.endpoint.iqn, "-p", ref["portal"], "-I", ref["iface"]]
        self.iscsiadm(*node, "-o", "update", "-n", "node.startup", "-v", "automatic", check=True)
        saved = self.shell.run(
            "tar -C /etc/iscsi -cf - nodes ifaces", binary_output=True, check=True
        ).stdout
        if session in self._sessions:
            self._sessions.remove(session)
        started = time.monotonic()
        self.vm.reboot()
        self._setup_guest()
        self.shell.put("/tmp/ic-iscsi-etc.tar", saved)
        self.shell.run("tar -C /etc/iscsi -xf /tmp/ic-iscsi-etc.tar", check=True)
        res = self.iscsiadm(
            "-m", "node", "--loginall=automatic", timeout=self.login_timeout * 3 + 30
        )
        if res.returncode != 0:
            raise LoginError(
                f"open-iscsi: boot-time login failed (iscsiadm exit {res.returncode}): "
                f"{self.log.mask(res.error_text or res.text).strip()}",
                login_status=_status_from(res.returncode),
            )
        seconds = time.monotonic() - started
        handle = SessionHandle(endpoint=session.endpoint, ref={**ref, "login_seconds": seconds})
        self._sessions.append(handle)
        attach = attach_script(session.endpoint.iqn, ref["portal"], session.endpoint.luns, 60)
        self._attached(handle, self.shell.run(attach, timeout=90))
        return handle, seconds

    # ------------------------------------------------------------------ I/O

    def block_size(self, session: SessionHandle, lun: int) -> int:
        sizes: dict[int, int] = session.ref.setdefault("block_sizes", {})
        if lun not in sizes:  # found at login; a LUN added since is asked for
            dev = self.device(session, lun)
            res = self.shell.run(
                ["cat", f"/sys/block/{dev.rsplit('/', 1)[-1]}/queue/logical_block_size"],
                check=True,
            )
            sizes[lun] = int(res.text.strip())
        return sizes[lun]

    def read(self, session: SessionHandle, lun: int, lba: int, blocks: int) -> bytes:
        dev = self.device(session, lun)
        bs = self.block_size(session, lun)
        size = bs * blocks
        res = self.shell.run(
            [
                "dd",
                f"if={dev}",
                f"bs={_transfer_size(size, bs)}",
                f"skip={lba * bs}",
                f"count={size}",
                "iflag=direct,skip_bytes,count_bytes",
                "status=none",
            ],
            binary_output=True,
            timeout=120,
        )
        if res.returncode != 0 or len(res.stdout) != bs * blocks:
            raise HarnessError(
                f"open-iscsi: read of {blocks} blocks at {lba} failed: {res.error_text.strip()}"
            )
        return res.stdout

    def write(self, session: SessionHandle, lun: int, lba: int, data: bytes) -> None:
        dev = self.device(session, lun)
        bs = self.block_size(session, lun)
        if len(data) % bs:
            raise ConfigError(
                f"write of {len(data)} bytes is not a multiple of the block size {bs}"
            )
        tmp = f"/tmp/ic-write-{os.getpid()}-{time.monotonic_ns()}"
        self.shell.put(tmp, data)
        res = self.shell.run(
            f"dd if={tmp} of={dev} bs={_transfer_size(len(data), bs)} seek={lba * bs} "
            f"oflag=direct,seek_bytes conv=notrunc,fsync status=none; rc=$?; rm -f {tmp}; "
            "exit $rc",
            timeout=120,
        )
        if res.returncode != 0:
            raise HarnessError(f"open-iscsi: write at {lba} failed: {res.error_text.strip()}")

    def inquiry(self, session: SessionHandle, lun: int) -> bytes:
        """Standard INQUIRY data, raw (``sg_inq --raw``)."""
        res = self.shell.run(["sg_inq", "--raw", self.device(session, lun)], binary_output=True)
        if res.returncode != 0:
            raise HarnessError(f"open-iscsi: sg_inq failed: {res.error_text.strip()}")
        return res.stdout

    def sg(self, session: SessionHandle, lun: int, tool: str, *args: str) -> microvm.AgentResult:
        """Run an sg3-utils tool against the LUN's device (e.g. ``sg_raw``, ``sg_readcap``)."""
        return self.shell.run([tool, *args, self.device(session, lun)])

    def persistent_reserve_out(
        self,
        session: SessionHandle,
        lun: int,
        action: str,
        *,
        key: int = 0,
        sa_key: int = 0,
        prout_type: int = 0,
    ) -> microvm.AgentResult:
        """PERSISTENT RESERVE OUT (SPC-4 6.16) via ``sg_persist --out``; returns the
        result (``returncode`` 24 from sg_persist is RESERVATION CONFLICT)."""
        if action not in PR_OUT_ACTIONS:
            raise ConfigError(f"unknown PR OUT action {action!r}; one of {sorted(PR_OUT_ACTIONS)}")
        args = [
            "sg_persist",
            "--out",
            PR_OUT_ACTIONS[action],
            f"--param-rk={key:#x}",
            f"--param-sark={sa_key:#x}",
        ]
        if prout_type:
            args.append(f"--prout-type={prout_type}")
        return self.shell.run([*args, self.device(session, lun)])

    def persistent_reserve_in(
        self, session: SessionHandle, lun: int, action: str = "read-keys"
    ) -> microvm.AgentResult:
        """PERSISTENT RESERVE IN (SPC-4 6.15) via ``sg_persist --in``."""
        if action not in PR_IN_ACTIONS:
            raise ConfigError(f"unknown PR IN action {action!r}; one of {sorted(PR_IN_ACTIONS)}")
        return self.shell.run(
            ["sg_persist", "--in", PR_IN_ACTIONS[action], self.device(session, lun)]
        )

    def registered_keys(self, session: SessionHandle, lun: int) -> list[int]:
        res = self.persistent_reserve_in(session, lun, "read-keys")
        return [int(k, 16) for k in re.findall(r"^\s+(0x[0-9a-fA-F]+)\s*$", res.text, re.M)]


# --------------------------------------------------------------------------- scripts
#
# Each agent round trip costs a shell's start in a TCG guest (0.2 to 0.5 s under load),
# so a login is one script; its steps report through "@@ic-<name> <value>" lines.

SETUP_FAILED = 95


def _name_values(settings: Sequence[tuple[str, str]]) -> list[str]:
    """``-n NAME -v VALUE`` for each setting: one ``iscsiadm -o update`` takes them all."""
    return [arg for name, value in settings for arg in ("-n", name, "-v", value)]


def _setup_script(lines: Sequence[str]) -> str:
    """``lines`` run in turn; the first that fails ends the script with
    ``SETUP_FAILED``, before the step that follows (an ``&&`` chain: ``set -e`` has no
    effect in a list whose status is tested)."""
    chain = " && ".join(f"{{ {line}; }}" for line in lines)
    return f"{chain} || exit {SETUP_FAILED}\necho @@ic-setup-done"


def _check_setup(res: microvm.AgentResult, what: str) -> None:
    if res.returncode == SETUP_FAILED and "ic-setup-done" not in parse_markers(res.text):
        raise HarnessError(f"open-iscsi: setting up the {what} failed: {res.error_text.strip()}")


def _setup_then(setup: Sequence[str], command: str, *, after: str) -> str:
    """``setup``, then ``command`` whose status the script ends with, ``after`` run
    whatever it returned."""
    return "\n".join(
        [_setup_script(setup), command, "rc=$?", f"{after} >/dev/null 2>&1", "exit $rc"]
    )


def attach_script(iqn: str, portal: str, luns: Sequence[int], timeout: float) -> str:
    """Shell that finds the session to ``iqn`` at ``portal`` (``@@ic-sid``), prints its
    ``-P 2`` report (ended by ``@@ic-keys-end``), waits up to ``timeout`` s for each
    LUN's block device (``@@ic-dev LUN /dev/sdX BLOCKSIZE``) and ends ``@@ic-attached``."""
    find = (
        "sid=$(iscsiadm -m session 2>/dev/null | awk -v t="
        + shlex.quote(iqn)
        + " -v p="
        + shlex.quote(portal + ",")
        + " 'index($3, p) == 1 && $4 == t { gsub(/[][]/, \"\", $2); print $2; exit }')"
    )
    lines = [
        find,
        '[ -n "$sid" ] || exit 90',
        'echo "@@ic-sid $sid"',
        'iscsiadm -m session -r "$sid" -P 2 || exit 91',
        "echo @@ic-keys-end",
    ]
    for lun in luns:
        lines += [
            "dev=",
            f"for i in $(seq 1 {int(timeout * 5)}); do "
            f"for b in /sys/class/iscsi_session/session$sid/device/target*/*:*:*:{int(lun)}/block/*; do "
            '[ -e "$b" ] && [ -b "/dev/${b##*/}" ] && { dev=${b##*/}; break 2; }; done; '
            "sleep 0.2; done",
            f'[ -n "$dev" ] || {{ echo "no block device for session $sid LUN {int(lun)}" >&2; exit 92; }}',
            f'echo "@@ic-dev {int(lun)} /dev/$dev $(cat /sys/block/$dev/queue/logical_block_size)"',
        ]
    return "\n".join([*lines, "echo @@ic-attached"])


def parse_markers(text: str) -> dict[str, list[str]]:
    """``@@ic-<name> <value>`` lines -> {"ic-<name>": [value, ...]}."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("@@ic-"):
            name, _, value = line[2:].partition(" ")
            out.setdefault(name, []).append(value.strip())
    return out


def _without_markers(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("@@ic-"))


# --------------------------------------------------------------------------- parsing


def node_settings(options: LoginOptions) -> list[tuple[str, str]]:
    """The ``iscsiadm -o update`` settings for one login (pure; tests read it)."""
    out: list[tuple[str, str]] = []
    if options.mutual_chap is not None and options.chap is None:
        raise ConfigError(
            "mutual CHAP needs one-way CHAP too (RFC 7143 12.1.3)", field="mutual_chap"
        )
    if options.chap is not None:
        out += [
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", options.chap.user),
            ("node.session.auth.password", options.chap.secret),
        ]
        if options.mutual_chap is not None:
            out += [
                ("node.session.auth.username_in", options.mutual_chap.user),
                ("node.session.auth.password_in", options.mutual_chap.secret),
            ]
    else:
        out.append(("node.session.auth.authmethod", "None"))
    out.append((NODE_KEYS["HeaderDigest"], options.header_digest))
    out.append((NODE_KEYS["DataDigest"], options.data_digest))
    for key, value in options.parameters:
        if key == "CHAP_A":
            names = [CHAP_ALG_NAMES.get(v.strip(), v.strip()) for v in value.split(",")]
            out.append(("node.session.auth.chap_algs", ",".join(names)))
        elif key in NODE_KEYS:
            out.append((NODE_KEYS[key], value))
        elif key.startswith(("node.", "iface.")):
            out.append((key, value))  # open-iscsi's own setting, passed through
        else:
            raise ConfigError(f"open-iscsi cannot set {key!r}", field="parameters")
    return out


def parse_discovery(text: str) -> list[tuple[str, str]]:
    """``10.0.2.15:3260,1 iqn....`` lines -> [(iqn, '10.0.2.15:3260,1')]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "," in parts[0]:
            out.append((parts[1], parts[0]))
    return out


def parse_sessions(text: str) -> list[tuple[int, str, str]]:
    """``tcp: [3] 10.0.2.2:3260,1 iqn... (non-flash)`` -> [(3, '10.0.2.2:3260,1', iqn)]."""
    out = []
    for m in re.finditer(r"^\S+:\s+\[(\d+)\]\s+(\S+)\s+(\S+)", text, re.M):
        out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def parse_negotiated(text: str) -> dict[str, str]:
    """The ``Negotiated iSCSI params`` block of ``iscsiadm -m session -P 2``."""
    out: dict[str, str] = {}
    block = text.split("Negotiated iSCSI params:", 1)
    if len(block) < 2:
        return out
    for line in block[1].splitlines():
        if not line.strip() or set(line.strip()) == {"*"}:
            continue
        m = re.match(r"^\s*(\w+):\s*(.*?)\s*$", line)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def _status_from(exit_code: int) -> int:
    """Best guess at the login status class from iscsiadm's exit code (RFC 7143 11.13.5)."""
    return {
        ISCSI_ERR_LOGIN_AUTH_FAILED: 0x0201,
        ISCSI_ERR_TRANS: 0x0300,
        ISCSI_ERR_TRANS_TIMEOUT: 0x0300,
    }.get(exit_code, 0x0200)


__all__ = [
    "OpenIscsiInitiator",
    "guest_address",
    "node_settings",
    "parse_discovery",
    "parse_negotiated",
    "parse_sessions",
    "select_mode",
]
