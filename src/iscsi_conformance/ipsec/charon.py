"""One strongSwan charon per host, driven through VICI.

Theory of operation: :class:`Charon` writes a ``strongswan.conf`` of its own (named by
``STRONGSWAN_CONF``), then starts ``/usr/lib/ipsec/charon`` inside the host's network
namespace *and* a private mount namespace with a tmpfs on ``/run``, so two charons on
one machine do not share a pid file or control socket. Its VICI socket lives in the
run's directory, where the suite reaches it from outside the namespace.

ESP runs where the host allows it (``backend``): ``kernel-libipsec`` (user-space ESP
over a TUN device, for this machine's host kernel, which has no ``esp4``) or
``kernel`` (XFRM). For kernel-libipsec the fwmark trio keeps charon's own packets
(IKE and UDP-encapsulated ESP) out of the tunnel's routing table: charon's socket and
libipsec mark them ``0x42``, and the routing rule kernel-netlink installs skips the
tunnel table for that mark.

Secrets: the PSK and private keys go to charon over the VICI socket only; every
command record and log tail passes through :meth:`Charon.mask` first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import vici

from iscsi_conformance.errors import HarnessError, PeerStartError

from .hosts import Host
from .profiles import EspBackend

__all__ = ["CHARON", "Charon", "IkeFailed", "charon_available"]

CHARON = "/usr/lib/ipsec/charon"
FWMARK = "0x42"
_PLUGINS = (
    "random nonce aes sha1 sha2 hmac gcm pem pkcs1 pkcs8 x509 pubkey openssl kdf "
    "constraints revocation socket-default {kernel} kernel-netlink vici"
)


class IkeFailed(HarnessError):
    """An IKE or child SA could not be established; ``log`` is charon's own account."""

    def __init__(self, host: str, message: str, log: list[str]) -> None:
        tail = "\n".join(log[-12:])
        super().__init__(f"{host}: {message}" + (f"\n--- charon says ---\n{tail}" if tail else ""))
        self.log = log


def charon_available() -> str | None:
    """None when charon, its kernel-libipsec and vici plugins are installed, else why not."""
    plugins = Path("/usr/lib/ipsec/plugins")
    for need in (
        Path(CHARON),
        plugins / "libstrongswan-kernel-libipsec.so",
        plugins / "libstrongswan-vici.so",
    ):
        if not need.exists():
            return f"{need} is missing (Debian: strongswan-charon, libcharon-extra-plugins, strongswan-swanctl)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def _conf(workdir: Path, backend: EspBackend, vici_path: Path) -> str:
    kernel = (
        f"kernel-libipsec {{\n      fwmark = {FWMARK}\n      allow_peer_ts = yes\n    }}\n"
        f"    kernel-netlink {{\n      fwmark = !{FWMARK}\n    }}\n"
        f"    socket-default {{\n      fwmark = {FWMARK}\n    }}\n"
        if backend == "kernel-libipsec"
        else ""
    )
    # kernel-libipsec before kernel-netlink: the first loaded takes the IPsec role
    plugins = _PLUGINS.format(kernel="kernel-libipsec" if backend == "kernel-libipsec" else "")
    return (
        "charon {\n"
        f"  load = {plugins}\n"
        "  install_routes = yes\n"
        "  retransmit_tries = 2\n"
        "  retransmit_timeout = 1.0\n"
        "  retransmit_base = 1.4\n"
        "  filelog {\n"
        "    stderr {\n      time_format = %T\n      default = 1\n      ike_name = yes\n    }\n"
        "  }\n"
        "  plugins {\n"
        f"    {kernel}"
        f"    vici {{\n      socket = unix://{vici_path}\n    }}\n"
        "  }\n"
        "}\n"
    )


class Charon:
    """charon on ``host``; :meth:`start`, then VICI calls, then :meth:`stop`."""

    def __init__(self, host: Host, workdir: Path, *, backend: EspBackend = "kernel-libipsec"):
        self.host = host
        self.backend = backend
        self.workdir = workdir / host.role
        self.vici_path = self.workdir / "charon.vici"
        self.log_path = self.workdir / "charon.log"
        self.secrets: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._vici: vici.Session | None = None
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 15.0) -> Charon:
        why = charon_available()
        if why:
            raise PeerStartError(f"charon on the {self.host.role} host", why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "strongswan.conf"
        conf.write_text(_conf(self.workdir, self.backend, self.vici_path))
        self.vici_path.unlink(missing_ok=True)
        argv = self.host.argv(
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}",
        )  # fmt: skip
        started = time.monotonic()
        log = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "STRONGSWAN_CONF": str(conf)},
                start_new_session=True,
            )
        finally:
            log.close()
        self._record(argv, None, started)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PeerStartError(
                    f"charon on the {self.host.role} host ({self.host.netns})",
                    f"exited with status {self._proc.returncode}",
                    log_tail=self.log_tail(),
                )
            if self.vici_path.exists():
                try:
                    self._connect()
                    self.startup_seconds = time.monotonic() - started
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise PeerStartError(
            f"charon on the {self.host.role} host ({self.host.netns})",
            f"no VICI socket at {self.vici_path} within {timeout:.0f} s",
            log_tail=self.log_tail(),
        )

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(self.vici_path))
        self._sock, self._vici = sock, vici.Session(sock)
        self._vici.version()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the SAs (charon deletes them on SIGTERM), then the process (idempotent)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = self._vici = None
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return self.mask("\n".join(text.splitlines()[-lines:]))

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _record(self, argv: Iterable[str], rc: int | None, started: float, out: str = "") -> None:
        self.records.append(
            {
                "argv": [self.mask(a) for a in argv],
                "returncode": rc,
                "stdout": self.mask(out),
                "where": self.host.netns,
                "duration": round(time.monotonic() - started, 3),
            }
        )

    # ------------------------------------------------------------------ VICI

    @property
    def session(self) -> vici.Session:
        if self._vici is None:
            raise HarnessError(f"charon on the {self.host.role} host is not running")
        return self._vici

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            answer = fn(*args)
        except vici.exception.CommandException as exc:
            self._record(["vici", what], 1, started, str(exc))
            raise HarnessError(f"{self.host.role} host: VICI {what}: {exc}") from exc
        self._record(["vici", what], 0, started)
        return answer

    def load(
        self,
        conn: dict[str, Any],
        *,
        psk: str | None = None,
        ids: Iterable[str] = (),
        cert_pem: str | None = None,
        key_pem: str | None = None,
        cacert_pem: str | None = None,
    ) -> None:
        """Replace the connections and credentials with these."""
        s = self.session
        for name in list(self._call("get-conns", s.get_conns).get("conns", [])):
            self._call("unload-conn", s.unload_conn, {"name": name})
        self._call("clear-creds", s.clear_creds)
        if psk is not None:
            self.secrets.add(psk)
            self._call(
                "load-shared",
                s.load_shared,
                {"id": "psk", "type": "IKE", "data": psk, "owners": list(ids)},
            )
        if cacert_pem is not None:
            self._call(
                "load-cert (CA)", s.load_cert, {"type": "X509", "flag": "CA", "data": cacert_pem}
            )
        if cert_pem is not None:
            self._call("load-cert", s.load_cert, {"type": "X509", "flag": "NONE", "data": cert_pem})
        if key_pem is not None:
            self.secrets.add(key_pem)
            self._call("load-key", s.load_key, {"type": "any", "data": key_pem})
        self._call("load-conn", s.load_conn, conn)

    def initiate(self, ike: str, child: str = "iscsi", timeout_ms: int = 8000) -> list[str]:
        """Start the child SA (and its IKE SA); charon's log lines, or :class:`IkeFailed`."""
        log: list[str] = []
        started = time.monotonic()
        try:
            for msg in self.session.initiate(
                {"ike": ike, "child": child, "timeout": timeout_ms, "loglevel": 1}
            ):
                if "msg" in msg:
                    log.append(self.mask(msg["msg"].decode(errors="replace")))
        except vici.exception.CommandException as exc:
            self._record(["vici", "initiate", ike, child], 1, started, "\n".join(log))
            raise IkeFailed(
                self.host.role + " host", f"initiate {ike}/{child}: {exc}", log
            ) from exc
        self._record(["vici", "initiate", ike, child], 0, started, "\n".join(log))
        return log

    def terminate(self, *, ike: str | None = None, child: str | None = None) -> None:
        """Delete a child SA (or the IKE SA with its children), waiting for the peer."""
        args: dict[str, Any] = {"timeout": 5000, "force": "no"}
        if child:
            args["child"] = child
        if ike:
            args["ike"] = ike
        started = time.monotonic()
        with contextlib.suppress(vici.exception.CommandException):
            for _ in self.session.terminate(args):
                pass
        self._record(["vici", "terminate", ike or "", child or ""], 0, started)

    def list_sas(self) -> list[dict[str, Any]]:
        """The IKE SAs with their child SAs, as plain strings (no key material in them)."""
        return [_plain(sa) for sa in self._call("list-sas", lambda: list(self.session.list_sas()))]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
