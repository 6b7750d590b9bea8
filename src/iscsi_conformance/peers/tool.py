"""A peer as a tool of its own: ``iscsi-conformance peers start|stop|status|url|exec``.

Theory of operation: ``peers start tgt`` is one process that owns the peer. It builds
a ``TargetSpec`` from the options (one LUN, CHAP if asked), starts the peer's driver
(the same drivers a run uses, in the peer's container or micro-VM), configures it,
writes a *state file* (``state_dir()/<name>.json``: its pid, portal, IQN, URL, the
containers, network and processes it holds, never a secret), prints how to log in, and
then waits. Ctrl-C, SIGTERM, SIGHUP or ``peers stop`` (which sends SIGTERM to the pid
of the state file) end the wait; the driver's ``stop()`` then removes what it started
and the state file goes last. ``--detach`` runs that same process in the background
and returns once it is up (or with its one error line when it is not).

An initiator peer is started against a URL the same way: it logs in (open-iscsi in its
micro-VM, libiscsi's tools in their container) and ``peers exec NAME -- COMMAND`` runs
a command where the peer is (``sg_inq /dev/sdX`` in the VM, ``iscsi-inq URL`` in the
container).

Secrets never come from the command line (``ps`` shows it to every user): a CHAP
secret is read from ``$ISCSI_CONFORMANCE_CHAP_SECRET`` or a file, and the login lines
printed refer to that variable or file instead of the secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import ConfigError, HarnessError, ISCSIConformanceError

SECRET_ENV = "ISCSI_CONFORMANCE_CHAP_SECRET"
MUTUAL_SECRET_ENV = "ISCSI_CONFORMANCE_MUTUAL_CHAP_SECRET"
STATE_ENV = "ISCSI_CONFORMANCE_STATE_DIR"
IQN_PREFIX = "iqn.2026-12.org.iscsi-conformance.tool"
TARGETS = ("reference", "tgt", "lio")
INITIATORS = ("open-iscsi", "libiscsi")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HARNESS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_SIZE = re.compile(r"^(\d+)([KMGT]?)(?:i?B)?$", re.IGNORECASE)


# --------------------------------------------------------------------------- inputs


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864 (K, M, G, T are powers of 1024; a plain number is bytes)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ConfigError(f"LUN size {text!r} is not a size such as 64M or 1G")
    size = int(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")
    if size <= 0 or size % 512:
        raise ConfigError(f"LUN size {text!r} is not a positive multiple of 512")
    return size


@dataclasses.dataclass(frozen=True)
class SecretSource:
    """Where a CHAP secret came from, as a shell expression that yields it again."""

    account: ChapAccount
    shell: str  # e.g. "$ISCSI_CONFORMANCE_CHAP_SECRET" or "$(cat /path)"
    described: str  # e.g. "from $ISCSI_CONFORMANCE_CHAP_SECRET"


def chap_account(user: str | None, secret_file: str | None, env: str) -> SecretSource | None:
    """The account ``--chap USER`` names, its secret from ``secret_file`` or ``$env``."""
    if not user:
        if secret_file:
            raise ConfigError("a secret file without --chap USER")
        return None
    if "%" in user or ":" in user:
        raise ConfigError(
            f"give the CHAP user alone; the secret goes in ${env} or a file "
            "(a command line is visible to every user of this host)"
        )
    if secret_file:
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the CHAP secret file {secret_file}: {exc.strerror}"
            ) from None
        where = str(Path(secret_file).resolve())
        shell, described = f"$(cat {shlex.quote(where)})", f"from {where}"
    else:
        secret = os.environ.get(env, "")
        shell, described = f"${env}", f"from ${env}"
    if not secret:
        raise ConfigError(f"--chap {user}: no secret (set ${env} or give a secret file)")
    return SecretSource(ChapAccount(user, secret), shell, described)


def state_dir() -> Path:
    """Where state files live: ``$ISCSI_CONFORMANCE_STATE_DIR``, else
    ``/run/iscsi-conformance/peers`` as root, else the user's runtime or cache dir."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if os.geteuid() == 0:
        return Path("/run/iscsi-conformance/peers")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "iscsi-conformance" / "peers"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "iscsi-conformance" / "peers"


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a QEMU, a tgtd), from /proc."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(x) for x in (task / "children").read_text().split()]
    return out


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- state


def state_path(name: str) -> Path:
    return state_dir() / f"{name}.json"


def read_state(name: str) -> dict[str, Any] | None:
    """The state of a running ``peers start NAME``, or None (a stale file is removed)."""
    path = state_path(name)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _proc_start(int(state.get("pid", 0))) != state.get("pid_start"):
        # its process is gone (SIGKILL: no clean-up ran). Its micro-VM died with it
        # (PR_SET_PDEATHSIG); its containers and network are removed here.
        _remove_docker_run(state.get("resources", {}).get("docker_run"))
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return state


def _remove_docker_run(run_id: str | None) -> None:
    if not run_id:
        return
    with contextlib.suppress(Exception):
        from iscsi_conformance.peers.docker_env import LABEL_RUN, ensure_engine

        client = ensure_engine(start=False)
        label = {"label": f"{LABEL_RUN}={run_id}"}
        for c in client.containers.list(all=True, filters=label):
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
        for n in client.networks.list(filters=label):
            with contextlib.suppress(Exception):
                n.remove()


def running() -> list[dict[str, Any]]:
    folder = state_dir()
    if not folder.is_dir():
        return []
    states = (read_state(p.stem) for p in sorted(folder.glob("*.json")))
    return [s for s in states if s is not None]


def _write_state(state: dict[str, Any]) -> None:
    path = state_path(state["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------- what to print


def _portal_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target_help(state: dict[str, Any]) -> list[str]:
    """What ``peers start`` prints for a target: where it is and how to log in."""
    host, port = state["portal"]
    portal = _portal_text(host, port)
    iqn, lun = state["iqn"], state["luns"][0]
    lines = [
        f"{state['name']} is up ({state['mode']}, {state['version']}) after "
        f"{state['startup_seconds']:.1f} s",
        f"  portal   {portal}",
        f"  target   {iqn}",
        f"  LUN      {lun} ({state['lun_size'] // (1024 * 1024)} MiB)",
    ]
    if state.get("network_portal"):
        lines.append(f"  on the container network: {_portal_text(*state['network_portal'])}")
    chap, mutual = state.get("chap"), state.get("mutual_chap")
    if chap:
        lines.append(f"  CHAP     user {chap['user']}, secret {chap['described']} (not shown)")
    if mutual:
        lines.append(f"  mutual   user {mutual['user']}, secret {mutual['described']} (not shown)")
    node = f"iscsiadm -m node -T {iqn} -p {portal}"
    lines += ["log in with open-iscsi:", f"  iscsiadm -m discovery -t sendtargets -p {portal}"]
    if chap:
        for key, value in (
            ("authmethod", "CHAP"),
            ("username", chap["user"]),
            ("password", f'"{chap["shell"]}"'),
        ):
            lines.append(f"  {node} -o update -n node.session.auth.{key} -v {value}")
        if mutual:
            for key, value in (
                ("username_in", mutual["user"]),
                ("password_in", f'"{mutual["shell"]}"'),
            ):
                lines.append(f"  {node} -o update -n node.session.auth.{key} -v {value}")
    lines.append(f"  {node} --login")
    url = f"iscsi://{portal}/{iqn}/{lun}"
    if chap:
        url = f"iscsi://{chap['user']}%{chap['shell']}@{portal}/{iqn}/{lun}"
        if mutual:
            url += f"?target_user={mutual['user']}&target_password={mutual['shell']}"
    lines += [
        "or with the reference initiator:",
        f'  iscsi-conformance initiator inquiry "{url}"',
        f'  iscsi-conformance certify "{url}"',
        f"stop with Ctrl-C, or: iscsi-conformance peers stop {state['name']}",
    ]
    return lines


def initiator_help(state: dict[str, Any]) -> list[str]:
    lines = [
        f"{state['name']} is up ({state['mode']}, {state['version']}) after "
        f"{state['startup_seconds']:.1f} s",
        f"  logged in to {state['url']}",
    ]
    for dev in state.get("devices", []):
        lines.append(f"  LUN {dev['lun']}: {dev['device']}")
    lines.append("run a command where the initiator is:")
    for example in state.get("examples", []):
        lines.append(f"  iscsi-conformance peers exec {state['name']} -- {example}")
    lines.append(f"stop with Ctrl-C, or: iscsi-conformance peers stop {state['name']}")
    return lines


def public_url(state: dict[str, Any]) -> str:
    host, port = state["portal"]
    return f"iscsi://{_portal_text(host, port)}/{state['iqn']}/{state['luns'][0]}"


# --------------------------------------------------------------------------- start


@dataclasses.dataclass
class StartRequest:
    name: str
    mode: str | None = None
    port: int | None = None
    listen: str = "127.0.0.1"
    iqn: str | None = None
    lun_size: int = 64 * 1024 * 1024
    chap: SecretSource | None = None
    mutual_chap: SecretSource | None = None
    url: str | None = None  # initiators: the target to log in to


class _Stop(Exception):
    """SIGTERM or SIGHUP: leave the wait as Ctrl-C does."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, _raise_stop)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _docker_env(name: str, mode: str) -> Any:
    """The run's Docker network, when the peer's mode needs containers."""
    from iscsi_conformance.peers.registry import driver_class

    if mode not in getattr(driver_class(_role(name), name), "docker_modes", ()):
        return None
    from iscsi_conformance.peers.docker_env import DockerEnv

    return DockerEnv()


def _role(name: str) -> str:
    if name in TARGETS:
        return "target"
    if name in INITIATORS:
        return "initiator"
    known = ", ".join((*TARGETS, *INITIATORS))
    raise ConfigError(f"no peer named {name!r} (known: {known})")


def check_request(req: StartRequest) -> None:
    """Refuse bad input before anything starts (one ``ConfigError`` line)."""
    role = _role(req.name)
    if role == "initiator" and not req.url:
        raise ConfigError(f"{req.name} is an initiator: give the target, --url iscsi://...")
    if role == "target" and req.url:
        raise ConfigError(f"{req.name} is a target: --url is for initiators")
    if req.port is not None:
        if not 0 < req.port < 65536:
            raise ConfigError(f"port {req.port} is not a TCP port")
        if port_in_use(req.listen, req.port):
            raise ConfigError(f"port {req.port} on {req.listen} is in use")
    if req.mutual_chap is not None and req.chap is None:
        raise ConfigError("mutual CHAP needs --chap too (RFC 7143 12.1.3)")
    existing = read_state(req.name)
    if existing is not None:
        raise ConfigError(
            f"{req.name} is already running (pid {existing['pid']}); "
            f"iscsi-conformance peers stop {req.name}"
        )


def _driver(req: StartRequest, env: Any) -> Any:
    from iscsi_conformance.peers.registry import get_driver

    options: dict[str, Any] = {}
    if env is not None:
        options["docker_env"] = env
    if req.name == "reference":
        return get_driver("target", "reference", mode="embedded", host=req.listen, port=req.port)
    if req.name == "tgt":
        options.update(host=req.listen, port=req.port)
    elif req.name == "lio" and req.port is not None:
        options["port"] = req.port
    return get_driver(_role(req.name), req.name, mode=req.mode, **options)


def _target_state(req: StartRequest, drv: Any) -> dict[str, Any]:
    from iscsi_conformance.peers.base import LunSpec, TargetSpec

    iqn = req.iqn or f"{IQN_PREFIX}:{req.name}"
    spec = TargetSpec(
        iqn=iqn,
        luns=(LunSpec(size_bytes=req.lun_size),),
        chap=req.chap.account if req.chap else None,
        mutual_chap=req.mutual_chap.account if req.mutual_chap else None,
    )
    ep = drv.configure(spec)
    portal = ep.host_side or (ep.host, ep.port)
    state: dict[str, Any] = {
        "portal": list(portal),
        "iqn": ep.iqn,
        "luns": list(ep.luns),
        "lun_size": req.lun_size,
    }
    if ep.host_side and tuple(ep.host_side) != (ep.host, ep.port):
        state["network_portal"] = [ep.host, ep.port]
    for key, src in (("chap", req.chap), ("mutual_chap", req.mutual_chap)):
        if src is not None:
            state[key] = {"user": src.account.user, "shell": src.shell, "described": src.described}
    return state


def _initiator_state(req: StartRequest, drv: Any) -> dict[str, Any]:
    from iscsi_conformance.initiator.url import parse_url
    from iscsi_conformance.peers.base import LoginOptions, TargetEndpoint

    assert req.url is not None
    url = parse_url(req.url)
    if url.target is None:
        raise ConfigError("--url needs the target name: iscsi://host[:port]/iqn[/lun]")
    lun = url.lun or 0
    host = url.host
    endpoint = TargetEndpoint(host, url.port, url.target, (lun,))
    chap = url.chap or (req.chap.account if req.chap else None)
    mutual = url.mutual_chap or (req.mutual_chap.account if req.mutual_chap else None)
    session = drv.login(endpoint, options=LoginOptions(chap=chap, mutual_chap=mutual))
    public = f"iscsi://{_portal_text(url.host, url.port)}/{url.target}/{lun}"
    state: dict[str, Any] = {"url": public, "session": repr(session.ref)}
    if req.name == "open-iscsi":
        dev = drv.device(session, lun)
        state["devices"] = [{"lun": lun, "device": dev}]
        state["examples"] = [f"sg_inq {dev}", f"sg_readcap --long {dev}", f"lsblk {dev}"]
        vm = drv.vm
        if vm is not None:
            state["agent"] = [vm.bind_host, vm.host_port("agent")]
        elif drv._container is not None:
            state["container"] = drv._container.name
    else:
        container = getattr(drv, "_container", None)
        if container is not None:
            state["container"] = container.name
        else:
            state["local"] = True  # native: its tools are this host's
        tool_url = f"iscsi://{_portal_text(host, url.port)}/{url.target}/{lun}"
        state["examples"] = [f"iscsi-inq {tool_url}", f"iscsi-readcapacity16 {tool_url}"]
        drv.logout(session)  # libiscsi's tools log in per command
    return state


def _resources(env: Any, pid: int) -> dict[str, Any]:
    """What this process holds, so that a test (or a person) can see it all went."""
    res: dict[str, Any] = {"pids": _children(pid)}
    if env is not None:
        res["docker_run"] = env.run_id
        res["network"] = env.network_name if env._network is not None else None
        with contextlib.suppress(Exception):
            res["containers"] = [
                c.name
                for c in env.client.containers.list(
                    filters={"label": f"{_run_label()}={env.run_id}"}
                )
            ]
    return res


def _run_label() -> str:
    from iscsi_conformance.peers.docker_env import LABEL_RUN

    return LABEL_RUN


def start(req: StartRequest, *, out: Any = None, poll: float = 2.0) -> int:
    """``peers start``, in this process: up, print, wait, stop. Returns the exit status."""
    out = out or sys.stdout
    check_request(req)
    env: Any = None
    drv: Any = None
    up = False
    t0 = time.monotonic()
    pid = os.getpid()
    with _stop_signals():
        try:
            try:
                mode = str(_driver(req, None).mode)  # what the driver makes of --mode
                env = _docker_env(req.name, mode)
                drv = _driver(req, env)
                drv.start()
                if req.name in TARGETS:
                    state = _target_state(req, drv)
                else:
                    state = _initiator_state(req, drv)
            except (KeyboardInterrupt, _Stop):
                _err(f"{req.name}: interrupted while starting")
                return EXIT_INTERRUPTED
            except ConfigError as exc:
                _err(f"{req.name}: {exc}")
                return EXIT_USAGE
            except (HarnessError, ISCSIConformanceError) as exc:
                # one line: a PeerStartError's log tail is in the peer's own log
                first = str(exc).splitlines()[0]
                if first.endswith("boot interrupted"):  # a micro-VM's Ctrl-C during boot
                    _err(f"{req.name}: interrupted while starting")
                    return EXIT_INTERRUPTED
                _err(first)
                return EXIT_HARNESS
            state.update(
                name=req.name,
                role=_role(req.name),
                mode=str(drv.mode),
                version=drv.version(),
                pid=pid,
                pid_start=_proc_start(pid),
                startup_seconds=round(time.monotonic() - t0, 2),
                resources=_resources(env, pid),
            )
            # The drivers' exit handlers (process.register_cleanup) took SIGTERM over
            # during the start and would kill the peer (tgtd ignores SIGTERM: 5 s, then
            # SIGKILL); from now on SIGTERM ends the wait and the driver stops it.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _raise_stop)
            _write_state(state)
            up = True
            helper = target_help if req.name in TARGETS else initiator_help
            print("\n".join(helper(state)), file=out, flush=True)
            try:
                while True:
                    time.sleep(poll)
                    why = drv.health() if req.name in TARGETS else None
                    if why:
                        _err(f"{req.name} stopped serving: {why}")
                        return EXIT_FAILED
            except (KeyboardInterrupt, _Stop):
                print(f"stopping {req.name} ...", file=out, flush=True)
                return EXIT_OK
        finally:
            # a second Ctrl-C must not cut the teardown short
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                t1 = time.monotonic()
                if drv is not None:
                    with contextlib.suppress(Exception):
                        drv.stop()
                if env is not None:
                    with contextlib.suppress(Exception):
                        env.close()
                mine = read_state(req.name)
                if mine is not None and mine.get("pid") == pid:
                    with contextlib.suppress(OSError):
                        state_path(req.name).unlink()
                if up:
                    print(f"{req.name} stopped after {time.monotonic() - t1:.1f} s", file=out)
            finally:
                signal.signal(signal.SIGINT, previous)


def _err(text: str) -> None:
    print(f"iscsi-conformance peers: {text}", file=sys.stderr, flush=True)


def start_detached(req: StartRequest, argv: list[str], *, timeout: float = 600.0) -> int:
    """``peers start --detach``: the same command in the background; return once its
    state file says it is up, or with its error line when it exited."""
    check_request(req)
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{req.name}.log"
    cmd = [sys.executable, "-m", "iscsi_conformance.cli", "peers", "start", *argv]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = read_state(req.name)
            if state is not None and state.get("pid") == proc.pid:
                helper = target_help if req.name in TARGETS else initiator_help
                print("\n".join(helper(state)))
                print(f"(running in the background as pid {proc.pid}; its output: {log_path})")
                return EXIT_OK
            code = proc.poll()
            if code is not None:
                lines = log_path.read_text(errors="replace").splitlines()
                errors = [ln for ln in lines if ln.startswith("iscsi-conformance")]
                print(
                    errors[-1] if errors else f"iscsi-conformance peers: {req.name} exited {code}",
                    file=sys.stderr,
                )
                return code or EXIT_HARNESS
            time.sleep(0.2)
    except KeyboardInterrupt:
        _terminate(proc.pid, signal.SIGINT)
        return EXIT_INTERRUPTED
    _terminate(proc.pid, signal.SIGTERM)
    print(
        f"iscsi-conformance peers: {req.name} did not come up within {timeout:g} s", file=sys.stderr
    )
    return EXIT_HARNESS


def _terminate(pid: int, sig: int, timeout: float = 120.0) -> bool:
    """Send ``sig`` and wait up to ``timeout`` s for ``pid`` to go; True when it went."""
    start_time = _proc_start(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if _proc_start(pid) != start_time or start_time is None:
            return True
        state = Path(f"/proc/{pid}/stat")
        with contextlib.suppress(OSError):
            if state.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        time.sleep(0.1)
    return False


def stop(names: list[str], *, timeout: float = 120.0) -> int:
    """``peers stop [NAME...]``: end those (or every) ``peers start`` and wait for them."""
    states = [read_state(n) for n in names] if names else running()
    if names and any(s is None for s in states):
        missing = [n for n, s in zip(names, states, strict=True) if s is None]
        print(f"iscsi-conformance peers: not running: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    code = EXIT_OK
    # initiators first: they log out of the targets they are logged in to
    for state in sorted(states, key=lambda s: (s or {}).get("role") != "initiator"):
        assert state is not None
        t0 = time.monotonic()
        if _terminate(int(state["pid"]), signal.SIGTERM, timeout):
            print(f"{state['name']} stopped after {time.monotonic() - t0:.1f} s")
        else:
            print(
                f"iscsi-conformance peers: {state['name']} (pid {state['pid']}) did not stop within {timeout:g} s",
                file=sys.stderr,
            )
            code = EXIT_FAILED
    return code


def exec_in(name: str, command: list[str], *, timeout: float = 120.0) -> int:
    """``peers exec NAME -- COMMAND``: run a command where a started initiator is."""
    state = read_state(name)
    if state is None:
        _role(name)  # an unknown name is bad input (ConfigError), not "not running"
        print(f"iscsi-conformance peers: {name} is not running", file=sys.stderr)
        return EXIT_FAILED
    if not command:
        print("iscsi-conformance peers: exec needs a command after --", file=sys.stderr)
        return EXIT_USAGE
    if state.get("agent"):
        from iscsi_conformance.peers.commandlog import CommandLog
        from iscsi_conformance.peers.microvm import MicroVM

        host, port = state["agent"]
        vm = MicroVM(name, None, log=CommandLog(), bind_host=host, workdir=state_dir())  # type: ignore[arg-type]
        vm.ports = {"agent": int(port)}
        res = vm.run(command, timeout=timeout)
        sys.stdout.buffer.write(res.stdout)
        sys.stderr.buffer.write(res.stderr)
        return int(res.returncode)
    if state.get("container"):
        from iscsi_conformance.peers.docker_env import ensure_engine

        container = ensure_engine(start=False).containers.get(state["container"])
        rc, output = container.exec_run(command, demux=True)
        stdout, stderr = output
        sys.stdout.buffer.write(stdout or b"")
        sys.stderr.buffer.write(stderr or b"")
        return int(rc)
    if state.get("local"):
        try:
            return subprocess.run(command, timeout=timeout, check=False).returncode
        except FileNotFoundError:
            print(f"iscsi-conformance peers: no command {command[0]!r} here", file=sys.stderr)
            return EXIT_USAGE
    print(f"iscsi-conformance peers: {name} runs no commands (a target)", file=sys.stderr)
    return EXIT_USAGE
