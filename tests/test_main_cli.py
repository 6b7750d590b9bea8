"""The ``iscsi-conformance`` command: run, certify, and their error paths.

``certify`` is checked for its safety promise: without ``--allow-dataloss`` the
target's LUN is byte-for-byte unchanged after a full certification run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iscsi_conformance.netutil import free_tcp_port

IQN = "iqn.2024-01.org.iscsi-conformance:cli-test"


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iscsi_conformance.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def file_target(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The reference target serving a 32 MiB file LUN, as a separate process."""
    port = free_tcp_port()
    lun = tmp_path / "lun.img"
    with lun.open("wb") as fh:  # recognisable content, so any write shows
        for i in range(32 * 1024 // 64):
            fh.write(hashlib.sha256(str(i).encode()).digest() * 2048)
    log = tmp_path / "target.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the target
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iscsi_conformance.cli",
                "target",
                "--listen",
                f"127.0.0.1:{port}",
                "--target",
                IQN,
                "--lun",
                str(lun),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield port, lun
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_certify_is_read_only_by_default(file_target: tuple[int, Path], tmp_path: Path) -> None:
    port, lun = file_target
    before = _digest(lun)
    out = _cli(
        "certify",
        f"iscsi://127.0.0.1:{port}/{IQN}/0",
        "--report",
        str(tmp_path / "rep"),
        "-q",
        "--suite",
        "Login.Stages",
        "--suite",
        "FullFeature.Scsi",
        "--suite",
        "FullFeature.DataOut",
        "--suite",
        "FullFeature.Errors",
        "--suite",
        "Reservations",
    )
    assert _digest(lun) == before, "certify without --allow-dataloss changed the LUN"
    assert "CERTIFIED" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
    assert (tmp_path / "rep" / "index.html").exists()
    assert "HTML report:" in out.stdout
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    writers = [
        t
        for t in results["tests"]
        if t["id"].startswith(("FullFeature.DataOut", "Reservations."))
        and t["outcome"] != "skipped"
    ]
    assert not writers, (
        f"tests that write ran without --allow-dataloss: {[t['id'] for t in writers]}"
    )


def test_certify_exit_status_follows_musts(file_target: tuple[int, Path], tmp_path: Path) -> None:
    port, _lun = file_target
    out = _cli(
        "certify",
        f"iscsi://127.0.0.1:{port}/{IQN}/0",
        "--report",
        str(tmp_path / "rep"),
        "-q",
        "--suite",
        "Login.Keys",
    )
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    failed_musts = [
        t
        for t in results["tests"]
        if t["outcome"] in ("failed", "error")
        and any(s["level"] == "MUST" and s["role"] in ("target", "both") for s in t["spec"])
    ]
    assert (out.returncode == 0) == (not failed_musts), (
        out.returncode,
        [t["id"] for t in failed_musts],
    )


def test_certify_bad_url() -> None:
    out = _cli("certify", "iscsi://127.0.0.1:notaport/iqn.x/0")
    assert out.returncode == 2
    assert "bad URL" in out.stderr and out.stderr.count("\n") == 1


def test_certify_unreachable() -> None:
    out = _cli("certify", f"iscsi://127.0.0.1:{free_tcp_port()}/{IQN}/0")
    assert out.returncode == 1
    assert "cannot reach" in out.stderr and out.stderr.count("\n") == 1


def test_certify_unknown_target(file_target: tuple[int, Path]) -> None:
    port, _ = file_target
    out = _cli("certify", f"iscsi://127.0.0.1:{port}/iqn.2024-01.org.iscsi-conformance:absent/0")
    assert out.returncode == 1
    assert "login refused" in out.stderr and out.stderr.count("\n") == 1


def test_run_embedded_default_writes_report(tmp_path: Path) -> None:
    started = time.monotonic()
    out = _cli(
        "run",
        "--report",
        str(tmp_path / "rep"),
        "--suite",
        "Login.Stages",
        "--suite",
        "Discovery",
        "-q",
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "iSCSI conformance summary" in out.stdout and "reference×reference" in out.stdout
    doc = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert doc["tests"] and all(t["pairing"] == "reference×reference" for t in doc["tests"])
    assert (tmp_path / "rep" / "junit.xml").exists()
    assert time.monotonic() - started < 600


def test_run_bad_peer_name(tmp_path: Path) -> None:
    out = _cli(
        "run",
        "--report",
        str(tmp_path / "rep"),
        "--target",
        "no-such-peer",
        "--suite",
        "Login.Stages",
        "-q",
    )
    assert out.returncode != 0
    assert "no target driver named 'no-such-peer'" in out.stdout + out.stderr


def test_help_lists_subcommands() -> None:
    out = _cli("--help")
    for cmd in ("run", "certify", "target", "initiator", "report", "peers", "fuzz"):
        assert cmd in out.stdout
    assert os.environ.get("ISCSI_CONFORMANCE_NEVER_SET") is None


def test_plan_shards_balances_by_weight_and_keeps_order() -> None:
    from iscsi_conformance.cli import plan_shards

    assert plan_shards(["reference", "tgt", "lio"], 2) == [["lio"], ["reference", "tgt"]]
    assert plan_shards(["reference", "tgt", "lio"], 1) == [["reference", "tgt", "lio"]]
    assert plan_shards(["reference", "tgt"], 5) == [["reference"], ["tgt"]]
    assert sorted(map(len, plan_shards(["a", "b", "c", "d"], 2))) == [2, 2]


def test_plan_run_splits_by_initiator_and_gives_each_column_once() -> None:
    from iscsi_conformance.cli import plan_run

    plan = plan_run(["reference", "tgt", "lio"], ["reference", "libiscsi", "open-iscsi"], 2)
    assert [s.initiators for s in plan] == [["open-iscsi"], ["reference", "libiscsi"]]
    assert all(s.targets == ["reference", "tgt", "lio"] for s in plan)
    assert [s.target_column for s in plan] == [False, True]  # reference initiator's shard
    assert all(s.initiator_column for s in plan)
    one = plan_run(["reference", "tgt", "lio"], ["reference"], 2)
    assert [s.targets for s in one] == [["lio"], ["reference", "tgt"]]
    assert [s.initiator_column for s in one] == [False, True]
    # a fourth shard splits the heaviest third-party initiator (open-iscsi, weight 6):
    # its cell with the reference target (with the Initiator area), then the others
    four = plan_run(["reference", "tgt", "lio"], ["reference", "libiscsi", "open-iscsi"], 4)
    assert [(s.initiators, s.targets) for s in four] == [
        (["open-iscsi"], ["reference"]),
        (["open-iscsi"], ["tgt", "lio"]),
        (["libiscsi"], ["reference", "tgt", "lio"]),
        (["reference"], ["reference", "tgt", "lio"]),
    ]
    assert [s.target_column for s in four] == [False, False, False, True]
    assert [s.initiator_column for s in four] == [True, False, True, True]


def test_shard_argv_gives_each_column_to_one_shard() -> None:
    import argparse
    from pathlib import Path

    from iscsi_conformance.cli import Shard, _shard_argv

    args = argparse.Namespace(suite=["Interop"], peer_mode=None, allure=None)
    with_columns = _shard_argv(args, Shard(["reference"], ["reference"]), Path("r/0"), ["-x"])
    without = _shard_argv(
        args, Shard(["lio"], ["libiscsi", "open-iscsi"], False, False), Path("r/1"), []
    )
    assert "--iscsi-no-initiator-column" not in with_columns and "-x" in with_columns
    assert "--iscsi-no-target-column" not in with_columns
    assert without[-2:] == ["--iscsi-no-initiator-column", "--iscsi-no-target-column"]
    assert without[without.index("--target") + 1] == "lio"
    assert without.count("--initiator") == 2
