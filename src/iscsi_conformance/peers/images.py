"""Peer images, built locally from Debian packages; never pulled.

Theory of operation: every peer Dockerfile starts ``ARG BASE=debian:bookworm`` /
``FROM ${BASE}``. ``base_image()`` picks the base: the official ``debian:bookworm``
when it is already in the local engine (a user's machine with a registry), otherwise
our own ``iscsi-conformance/base:bookworm``, built when missing by ``debootstrap
--variant=minbase`` from the Debian mirror this host's apt is configured with, then
``docker import``. The host's Debian apt sources (suites of the same release:
``bookworm``, ``-updates``, ``-security``) are written into that base so ``apt-get``
in a Dockerfile reaches the same registry as the host and installs the same package
versions. No mirror host name is written in this file: it is read from the host.

A peer image is tagged with the hash of everything that went into it (the peer
folder's files and the base image ID), so an unchanged peer is never rebuilt.
Builds use the host network (the same reach as the host's own apt).

Command line: ``python -m iscsi_conformance.peers.images [base|build NAME...|all]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError, PeerStartError
from iscsi_conformance.peers.base import CommandLog, Role
from iscsi_conformance.peers.docker_env import ensure_engine
from iscsi_conformance.peers.manifest import peer_folder

OFFICIAL_BASE = "debian:bookworm"
LOCAL_BASE_REPO = "iscsi-conformance/base"
CODENAME = "bookworm"
IMAGE_REPO = "iscsi-conformance/{role}-{name}"
LABEL_INPUTS = "iscsi-conformance.inputs"
ENV_BASE = "ISCSI_CONFORMANCE_BASE_IMAGE"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_D = Path("/etc/apt/sources.list.d")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".git"}
# Files of a peer folder that never go into its image: recording a deviation in the
# manifest must not rebuild (and re-hash) the peer's image.
_NOT_IN_IMAGE = {"manifest.toml", "README.md"}


class ImageBuildError(PeerStartError):
    """An image could not be built; ``log_tail`` holds the build's last output."""


# --------------------------------------------------------------------------- apt sources


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            out.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return out


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if (
            "deb" not in fields.get("types", "").split()
            or fields.get("enabled", "yes").lower() == "no"
        ):
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri,
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                )
            )
    return out


def host_apt_sources(codename: str = CODENAME, *, root: Path = Path("/")) -> list[AptSource]:
    """The host's enabled Debian sources for ``codename`` and its -updates/-security.

    Third-party repositories use other suite names and are left out (their keys are
    not in a minbase image).
    """
    wanted = {codename, f"{codename}-updates", f"{codename}-security", f"{codename}/updates"}
    found: list[AptSource] = []
    main = root / APT_SOURCES.relative_to("/")
    if main.is_file():
        found += _parse_one_line(main.read_text(errors="replace"))
    d = root / APT_SOURCES_D.relative_to("/")
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list":
                found += _parse_one_line(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                found += _parse_deb822(f.read_text(errors="replace"))
    out = []
    for s in found:
        suites = tuple(x for x in s.suites if x in wanted)
        if suites and s.uri.startswith(("http://", "https://")):
            out.append(AptSource(s.uri, suites, s.components or ("main",)))
    return out


def host_mirror(codename: str = CODENAME) -> str:
    """The URI the host's apt uses for ``codename`` itself (for debootstrap)."""
    for s in host_apt_sources(codename):
        if codename in s.suites:
            return s.uri
    raise ConfigError(
        f"no Debian mirror for {codename!r} in {APT_SOURCES} or {APT_SOURCES_D}; "
        "pass mirror= (or set up apt) to build the base image",
        field="mirror",
    )


def deb822_sources(sources: Iterable[AptSource]) -> str:
    paras = []
    for s in sources:
        paras.append(
            f"Types: deb\nURIs: {s.uri}\nSuites: {' '.join(s.suites)}\n"
            f"Components: {' '.join(s.components)}\nSigned-By: {DEBIAN_KEYRING}\n"
        )
    return "\n".join(paras)


# --------------------------------------------------------------------------- base image


def _image_exists(client: Any, ref: str) -> Any | None:
    try:
        return client.images.get(ref)
    except Exception:
        return None


def base_image(client: Any = None, *, log: CommandLog | None = None, build: bool = True) -> str:
    """The base image reference to build peers from; builds ours when needed.

    Order: ``$ISCSI_CONFORMANCE_BASE_IMAGE`` (must be local), the official
    ``debian:bookworm`` if already local, our ``iscsi-conformance/base:bookworm``.
    """
    client = client or ensure_engine()
    override = os.environ.get(ENV_BASE)
    if override:
        if _image_exists(client, override) is None:
            raise ConfigError(
                f"{ENV_BASE}={override} is not in the local engine (we never pull)", field=ENV_BASE
            )
        return override
    if _image_exists(client, OFFICIAL_BASE) is not None:
        return OFFICIAL_BASE
    ours = f"{LOCAL_BASE_REPO}:{CODENAME}"
    if _image_exists(client, ours) is not None:
        return ours
    if not build:
        raise ConfigError(
            f"neither {OFFICIAL_BASE} nor {ours} is in the local engine", field="base"
        )
    build_base_image(client, log=log)
    return ours


def build_base_image(
    client: Any = None,
    *,
    codename: str = CODENAME,
    mirror: str | None = None,
    tag: str | None = None,
    log: CommandLog | None = None,
    workdir: str | None = None,
) -> str:
    """debootstrap a minbase ``codename`` and import it; returns the image ID."""
    client = client or ensure_engine()
    log = log if log is not None else CommandLog()
    tag = tag or f"{LOCAL_BASE_REPO}:{codename}"
    if os.geteuid() != 0:
        raise ImageBuildError("base", "debootstrap needs root; run ci/build_base_image.sh as root")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError("base", "debootstrap is not installed (apt-get install debootstrap)")
    mirror = mirror or host_mirror(codename)
    sources = [s for s in host_apt_sources(codename)] or [AptSource(mirror, (codename,), ("main",))]
    from iscsi_conformance.peers.process import run

    tmp = Path(tempfile.mkdtemp(prefix="icc-debootstrap-", dir=workdir))
    rootfs = tmp / "rootfs"
    try:
        res = run(
            [debootstrap, "--variant=minbase", codename, str(rootfs), mirror],
            log=log,
            timeout=1200,
        )
        if not res.ok:
            raise ImageBuildError(
                "base",
                f"debootstrap exited {res.returncode}",
                log_tail=res.record.stdout[-3000:] + res.record.stderr[-2000:],
            )
        # apt inside the image reaches the same registry as the host's apt.
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(deb822_sources(sources))
        (rootfs / "etc/apt/apt.conf.d/90iscsi-conformance").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
        # Services must not start during image builds (no init in a container).
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        started = time.monotonic()
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        try:
            repo, _, tagname = tag.rpartition(":")
            answer = client.api.import_image(
                src=tar.stdout,
                repository=repo,
                tag=tagname,
                changes=['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"],
                stream_src=True,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        log.add(
            ["tar", "-C", str(rootfs), "-c", ".", "|", "docker", "import", "-", tag],
            tar.returncode,
            str(answer)[-2000:],
            "",
            started,
        )
        image = client.images.get(tag)
        return str(image.id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- peer images


def context_files(folder: Path) -> list[Path]:
    """Files of a build context that can reach the image, sorted; caches and the
    peer's manifest (data for the suite, never copied in) left out."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part in _IGNORED_NAMES for part in rel.parts):
            continue
        if rel.as_posix() in _NOT_IN_IMAGE:
            continue
        out.append(p)
    return out


def inputs_hash(folder: Path, base_id: str) -> str:
    """Hash of the context (paths, modes and contents) and the base image ID."""
    h = hashlib.sha256()
    h.update(b"base\0" + base_id.encode() + b"\0")
    for f in context_files(folder):
        rel = f.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0" + oct(f.stat().st_mode & 0o777).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def image_tag(role: Role, name: str, folder: Path, base_id: str) -> str:
    return f"{IMAGE_REPO.format(role=role, name=name)}:{inputs_hash(folder, base_id)[:16]}"


def build_peer_image(
    role: Role,
    name: str,
    *,
    client: Any = None,
    log: CommandLog | None = None,
    base: str | None = None,
    folder: Path | None = None,
    timeout: float = 1800,
) -> str:
    """Build (or reuse) the image of peer ``name``; returns its tag."""
    from .phases import timed

    with timed("images"):
        return _build_peer_image(role, name, client, log, base, folder, timeout)


def _build_peer_image(
    role: Role,
    name: str,
    client: Any,
    log: CommandLog | None,
    base: str | None,
    folder: Path | None,
    timeout: float,
) -> str:
    client = client or ensure_engine()
    log = log if log is not None else CommandLog()
    folder = folder or peer_folder(role, name)
    if not (folder / "Dockerfile").is_file():
        raise ConfigError(f"{folder} has no Dockerfile", field="Dockerfile")
    base = base or base_image(client, log=log)
    base_id = str(client.images.get(base).id)
    tag = image_tag(role, name, folder, base_id)
    shown = [
        "docker",
        "build",
        "--network=host",
        f"--build-arg=BASE={base}",
        "-t",
        tag,
        str(folder),
    ]
    if _image_exists(client, tag) is not None:
        log.add([*shown, "# cached"], 0, f"image {tag} is up to date\n", "", time.monotonic())
        return tag
    started = time.monotonic()
    lines: list[str] = []
    error = ""
    try:
        for chunk in client.api.build(
            path=str(folder),
            tag=tag,
            buildargs={"BASE": base},
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            labels={LABEL_INPUTS: tag.rsplit(":", 1)[1], "iscsi-conformance.peer": name},
            timeout=int(timeout),
        ):
            if "stream" in chunk:
                lines.append(chunk["stream"])
            elif "error" in chunk:
                error = str(chunk["error"])
                lines.append("ERROR: " + error + "\n")
            elif "status" in chunk:
                lines.append(str(chunk["status"]) + "\n")
    except Exception as exc:
        error = error or str(exc)
    output = "".join(lines)
    log.add(shown, 1 if error else 0, output, error, started)
    if error:
        raise ImageBuildError(
            f"{role}:{name}",
            f"image build failed: {error}",
            log_tail="\n".join(output.splitlines()[-25:]),
        )
    return tag


def _main(argv: list[str]) -> int:
    """``base`` | ``build ROLE/NAME...`` | ``all``: build and print timings."""
    from iscsi_conformance.peers.manifest import peer_folders

    if not argv or argv[0] in ("-h", "--help"):
        print(_main.__doc__)
        return 0
    client = ensure_engine()
    log = CommandLog()
    t = time.monotonic()
    if argv[0] == "base":
        image_id = build_base_image(client, log=log)
        print(f"base {LOCAL_BASE_REPO}:{CODENAME} {image_id} in {time.monotonic() - t:.1f} s")
        return 0
    if argv[0] == "all":
        wanted = [
            (r, n)
            for r in ("target", "initiator")
            for n, f in peer_folders(r).items()
            if (f / "Dockerfile").is_file()
        ]  # type: ignore[arg-type]
    else:
        wanted = []
        for spec in argv[1:] if argv[0] == "build" else argv:
            role, _, name = spec.partition("/")
            wanted.append((role, name))
    base = base_image(client, log=log)
    print(f"base {base} ready in {time.monotonic() - t:.1f} s")
    for role, name in wanted:
        t = time.monotonic()
        tag = build_peer_image(role, name, client=client, log=log, base=base)  # type: ignore[arg-type]
        print(f"{role}/{name} {tag} in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
