"""The micro-VM plumbing: artefacts, boot, the agent's framing (microvm.py)."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from iscsi_conformance.errors import HarnessError, PeerStartError
from iscsi_conformance.peers import microvm
from iscsi_conformance.peers.base import CommandLog

HAVE_TOOLS = all(shutil.which(t) for t in ("qemu-system-x86_64", "apt-get", "dpkg-deb", "cpio"))
needs_vm = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_TOOLS, reason="needs qemu-system-x86, apt-get, dpkg-deb, cpio"),
]


def _fake_module(depends: str) -> bytes:
    """A minimal 64-bit ELF with a .modinfo section, as a kernel module has."""
    shstr = b"\0.modinfo\0.shstrtab\0"
    modinfo = b"license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0"
    body_off = 64
    modinfo_off = body_off
    shstr_off = modinfo_off + len(modinfo)
    shoff = shstr_off + len(shstr)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = bytes(64)  # null section
    sections += struct.pack("<IIQQQQ", 1, 1, 0, 0, modinfo_off, len(modinfo)).ljust(64, b"\0")
    sections += struct.pack("<IIQQQQ", 10, 3, 0, 0, shstr_off, len(shstr)).ljust(64, b"\0")
    return bytes(header) + modinfo + shstr + sections


def test_modinfo_depends_reads_the_elf_section() -> None:
    assert microvm.modinfo_depends(_fake_module("a,b_c")) == ["a", "b_c"]
    assert microvm.modinfo_depends(_fake_module("")) == []


def test_resolve_modules_orders_dependencies_first(tmp_path: Path) -> None:
    deps = {"virtio_net": "net_failover,virtio", "net_failover": "failover", "failover": "", "virtio": "virtio_ring", "virtio_ring": ""}
    index = {}
    for name, d in deps.items():
        p = tmp_path / f"{name}.ko"
        p.write_bytes(_fake_module(d))
        index[name] = p
    order = microvm.resolve_modules(index, ["virtio_net"])
    assert order[-1] == "virtio_net"
    for name, d in deps.items():
        for dep in filter(None, d.split(",")):
            assert order.index(dep) < order.index(name)
    with pytest.raises(HarnessError, match="not found"):
        microvm.resolve_modules(index, ["iscsi_tcp"])


def test_cache_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ISCSI_CONFORMANCE_CACHE", str(tmp_path))
    assert microvm.cache_root() == tmp_path
    monkeypatch.delenv("ISCSI_CONFORMANCE_CACHE")
    assert microvm.cache_root().name == "iscsi-conformance"
    assert ".git" not in microvm.cache_root().parts


def test_argv_forwards_agent_and_ports_on_loopback(tmp_path: Path) -> None:
    k = microvm.KernelArtefacts(tmp_path / "vmlinuz", tmp_path / "initramfs.cpio", "6.1", "pkg", ())
    vm = microvm.MicroVM("x", k, log=CommandLog(), forwards={"iscsi": 3260}, rootfs=tmp_path / "r.ext4", workdir=tmp_path)
    vm.ports = {"agent": 40001, "iscsi": 40002}
    argv = vm.argv()
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    net = argv[argv.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:40001-:7070" in net and "hostfwd=tcp:127.0.0.1:40002-:3260" in net
    assert any("snapshot=on" in a for a in argv)  # the cached image is never written
    assert "ic.root=/dev/vda" in argv[-1]


# --------------------------------------------------------------------------- real VM


@pytest.fixture(scope="module")
def kernel() -> microvm.KernelArtefacts:
    return microvm.build_kernel(CommandLog())


@pytest.mark.parametrize("_", [None], ids=["cached"])
@pytest.mark.usefixtures("_")
def test_kernel_artefacts_are_cached(kernel: microvm.KernelArtefacts, _: None) -> None:
    pass


for _m in needs_vm:
    test_kernel_artefacts_are_cached = _m(test_kernel_artefacts_are_cached)
