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


def needs_vm(fn):  # type: ignore[no-untyped-def]
    fn = pytest.mark.skipif(
        not HAVE_TOOLS, reason="needs qemu-system-x86, apt-get, dpkg-deb, cpio"
    )(fn)
    return pytest.mark.peer(pytest.mark.slow(fn))


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
    deps = {
        "virtio_net": "net_failover,virtio",
        "net_failover": "failover",
        "failover": "",
        "virtio": "virtio_ring",
        "virtio_ring": "",
    }
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


def test_cache_root_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ISCSI_CONFORMANCE_CACHE", str(tmp_path))
    assert microvm.cache_root() == tmp_path
    monkeypatch.delenv("ISCSI_CONFORMANCE_CACHE")
    assert microvm.cache_root().name == "iscsi-conformance"
    assert ".git" not in microvm.cache_root().parts


def test_argv_forwards_agent_and_ports_on_loopback(tmp_path: Path) -> None:
    k = microvm.KernelArtefacts(tmp_path / "vmlinuz", tmp_path / "initramfs.cpio", "6.1", "pkg", ())
    vm = microvm.MicroVM(
        "x",
        k,
        log=CommandLog(),
        forwards={"iscsi": 3260},
        rootfs=tmp_path / "r.ext4",
        workdir=tmp_path,
    )
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


@pytest.fixture(scope="module")
def vm(kernel: microvm.KernelArtefacts):  # type: ignore[no-untyped-def]
    v = microvm.MicroVM("test", kernel, log=CommandLog(), boot_timeout=180)
    v.start()
    yield v
    v.stop()


@needs_vm
def test_kernel_artefacts_build_once_then_come_from_the_cache(
    kernel: microvm.KernelArtefacts,
) -> None:
    assert kernel.vmlinuz.is_file() and kernel.initramfs.is_file()
    assert kernel.kernel_release and kernel.package.startswith("linux-image-")
    for needed in ("configfs", "target_core_mod", "iscsi_target_mod", "iscsi_tcp", "virtio_net"):
        assert needed in kernel.modules
    assert kernel.modules.index("configfs") < kernel.modules.index("target_core_mod")
    log = CommandLog()
    started = time.monotonic()
    again = microvm.build_kernel(log)
    assert again == kernel
    assert not any(r.argv[:2] == ["apt-get", "download"] for r in log.records)
    assert time.monotonic() - started < 10


@needs_vm
def test_boot_and_agent_round_trip(vm: microvm.MicroVM) -> None:
    assert vm.boot_seconds is not None and vm.boot_seconds < 180
    res = vm.run(["cat", "/sys/kernel/config/target/version"], check=True)
    assert "Target Engine Core" in res.text
    rec = vm.log.records[-1]
    assert rec.where == "microvm:test" and rec.argv == ["cat", "/sys/kernel/config/target/version"]
    assert rec.returncode == 0 and "Target Engine Core" in rec.stdout


@needs_vm
def test_agent_keeps_exit_code_stdout_and_stderr_apart(vm: microvm.MicroVM) -> None:
    res = vm.run("echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")
    with pytest.raises(HarnessError, match="failed \\(3\\)"):
        vm.run("exit 3", check=True)


@needs_vm
def test_agent_is_binary_safe_both_ways(vm: microvm.MicroVM) -> None:
    data = bytes(range(256)) * 64 + b"\n\0RC 0 0 0\n"
    vm.put("/tmp/blob", data)
    assert vm.run(["cat", "/tmp/blob"], binary_output=True).stdout == data
    assert vm.log.records[-1].stdout == f"<{len(data)} bytes>"


@needs_vm
def test_agent_times_out_a_hanging_command(vm: microvm.MicroVM) -> None:
    started = time.monotonic()
    with pytest.raises(HarnessError, match="timed out"):
        vm.run(["sleep", "30"], timeout=2)
    assert time.monotonic() - started < 20
    assert vm.run(["true"]).returncode == 0  # the agent still serves


@needs_vm
def test_secrets_are_masked_in_the_log(vm: microvm.MicroVM) -> None:
    vm.log.secrets.add("hunter2-secret")
    vm.run(["echo", "hunter2-secret"])
    rec = vm.log.records[-1]
    assert "hunter2-secret" not in " ".join(rec.argv) + rec.stdout
    assert "***" in rec.stdout


@needs_vm
def test_a_vm_that_cannot_boot_raises_peer_start_error_with_console(
    tmp_path: Path, kernel: microvm.KernelArtefacts
) -> None:
    broken = microvm.KernelArtefacts(kernel.vmlinuz, tmp_path / "missing.cpio", "x", "x", ())
    v = microvm.MicroVM("broken", broken, log=CommandLog(), boot_timeout=60)
    with pytest.raises(PeerStartError) as info:
        v.start()
    assert "qemu exited" in str(info.value)
    assert v.proc is None


@needs_vm
def test_stop_kills_qemu(kernel: microvm.KernelArtefacts) -> None:
    v = microvm.MicroVM("stopme", kernel, log=CommandLog(), boot_timeout=180)
    v.start()
    assert v.proc is not None
    pid = v.proc.pid
    v.stop()
    v.stop()  # idempotent
    assert (
        not Path(f"/proc/{pid}").exists()
        or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )


@needs_vm
@pytest.mark.skipif(
    not (shutil.which("debootstrap") and shutil.which("mke2fs")),
    reason="needs debootstrap, e2fsprogs",
)
def test_rootfs_guest_boots_with_open_iscsi(kernel: microvm.KernelArtefacts) -> None:
    log = CommandLog()
    image = microvm.build_rootfs(log)
    assert image.is_file() and (image.parent / "packages").read_text().count("open-iscsi")
    v = microvm.MicroVM("rootfs", kernel, log=log, rootfs=image, boot_timeout=180)
    v.start()
    try:
        res = v.run("iscsiadm --version; command -v sg_inq; grep ' / ' /proc/mounts", check=True)
        assert "iscsiadm version" in res.text and "/dev/vda / ext4" in res.text
        assert os.path.getsize(image) > 0
    finally:
        v.stop()
