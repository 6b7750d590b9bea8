"""``docker_exec(keep_output=True)``: the engine can lose the output of a command that
ends just after printing (moby/moby#27289, docker/docker-py#2042; seen here under load
as libiscsi_io.py's exit 0 with no output). The command's output then comes from the
files the wrapper script left in the container.

The loss cannot be provoked on demand, so the second test runs the wrapper script for
real on this host behind a stand-in engine whose exec stream delivers nothing; the
first runs it in a real container, where the stream is whole."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.peers.commandlog import CommandLog
from iscsi_conformance.peers.process import docker_exec

SCRIPT = ["sh", "-c", "printf 'out line\\nlast'; echo 'err line' >&2; exit 3"]


class _LosingEngine:
    """An exec API that runs the command on this host and loses its output, as the
    engine sometimes does; ``get_archive`` reads this host's files."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def exec_create(self, _cid: str, argv: list[str], **_kw: Any) -> dict[str, str]:
        done = subprocess.run(argv, capture_output=True, check=False)
        self.codes["x"] = done.returncode
        return {"Id": "x"}

    def exec_start(self, _id: str, demux: bool = True) -> tuple[bytes, bytes]:
        return b"", b""  # lost

    def exec_inspect(self, _id: str) -> dict[str, int]:
        return {"ExitCode": self.codes["x"]}


class _Container:
    name, id = "stand-in", "stand-in"

    def __init__(self) -> None:
        self.client = type("C", (), {"api": _LosingEngine()})()

    def get_archive(self, path: str) -> tuple[list[bytes], dict[str, Any]]:
        data = Path(path).read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return [buf.getvalue()], {}


def test_output_lost_by_the_stream_is_read_from_the_kept_files() -> None:
    log = CommandLog()
    res = docker_exec(_Container(), SCRIPT, log=log, keep_output=True)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out line\nlast", "err line\n")
    assert any("exec stream lost it" in " ".join(r.argv) for r in log.records)
    assert log.records[0].argv == SCRIPT  # the log shows the command, not the wrapper


def test_without_keep_output_the_loss_shows() -> None:
    res = docker_exec(_Container(), SCRIPT, log=CommandLog())
    assert (res.returncode, res.stdout) == (3, "")


@pytest.mark.peer
def test_kept_output_in_a_real_container() -> None:
    from iscsi_conformance.peers.docker_env import DockerUnavailable, ensure_engine
    from iscsi_conformance.peers.images import base_image

    try:
        client = ensure_engine()
    except DockerUnavailable as exc:
        pytest.skip(str(exc))
    c = client.containers.run(
        base_image(client), ["sleep", "60"], detach=True, remove=True, network_mode="none"
    )
    try:
        log = CommandLog()
        res = docker_exec(c, SCRIPT, log=log, keep_output=True)
        assert (res.returncode, res.stdout, res.stderr) == (3, "out line\nlast", "err line\n")
        assert log.records[-1].argv == SCRIPT and "@@icc-end" not in log.records[-1].stdout
        ok = docker_exec(c, ["echo", "hi"], log=log, keep_output=True)
        assert (ok.returncode, ok.stdout) == (0, "hi\n")
    finally:
        c.kill()
