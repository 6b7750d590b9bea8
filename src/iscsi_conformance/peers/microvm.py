"""Micro-VMs for the kernel peers (LIO, open-iscsi) on hosts whose kernel lacks them.

Theory of operation
-------------------
The host kernel may have no configfs, LIO or ``iscsi_tcp`` (see ENVIRONMENT.md), so
kernel peers run in a QEMU TCG micro-VM booting Debian's cloud kernel. Three cached
artefacts, each in its own folder named by a content hash of its recipe:

``kernel``   vmlinuz + an uncompressed initramfs: static busybox, the modules the
             peers need (dependency order computed from each module's ``.modinfo``,
             Debian's package ships no ``modules.dep``), ``/init`` and ``/ic/agent``.
``rootfs``   a debootstrap'ed Debian (open-iscsi, sg3-utils) as an ext4 image made by
             ``mke2fs -d`` (no mount, no loop device); booted ``snapshot=on`` so the cached
             image never changes and several VMs can share it.

The same initramfs boots both guests. ``/init`` loads the modules, mounts
proc/sys/dev/configfs, sets up the user-net address (10.0.2.15, gateway 10.0.2.2 is
the host's loopback through slirp) and, with ``ic.root=`` on the command line,
``switch_root``s into the ext4 image first. It then starts the *agent*: busybox
``nc -ll -e`` running a small shell script per connection. The agent protocol is
length framed and binary safe::

    request : "RUN <len> <timeout>\\n" <len bytes of sh script>
              "PUT <len> <mode> <path>\\n" <len bytes written to path>
    response: "RC <rc> <stdout len> <stderr len>\\n" <stdout> <stderr>

Every request is recorded in the driver's ``CommandLog`` (where="microvm:<name>"),
secrets masked. The VM is killed on ``stop()``, at interpreter exit, and (through
``PR_SET_PDEATHSIG``) when the process that started it dies.

Nothing here knows about iSCSI: peer drivers (``lio.py``, ``openiscsi.py``) upload their
own guest scripts from their peer folders after boot.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import HarnessError, PeerStartError
from ..netutil import free_tcp_port
from .base import CommandLog
from .phases import timed

#: Bump when the artefact layout changes in a way the recipe hash would not see.
FORMAT_VERSION = "1"

KERNEL_PACKAGE = os.environ.get("ISCSI_CONFORMANCE_KERNEL_PACKAGE", "linux-image-cloud-amd64")
DEBIAN_SUITE = os.environ.get("ISCSI_CONFORMANCE_DEBIAN_SUITE", "bookworm")

#: Modules loaded at boot (their dependencies are added and ordered automatically).
GUEST_MODULES: tuple[str, ...] = (
    # user-mode network and the rootfs disk
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    # LIO: core, fileio/ramdisk/block backstores, iSCSI fabric
    "configfs",
    "target_core_mod",
    "target_core_file",
    "target_core_iblock",
    "iscsi_target_mod",
    # open-iscsi's kernel data path and the SCSI upper layers it exposes
    "iscsi_tcp",
    "sd_mod",
    "sg",
    # CHAP_A=8 (SHA3-256) in both LIO and open-iscsi needs the sha3 shash
    "sha3_generic",
)

#: In the initramfs too, loaded at boot only with ``ic.extra=ipsec`` on the command line
#: (:data:`IPSEC_CMDLINE`), so that other boots do not pay for them under TCG.
IPSEC_MODULES: tuple[str, ...] = (
    # kernel ESP for the IPsec area (charon's kernel-netlink): XFRM over netlink, ESP,
    # the AEAD and authenc transforms of RFC 8221 and ESN (authencesn)
    "xfrm_user",
    "esp4",
    "authenc",
    "authencesn",
    "gcm",
    "ghash_generic",
    "ctr",
    "seqiv",
    "echainiv",
    "jitterentropy_rng",  # seqiv/echainiv take their IVs from the default RNG (drbg)
    "drbg",
    # the IPsec area's portal policy (iptables-nft in the guest; -m policy: not via ESP)
    "nf_tables",
    "nft_compat",
    "xt_policy",
)
IPSEC_CMDLINE = "ic.extra=ipsec"

GUEST_ADDRESS = "10.0.2.15"  # slirp's default DHCP address; set statically by /init
HOST_FROM_GUEST = "10.0.2.2"  # slirp maps the gateway to the host's 127.0.0.1
AGENT_PORT = 7070

READY_MARKER = "IC-AGENT-READY"

INIT_SCRIPT = r"""#!/ic/busybox sh
# iscsi-conformance micro-VM init: stage 1 in the initramfs, stage 2 after switch_root.
BB=/ic/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/ic/bin
$BB mkdir -p /proc /sys /dev /tmp /run
if [ "$1" != "stage2" ]; then
    $BB mount -t proc proc /proc
    $BB mkdir -p /ic/bin /bin /sbin
    $BB --install -s /ic/bin
    for a in sh mount; do [ -e /bin/$a ] || $BB ln -s /ic/busybox /bin/$a; done
    $BB mount -t sysfs sysfs /sys
    $BB mount -t devtmpfs devtmpfs /dev
    extra=
    for arg in $($BB cat /proc/cmdline); do
        case "$arg" in ic.extra=ipsec) extra=/ic/modules-ipsec ;; esac
    done
    for m in $($BB cat /ic/modules $extra); do
        $BB insmod /lib/modules/ic/$m.ko || echo "ic: insmod $m failed"
    done
    $BB mount -t configfs configfs /sys/kernel/config 2>/dev/null
    for arg in $($BB cat /proc/cmdline); do
        case "$arg" in ic.root=*) root="${arg#ic.root=}" ;; esac
    done
    if [ -n "$root" ]; then
        i=0
        while [ ! -b "$root" ] && [ $i -lt 100 ]; do $BB usleep 100000; i=$((i + 1)); done
        $BB mkdir -p /newroot
        if $BB mount -t ext4 "$root" /newroot; then
            $BB mkdir -p /newroot/ic
            $BB cp /ic/busybox /ic/init /ic/agent /ic/modules /newroot/ic/
            for d in proc sys dev; do $BB mount --move /$d /newroot/$d; done
            exec $BB switch_root /newroot /ic/busybox sh /ic/init stage2
        fi
        echo "ic: cannot mount $root, staying in the initramfs"
    fi
else
    $BB mkdir -p /ic/bin
    $BB --install -s /ic/bin
fi
$BB mount -t tmpfs -o size=75% tmpfs /tmp
$BB mount -t tmpfs tmpfs /run
$BB mkdir -p /run/lock /var/lib/ic
$BB hostname ic-guest
$BB ip link set lo up
$BB ip link set eth0 up
$BB ip addr add 10.0.2.15/24 dev eth0
$BB ip route add default via 10.0.2.2
for arg in $($BB cat /proc/cmdline); do
    case "$arg" in ic.agent_port=*) port="${arg#ic.agent_port=}" ;; esac
done
port=${port:-7070}
(while true; do $BB nc -ll -p "$port" -e /ic/agent; echo "ic: agent restarted"; $BB sleep 1; done) &
echo "IC-AGENT-READY port=$port kernel=$($BB uname -r)"
while true; do $BB sleep 3600; done
"""

AGENT_SCRIPT = r"""#!/ic/busybox sh
# One request per connection; see iscsi_conformance/peers/microvm.py for the framing.
BB=/ic/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/ic/bin HOME=/root
d=$($BB mktemp -d /tmp/ic-agent.XXXXXX) || exit 1
read -r kind len arg path
: > "$d/out"
case "$kind" in
RUN)
    $BB head -c "$len" > "$d/cmd"
    $BB timeout -s KILL "$arg" /bin/sh "$d/cmd" > "$d/out" 2> "$d/err" < /dev/null
    rc=$? ;;
PUT)
    $BB head -c "$len" > "$path" 2> "$d/err" && $BB chmod "$arg" "$path" 2>> "$d/err"
    rc=$? ;;
*)
    echo "agent: bad request '$kind'" > "$d/err"
    rc=127 ;;
esac
printf 'RC %d %d %d\n' "$rc" "$($BB wc -c < "$d/out")" "$($BB wc -c < "$d/err")"
$BB cat "$d/out" "$d/err"
$BB rm -rf "$d"
"""

ROOTFS_PACKAGES: tuple[str, ...] = ("open-iscsi", "sg3-utils")
#: The IPsec area's guest (a host of the protected path): charon with VICI and the
#: standard plugins (AES-GCM), iptables for the portal's drop policy.
IPSEC_ROOTFS_PACKAGES: tuple[str, ...] = (
    *ROOTFS_PACKAGES,
    "strongswan-charon",
    "strongswan-swanctl",
    "libstrongswan-standard-plugins",
    "iptables",
)


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$ISCSI_CONFORMANCE_CACHE`` or ``~/.cache/iscsi-conformance`` (never the git tree)."""
    env = os.environ.get("ISCSI_CONFORMANCE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "iscsi-conformance"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so parallel workers build an artefact once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(
    log: CommandLog, argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 900
) -> str:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.add(argv, None, "", str(exc), started)
        raise HarnessError(f"{argv[0]}: {exc}") from exc
    log.add(argv, proc.returncode, _clip(proc.stdout), _clip(proc.stderr), started)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise HarnessError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _clip(text: str, limit: int = 20000) -> str:
    return (
        text if len(text) <= limit else f"[... {len(text) - limit} chars cut ...]\n" + text[-limit:]
    )


def _apt_candidate(package: str) -> str:
    """The version apt would install (from local lists only); "" when unknown."""
    try:
        out = subprocess.run(
            ["apt-cache", "policy", package],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except OSError:
        return ""
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else ""


def _dpkg_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except OSError:
        return ""


def debian_mirror() -> str | None:
    """The host's own Debian mirror (from apt sources), so debootstrap uses what apt uses."""
    if env := os.environ.get("ISCSI_CONFORMANCE_DEBIAN_MIRROR"):
        return env
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        candidates += sorted(d.glob("*.sources")) + sorted(d.glob("*.list"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and DEBIAN_SUITE in suites.group(1).split():
                    return uris.group(1)
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == DEBIAN_SUITE:
                    return parts[1] if not parts[1].startswith("[") else parts[2]
    return None


# --------------------------------------------------------------------------- modules


def modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` field of a kernel module's ``.modinfo`` ELF section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise HarnessError("not a 64-bit ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, base)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name : end] == b".modinfo":
            for entry in ko[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    deps = entry[len(b"depends=") :].decode()
                    return [d for d in deps.split(",") if d]
            return []
    return []


def _module_index(moddir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        name = p.name.split(".ko")[0].replace("-", "_")
        index[name] = p
    return index


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        raise HarnessError(f"{path.name}: zstd-compressed modules are not supported")
    return data


def resolve_modules(index: dict[str, Path], wanted: Sequence[str]) -> list[str]:
    """``wanted`` plus dependencies, each after everything it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order:
            return
        if name not in index:
            raise HarnessError(f"kernel module {name} not found in the kernel package")
        if name in visiting:
            raise HarnessError(f"module dependency cycle at {name}")
        visiting.add(name)
        for dep in modinfo_depends(_read_module(index[name])):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(w)
    return order


# --------------------------------------------------------------------------- artefacts


@dataclasses.dataclass(frozen=True)
class KernelArtefacts:
    """A bootable kernel and the shared initramfs."""

    vmlinuz: Path
    initramfs: Path
    kernel_release: str  # e.g. 6.1.0-56-cloud-amd64
    package: str  # e.g. linux-image-6.1.0-56-cloud-amd64 6.1.192-2
    modules: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def kernel_recipe() -> str:
    return _digest(
        FORMAT_VERSION,
        KERNEL_PACKAGE,
        _apt_candidate(KERNEL_PACKAGE),
        _dpkg_version("busybox-static"),
        ",".join(GUEST_MODULES),
        ",".join(IPSEC_MODULES),
        INIT_SCRIPT,
        AGENT_SCRIPT,
    )


def build_kernel(log: CommandLog | None = None, *, force: bool = False) -> KernelArtefacts:
    """Download the kernel package, unpack it, assemble the initramfs; cached."""
    log = log if log is not None else CommandLog()
    out = cache_root() / "microvm" / f"kernel-{kernel_recipe()}"
    with timed("images"), _locked(out.with_suffix(".lock")):
        if not force and (out / "done").exists():
            return _kernel_from(out)
        busybox = Path("/bin/busybox")
        if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:4096]:
            raise HarnessError("a static /bin/busybox is needed (apt-get install busybox-static)")
        tmp = Path(tempfile.mkdtemp(prefix="kernel-", dir=out.parent))
        try:
            debs = tmp / "debs"
            debs.mkdir()
            os.chmod(debs, 0o777)  # apt's _apt sandbox user writes here
            _run(log, ["apt-get", "download", "-q", KERNEL_PACKAGE], cwd=debs)
            meta = next(debs.glob("*.deb"))
            depends = _run(log, ["dpkg-deb", "-f", str(meta), "Depends"])
            image_pkg = next(
                (d.split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-")),
                None,
            )
            if image_pkg is None:
                raise HarnessError(f"{KERNEL_PACKAGE}: no linux-image dependency in {depends!r}")
            _run(log, ["apt-get", "download", "-q", image_pkg.strip()], cwd=debs)
            deb = next(p for p in debs.glob("*.deb") if p.name.startswith(image_pkg.strip() + "_"))
            version = _run(log, ["dpkg-deb", "-f", str(deb), "Version"]).strip()
            unpacked = tmp / "unpacked"
            _run(log, ["dpkg-deb", "-x", str(deb), str(unpacked)])
            release = next((unpacked / "lib" / "modules").iterdir()).name
            vmlinuz = next((unpacked / "boot").glob("vmlinuz-*"))
            index = _module_index(unpacked / "lib" / "modules" / release)
            order = resolve_modules(index, GUEST_MODULES)
            extra = [
                m for m in resolve_modules(index, GUEST_MODULES + IPSEC_MODULES) if m not in order
            ]

            root = tmp / "initramfs"
            (root / "ic").mkdir(parents=True)
            (root / "lib" / "modules" / "ic").mkdir(parents=True)
            for d in ("proc", "sys", "dev", "tmp", "run", "newroot", "root", "etc"):
                (root / d).mkdir(exist_ok=True)
            shutil.copy2(busybox, root / "ic" / "busybox")
            (root / "init").symlink_to("ic/init")
            for name, text in (("init", INIT_SCRIPT), ("agent", AGENT_SCRIPT)):
                (root / "ic" / name).write_text(text)
                os.chmod(root / "ic" / name, 0o755)
            (root / "ic" / "modules").write_text("\n".join(order) + "\n")
            (root / "ic" / "modules-ipsec").write_text("\n".join(extra) + "\n")
            for name in order + extra:
                (root / "lib" / "modules" / "ic" / f"{name}.ko").write_bytes(
                    _read_module(index[name])
                )
            initramfs = tmp / "initramfs.cpio"
            _cpio(log, root, initramfs)

            final = tmp / "final"
            final.mkdir()
            shutil.copy2(vmlinuz, final / "vmlinuz")
            shutil.move(initramfs, final / "initramfs.cpio")
            (final / "release").write_text(release)
            (final / "package").write_text(f"{image_pkg.strip()} {version}")
            (final / "modules").write_text("\n".join(order))
            (final / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
            if out.exists():
                shutil.rmtree(out)
            final.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return _kernel_from(out)


def _kernel_from(out: Path) -> KernelArtefacts:
    return KernelArtefacts(
        vmlinuz=out / "vmlinuz",
        initramfs=out / "initramfs.cpio",
        kernel_release=(out / "release").read_text().strip(),
        package=(out / "package").read_text().strip(),
        modules=tuple((out / "modules").read_text().split()),
    )


def _cpio(log: CommandLog, root: Path, dest: Path) -> None:
    """newc archive of ``root``, uncompressed: TCG decompresses slowly, the file is small."""
    started = time.monotonic()
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(dest, "wb") as fh:
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=root,
            input=("\n".join(names) + "\n").encode(),
            stdout=fh,
            stderr=subprocess.PIPE,
            check=False,
        )
    log.add(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", f"> {dest.name}"],
        proc.returncode,
        "",
        proc.stderr.decode(),
        started,
    )
    if proc.returncode != 0:
        raise HarnessError(f"cpio failed: {proc.stderr.decode()[-2000:]}")


@functools.lru_cache(maxsize=4)
def rootfs_recipe(packages: Sequence[str] = ROOTFS_PACKAGES) -> str:
    versions = [f"{p}={_apt_candidate(p)}" for p in sorted(packages)]
    return _digest(FORMAT_VERSION, DEBIAN_SUITE, "minbase", *versions)


def build_rootfs(
    log: CommandLog | None = None,
    *,
    packages: Sequence[str] = ROOTFS_PACKAGES,
    force: bool = False,
) -> Path:
    """A Debian guest (debootstrap minbase + ``packages``) as an ext4 image; cached."""
    log = log if log is not None else CommandLog()
    out = cache_root() / "microvm" / f"rootfs-{rootfs_recipe(tuple(packages))}"
    image = out / "rootfs.ext4"
    with timed("images"), _locked(out.with_suffix(".lock")):
        if not force and (out / "done").exists():
            return image
        for tool in ("debootstrap", "mke2fs"):
            if shutil.which(tool) is None:
                raise HarnessError(f"{tool} is needed to build the guest rootfs")
        tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=out.parent))
        try:
            root = tmp / "root"
            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                DEBIAN_SUITE,
                str(root),
            ]
            if mirror := debian_mirror():
                argv.append(mirror)
            _run(log, argv, timeout=1800)
            # What the image does not need: package caches, docs, locales.
            for sub in (
                "var/cache/apt/archives",
                "var/lib/apt/lists",
                "usr/share/doc",
                "usr/share/man",
                "usr/share/locale",
            ):
                p = root / sub
                if p.is_dir():
                    for child in p.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            (root / "ic").mkdir(exist_ok=True)
            (root / "newroot").mkdir(exist_ok=True)
            used = sum(p.lstat().st_size for p in root.rglob("*"))
            size_mb = used // (1 << 20) + 160
            final = tmp / "final"
            final.mkdir()
            _run(
                log,
                [
                    "mke2fs",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "icroot",
                    "-E",
                    "root_owner=0:0",
                    "-d",
                    str(root),
                    str(final / "rootfs.ext4"),
                    f"{size_mb}M",
                ],
            )
            pkgs = _run(
                log, ["chroot", str(root), "dpkg-query", "-W", "-f=${Package} ${Version}\\n"]
            )
            (final / "packages").write_text(pkgs)
            (final / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
            if out.exists():
                shutil.rmtree(out)
            final.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return image


# --------------------------------------------------------------------------- the VM


@dataclasses.dataclass
class AgentResult:
    """What a command run in the guest returned."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(errors="replace")


_LIVE: weakref.WeakSet[MicroVM] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for vm in list(_LIVE):
        vm.stop()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MicroVM:
    """One QEMU TCG micro-VM with its agent.

    ``forwards`` maps a name to a guest TCP port exposed on ``bind_host`` (a free host
    port is chosen at start, see ``host_port(name)``); the agent is always forwarded.
    ``qemu_prefix`` runs QEMU through another command (e.g. ``docker exec``), in which
    case ``bind_host`` is where that environment is reachable.
    """

    def __init__(
        self,
        name: str,
        kernel: KernelArtefacts,
        *,
        log: CommandLog,
        rootfs: Path | None = None,
        forwards: dict[str, int] | None = None,
        memory_mb: int = 512,
        boot_timeout: float = 180.0,
        workdir: Path | None = None,
        bind_host: str = "127.0.0.1",
        qemu: str = "qemu-system-x86_64",
        extra_cmdline: str = "",
        host_ports: dict[str, int] | None = None,
        taps: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.taps = tuple(taps)  # host tap devices, made beforehand: eth1, eth2, ... in the guest
        self.kernel = kernel
        self.host_ports = dict(host_ports or {})  # forward name -> fixed host port
        self.log = log
        self.rootfs = rootfs
        self.forwards = dict(forwards or {})
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.bind_host = bind_host
        self.qemu = qemu
        self.extra_cmdline = extra_cmdline
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"ic-vm-{name}-"))
        self.console = self.workdir / "console.log"
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None

    @property
    def where(self) -> str:
        return f"microvm:{self.name}"

    def host_port(self, name: str) -> int:
        return self.ports[name]

    def argv(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:{self.bind_host}:{self.ports[n]}-:{g}"
            for n, g in [("agent", AGENT_PORT), *self.forwards.items()]
        )
        # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer test
        # can miss its ticks and panic at boot ("IO-APIC + timer doesn't work"), seen
        # on a LIO boot at load 8; the timer works, only the test is too impatient
        cmdline = f"console=ttyS0 panic=-1 loglevel=4 no_timer_check ic.agent_port={AGENT_PORT}"
        argv = [
            self.qemu, "-accel", "tcg", "-nodefaults", "-no-reboot", "-display", "none",
            "-m", str(self.memory_mb), "-smp", "1",
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.kernel.initramfs),
            "-netdev", f"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"file,id=con,path={self.console}", "-serial", "chardev:con",
        ]  # fmt: skip
        for i, tap in enumerate(self.taps, start=1):
            # a MAC of the tap's name: QEMU's default is the same in every VM, and two
            # guests on one bridge would clash
            mac = "52:54:01:" + ":".join(
                f"{b:02x}" for b in hashlib.sha256(tap.encode()).digest()[:3]
            )
            argv += [
                "-netdev", f"tap,id=t{i},ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=t{i},mac={mac}",
            ]  # fmt: skip
        if self.rootfs is not None:
            argv += ["-drive", f"file={self.rootfs},if=virtio,format=raw,snapshot=on"]
            cmdline += " ic.root=/dev/vda"
        if self.extra_cmdline:
            cmdline += " " + self.extra_cmdline
        return [*argv, "-append", cmdline]

    def start(self) -> None:
        started = time.monotonic()
        self._launch()
        _LIVE.add(self)
        try:
            self._wait_ready(started)
        except BaseException:
            tail = self.console_tail()
            self.stop()
            if sys.exc_info()[0] is PeerStartError:
                raise
            raise PeerStartError(self.name, "boot interrupted", log_tail=tail) from None
        self.boot_seconds = time.monotonic() - started
        self.log.add(
            ["# boot"],
            0,
            f"agent answered after {self.boot_seconds:.1f} s",
            "",
            started,
            where=self.where,
        )

    def _launch(self) -> None:
        """Start QEMU on this host (the container variant overrides this)."""
        if shutil.which(self.qemu) is None:
            raise PeerStartError(
                self.name, f"{self.qemu} not found (apt-get install qemu-system-x86)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {"agent": free_tcp_port(self.bind_host)}
        for n in self.forwards:
            self.ports[n] = self.host_ports.get(n) or free_tcp_port(self.bind_host)
        argv = self.argv()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(self.workdir / "qemu.out", "wb"),  # noqa: SIM115 - lives with the VM
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and stop() cleans up
            preexec_fn=_die_with_parent,
        )
        self.log.add(argv, None, f"pid {self.proc.pid}", "", started)

    def _exited(self) -> str | None:
        """Why QEMU is gone, or None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        out = (self.workdir / "qemu.out").read_text(errors="replace")
        return f"qemu exited with {self.proc.returncode}: {out.strip()[-500:]}"

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.boot_timeout
        seen_marker = False
        while time.monotonic() < deadline:
            why = self._exited()
            if why is not None:
                raise PeerStartError(self.name, why, log_tail=self.console_tail())
            if not seen_marker:
                seen_marker = READY_MARKER in self.console_text()
                time.sleep(0.2)
                continue
            try:
                res = self._request(b"RUN 8 10\n", b"echo ok\n", timeout=10)
                if res.returncode == 0 and res.stdout.strip() == b"ok":
                    return
            except (OSError, HarnessError):
                pass
            time.sleep(0.3)
        raise PeerStartError(
            self.name,
            f"agent did not answer within {self.boot_timeout:.0f} s",
            log_tail=self.console_tail(),
        )

    _last_console = ""

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            started = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            self.log.add(["kill", str(proc.pid)], proc.returncode, "", "", started)
        if self._own_workdir and self.workdir.exists():
            keep = os.environ.get("ISCSI_CONFORMANCE_KEEP_VM")
            if not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def reboot(self, *, timeout: float = 30.0) -> float:
        """A real reboot of the guest, as a host that resets: ``sysrq b`` (no shutdown,
        no iSCSI Logout: its connections simply end), QEMU exits (``-no-reboot``), and
        the same VM boots again from the same kernel and root image. The root is a
        snapshot, so what the guest wrote is gone, as a host that boots from a clean
        image. Returns the seconds from the reset to the agent's first answer."""
        started = time.monotonic()
        with contextlib.suppress(OSError, HarnessError):
            self.run("echo b > /proc/sysrq-trigger", timeout=5)
        while self._exited() is None:
            if time.monotonic() - started > timeout:
                raise HarnessError(f"{self.name}: still running {timeout:.0f} s after sysrq b")
            time.sleep(0.2)
        self.log.add(
            ["# reboot (sysrq b)"], 0, "guest reset, QEMU exited", "", started, where=self.where
        )
        self._discard_exited()
        self.start()
        return time.monotonic() - started

    def _discard_exited(self) -> None:
        """Forget the QEMU that exited (the container variant removes its container)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    # ------------------------------------------------------------------ agent

    def _request(self, header: bytes, body: bytes, *, timeout: float) -> AgentResult:
        with socket.create_connection((self.bind_host, self.ports["agent"]), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(header + body)
            buf = bytearray()
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise HarnessError(f"{self.name}: agent closed the connection")
                buf += chunk
            line, _, rest = bytes(buf).partition(b"\n")
            m = re.fullmatch(rb"RC (\d+) (\d+) (\d+)", line.strip())
            if not m:
                raise HarnessError(f"{self.name}: bad agent answer {line[:80]!r}")
            rc, nout, nerr = (int(x) for x in m.groups())
            data = bytearray(rest)
            while len(data) < nout + nerr:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise HarnessError(f"{self.name}: agent answer cut short")
                data += chunk
            return AgentResult(rc, bytes(data[:nout]), bytes(data[nout : nout + nerr]))

    def run(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float = 60.0,
        check: bool = False,
        binary_output: bool = False,
    ) -> AgentResult:
        """Run ``command`` (argv, or a shell script) in the guest; record it."""
        script = command if isinstance(command, str) else shlex.join(command)
        body = script.encode() + b"\n"
        started = time.monotonic()
        shown = [script] if isinstance(command, str) else list(command)
        guest_timeout = max(1, int(timeout))
        try:
            res = self._request(
                f"RUN {len(body)} {guest_timeout}\n".encode(), body, timeout=timeout + 15
            )
        except (OSError, HarnessError) as exc:
            self.log.add(shown, None, "", f"agent: {exc}", started, where=self.where)
            raise HarnessError(f"{self.name}: {script[:200]!r}: {exc}") from exc
        out = (
            f"<{len(res.stdout)} bytes>"
            if binary_output
            else _clip(res.stdout.decode(errors="replace"))
        )
        self.log.add(shown, res.returncode, out, _clip(res.error_text), started, where=self.where)
        if res.returncode == 137 and time.monotonic() - started >= guest_timeout:
            raise HarnessError(f"{self.name}: {script[:200]!r} timed out after {guest_timeout} s")
        if check and res.returncode != 0:
            raise HarnessError(
                f"{self.name}: {script[:200]!r} failed ({res.returncode}): "
                f"{self.log.mask(res.error_text or res.text)[-1500:]}"
            )
        return res

    def put(self, path: str, data: bytes, *, mode: str = "0644", timeout: float = 60.0) -> None:
        """Write ``data`` to ``path`` in the guest (binary safe)."""
        if any(c.isspace() for c in path):
            raise HarnessError(f"guest path {path!r} must not contain spaces")
        started = time.monotonic()
        res = self._request(f"PUT {len(data)} {mode} {path}\n".encode(), data, timeout=timeout)
        self.log.add(
            ["# put", path, mode],
            res.returncode,
            f"<{len(data)} bytes>",
            res.error_text,
            started,
            where=self.where,
        )
        if res.returncode != 0:
            raise HarnessError(f"{self.name}: writing {path} failed: {res.error_text}")


# --------------------------------------------------------------------------- containers

ARTEFACTS_IN_CONTAINER = "/ic-artefacts"


class ContainerMicroVM(MicroVM):
    """The same VM with QEMU inside a container on the run's docker network.

    The artefact cache is bind-mounted read-only; QEMU forwards the guest's ports on
    the container's own address (fixed ports: the container is alone on it), where
    the host and the other containers of the run reach them.
    """

    def __init__(self, *args: Any, env: Any, image: str, peer: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = env
        self.image = image
        self.peer = peer
        self.container: Any = None

    @property
    def where(self) -> str:
        return f"microvm:{self.name}@container"

    def _launch(self) -> None:
        inner = MicroVM(
            self.name,
            KernelArtefacts(
                vmlinuz=Path(ARTEFACTS_IN_CONTAINER) / self.kernel.vmlinuz.parent.name / "vmlinuz",
                initramfs=Path(ARTEFACTS_IN_CONTAINER)
                / self.kernel.initramfs.parent.name
                / "initramfs.cpio",
                kernel_release=self.kernel.kernel_release,
                package=self.kernel.package,
                modules=self.kernel.modules,
            ),
            log=self.log,
            rootfs=(Path(ARTEFACTS_IN_CONTAINER) / self.rootfs.parent.name / self.rootfs.name)
            if self.rootfs is not None
            else None,
            forwards=self.forwards,
            memory_mb=self.memory_mb,
            bind_host="0.0.0.0",
            workdir=Path("/run/ic-vm"),
            extra_cmdline=self.extra_cmdline,
        )
        inner.ports = {"agent": AGENT_PORT, **self.forwards}
        argv = inner.argv()
        # console on stdout, so that `docker logs` is the console log
        i = argv.index("-chardev")
        argv[i + 1] = "stdio,id=con,signal=off"
        started = time.monotonic()
        self.container = self.env.run_container(
            self.image,
            name=self.name,
            peer=self.peer,
            command=argv,
            volumes={
                str(cache_root() / "microvm"): {"bind": ARTEFACTS_IN_CONTAINER, "mode": "rw"}
            },  # snapshot=on: never written
        )
        self.bind_host = self.env.container_ip(self.container)
        self.ports = dict(inner.ports)
        self.log.add(
            ["docker", "run", self.image, *argv],
            None,
            f"container {self.container.name} at {self.bind_host}",
            "",
            started,
        )

    def _exited(self) -> str | None:
        if self.container is None:
            return "container gone"
        try:
            self.container.reload()
        except Exception as exc:
            return f"container gone: {exc}"
        if self.container.status in ("exited", "dead"):
            return f"qemu container {self.container.status}"
        return None

    def console_text(self) -> str:
        if self.container is None:
            return self._last_console
        try:
            self._last_console: str = self.container.logs().decode(errors="replace")
        except Exception:
            return getattr(self, "_last_console", "")
        return self._last_console

    def _discard_exited(self) -> None:
        if self.container is not None:
            self.console_text()
            self.env.remove(self.container)
            self.container = None

    def stop(self) -> None:
        _LIVE.discard(self)
        if self.container is not None:
            self.console_text()
            started = time.monotonic()
            self.env.remove(self.container)
            self.log.add(["docker", "rm", "-f", self.container.name], 0, "", "", started)
            self.container = None
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_container_vm(
    env: Any,
    name: str,
    kernel: KernelArtefacts,
    *,
    role: str,
    peer: str,
    folder: Path,
    log: CommandLog,
    rootfs: Path | None = None,
    forwards: dict[str, int] | None = None,
    memory_mb: int = 512,
    boot_timeout: float = 180.0,
) -> MicroVM:
    """Build the peer's image (QEMU from Debian) and boot the VM inside it."""
    from .images import build_peer_image

    image = build_peer_image(role, peer, folder=folder, log=log)  # type: ignore[arg-type]
    vm = ContainerMicroVM(
        name,
        kernel,
        env=env,
        image=image,
        peer=peer,
        log=log,
        rootfs=rootfs,
        forwards=forwards,
        memory_mb=memory_mb,
        boot_timeout=boot_timeout,
    )
    vm.start()
    return vm


class ContainerShell:
    """``run``/``put`` like a VM's agent, for a container (native mode: host kernel)."""

    def __init__(self, container: Any, *, log: CommandLog) -> None:
        self.container = container
        self.log = log

    @property
    def where(self) -> str:
        return f"container:{self.container.name}"

    def run(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float = 60.0,
        check: bool = False,
        binary_output: bool = False,
    ) -> AgentResult:
        script = command if isinstance(command, str) else shlex.join(command)
        shown = [script] if isinstance(command, str) else list(command)
        started = time.monotonic()
        argv = ["timeout", "-s", "KILL", str(max(1, int(timeout))), "sh", "-c", script]
        code, (out, err) = self.container.exec_run(argv, demux=True)
        res = AgentResult(int(code), out or b"", err or b"")
        shown_out = f"<{len(res.stdout)} bytes>" if binary_output else _clip(res.text)
        self.log.add(
            shown, res.returncode, shown_out, _clip(res.error_text), started, where=self.where
        )
        if check and res.returncode != 0:
            raise HarnessError(
                f"{self.where}: {script[:200]!r} failed ({res.returncode}): {self.log.mask(res.error_text)[-1500:]}"
            )
        return res

    def put(self, path: str, data: bytes, *, mode: str = "0644", timeout: float = 60.0) -> None:
        import io
        import tarfile

        started = time.monotonic()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size = len(data)
            info.mode = int(mode, 8)
            tar.addfile(info, io.BytesIO(data))
        self.container.exec_run(["mkdir", "-p", os.path.dirname(path)])
        ok = self.container.put_archive(os.path.dirname(path) or "/", buf.getvalue())
        self.log.add(
            ["# put", path, mode],
            0 if ok else 1,
            f"<{len(data)} bytes>",
            "",
            started,
            where=self.where,
        )
        if not ok:
            raise HarnessError(f"{self.where}: writing {path} failed")


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iscsi_conformance.peers.microvm build [--rootfs] [--force]``: warm the cache."""
    import argparse

    ap = argparse.ArgumentParser(prog="iscsi_conformance.peers.microvm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or find cached) micro-VM artefacts")
    b.add_argument("--rootfs", action="store_true", help="also the Debian guest rootfs")
    b.add_argument("--force", action="store_true")
    sub.add_parser("paths", help="print where the artefacts are cached")
    args = ap.parse_args(argv)
    log = CommandLog()
    if args.cmd == "paths":
        print(cache_root() / "microvm")
        return 0
    t0 = time.monotonic()
    k = build_kernel(log, force=args.force)
    print(
        f"kernel   {k.package} ({k.kernel_release}) {k.vmlinuz.parent}  [{time.monotonic() - t0:.1f} s]"
    )
    if args.rootfs:
        t1 = time.monotonic()
        img = build_rootfs(log, force=args.force)
        print(f"rootfs   {img}  [{time.monotonic() - t1:.1f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
