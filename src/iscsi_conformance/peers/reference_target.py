"""Driver for the reference target (``iscsi_conformance.target``).

Two modes: ``embedded`` runs ``TargetServer`` in a background thread of this process
(fast, and tests can reach the server object for its Async Message API);
``native`` runs ``iscsi-conformance target --config FILE`` as a subprocess, as a user
would. Either way ``configure(spec)`` adds or replaces a target and restarts the
server on the same port with every configured target, since the configuration is
static once running. Commands and their output are recorded in ``self.log`` with
CHAP secrets masked.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import PeerStartError
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.peers.base import (
    ChapAccount,
    Manifest,
    Mode,
    TargetDriver,
    TargetEndpoint,
    TargetSpec,
)
from iscsi_conformance.peers.registry import register_target

_KIND = {"HeaderDigest", "DataDigest"}


def load_manifest() -> Manifest:
    """targets/reference/manifest.toml (source tree, wheel, or $ISCSI_CONFORMANCE_PEERS_DIR)."""
    from iscsi_conformance.peers.manifest import load_peer_manifest

    return load_peer_manifest("target", "reference")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


@register_target("reference")
class ReferenceTargetDriver(TargetDriver):
    """The reference target as a peer (``mode`` "embedded" or "native")."""

    name = "reference"
    modes = ("embedded", "native")

    def __init__(
        self,
        manifest: Manifest | None = None,
        *,
        mode: Mode | None = "embedded",
        host: str = "127.0.0.1",
        port: int | None = None,
        workdir: Path | None = None,
        portal_groups: int = 1,
        discovery_chap: ChapAccount | None = None,
    ) -> None:
        super().__init__(manifest or load_manifest())
        mode = mode or "embedded"
        if mode not in ("embedded", "native"):
            raise ValueError(f"mode {mode!r}: the reference target runs embedded or native")
        self.mode = mode
        self.host = host
        self.port = port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = workdir
        self.specs: dict[str, TargetSpec] = {}
        self.server: Any = None  # TargetServer in embedded mode
        self._proc: subprocess.Popen[str] | None = None
        self._started = False
        # Portal group tag -> port; tag 1 is ``port``. More than one group (one portal
        # each, relative target port = tag) and discovery CHAP serve dedicated instances.
        self.portal_groups = portal_groups
        self.ports: dict[int, int] = {}
        self.discovery_chap = discovery_chap
        if discovery_chap is not None:
            self.log.secrets.add(discovery_chap.secret)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="iscsi-ref-target-")
            self.workdir = Path(self._tmp.name)
        if self.port is None:
            self.port = free_tcp_port(self.host)
        self.ports = {1: self.port}
        for tag in range(2, self.portal_groups + 1):
            self.ports[tag] = free_tcp_port(self.host)
        self._started = True
        if self.specs:
            self._launch()

    def stop(self) -> None:
        self._halt()
        self._started = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None

    def restart(self) -> None:
        """Stop the server and start it again on the same ports, configuration and
        state directory: a power cycle (APTPL state is read back from ``state_dir``)."""
        self._halt()
        self._launch()

    def version(self) -> str:
        from iscsi_conformance import __version__

        return f"iscsi-conformance reference target {__version__}"

    def configure(self, spec: TargetSpec) -> TargetEndpoint:
        if not self._started:
            self.start()
        self.specs[spec.iqn] = spec
        for creds in (spec.chap, spec.mutual_chap):
            if creds is not None:
                self.log.secrets.add(creds.secret)
        previous = self.specs.get(spec.iqn)
        self._halt()
        try:
            self._launch()
        except PeerStartError:
            # Keep serving what was configured before (the pool goes on with the
            # other profiles after one it cannot serve).
            if previous is None:
                del self.specs[spec.iqn]
            else:
                self.specs[spec.iqn] = previous
            if self.specs:
                self._launch()
            raise
        assert self.port is not None
        return TargetEndpoint(
            host=self.host,
            port=self.port,
            iqn=spec.iqn,
            luns=tuple(range(len(spec.luns))),
            portal_group_tag=1,
        )

    def deconfigure(self, iqn: str) -> None:
        if self.specs.pop(iqn, None) is not None:
            self._halt()
            if self.specs:
                self._launch()

    # ------------------------------------------------------------------ config

    def config_text(self) -> str:
        """The TOML configuration for every configured spec (docs/target-config.md)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = ["[server]", 'state_dir = "state"', ""]
        for tag, port in sorted((self.ports or {1: self.port}).items()):
            lines += ["[[portal_groups]]", f"tag = {tag}", f'portals = ["{host}:{port}"]', ""]
        if self.discovery_chap is not None:
            d = self.discovery_chap
            lines += [
                "[discovery]",
                f"chap = {{ user = {_toml_value(d.user)}, secret = {_toml_value(d.secret)} }}",
                "",
            ]
        for spec in self.specs.values():
            lines += ["[[targets]]", f"name = {_toml_value(spec.iqn)}"]
            if spec.chap is not None:
                lines.append(
                    f"chap = {{ user = {_toml_value(spec.chap.user)}, secret = {_toml_value(spec.chap.secret)} }}"
                )
            if spec.mutual_chap is not None:
                m = spec.mutual_chap
                lines.append(
                    f"mutual_chap = {{ user = {_toml_value(m.user)}, secret = {_toml_value(m.secret)} }}"
                )
            params: dict[str, Any] = {
                "HeaderDigest": list(spec.header_digest),
                "DataDigest": list(spec.data_digest),
            }
            for k, v in spec.parameters:
                if k == "CHAP_A":  # the CHAP algorithms this target accepts
                    lines.append(
                        f"chap_algorithms = [{', '.join(x.strip() for x in v.split(','))}]"
                    )
                    continue
                params[k] = int(v) if v.isdigit() else (v == "Yes" if v in ("Yes", "No") else v)
            lines.append(
                "parameters = { "
                + ", ".join(f"{k} = {_toml_value(v)}" for k, v in params.items())
                + " }"
            )
            if spec.max_send_data_segment_length is not None:
                lines.append(f"max_send_data_segment_length = {spec.max_send_data_segment_length}")
            if spec.datain_order != "offset":
                lines.append(f"datain_order = {_toml_value(spec.datain_order)}")
            if spec.cmd_window is not None:
                lines.append(f"cmd_window = {spec.cmd_window}")
            if spec.redirect is not None:
                lines.append(
                    f"redirect = {{ address = {_toml_value(spec.redirect)}, "
                    f"permanent = {_toml_value(spec.redirect_permanent)} }}"
                )
            for i, lun in enumerate(spec.luns):
                lines += [
                    "[[targets.luns]]",
                    f"lun = {i}",
                    f"size = {lun.size_bytes}",
                    f"block_size = {lun.block_size}",
                ]
            for ini in spec.allowed_initiators:
                lines += ["[[targets.acls]]", f"initiator = {_toml_value(ini)}"]
            lines.append("")
        return "\n".join(lines)

    # ------------------------------------------------------------------ running

    def _launch(self) -> None:
        assert self.workdir is not None
        cfg_path = self.workdir / "target.toml"
        cfg_path.write_text(self.config_text(), encoding="utf-8")
        started = time.monotonic()
        if self.mode == "embedded":
            from iscsi_conformance.errors import ConfigError
            from iscsi_conformance.target.config import load_config
            from iscsi_conformance.target.server import TargetServer

            try:
                self.server = TargetServer(load_config(cfg_path))
                self.server.start_in_thread()
            except (ConfigError, OSError, TimeoutError) as exc:
                self.log.add(["embedded", str(cfg_path)], 1, "", str(exc), started)
                raise PeerStartError(self.name, str(exc)) from exc
            self.log.add(
                ["embedded", str(cfg_path)], 0, f"listening on {self.host}:{self.port}", "", started
            )
            return
        argv = [sys.executable, "-m", "iscsi_conformance.target.cli", "--config", str(cfg_path)]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("listening on"):
            err = self._proc.stderr.read() if self._proc.stderr else ""
            self._proc.wait(5)
            self.log.add(argv, self._proc.returncode, line, err, started)
            raise PeerStartError(self.name, "did not start", log_tail=err[-2000:])
        self.log.add(argv, None, line, "", started)

    def health(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"reference target process exited with status {self._proc.returncode}"
        if self.server is not None and not self.server.serving():
            return "reference target server thread stopped"
        return None

    def _halt(self) -> None:
        if self.server is not None:
            self.server.stop_thread()
            self.server = None
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc = None
