"""Run a peer's commands and keep what they printed.

Theory of operation: every command a driver runs goes through ``run`` (on this host)
or ``docker_exec`` (inside a container, through the Docker Engine API), and both
record it in the driver's ``CommandLog`` *after* masking secrets, so the report can
show exactly how a peer was set up without leaking a CHAP secret. Environment
variables given to a command are recorded in front of its argv (``NAME=value``),
masked the same way. A daemon that runs in the background (tgtd on the host) is a
``BackgroundProcess`` whose output goes to a file; its last lines feed
``PeerStartError`` when it will not come up.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import HarnessError
from iscsi_conformance.peers.commandlog import CommandLog, CommandRecord

DEFAULT_TIMEOUT = 60.0

# --------------------------------------------------------------------------- exit cleanup
# Things that must not outlive us (a tgtd on the host, a run's containers) register
# here. They are cleaned up at interpreter exit (atexit, which a KeyboardInterrupt
# also reaches) and on SIGTERM/SIGHUP, whose default action would skip atexit.

_CLEANUPS: dict[int, Any] = {}  # strong: an object stays until it is cleaned up
_cleanup_lock = threading.Lock()
_handlers_installed = False


def register_cleanup(obj: Any, method: str = "close") -> None:
    """Call ``obj.<method>()`` at exit unless ``obj`` is gone or unregistered first."""
    with _cleanup_lock:
        _CLEANUPS[id(obj)] = obj
        obj.__dict__.setdefault("_exit_cleanup_method", method)
    install_exit_handlers()


def unregister_cleanup(obj: Any) -> None:
    with _cleanup_lock:
        _CLEANUPS.pop(id(obj), None)


def run_cleanups() -> None:
    """Run every registered cleanup now (idempotent; errors are swallowed)."""
    with _cleanup_lock:
        objs = list(_CLEANUPS.values())
        _CLEANUPS.clear()
    for obj in reversed(objs):
        with contextlib.suppress(Exception):
            getattr(obj, obj.__dict__.get("_exit_cleanup_method", "close"))()


def install_exit_handlers(signals: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """atexit + handlers for ``signals`` that clean up, then chain to the previous one."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(run_cleanups)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still runs
    for sig in signals:
        previous = signal.getsignal(sig)

        def handler(
            signum: int, frame: Any, _previous: Any = previous, _owner: int = os.getpid()
        ) -> None:
            # A forked child (pyroute2's netns helper, which its parent ends with SIGTERM)
            # inherits this handler: it must not remove the parent's containers.
            if os.getpid() == _owner:
                run_cleanups()
            if callable(_previous):
                _previous(signum, frame)
            else:
                signal.signal(signum, _previous if _previous is not None else signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


_MAX_RECORDED = 64 * 1024  # characters of stdout/stderr kept per command in the log


class CommandFailed(HarnessError):
    """A command a driver relied on exited non-zero (``check=True``)."""

    def __init__(self, result: CommandResult) -> None:
        rec = result.record
        tail = (rec.stderr or rec.stdout).strip().splitlines()[-5:]
        super().__init__(
            f"{' '.join(rec.argv)} exited {rec.returncode} ({rec.where})"
            + ("\n" + "\n".join(tail) if tail else "")
        )
        self.result = result


class CommandTimeout(HarnessError):
    """A command ran longer than its timeout and was killed."""

    def __init__(self, record: CommandRecord, timeout: float) -> None:
        super().__init__(f"{' '.join(record.argv)} timed out after {timeout:g} s ({record.where})")
        self.record = record
        self.timeout = timeout


@dataclasses.dataclass
class CommandResult:
    """What a command returned. ``stdout``/``stderr`` are unmasked, for parsing only;
    anything shown to a person must come from ``record`` (masked)."""

    returncode: int
    stdout: str
    stderr: str
    record: CommandRecord

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> CommandResult:
        if not self.ok:
            raise CommandFailed(self)
        return self


def _clip(text: str) -> str:
    if len(text) <= _MAX_RECORDED:
        return text
    return (
        text[: _MAX_RECORDED // 2]
        + f"\n[... {len(text) - _MAX_RECORDED} characters cut ...]\n"
        + text[-_MAX_RECORDED // 2 :]
    )


def _shown_argv(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (env or {}).items()] + [str(a) for a in argv]


def _record(
    log: CommandLog,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    returncode: int | None,
    stdout: str,
    stderr: str,
    started: float,
    where: str,
) -> CommandRecord:
    return log.add(
        _shown_argv(argv, env), returncode, _clip(stdout), _clip(stderr), started, where=where
    )


def run(
    argv: Sequence[str],
    *,
    log: CommandLog,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
    secrets: Iterable[str] = (),
    check: bool = False,
) -> CommandResult:
    """Run ``argv`` on this host; record it in ``log``.

    ``env`` is *added* to this process's environment. ``secrets`` are added to
    ``log.secrets`` before anything is recorded.
    """
    log.secrets.update(s for s in secrets if s)
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (
            exc.stdout.decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
        err = (
            exc.stderr.decode(errors="replace")
            if isinstance(exc.stderr, bytes)
            else (exc.stderr or "")
        )
        rec = _record(log, argv, env, None, out, err, started, "host")
        raise CommandTimeout(rec, timeout) from None
    except OSError as exc:
        rec = _record(log, argv, env, 127, "", f"{exc.strerror}: {argv[0]}", started, "host")
        result = CommandResult(127, "", str(exc), rec)
        if check:
            raise CommandFailed(result) from None
        return result
    rec = _record(log, argv, env, proc.returncode, proc.stdout, proc.stderr, started, "host")
    result = CommandResult(proc.returncode, proc.stdout, proc.stderr, rec)
    return result.check() if check else result


#: ``docker_exec(keep_output=True)``: the command's output goes to files in the
#: container first, then to the exec stream with an end line after it. The engine can
#: lose the output of a process that ends just after printing (moby/moby#27289,
#: docker/docker-py#2042): seen here under load as an exit status 0 with no output at
#: all from libiscsi_io.py. Without the end line, the output is read from the files.
_KEEP = (
    r'o="$1"; e="$2"; shift 2; '
    r'find /tmp -maxdepth 1 -name "icc-kept-*" -mmin +5 -delete 2>/dev/null; '
    r'"$@" >"$o" 2>"$e"; rc=$?; cat "$o"; cat "$e" >&2; printf "\n@@icc-end %d\n" "$rc"; '
    r'exit "$rc"'
)
_KEPT_END = re.compile(r"\n?@@icc-end (-?\d+)\n?$")


def _read_kept(container: Any, path: str) -> str | None:
    """A file of ``_KEEP``'s from the container (the engine's archive API), else None."""
    import io
    import tarfile

    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            f = tar.extractfile(tar.getmembers()[0])
            return f.read().decode(errors="replace") if f else None
    except Exception:
        return None


def docker_exec(
    container: Any,
    argv: Sequence[str],
    *,
    log: CommandLog,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str = "",
    secrets: Iterable[str] = (),
    check: bool = False,
    keep_output: bool = False,
    shown: Sequence[str] | None = None,
) -> CommandResult:
    """Run ``argv`` inside ``container`` (a docker SDK ``Container``); record it.

    The Engine API's exec has no timeout of its own, so the command runs under
    coreutils ``timeout`` inside the container, and we also stop waiting a little
    later in case the engine itself stalls. ``keep_output`` guards against the engine
    losing a short command's output (``_KEEP``; the container needs ``sh``). ``shown``:
    the command as the log records it (default ``argv``).
    """
    if keep_output:
        tag = f"/tmp/icc-kept-{os.getpid()}-{time.monotonic_ns()}"
        kept = (f"{tag}.out", f"{tag}.err")
        res = docker_exec(
            container, ["sh", "-c", _KEEP, "sh", *kept, *argv], log=log, timeout=timeout,
            env=env, workdir=workdir, user=user, secrets=secrets, shown=argv,
        )  # fmt: skip
        end = _KEPT_END.search(res.stdout)
        out: str | None
        err: str | None
        if end is not None:
            out, err = res.stdout[: end.start()], res.stderr
            kept_end = _KEPT_END.search(res.record.stdout)
            if kept_end is not None:  # the log shows what the command printed, no more
                res.record.stdout = res.record.stdout[: kept_end.start()]
        else:  # the stream lost it: the files are still there (removed after 5 min)
            out = _read_kept(container, kept[0])
            err = _read_kept(container, kept[1])
            if out is None and err is None:
                out, err = res.stdout, res.stderr  # the command never ran to its end
            else:
                log.add(["(output read from the container's files: the exec stream lost it)"],
                        res.returncode, "", "", time.monotonic(), where=f"container:{container.name}")  # fmt: skip
        result = CommandResult(res.returncode, out or "", err or "", res.record)
        return result.check() if check else result
    log.secrets.update(s for s in secrets if s)
    where = f"container:{container.name}"
    wrapped = ["timeout", "-k", "5", f"{timeout:g}", *[str(a) for a in argv]]
    api = container.client.api
    started = time.monotonic()
    exec_id = api.exec_create(
        container.id,
        wrapped,
        stdout=True,
        stderr=True,
        environment=dict(env or {}),
        workdir=workdir,
        user=user,
    )["Id"]
    box: dict[str, Any] = {}

    def _start() -> None:
        try:
            box["out"] = api.exec_start(exec_id, demux=True)
        except Exception as exc:  # reported below, in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=_start, daemon=True)
    worker.start()
    worker.join(timeout + 15)
    if worker.is_alive() or "error" in box:
        detail = str(box.get("error", "no answer from the engine"))
        rec = _record(log, shown or argv, env, None, "", detail, started, where)
        if "error" in box:
            result = CommandResult(126, "", detail, rec)
            if check:
                raise CommandFailed(result)
            return result
        raise CommandTimeout(rec, timeout)
    out_b, err_b = box["out"] or (b"", b"")
    stdout = (out_b or b"").decode(errors="replace")
    stderr = (err_b or b"").decode(errors="replace")
    code = api.exec_inspect(exec_id).get("ExitCode")
    if code in (124, 137) and time.monotonic() - started >= timeout:
        rec = _record(log, shown or argv, env, None, stdout, stderr, started, where)
        raise CommandTimeout(rec, timeout)
    rec = _record(log, shown or argv, env, code, stdout, stderr, started, where)
    result = CommandResult(code if code is not None else -1, stdout, stderr, rec)
    return result.check() if check else result


class BackgroundProcess:
    """A daemon started on this host with its output in ``log_path``.

    The start is recorded in ``log`` at once (return code ``None``); ``stop()``
    completes that record with the exit status and the tail of the output.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: CommandLog,
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log = log
        self.log_path = Path(log_path)
        self._env = env
        self._started = time.monotonic()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._out = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the daemon
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle
            )
        except OSError:
            self._out.close()
            raise
        self.record = _record(log, self.argv, env, None, "", "", self._started, "host")
        register_cleanup(self, "stop")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """Last ``lines`` lines of the output, secrets masked."""
        try:
            data = self.log_path.read_bytes()[-64 * 1024 :]
        except OSError:
            return ""
        text = data.decode(errors="replace")
        return self.log.mask("\n".join(text.splitlines()[-lines:]))

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent. Returns the exit code."""
        unregister_cleanup(self)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout)
        if not self._out.closed:
            self._out.close()
        self.record.returncode = self.proc.returncode
        self.record.stdout = self.tail(200)
        self.record.duration = time.monotonic() - self._started
        return self.proc.returncode


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; stop early when ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
