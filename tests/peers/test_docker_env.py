"""Docker plumbing, images and command running.

Unit tests run without an engine; tests marked ``peer`` need Docker (they start it
when we are root and it is installed, else they skip).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iscsi_conformance.peers import images, process
from iscsi_conformance.peers.base import CommandLog
from iscsi_conformance.peers.docker_env import owner_alive, owner_label
from iscsi_conformance.peers.process import BackgroundProcess, CommandFailed, CommandTimeout, run

# --------------------------------------------------------------------------- process


def test_run_records_and_masks_secrets() -> None:
    log = CommandLog()
    res = run(
        [
            sys.executable,
            "-c",
            "import os,sys; print('pw=' + os.environ['PW']); print('err', file=sys.stderr)",
        ],
        log=log,
        env={"PW": "hunter2secret"},
        secrets=["hunter2secret"],
    )
    assert res.ok and "hunter2secret" in res.stdout  # raw output is for parsing only
    rec = log.records[-1]
    assert rec.argv[0] == "PW=***"
    assert rec.stdout.strip() == "pw=***" and rec.stderr.strip() == "err"
    assert "hunter2secret" not in repr(log.records)
    assert rec.returncode == 0 and rec.where == "host" and rec.duration >= 0


def test_run_check_and_missing_program() -> None:
    log = CommandLog()
    with pytest.raises(CommandFailed, match="exited 3"):
        run([sys.executable, "-c", "raise SystemExit(3)"], log=log, check=True)
    res = run(["/nonexistent/program"], log=log)
    assert res.returncode == 127 and log.records[-1].returncode == 127


def test_run_timeout_is_recorded() -> None:
    log = CommandLog()
    t = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], log=log, timeout=0.5)
    assert time.monotonic() - t < 10
    assert log.records[-1].returncode is None


def test_background_process_tail_and_stop(tmp_path: Path) -> None:
    log = CommandLog(secrets={"s3cret"})
    code = (
        "import sys,time\nfor i in range(5): print('line', i, 's3cret', flush=True)\ntime.sleep(60)"
    )
    bg = BackgroundProcess([sys.executable, "-c", code], log=log, log_path=tmp_path / "d.log")
    assert process.wait_until(lambda: "line 4" in bg.tail(), timeout=10)
    assert bg.alive() and "s3cret" not in bg.tail() and "***" in bg.tail()
    assert bg.record.returncode is None
    bg.stop(timeout=2)
    assert not bg.alive() and bg.record.returncode is not None
    assert "line 4" in bg.record.stdout


def test_cleanup_registry_runs_once() -> None:
    calls = []

    class Thing:
        def close(self) -> None:
            calls.append(1)

    t = Thing()
    process.register_cleanup(t)
    process.run_cleanups()
    process.run_cleanups()
    assert calls == [1]


def test_background_process_killed_at_interpreter_exit(tmp_path: Path) -> None:
    """A daemon started by a process that then dies of an exception is stopped."""
    pidfile = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import sys
        from iscsi_conformance.peers.base import CommandLog
        from iscsi_conformance.peers.process import BackgroundProcess
        bg = BackgroundProcess([sys.executable, "-c", "import time; time.sleep(120)"],
                               log=CommandLog(), log_path={str(tmp_path / "x.log")!r})
        open({str(pidfile)!r}, "w").write(str(bg.pid))
        raise RuntimeError("boom")
        """
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    pid = int(pidfile.read_text())
    assert process.wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------- ownership


def test_owner_label_round_trip() -> None:
    assert owner_alive(owner_label())
    assert not owner_alive("999999999:1@" + os.uname().nodename)
    assert not owner_alive("garbage")
    assert owner_alive("1:1@some-other-host")  # not ours to judge


# --------------------------------------------------------------------------- images (unit)


def test_apt_sources_parsing(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
    )
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(
        "Types: deb\n# http://snapshot.example/x\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    (tmp_path / "etc/apt/sources.list.d/vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.example/apt\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "etc/apt/sources.list.d/old.list.disabled").write_text(
        "deb http://x.example/ bookworm main\n"
    )
    found = images.host_apt_sources("bookworm", root=tmp_path)
    assert [s.uri for s in found] == [
        "http://mirror.example/debian",
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    ]
    assert found[0].components == ("main", "contrib")
    assert found[1].suites == ("bookworm", "bookworm-updates")
    text = images.deb822_sources(found)
    assert (
        text.count("Types: deb") == 3
        and "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in text
    )


def test_host_mirror_comes_from_host_apt() -> None:
    if not images.host_apt_sources():
        pytest.skip("this host has no Debian bookworm apt source")
    assert images.host_mirror().startswith(("http://", "https://"))


def test_inputs_hash_tracks_context_and_base(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("ARG BASE=debian:bookworm\nFROM ${BASE}\n")
    (tmp_path / "__pycache__").mkdir()
    h1 = images.inputs_hash(tmp_path, "sha256:a")
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert images.inputs_hash(tmp_path, "sha256:a") == h1  # caches do not count
    assert images.inputs_hash(tmp_path, "sha256:b") != h1
    (tmp_path / "tmpl.conf").write_text("x")
    h2 = images.inputs_hash(tmp_path, "sha256:a")
    assert h2 != h1
    (tmp_path / "tmpl.conf").write_text("y")
    assert images.inputs_hash(tmp_path, "sha256:a") != h2


def test_shipped_dockerfiles_take_base_as_argument() -> None:
    root = Path(__file__).resolve().parents[2]
    for df in [root / "targets/tgt/Dockerfile", root / "initiators/libiscsi/Dockerfile"]:
        text = df.read_text()
        assert "ARG BASE=debian:bookworm" in text and "FROM ${BASE}" in text
        assert "deb.debian.org" not in text  # the mirror comes from the host's apt


# --------------------------------------------------------------------------- with an engine


@pytest.fixture(scope="module")
def client():
    from iscsi_conformance.peers.docker_env import DockerUnavailable, ensure_engine

    try:
        return ensure_engine()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="module")
def base_ref(client) -> str:
    return images.base_image(client)


@pytest.mark.peer
def test_env_labels_network_and_close(client, base_ref: str) -> None:
    from iscsi_conformance.peers.docker_env import LABEL_OWNER, LABEL_RUN, DockerEnv

    with DockerEnv() as env:
        c = env.run_container(base_ref, name="probe", peer="test", command=["sleep", "300"])
        assert c.labels[LABEL_RUN] == env.run_id and c.labels[LABEL_OWNER] == owner_label()
        assert env.network.attrs["Labels"][LABEL_RUN] == env.run_id
        assert env.container_ip(c).count(".") == 3
        log = CommandLog(secrets={"topsecret"})
        res = process.docker_exec(
            c, ["sh", "-c", "echo $X; exit 4"], log=log, env={"X": "topsecret"}
        )
        assert res.returncode == 4 and res.stdout.strip() == "topsecret"
        assert (
            log.records[-1].stdout.strip() == "***"
            and log.records[-1].where == f"container:{c.name}"
        )
        with pytest.raises(CommandTimeout):
            process.docker_exec(c, ["sleep", "30"], log=log, timeout=1)
        net_name = env.network_name
    assert not client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={env.run_id}"})
    assert not client.networks.list(names=[net_name])


def _spawn_run(base_ref: str, tmp_path: Path) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import time
        from iscsi_conformance.peers.docker_env import DockerEnv
        env = DockerEnv()
        env.run_container({base_ref!r}, name="victim", peer="test", command=["sleep", "300"])
        open({str(tmp_path / "run_id")!r}, "w").write(env.run_id)
        time.sleep(300)
        """
    )
    return subprocess.Popen([sys.executable, "-c", script])


@pytest.mark.peer
def test_second_run_after_a_killed_one(client, base_ref: str, tmp_path: Path) -> None:
    from iscsi_conformance.peers.docker_env import LABEL_RUN, DockerEnv, cleanup_stale

    proc = _spawn_run(base_ref, tmp_path)
    assert process.wait_until(lambda: (tmp_path / "run_id").exists(), timeout=60)
    run_id = (tmp_path / "run_id").read_text()
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    assert client.containers.list(all=True, filters=flt)
    assert not [n for n in cleanup_stale(client) if run_id in n]  # its owner is alive: kept
    proc.send_signal(signal.SIGKILL)  # no cleanup possible
    proc.wait(30)
    assert client.containers.list(all=True, filters=flt)  # left behind
    with DockerEnv() as env:  # the next run cleans up first
        assert any(run_id in n for n in env.stale_removed)
        env.run_container(base_ref, name="again", peer="test", command=["true"])
    assert not client.containers.list(all=True, filters=flt)
    assert not client.networks.list(filters=flt)


@pytest.mark.peer
def test_sigterm_cleans_up(client, base_ref: str, tmp_path: Path) -> None:
    from iscsi_conformance.peers.docker_env import LABEL_RUN

    proc = _spawn_run(base_ref, tmp_path)
    assert process.wait_until(lambda: (tmp_path / "run_id").exists(), timeout=60)
    run_id = (tmp_path / "run_id").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0
    flt = {"label": f"{LABEL_RUN}={run_id}"}
    assert not client.containers.list(all=True, filters=flt)
    assert not client.networks.list(filters=flt)


@pytest.mark.peer
def test_ctrl_c_cleans_up(client, base_ref: str, tmp_path: Path) -> None:
    from iscsi_conformance.peers.docker_env import LABEL_RUN

    proc = _spawn_run(base_ref, tmp_path)
    assert process.wait_until(lambda: (tmp_path / "run_id").exists(), timeout=60)
    run_id = (tmp_path / "run_id").read_text()
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert not client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


@pytest.mark.peer
def test_peer_image_is_cached(client, base_ref: str) -> None:
    log = CommandLog()
    tag1 = images.build_peer_image("target", "tgt", client=client, log=log, base=base_ref)
    t = time.monotonic()
    tag2 = images.build_peer_image("target", "tgt", client=client, log=log, base=base_ref)
    assert tag1 == tag2 and time.monotonic() - t < 5
    assert log.records[-1].argv[-1] == "# cached"
    assert client.images.get(tag1).labels["iscsi-conformance.peer"] == "tgt"


@pytest.mark.peer
def test_base_image_is_never_pulled(client) -> None:
    ref = images.base_image(client, build=False)
    assert ref in (images.OFFICIAL_BASE, f"{images.LOCAL_BASE_REPO}:{images.CODENAME}")
    assert client.images.get(ref)
