"""libiscsi as an initiator peer: its tools, its library, and its own test suite.

Theory of operation: libiscsi is a library with command-line tools, not a daemon, so
every operation is one command, run on this host (``mode="native"``) or with
``docker exec`` in a long-lived container built from ``initiators/libiscsi/``
(``mode="container"``):

- discovery: ``iscsi-ls`` (SendTargets=All);
- login, INQUIRY, READ(16), WRITE(16): ``libiscsi_io.py``, a small program next to the
  Dockerfile that calls libiscsi.so.7 through ctypes (libiscsi-bin has no read/write
  tool). Each call is its own login, so a ``SessionHandle`` holds what is needed to
  log in again (URL, environment) rather than a live connection;
- libiscsi's own conformance suite: ``iscsi-test-cu -x`` (CUnit XML), parsed test by
  test into ``SuiteCase``s for the report.

CHAP goes through the environment libiscsi reads (``LIBISCSI_CHAP_USERNAME`` /
``_PASSWORD`` and ``LIBISCSI_CHAP_TARGET_USERNAME`` / ``_PASSWORD`` for mutual), never
the URL, so a secret is never in an argv and needs no URL escaping; the log masks it
anyway. Header digest: URL argument ``header_digest=crc32c|none`` (libiscsi 1.19 has no
data digest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import (
    AuthenticationError,
    ConfigError,
    LoginError,
    PeerStartError,
    SCSIError,
    TransportError,
)
from iscsi_conformance.peers.base import (
    InitiatorDriver,
    LoginOptions,
    Manifest,
    SessionHandle,
    TargetEndpoint,
)
from iscsi_conformance.peers.process import (
    CommandResult,
    docker_exec,
    register_cleanup,
    run,
    unregister_cleanup,
)
from iscsi_conformance.peers.registry import register_initiator

PR_TOOL = "iscsi-pr"  # initiators/libiscsi/iscsi_pr.c, built into the container image
PR_OUT_ACTIONS = (
    "register",
    "reserve",
    "release",
    "clear",
    "preempt",
    "preempt-abort",
    "register-ignore",
)
PR_IN_ACTIONS = ("read-keys", "read-reservation", "report-capabilities", "read-full-status")
DEFAULT_INITIATOR_NAME = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-conformance"
SECOND_INITIATOR_NAME = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-conformance-2"
CONTAINER_HELPER = "/opt/iscsi-conformance/libiscsi_io.py"
CONTAINER_WORKDIR = "/work"
NO_OPTIONS = LoginOptions()  # frozen: safe as a shared default
TOOLS = ("iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "iscsi-test-cu")

# "Failed to log in to target. Status: Authentication failure(513)"
_LOGIN_STATUS = re.compile(r"Status:\s*(?P<text>[^()]*)\((?P<code>\d+)\)")


@dataclasses.dataclass(frozen=True)
class SuiteCase:
    """One test of libiscsi's own suite, as the report shows it."""

    name: str  # "iSCSI.iSCSIdatasn.iSCSIDataSnInvalid"
    outcome: str  # "passed", "failed", "error" (the suite could not run it)
    message: str = ""


@dataclasses.dataclass(frozen=True)
class LibiscsiSession:
    """What a libiscsi ``SessionHandle`` holds: enough to log in again."""

    url_base: str  # iscsi://host:port/iqn (no LUN, no arguments)
    query: str  # "?header_digest=crc32c" or ""
    env: tuple[tuple[str, str], ...]
    initiator_name: str
    # A cluster node's fixed ISID (12 hex digits; ``node_login``): every command of the
    # session then logs in through the same initiator port, one I_T nexus throughout.
    isid: str | None = None

    def url(self, lun: int) -> str:
        return f"{self.url_base}/{lun}{self.query}"


@dataclasses.dataclass(frozen=True)
class PrToolResult:
    """What ``iscsi-pr`` answered: its exit status follows sg3_utils' categories as
    ``sg_persist``'s does (0 GOOD, 24 RESERVATION CONFLICT, 6 UNIT ATTENTION, 5 ILLEGAL
    REQUEST, 90 login failed), ``text`` its keys or holder lines and JSON status line."""

    returncode: int
    text: str
    error_text: str


def classify_login_failure(message: str) -> LoginError:
    """Turn libiscsi's login error text into ``AuthenticationError``/``LoginError``."""
    line = " ".join(message.split())
    m = _LOGIN_STATUS.search(line)
    if m:
        status = int(m.group("code"))
        reason = f"target refused the login: {m.group('text').strip()} (status 0x{status:04x})"
        if status == 0x0201:
            return AuthenticationError(reason, login_status=status)
        return LoginError(reason, login_status=status)
    if re.search(r"auth|CHAP", line, re.IGNORECASE):
        # e.g. mutual CHAP: "Authentication failed. Invalid CHAP_R response from the target"
        return AuthenticationError(f"authentication failed: {line}")
    return LoginError(f"login failed: {line or 'no reason given'}")


def parse_iscsi_ls(output: str) -> list[tuple[str, str]]:
    """``Target:<name> Portal:<addr:port,tpgt>`` lines -> [(name, portal)]."""
    out = []
    for line in output.splitlines():
        m = re.match(r"\s*Target:(\S+)\s+Portal:(\S+)", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


MAX_HANGS = 3  # per run_own_suite call: after that a hang ends the family as an error


def parse_cunit_results(xml_text: str, family: str) -> list[SuiteCase]:
    """Parse ``CUnitAutomated-Results.xml``; one ``SuiteCase`` per test.

    CUnit writes one FAILURE record per failed assertion, so a test may appear
    several times: its cases are merged (failed if any assertion failed). A suite
    whose set-up failed appears as ``CUNIT_RUN_SUITE_FAILURE``: one ``error`` case.
    """
    root = ET.fromstring(xml_text)
    cases: dict[str, SuiteCase] = {}
    order: list[str] = []

    def put(name: str, outcome: str, message: str) -> None:
        old = cases.get(name)
        if old is None:
            order.append(name)
            cases[name] = SuiteCase(name, outcome, message)
        elif outcome == "failed":
            msg = (
                f"{old.message}; {message}" if old.outcome == "failed" and old.message else message
            )
            cases[name] = SuiteCase(name, "failed", msg)

    for suite in root.iter("CUNIT_RUN_SUITE"):
        for child in suite:
            suite_name = _text(child.find("SUITE_NAME"))
            if child.tag == "CUNIT_RUN_SUITE_FAILURE":
                put(
                    f"{family}.{suite_name}",
                    "error",
                    _text(child.find("FAILURE_REASON")) or "suite set-up failed",
                )
                continue
            for rec in child.iter("CUNIT_RUN_TEST_RECORD"):
                for res in rec:
                    test = _text(res.find("TEST_NAME"))
                    name = f"{family}.{suite_name}.{test}"
                    if res.tag == "CUNIT_RUN_TEST_SUCCESS":
                        put(name, "passed", "")
                    elif res.tag == "CUNIT_RUN_TEST_FAILURE":
                        where = f"{_text(res.find('FILE_NAME'))}:{_text(res.find('LINE_NUMBER'))}"
                        put(name, "failed", f"{where}: {_text(res.find('CONDITION'))}")
    return [cases[n] for n in order]


def salvage_partial_results(xml_text: str, family: str) -> list[SuiteCase]:
    """The cases of a CUnit results file cut short (``iscsi-test-cu`` killed while a
    test hung): the whole file when it parses, else every complete test record."""
    try:
        return parse_cunit_results(xml_text, family)
    except ET.ParseError:
        pass
    cases: dict[str, SuiteCase] = {}
    suite = ""
    token = re.compile(
        r"<SUITE_NAME>(.*?)</SUITE_NAME>|<(CUNIT_RUN_TEST_SUCCESS|CUNIT_RUN_TEST_FAILURE)>(.*?)</\2>",
        re.S,
    )
    for m in token.finditer(xml_text):
        if m.group(1) is not None:
            suite = m.group(1).strip()
            continue
        body = m.group(3)
        test = re.search(r"<TEST_NAME>(.*?)</TEST_NAME>", body, re.S)
        if not test or not suite:
            continue
        name = f"{family}.{suite}.{test.group(1).strip()}"
        if m.group(2) == "CUNIT_RUN_TEST_SUCCESS":
            cases.setdefault(name, SuiteCase(name, "passed", ""))
        else:
            cond = re.search(r"<CONDITION>(.*?)</CONDITION>", body, re.S)
            detail = cond.group(1).strip() if cond else "assertion failed"
            cases[name] = SuiteCase(name, "failed", detail)
    return list(cases.values())


def remaining_after_hang(listed: Sequence[str], done: Sequence[str]) -> tuple[str, list[str]]:
    """(the test that hung, the selections still to run) from ``iscsi-test-cu -l``'s
    tests of one family (``Family.Suite.Test``, in run order) and those with a result.

    The hung test is the first listed one without a result after the last one with a
    result; what follows it in its suite runs test by test, later suites whole."""
    finished = set(done)
    last = max((i for i, name in enumerate(listed) if name in finished), default=-1)
    rest = [name for name in listed[last + 1 :] if name not in finished]
    if not rest:
        return "", []
    hung, after = rest[0], rest[1:]
    suite = hung.rsplit(".", 1)[0]
    selections = [t for t in after if t.rsplit(".", 1)[0] == suite]
    for t in after:
        s = t.rsplit(".", 1)[0]
        if s != suite and s not in selections:
            selections.append(s)
    return hung, selections


def summarize(cases: Sequence[SuiteCase]) -> dict[str, int]:
    out = {"total": len(cases), "passed": 0, "failed": 0, "error": 0}
    for c in cases:
        out[c.outcome] = out.get(c.outcome, 0) + 1
    return out


@register_initiator("libiscsi")
class LibiscsiInitiator(InitiatorDriver):
    """``InitiatorDriver`` for libiscsi. ``mode`` is ``"native"`` or ``"container"``.

    In container mode the container joins the run's docker network (to reach a
    containerised target at its network address); pass ``network_mode="host"`` to
    reach targets listening on this host's loopback instead.
    """

    name = "libiscsi"
    modes = ("native", "container")
    docker_modes = ("container",)

    @classmethod
    def auto_mode(cls, docker: bool) -> str | None:
        """What "auto" means for libiscsi: a container where Docker is usable,
        otherwise the driver's default (the tools on this host)."""
        return "container" if docker else None

    def __init__(
        self,
        manifest: Manifest | None = None,
        *,
        mode: str | None = None,
        docker_env: Any = None,
        network_mode: str | None = None,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        timeout: float = 60.0,
    ) -> None:
        if manifest is None:
            from iscsi_conformance.peers.manifest import load_peer_manifest

            manifest = load_peer_manifest("initiator", "libiscsi")
        super().__init__(manifest)
        if mode is None:
            mode = "native" if shutil.which("iscsi-ls") else "container"
        if mode not in self.modes:
            raise ConfigError(f"libiscsi runs in modes {self.modes}, not {mode!r}", field="mode")
        self.mode = mode  # type: ignore[assignment]
        self.initiator_name = initiator_name
        self.timeout = timeout
        self.network_mode = network_mode
        self._docker_env = docker_env
        self._owns_env = False
        self._container: Any = None
        self._tmp: Path | None = None
        self._package_version: str | None = None
        self.image: str | None = None
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ plumbing

    def _helper_path(self) -> str:
        if self.mode == "container":
            return CONTAINER_HELPER
        folder = getattr(self.manifest, "folder", None)
        if folder is None or not (folder / "libiscsi_io.py").is_file():
            from iscsi_conformance.peers.manifest import peer_folder

            folder = peer_folder("initiator", "libiscsi")
        return str(folder / "libiscsi_io.py")

    def _python(self) -> str:
        return "python3" if self.mode == "container" else sys.executable

    def _exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        workdir: str | None = None,
    ) -> CommandResult:
        secrets = tuple(v for k, v in (env or {}).items() if "PASSWORD" in k)
        t = timeout or self.timeout
        if self.mode == "container":
            if self._container is None:
                raise PeerStartError("libiscsi", "container is not running (call start())")
            return docker_exec(
                self._container,
                argv,
                log=self.log,
                env=env,
                secrets=secrets,
                timeout=t,
                workdir=workdir,
                keep_output=True,  # the engine may lose a short tool's output (process.py)
            )
        return run(argv, log=self.log, env=env, secrets=secrets, timeout=t, cwd=workdir)

    def _scratch(self) -> str:
        """A folder for files exchanged with the tools (inside the container there)."""
        if self.mode == "container":
            return f"{CONTAINER_WORKDIR}/io-{time.monotonic_ns()}"
        assert self._tmp is not None
        d = Path(tempfile.mkdtemp(dir=self._tmp))
        return str(d)

    def _put_file(self, folder: str, name: str, data: bytes) -> str:
        path = f"{folder}/{name}"
        if self.mode == "container":
            self._exec(["mkdir", "-p", folder])
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            self._container.put_archive(folder, buf.getvalue())
        else:
            Path(path).write_bytes(data)
        return path

    def _get_file(self, path: str) -> bytes:
        if self.mode == "container":
            stream, _ = self._container.get_archive(path)
            raw = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                member = tar.getmembers()[0]
                f = tar.extractfile(member)
                return f.read() if f else b""
        return Path(path).read_bytes()

    def _drop(self, folder: str) -> None:
        if self.mode == "container":
            with contextlib.suppress(Exception):
                self._exec(["rm", "-rf", folder])
        else:
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        started = time.monotonic()
        register_cleanup(self, "stop")
        try:
            if self.mode == "native":
                missing = [t for t in TOOLS if shutil.which(t) is None]
                if missing:
                    raise PeerStartError(
                        "libiscsi",
                        f"missing {', '.join(missing)} (apt-get install libiscsi-bin), or use mode='container'",
                    )
                self._tmp = Path(tempfile.mkdtemp(prefix="icc-libiscsi-"))
            else:
                self._start_container()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _start_container(self) -> None:
        from iscsi_conformance.peers.docker_env import DockerEnv
        from iscsi_conformance.peers.images import build_peer_image

        if self._docker_env is None:
            self._docker_env = DockerEnv()
            self._owns_env = True
        env = self._docker_env
        self.image = build_peer_image("initiator", "libiscsi", client=env.client, log=self.log)
        t0 = time.monotonic()
        self._container = env.run_container(
            self.image,
            name="libiscsi",
            peer="libiscsi",
            command=["sleep", "infinity"],
            network_mode=self.network_mode,
        )
        net = self.network_mode or env.network_name
        self.log.add(
            ["docker", "run", "--network", net, self.image, "sleep", "infinity"],
            0,
            self._container.name + "\n",
            "",
            t0,
        )
        self._exec(["true"])  # the engine accepts exec: ready

    def stop(self) -> None:
        unregister_cleanup(self)
        if self._container is not None:
            self._docker_env.remove(self._container)
            self._container = None
        if self._owns_env and self._docker_env is not None:
            self._docker_env.close()
            self._docker_env = None
            self._owns_env = False
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def version(self) -> str:
        if self._package_version is None:
            res = self._exec(["dpkg-query", "-W", "-f=${Version}", "libiscsi-bin"])
            self._package_version = res.stdout.strip() if res.ok else "unknown"
        v = self._package_version
        v = v.split(":", 1)[-1]
        return v.rsplit("-", 1)[0] if "-" in v else v

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            package_version=self._package_version,
            image=self.image,
            initiator_name=self.initiator_name,
        )
        return d

    # ------------------------------------------------------------------ addressing

    def _portal(self, endpoint: TargetEndpoint) -> tuple[str, int]:
        """Where this initiator reaches ``endpoint``: the loopback side from the host,
        the network side from a container on the run's network."""
        if self.mode == "native" or self.network_mode == "host":
            if endpoint.host_side is not None:
                return endpoint.host_side
        return endpoint.host, endpoint.port

    @staticmethod
    def _hostport(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @staticmethod
    def chap_env(options: LoginOptions) -> dict[str, str]:
        env: dict[str, str] = {}
        if options.chap is not None:
            env["LIBISCSI_CHAP_USERNAME"] = options.chap.user
            env["LIBISCSI_CHAP_PASSWORD"] = options.chap.secret
        if options.mutual_chap is not None:
            env["LIBISCSI_CHAP_TARGET_USERNAME"] = options.mutual_chap.user
            env["LIBISCSI_CHAP_TARGET_PASSWORD"] = options.mutual_chap.secret
        return env

    @staticmethod
    def digest_query(options: LoginOptions) -> str:
        """URL arguments for the digests offered in ``options``.

        libiscsi 1.19 offers "None,CRC32C" by default and takes one forced value
        through the URL; it always offers DataDigest=None.
        """
        hd = [v.strip() for v in options.header_digest.split(",") if v.strip()] or ["None"]
        if any(v not in ("None", "CRC32C") for v in hd):
            raise ConfigError(
                f"libiscsi cannot offer HeaderDigest={options.header_digest}", field="header_digest"
            )
        dd = [v.strip() for v in options.data_digest.split(",") if v.strip()] or ["None"]
        if dd != ["None"]:
            raise ConfigError("libiscsi 1.19 always offers DataDigest=None", field="data_digest")
        if hd == ["None"]:
            return "?header_digest=none"
        if hd == ["CRC32C"]:
            return "?header_digest=crc32c"
        return ""  # both values: libiscsi's own offer, "None,CRC32C"

    def session_for(
        self, endpoint: TargetEndpoint, options: LoginOptions = NO_OPTIONS
    ) -> LibiscsiSession:
        host, port = self._portal(endpoint)
        if options.parameters:
            raise ConfigError("libiscsi's tools take no further login keys", field="parameters")
        return LibiscsiSession(
            url_base=f"iscsi://{self._hostport(host, port)}/{endpoint.iqn}",
            query=self.digest_query(options),
            env=tuple(self.chap_env(options).items()),
            initiator_name=options.initiator_name or self.initiator_name,
        )

    # ------------------------------------------------------------------ operations

    def discover(
        self, host: str, port: int, *, options: LoginOptions = NO_OPTIONS
    ) -> list[tuple[str, str]]:
        argv = [
            "iscsi-ls",
            "-i",
            options.initiator_name or self.initiator_name,
            f"iscsi://{self._hostport(host, port)}",
        ]
        res = self._exec(argv, env=self.chap_env(options))
        if not res.ok:
            raise classify_login_failure(res.stderr + res.stdout)
        return parse_iscsi_ls(res.stdout)

    def _helper(
        self, session: LibiscsiSession, lun: int, action: str, *args: str
    ) -> dict[str, Any]:
        argv = [
            self._python(),
            self._helper_path(),
            session.url(lun),
            action,
            "--initiator-name",
            session.initiator_name,
            *args,
        ]
        res = self._exec(argv, env=dict(session.env))
        try:
            answer = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise TransportError(
                f"libiscsi_io.py gave no answer (exit {res.returncode}): {(res.record.stderr or res.record.stdout)[-300:]}"
            ) from None
        if answer.get("stage") == "login" and not answer.get("ok"):
            raise classify_login_failure(answer.get("error", ""))
        if not answer.get("ok") and answer.get("stage") in ("url", "context"):
            raise ConfigError(answer.get("error", "bad URL"), field="url")
        if not answer.get("ok"):
            if "sense_key" in answer:
                raise SCSIError(
                    f"{action} failed: {answer.get('error', '')}",
                    sense_key=answer["sense_key"],
                    asc=answer.get("asc", 0),
                    ascq=answer.get("ascq", 0),
                    status=answer.get("status", 2),
                )
            raise TransportError(f"{action} failed: {answer.get('error', '')}")
        return dict(answer)

    def login(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = NO_OPTIONS
    ) -> SessionHandle:
        session = self.session_for(endpoint, options)
        lun = endpoint.luns[0] if endpoint.luns else 0
        self._helper(session, lun, "login")
        negotiated = {}
        if session.query:
            negotiated["HeaderDigest"] = (
                session.query.split("=", 1)[1].replace("crc32c", "CRC32C").replace("none", "None")
            )
        return SessionHandle(endpoint=endpoint, ref=session, negotiated=negotiated)

    def logout(self, session: SessionHandle) -> None:
        # Each command logs out when it ends; nothing stays open.
        session.ref = None

    def _session(self, session: SessionHandle) -> LibiscsiSession:
        if not isinstance(session.ref, LibiscsiSession):
            raise ConfigError("session is logged out or not a libiscsi session", field="session")
        return session.ref

    def inquiry(
        self, session: SessionHandle, lun: int, *, evpd: int = 0, page: int = 0, alloc: int = 255
    ) -> bytes:
        folder = self._scratch()
        try:
            if self.mode == "container":
                self._exec(["mkdir", "-p", folder])
            out = f"{folder}/inquiry.bin"
            self._helper(
                self._session(session),
                lun,
                "inquiry",
                "--evpd",
                str(evpd),
                "--page",
                str(page),
                "--alloc",
                str(alloc),
                "--out",
                out,
            )
            return self._get_file(out)
        finally:
            self._drop(folder)

    def read(
        self, session: SessionHandle, lun: int, lba: int, blocks: int, *, block_size: int = 512
    ) -> bytes:
        folder = self._scratch()
        try:
            if self.mode == "container":
                self._exec(["mkdir", "-p", folder])
            out = f"{folder}/read.bin"
            self._helper(
                self._session(session),
                lun,
                "read",
                "--lba",
                str(lba),
                "--blocks",
                str(blocks),
                "--block-size",
                str(block_size),
                "--out",
                out,
            )
            return self._get_file(out)
        finally:
            self._drop(folder)

    def write(
        self, session: SessionHandle, lun: int, lba: int, data: bytes, *, block_size: int = 512
    ) -> None:
        if len(data) % block_size:
            raise ConfigError(
                f"{len(data)} bytes is not a whole number of {block_size}-byte blocks", field="data"
            )
        folder = self._scratch()
        try:
            path = self._put_file(folder, "write.bin", data)
            s = self._session(session)
            if s.isid is not None and block_size == 512:
                # a cluster node writes from its own nexus (iscsi-pr), not a new one
                res = self._pr_tool(s, lun, "write", str(lba), path)
                if res.returncode == 24:
                    raise SCSIError(
                        f"write at {lba}: RESERVATION CONFLICT", sense_key=0, asc=0, status=0x18
                    )
                if res.returncode != 0:
                    raise TransportError(
                        f"write at {lba} failed (iscsi-pr exit {res.returncode}): {res.text.strip()[-200:]}"
                    )
                return
            self._helper(
                self._session(session),
                lun,
                "write",
                "--lba",
                str(lba),
                "--block-size",
                str(block_size),
                "--data",
                path,
            )
        finally:
            self._drop(folder)

    # ------------------------------------------------------------------ cluster node

    def has_pr_tool(self) -> bool:
        """Whether ``iscsi-pr`` is there (always in the container image; natively only
        when built and put on PATH by hand)."""
        return self.mode == "container" or shutil.which(PR_TOOL) is not None

    def _node_session(
        self, endpoint: TargetEndpoint, options: LoginOptions
    ) -> tuple[LibiscsiSession, int]:
        """A cluster node's session (a new random ISID: a new I_T nexus) and its LUN."""
        if not self.has_pr_tool():
            raise ConfigError(
                f"{PR_TOOL} is only in libiscsi's container image (initiators/libiscsi/iscsi_pr.c); use mode='container'",
                field="mode",
            )
        s = dataclasses.replace(
            self.session_for(endpoint, options), isid=f"80{secrets.randbits(40):010x}"
        )
        return s, endpoint.luns[0] if endpoint.luns else 0

    def node_login(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = NO_OPTIONS
    ) -> SessionHandle:
        """Log in as a cluster node: a new random ISID (a new I_T nexus, as a restarted
        host gets), kept for every later command of the session (``iscsi-pr -I``)."""
        s, lun = self._node_session(endpoint, options)
        res = self._pr_tool(s, lun, "tur")
        if res.returncode == 90:
            raise classify_login_failure(res.text)
        return SessionHandle(endpoint=endpoint, ref=s, negotiated={})

    def held_node(
        self, endpoint: TargetEndpoint, *, options: LoginOptions = NO_OPTIONS
    ) -> HeldNode:
        """A cluster node that holds its session (``iscsi-pr ... serve``: one login, one
        connection, one I_T nexus, until ``close()``): what a SCSI-2 reservation needs,
        which ends with the nexus that took it. A new random ISID, as ``node_login``."""
        s, lun = self._node_session(endpoint, options)
        argv = [PR_TOOL, s.url(lun), "-i", s.initiator_name, "-I", s.isid or "", "serve"]
        env = dict(s.env)
        if self.mode == "container":
            if self._container is None:
                raise PeerStartError("libiscsi", "container is not running (call start())")
            # -e NAME without a value: docker takes it from this process's environment,
            # so a CHAP secret is never in an argv
            names = [a for k in env for a in ("-e", k)]
            argv = ["docker", "exec", "-i", *names, self._container.name, *argv]
        node = HeldNode(self, argv, env, lun, s)
        node.open()
        return node

    def _pr_tool(self, s: LibiscsiSession, lun: int, *args: str) -> PrToolResult:
        argv = [PR_TOOL, s.url(lun), "-i", s.initiator_name]
        if s.isid:
            argv += ["-I", s.isid]
        res = self._exec([*argv, *args], env=dict(s.env))
        if res.returncode == 1:  # usage: a bug of ours, never the peer's answer
            raise ConfigError(f"{PR_TOOL}: {res.stderr.strip()}", field="argv")
        return PrToolResult(res.returncode, res.stdout, res.stderr)

    def persistent_reserve_out(
        self,
        session: SessionHandle,
        lun: int,
        action: str,
        *,
        key: int = 0,
        sa_key: int = 0,
        prout_type: int = 0,
        aptpl: bool = False,
        all_tg_pt: bool = False,
    ) -> PrToolResult:
        """PERSISTENT RESERVE OUT (SPC-4 6.16) through libiscsi's
        ``iscsi_persistent_reserve_out_sync``; the same actions as open-iscsi's
        ``sg_persist`` path, and the same exit statuses."""
        if action not in PR_OUT_ACTIONS:
            raise ConfigError(f"unknown PR OUT action {action!r}; one of {PR_OUT_ACTIONS}")
        args = ["out", action, "-k", f"{key:#x}", "-s", f"{sa_key:#x}", "-t", str(prout_type)]
        args += ["-a"] if aptpl else []
        args += ["-g"] if all_tg_pt else []
        return self._pr_tool(self._session(session), lun, *args)

    def persistent_reserve_in(
        self, session: SessionHandle, lun: int, action: str = "read-keys"
    ) -> PrToolResult:
        """PERSISTENT RESERVE IN (SPC-4 6.15): keys as ``    0x...`` lines."""
        if action not in PR_IN_ACTIONS:
            raise ConfigError(f"unknown PR IN action {action!r}; one of {PR_IN_ACTIONS}")
        return self._pr_tool(self._session(session), lun, "in", action)

    def test_unit_ready(self, session: SessionHandle, lun: int) -> PrToolResult:
        """TEST UNIT READY from the node's nexus. libiscsi's own connect sends TEST UNIT
        READY too and clears unit attentions before this one (lib/connect.c)."""
        return self._pr_tool(self._session(session), lun, "tur")

    def inq_tool(
        self, endpoint: TargetEndpoint, lun: int, *, options: LoginOptions = NO_OPTIONS
    ) -> str:
        """``iscsi-inq``'s own decoded output (what a person would run)."""
        s = self.session_for(endpoint, options)
        res = self._exec(["iscsi-inq", "-i", s.initiator_name, s.url(lun)], env=dict(s.env))
        if not res.ok:
            raise classify_login_failure(res.stderr + res.stdout)
        return res.stdout

    def _after_hang(
        self, selection: str, folder: str, family: str, timeout: float, queue: list[str]
    ) -> list[SuiteCase]:
        try:
            partial = self._get_file(f"{folder}/CUnitAutomated-Results.xml").decode(
                errors="replace"
            )
        except Exception:
            partial = ""
        done = [
            c
            for c in salvage_partial_results(partial, family)
            if c.name == selection or c.name.startswith(selection + ".")
        ]
        listing = self._exec(["iscsi-test-cu", "-l"], timeout=60).stdout.split()
        listed = [
            t
            for t in listing
            if t.count(".") == 2 and (t == selection or t.startswith(selection + "."))
        ]
        hung, rest = remaining_after_hang(listed, [c.name for c in done])
        queue[:0] = rest
        name = hung or selection
        return [
            *done,
            SuiteCase(
                name,
                "failed",
                f"hung: no progress within {timeout:.0f} s, iscsi-test-cu was killed "
                "(the tests after it were run separately)",
            ),
        ]

    def readcapacity16(
        self, endpoint: TargetEndpoint, lun: int, *, options: LoginOptions = NO_OPTIONS
    ) -> dict[str, int]:
        """``iscsi-readcapacity16``: {"block_size": ..., "blocks": ...} (last LBA + 1)."""
        s = self.session_for(endpoint, options)
        res = self._exec(
            ["iscsi-readcapacity16", "-i", s.initiator_name, s.url(lun)], env=dict(s.env)
        )
        if not res.ok:
            raise classify_login_failure(res.stderr + res.stdout)
        # "RETURNED LOGICAL BLOCK ADDRESS:131071" / "LOGICAL BLOCK LENGTH IN BYTES:512"
        fields = dict(re.findall(r"^\s*([A-Z_ ]+?)\s*:\s*(\d+)\s*$", res.stdout, re.MULTILINE))
        out = {}
        if "LOGICAL BLOCK LENGTH IN BYTES" in fields:
            out["block_size"] = int(fields["LOGICAL BLOCK LENGTH IN BYTES"])
        if "RETURNED LOGICAL BLOCK ADDRESS" in fields:
            out["blocks"] = int(fields["RETURNED LOGICAL BLOCK ADDRESS"]) + 1
        return out

    # ------------------------------------------------------------------ own suite

    def run_own_suite(
        self,
        endpoint: TargetEndpoint,
        families: Sequence[str] = ("SCSI", "iSCSI"),
        allow_dataloss: bool = True,
        *,
        options: LoginOptions = NO_OPTIONS,
        lun: int | None = None,
        timeout: float = 1800.0,
    ) -> list[SuiteCase]:
        """Run ``iscsi-test-cu`` once per family (``-t`` selection, also
        ``Family.Suite[.Test]``), ``-d`` only when ``allow_dataloss``; parse its CUnit
        XML. Names are ``Family.Suite.Test``, stable as libiscsi prints them."""
        s = self.session_for(endpoint, options)
        lun = endpoint.luns[0] if lun is None else lun
        cases: list[SuiteCase] = []
        queue = list(families)
        hangs = 0
        while queue:
            selection = queue.pop(0)
            family = selection.split(".", 1)[0]
            folder = self._scratch()
            try:
                if self.mode == "container":
                    self._exec(["mkdir", "-p", folder])
                argv = [
                    "iscsi-test-cu",
                    "-x",
                    "-i",
                    s.initiator_name,
                    "-I",
                    SECOND_INITIATOR_NAME,
                    "-t",
                    selection,
                ]
                if allow_dataloss:
                    argv.append("-d")
                argv.append(s.url(lun))
                limit = timeout  # docker_exec runs it under timeout(1) already
                if self.mode != "container":
                    argv, limit = ["timeout", "-k", "5", f"{timeout:g}", *argv], timeout + 30
                res = self._exec(argv, env=dict(s.env), timeout=limit, workdir=folder)
                if res.returncode in (124, 137) and hangs < MAX_HANGS:
                    # killed by the timeout: a test hung. Keep what finished, name the
                    # test that hung, and run what would have followed it.
                    hangs += 1
                    cases += self._after_hang(selection, folder, family, timeout, queue)
                    continue
                try:
                    xml_text = self._get_file(f"{folder}/CUnitAutomated-Results.xml").decode(
                        errors="replace"
                    )
                except Exception:
                    detail = (res.record.stderr or res.record.stdout).strip()[-500:]
                    cases.append(
                        SuiteCase(
                            selection, "error", f"iscsi-test-cu exited {res.returncode}: {detail}"
                        )
                    )
                    continue
                parsed = salvage_partial_results(xml_text, family)
                if res.returncode in (124, 137):  # killed, and out of hang recoveries
                    cases.append(
                        SuiteCase(
                            selection,
                            "error",
                            f"iscsi-test-cu was killed after {timeout:.0f} s "
                            f"({hangs} hung tests already in this run)",
                        )
                    )
                if selection != family:  # a suite or a test: keep only what was asked
                    parsed = [
                        c
                        for c in parsed
                        if c.name == selection or c.name.startswith(selection + ".")
                    ]
                if not parsed:
                    detail = (res.record.stderr or res.record.stdout).strip()[-500:]
                    cases.append(
                        SuiteCase(
                            selection, "error", f"no test ran (exit {res.returncode}): {detail}"
                        )
                    )
                cases += parsed
            finally:
                self._drop(folder)
        return cases


class HeldNode:
    """A libiscsi cluster node holding one session: ``iscsi-pr URL ... serve`` keeps a
    login open and takes one command per line on its standard input, answering each
    with its lines and a JSON line that carries the exit status (sg3_utils' categories,
    as ``iscsi-pr``'s one-shot commands). ``command("reserve6")`` and the like return a
    ``PrToolResult``; ``close()`` logs out (``quit``) and ends the process."""

    #: What one command may take at most before the node counts as silent.
    TIMEOUT = 60.0

    def __init__(
        self, driver: LibiscsiInitiator, argv: list[str], env: dict[str, str], lun: int,
        session: LibiscsiSession,
    ) -> None:  # fmt: skip
        self.driver, self.argv, self.env, self.lun, self.session = driver, argv, env, lun, session
        self.isid = session.isid
        self.proc: subprocess.Popen[str] | None = None
        self._opened = 0.0
        self._lines: queue.Queue[str | None] = queue.Queue()

    def open(self) -> None:
        self._opened = time.monotonic()
        self.driver.log.secrets.update(v for k, v in self.env.items() if "PASSWORD" in k)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env},
        )
        threading.Thread(target=self._read, daemon=True, name="iscsi-pr-serve").start()
        first = self._answer("login")
        if first.returncode == 90:
            self.close()
            raise classify_login_failure(first.text)
        if first.returncode != 0:
            self.close()
            raise TransportError(f"{PR_TOOL} serve did not log in: {first.text.strip()[-200:]}")
        self.driver.log.add([*self.argv[:-1], "serve"], 0, first.text, "", self._opened)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, what: str) -> PrToolResult:
        """Lines up to the JSON line with the exit status; 98 when the process ended
        first, 97 when nothing came within TIMEOUT (the node is silent)."""
        text: list[str] = []
        deadline = time.monotonic() + self.TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return PrToolResult(97, "".join(text), f"{what}: no answer in {self.TIMEOUT:g} s")
            if line is None:
                return PrToolResult(98, "".join(text), f"{what}: {PR_TOOL} serve ended")
            text.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    code = json.loads(line).get("exit")
                    if isinstance(code, int):
                        return PrToolResult(code, "".join(text), "")

    def command(self, *words: str) -> PrToolResult:
        """One command of the held session (``iscsi-pr``'s words, without URL)."""
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
            return PrToolResult(98, "", f"{PR_TOOL} serve is not running")
        line = " ".join(words)
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            return PrToolResult(98, "", f"{PR_TOOL} serve: {exc}")
        started = time.monotonic()
        res = self._answer(line)
        where = f"{PR_TOOL} serve, ISID {self.isid}"
        self.driver.log.add(
            list(words), res.returncode, res.text, res.error_text, started, where=where
        )
        return res

    def write(self, lba: int, data: bytes) -> PrToolResult:
        folder = self.driver._scratch()
        try:
            path = self.driver._put_file(folder, "write.bin", data)
            return self.command("write", str(lba), path)
        finally:
            self.driver._drop(folder)

    def read(self, lba: int, blocks: int = 1) -> tuple[PrToolResult, bytes | None]:
        folder = self.driver._scratch()
        try:
            if self.driver.mode == "container":
                self.driver._exec(["mkdir", "-p", folder])
            path = f"{folder}/read.bin"
            res = self.command("read", str(lba), str(blocks), path)
            return res, self.driver._get_file(path) if res.returncode == 0 else None
        finally:
            self.driver._drop(folder)

    def kill(self) -> None:
        """End the process at once: its connection drops with no Logout (a host that
        fails; for the target, an I_T nexus loss)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Log out (``quit``) and end the process; killed after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
