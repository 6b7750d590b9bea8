"""``iscsi-conformance peers start|stop|status|url|exec``: a peer as a tool of its own.

Bad input gets one line and starts nothing; the reference target (no peer needed) is
started, logged in to through the URL it prints, and stopped by Ctrl-C, by SIGTERM and
by ``peers stop``; as root, tgt in its container and LIO in its micro-VM are too, and
after Ctrl-C no container, network, QEMU or state file of theirs is left.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers import tool
from iscsi_conformance.peers.cli import main as peers_main

SECRET = "tool-secret-4821"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv(tool.STATE_ENV, str(folder))
    return folder


# --------------------------------------------------------------------------- inputs


def test_sizes() -> None:
    assert tool.parse_size("64M") == 64 * 1024 * 1024
    assert tool.parse_size("1GiB") == 1024**3
    assert tool.parse_size("4096") == 4096
    for bad in ("1x", "-1M", "0", "100", ""):
        with pytest.raises(ConfigError, match="size"):
            tool.parse_size(bad)


def test_chap_secret_never_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tool.SECRET_ENV, raising=False)
    with pytest.raises(ConfigError, match="the secret goes in"):
        tool.chap_account(f"alice:{SECRET}", None, tool.SECRET_ENV)
    with pytest.raises(ConfigError, match="no secret"):
        tool.chap_account("alice", None, tool.SECRET_ENV)
    with pytest.raises(ConfigError, match="without --chap"):
        tool.chap_account(None, str(tmp_path / "s"), tool.SECRET_ENV)
    (tmp_path / "s").write_text(SECRET + "\n")
    src = tool.chap_account("alice", str(tmp_path / "s"), tool.SECRET_ENV)
    assert src is not None and src.account.secret == SECRET and SECRET not in src.shell
    monkeypatch.setenv(tool.SECRET_ENV, SECRET)
    src = tool.chap_account("alice", None, tool.SECRET_ENV)
    assert src is not None and src.shell == f"${tool.SECRET_ENV}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "nosuch"], "no peer named 'nosuch'"),
        (["start", "tgt", "--lun", "1x"], "is not a size"),
        (["start", "tgt", "--port", "70000"], "is not a TCP port"),
        (["start", "tgt", "--chap", "bob"], "no secret"),
        (["start", "tgt", "--url", "iscsi://127.0.0.1/iqn.x"], "--url is for initiators"),
        (["start", "open-iscsi"], "give the target, --url"),
        (["start", "lio", "--mode", "container", "--port", "3000"], "microvm mode only"),
        (["start", "reference", "--mutual-chap", "t"], "no secret"),
        (["exec", "nosuch", "--", "ls"], "no peer named"),
        (["exec", "open-iscsi"], "is not running"),
        (["stop", "tgt"], "not running: tgt"),
        (["url", "tgt"], "no target tgt is running"),
        (["start"], "the following arguments are required"),
        (["bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(
    argv: list[str],
    message: str,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(tool.SECRET_ENV, raising=False)
    monkeypatch.delenv(tool.MUTUAL_SECRET_ENV, raising=False)
    try:
        code = peers_main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert err.count("\n") == 1 and message in err, err
    assert not list(state_dir.glob("*.json"))


def test_a_port_in_use_is_refused(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert peers_main(["start", "reference", "--port", str(port)]) == 2
    assert (
        capsys.readouterr().err == f"iscsi-conformance peers: port {port} on 127.0.0.1 is in use\n"
    )


def test_no_docker_engine_is_one_line(
    state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert peers_main(["start", "tgt", "--mode", "container"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Docker engine answers" in err, err
    assert not list(state_dir.glob("*.json"))


def test_the_login_lines_name_the_secret_without_showing_it() -> None:
    state = {
        "name": "tgt",
        "mode": "container",
        "version": "1.0.85",
        "startup_seconds": 1.2,
        "portal": ["127.0.0.1", 3260],
        "iqn": "iqn.x:t",
        "luns": [1],
        "lun_size": 64 << 20,
        "chap": {"user": "alice", "shell": "$S", "described": "from $S"},
        "mutual_chap": {"user": "tgt", "shell": "$M", "described": "from $M"},
    }
    text = "\n".join(tool.target_help(state))
    assert 'node.session.auth.password -v "$S"' in text
    assert 'node.session.auth.password_in -v "$M"' in text
    assert (
        'inquiry "iscsi://alice%$S@127.0.0.1:3260/iqn.x:t/1?target_user=tgt&target_password=$M"'
        in text
    )
    assert tool.public_url(state) == "iscsi://127.0.0.1:3260/iqn.x:t/1"


# --------------------------------------------------------------------------- a started peer


class Started:
    """``peers start ...`` in a child process, as a user runs it in a terminal."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iscsi_conformance.cli", "peers", "start", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if line.startswith("stop with Ctrl-C"):
                return
        self.proc.kill()
        raise AssertionError(f"not up: {self.lines} {self.proc.communicate()[1]}")

    @property
    def url(self) -> str:
        """The URL of the printed ``initiator inquiry "URL"`` line."""
        m = re.search(r'initiator inquiry "([^"]+)"', "\n".join(self.lines))
        assert m, self.lines
        return m.group(1)

    def end(self, sig: int = signal.SIGINT, timeout: float = 120.0) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, tool.STATE_ENV: str(state_dir), **extra}


def _inquiry(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A login through ``url`` (its ``$VAR`` expanded as a shell would) and INQUIRY, by
    ``iscsi-conformance initiator inquiry`` in this process."""
    from iscsi_conformance.cli import main

    url = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), url)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["initiator", "inquiry", url])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess([url], code, out.getvalue(), err.getvalue())


def test_reference_target_up_logged_in_and_stopped_by_ctrl_c(state_dir: Path) -> None:
    env = _env(state_dir, **{tool.SECRET_ENV: SECRET})
    peer = Started(["reference", "--chap", "alice", "--lun", "8M"], env, timeout=30)
    assert any("CHAP     user alice, secret from $" in ln for ln in peer.lines)
    state = json.loads((state_dir / "reference.json").read_text())
    assert SECRET not in json.dumps(state) and SECRET not in "\n".join(peer.lines)
    ok = _inquiry(peer.url, env)
    assert ok.returncode == 0 and "REFERENCE" in ok.stdout, ok.stderr
    refused = _inquiry(peer.url.replace("$" + tool.SECRET_ENV, "wrong-secret-123"), env)
    assert refused.returncode != 0 and "AUTH_FAILURE" in refused.stderr
    code, out, err = peer.end(signal.SIGINT)
    assert code == 0 and "reference stopped after" in out, err
    assert not (state_dir / "reference.json").exists()


def test_detach_status_url_and_stop(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = _env(state_dir)
    cli = [sys.executable, "-m", "iscsi_conformance.cli", "peers"]
    up = subprocess.run(
        [*cli, "start", "reference", "--detach"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert up.returncode == 0 and "running in the background as pid" in up.stdout, up.stderr
    pid = json.loads((state_dir / "reference.json").read_text())["pid"]
    try:
        again = subprocess.run(
            [*cli, "start", "reference"], capture_output=True, text=True, env=env, timeout=60
        )
        assert again.returncode == 2 and "already running" in again.stderr
        assert peers_main(["status", "--json"]) == 0
        assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["reference"]
        assert peers_main(["url", "reference"]) == 0
        assert _inquiry(capsys.readouterr().out.strip(), env).returncode == 0
    finally:
        down = subprocess.run([*cli, "stop"], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0 and "reference stopped after" in down.stdout, down.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not list(state_dir.glob("*.json"))


def test_libiscsi_logs_in_to_a_url_and_runs_its_tools(
    state_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("iscsi-inq") is None:
        pytest.skip("needs libiscsi-bin (ci/provision.py packages)")
    env = _env(state_dir)
    target = Started(["reference"], env, timeout=30)
    try:
        url = target.url
        ini = Started(["libiscsi", "--url", url], env, timeout=120)
        assert f"  logged in to {url}" in ini.lines
        assert peers_main(["exec", "libiscsi", "--", "iscsi-inq", url]) == 0
        assert "DIRECT_ACCESS" in capfd.readouterr().out
        assert peers_main(["stop"]) == 0  # the initiator first, then the target
        out = capfd.readouterr().out
        assert out.index("libiscsi stopped") < out.index("reference stopped"), out
    finally:
        for peer in (target, locals().get("ini")):
            if peer is not None and peer.proc.poll() is None:
                peer.end(signal.SIGTERM)
    assert not list(state_dir.glob("*.json"))


# --------------------------------------------------------------------------- real peers, as root


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("peers start of tgt and LIO is tested as root (containers, micro-VM)")


def _docker_leftovers(run_id: str) -> list[str]:
    from iscsi_conformance.peers.docker_env import LABEL_RUN, ensure_engine

    client = ensure_engine(start=False)
    label = {"label": f"{LABEL_RUN}={run_id}"}
    return [c.name for c in client.containers.list(all=True, filters=label)] + [
        n.name for n in client.networks.list(filters=label)
    ]


@pytest.fixture
def peer_env(state_dir: Path) -> Iterator[dict[str, str]]:
    _root()
    env = _env(state_dir, **{tool.SECRET_ENV: SECRET})
    yield env
    # whatever a failed test left: stop it the way a user would
    subprocess.run(
        [sys.executable, "-m", "iscsi_conformance.cli", "peers", "stop"],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )


@pytest.mark.peer
def test_tgt_in_its_container_with_chap(peer_env: dict[str, str], state_dir: Path) -> None:
    peer = Started(["tgt", "--mode", "container", "--chap", "alice"], peer_env, timeout=180)
    state = json.loads((state_dir / "tgt.json").read_text())
    run_id = state["resources"]["docker_run"]
    assert state["resources"]["containers"], state
    ok = _inquiry(peer.url, peer_env)
    assert ok.returncode == 0 and "vendor:" in ok.stdout, ok.stderr
    no_chap = _inquiry(tool.public_url(state), peer_env)
    assert no_chap.returncode != 0 and "AUTH_FAILURE" in no_chap.stderr
    code, out, err = peer.end(signal.SIGINT)
    assert code == 0 and "tgt stopped after" in out, err
    assert _docker_leftovers(run_id) == []
    assert not (state_dir / "tgt.json").exists()


@pytest.mark.peer
def test_lio_in_its_micro_vm_on_a_chosen_port(peer_env: dict[str, str], state_dir: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86 (ci/setup_host.sh)")
    from iscsi_conformance.netutil import free_tcp_port

    port = free_tcp_port("127.0.0.1")
    peer = Started(["lio", "--mode", "microvm", "--port", str(port)], peer_env, timeout=400)
    assert f"  portal   127.0.0.1:{port}" in peer.lines
    qemu = json.loads((state_dir / "lio.json").read_text())["resources"]["pids"]
    assert qemu, "the QEMU of the micro-VM is not recorded"
    ok = _inquiry(peer.url, peer_env)
    assert ok.returncode == 0 and "LIO-ORG" in ok.stdout, ok.stderr
    code, out, err = peer.end(signal.SIGINT)
    assert code == 0 and "lio stopped after" in out, err
    assert [p for p in qemu if Path(f"/proc/{p}").exists()] == []
    assert not (state_dir / "lio.json").exists()
    with socket.socket() as s:  # the forwarded portal went with the VM
        assert s.connect_ex(("127.0.0.1", port)) != 0
