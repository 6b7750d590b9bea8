"""The protected path: two hosts, a charon on each, a policy, and SAs on demand.

Theory of operation: :class:`ProtectedPath` owns everything the IPsec area creates
and removes it on every exit (``close`` is idempotent, registered with ``atexit``, and
each part is removed even when another fails; a run killed outright is swept by the
next one, :func:`hosts.sweep`). :meth:`establish` loads one :class:`SaProfile` into both
charons over VICI and initiates the child SA from the initiator host (an explicit
initiation: with kernel-libipsec a trap policy alone starts no IKE), timing it.

The *policy* makes the portal a protected one: on the target host, TCP to the iSCSI
port that arrives on the link itself (not out of the tunnel) is dropped; on the
initiator host, such TCP may not leave on the link in the clear, except from a socket
marked with charon's bypass mark, which is what the cleartext probe uses to show that
the target's side of the policy holds on its own.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import HarnessError

from . import hosts
from .ca import HostCredentials, RunCA, make_ca
from .charon import FWMARK, Charon
from .hosts import Host, Link
from .profiles import EspBackend, SaProfile, connection

__all__ = ["Established", "ProtectedPath"]

IKE_NAME = "iscsi-path"
ISCSI_PORT = 3260
#: A second address per host for a path no SA covers (:meth:`ProtectedPath.clear_route`);
#: ``.3`` is the bridge's between two guests.
CLEAR_ADDRESSES = {"initiator": f"{hosts.SUBNET}.6", "target": f"{hosts.SUBNET}.5"}


@dataclasses.dataclass
class Established:
    """One established child SA: what was asked, how long IKE took, what was agreed."""

    profile: SaProfile
    ike_seconds: float
    initiator_log: list[str]
    sas: list[dict[str, Any]]

    def child(self) -> dict[str, Any]:
        """The initiator's view of the child SA (the first installed one)."""
        for ike in self.sas:
            for ike_sa in ike.values():
                for child in ike_sa.get("child-sas", {}).values():
                    if child.get("state") == "INSTALLED":
                        return dict(child)
        return {}

    def transforms(self) -> dict[str, str]:
        """The negotiated transform, as list-sas reports it (no key material)."""
        child = self.child()
        keep = ("mode", "protocol", "encap", "encr-alg", "encr-keysize", "integ-alg", "esn")
        ike: dict[str, Any] = next(iter(self.sas[0].values()), {}) if self.sas else {}
        out = {k: str(child[k]) for k in keep if k in child}
        out.update(
            {f"ike-{k}": str(ike[k]) for k in ("encr-alg", "integ-alg", "dh-group") if k in ike}
        )
        return out


class ProtectedPath:
    """``with ProtectedPath(workdir) as path: path.establish(profile)``."""

    def __init__(
        self,
        workdir: Path,
        *,
        backend: EspBackend = "kernel-libipsec",
        attach: dict[str, int] | None = None,
        guest: Any = None,
        guest_vici: tuple[str, int] | None = None,
        guest_role: str = "target",
        guests: dict[str, tuple[Any, tuple[str, int]]] | None = None,
    ) -> None:
        """``attach``: role -> pid of a container whose network namespace is that host.
        ``guest``: the agent shell of a micro-VM that is the ``guest_role`` host (kernel
        ESP, charon reached over VICI at ``guest_vici``; its tap from
        :func:`hosts.make_tap`). ``guests``: role -> (agent shell, VICI address), for
        two guests (ESP in a kernel at both ends: ``backend`` becomes "kernel")."""
        self.workdir = workdir
        shells = {role: shell for role, (shell, _at) in (guests or {}).items()}
        self.guest_vici = {role: at for role, (_shell, at) in (guests or {}).items()}
        if guest is not None and guest_vici is not None:
            self.guest_vici[guest_role] = guest_vici
        self.backend: EspBackend = "kernel" if len(shells) == 2 else backend
        self.link = Link(attach=attach, guest=guest, guest_role=guest_role, guests=shells)
        self.initiator, self.target = self.link.initiator, self.link.target
        self.charons: dict[str, Charon] = {}
        self.psk = secrets.token_urlsafe(24)
        self.ca: RunCA | None = None
        self.creds: dict[str, HostCredentials] = {}
        self.timings: dict[str, float] = {}
        self.commands: list[dict[str, Any]] = []
        self._closed = True

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> ProtectedPath:
        self._closed = False
        atexit.register(self.close)
        try:
            started = time.monotonic()
            self.swept = hosts.sweep()
            self.link.open()
            self.timings["hosts"] = time.monotonic() - started
            started = time.monotonic()
            for host in self.link.hosts:
                if host.shell is not None:
                    from .guest import GuestCharon

                    if host.role not in self.guest_vici:
                        raise HarnessError("a guest host needs the address of its VICI port")
                    self.charons[host.role] = GuestCharon(
                        host, self.workdir, shell=host.shell, vici_at=self.guest_vici[host.role]
                    ).start()
                    continue
                self.charons[host.role] = Charon(host, self.workdir, backend=self.backend).start()
            self.timings["charon_start"] = time.monotonic() - started
            started = time.monotonic()
            self.ca = make_ca()
            self.creds = {h.role: self.ca.issue(h.address) for h in self.link.hosts}
            self.timings["ca"] = time.monotonic() - started
            self._policy()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop both charons (their SAs and TUN devices go with them), remove the hosts."""
        if self._closed:
            return
        self._closed = True
        for charon in self.charons.values():
            with contextlib.suppress(Exception):
                charon.stop()
        self.link.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> ProtectedPath:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def capture_host(self) -> Host:
        """Where the link is captured: the target's end, or the guest's tap in the other
        host's namespace when a host is a guest (its own NIC is inside the VM)."""
        return self.link.namespace_side if self.link.guest is not None else self.target

    @property
    def secrets(self) -> set[str]:
        """Everything that must never appear in a log or report."""
        out = {self.psk} | {c.key_pem for c in self.creds.values()}
        for charon in self.charons.values():
            out |= charon.secrets
        return out

    # ------------------------------------------------------------------ policy

    def _run(self, host: Host, *argv: str) -> None:
        if host.shell is not None:
            host.shell.run(list(argv), check=True, timeout=30)  # recorded in its log
            return
        full = host.argv(*argv)
        started = time.monotonic()
        out = subprocess.run(full, capture_output=True, text=True, timeout=30, check=False)
        self.commands.append(
            {"argv": full, "returncode": out.returncode, "stdout": out.stdout[-500:],
             "duration": round(time.monotonic() - started, 3)}
        )  # fmt: skip
        if out.returncode != 0:
            raise HarnessError(f"{' '.join(full)}: {out.stderr.strip()[-300:]}")

    def _policy(self) -> None:
        port = str(ISCSI_PORT)
        # kernel ESP hands the decrypted packet back on the same interface: only what
        # did not come through an SA is dropped there (kernel-libipsec's comes from TUN)
        via_sa = ("-m", "policy", "--dir", "in", "--pol", "none") if self.target.shell else ()
        self._run(
            self.target, "iptables", "-A", "INPUT", "-i", self.target.ifname,
            "-p", "tcp", "--dport", port, *via_sa, "-j", "DROP",
        )  # fmt: skip
        # on the initiator host, OUTPUT sees the plaintext: with kernel ESP what no SA
        # will protect is dropped; with kernel-libipsec what does not carry the bypass mark
        # leaves through TUN, so the link's side drops all but the cleartext probe's
        unprotected = (
            ("-m", "policy", "--dir", "out", "--pol", "none")
            if self.initiator.shell
            else ("-m", "mark", "!", "--mark", FWMARK)
        )
        self._run(
            self.initiator, "iptables", "-A", "OUTPUT", "-o", self.initiator.ifname,
            "-p", "tcp", "--dport", port, *unprotected, "-j", "DROP",
        )  # fmt: skip

    def clear_route(self) -> tuple[str, str]:
        """Give each host a second address on the link, routed to the other's, and
        return (the initiator's, the target's). No SA's selectors name these addresses,
        and with kernel-libipsec the tunnel's routes do not either, so TCP between them
        crosses the same link in the clear: the baseline a benchmark compares the
        protected path with. The drop policy covers the iSCSI port only, so the clear
        portal must listen on another port."""
        for role in ("initiator", "target"):
            host = self.initiator if role == "initiator" else self.target
            mine = CLEAR_ADDRESSES[role]
            theirs = CLEAR_ADDRESSES["target" if role == "initiator" else "initiator"]
            self._run(host, "ip", "addr", "add", f"{mine}/32", "dev", host.ifname)
            self._run(host, "ip", "route", "add", f"{theirs}/32", "dev", host.ifname, "src", mine)
        return CLEAR_ADDRESSES["initiator"], CLEAR_ADDRESSES["target"]

    # ------------------------------------------------------------------ SAs

    def load(
        self,
        profile: SaProfile,
        *,
        target_psk: str | None = None,
        target_ca: RunCA | None = None,
        target_profile: SaProfile | None = None,
    ) -> None:
        """Load ``profile`` into both charons. ``target_psk``/``target_ca`` give the target
        host other credentials than the initiator's, ``target_profile`` other proposals
        (the negative cases)."""
        if self.ca is None:
            raise HarnessError("the protected path is not open")
        ends = ((self.initiator, self.target, True), (self.target, self.initiator, False))
        for local, remote, is_initiator in ends:
            creds = self.creds[local.role]
            ca = self.ca
            if not is_initiator and target_ca is not None:
                ca = target_ca
                creds = target_ca.issue(local.address)
            conn = connection(
                target_profile if (target_profile and not is_initiator) else profile,
                name=IKE_NAME,
                local=local.address,
                remote=remote.address,
                local_id=local.address,
                remote_id=remote.address,
                cert=creds.cert_pem,
                cacert=ca.cert_pem,
                initiator=is_initiator,
                port=ISCSI_PORT,
            )
            if profile.auth == "pubkey":
                self.charons[local.role].load(conn, key_pem=creds.key_pem)
            else:
                psk = target_psk if (target_psk and not is_initiator) else self.psk
                self.charons[local.role].load(conn, psk=psk, ids=[local.address, remote.address])

    def establish(self, profile: SaProfile, **load: Any) -> Established:
        """Load ``profile`` and bring its child SA up (raises :class:`IkeFailed`)."""
        self.terminate()
        self.load(profile, **load)
        started = time.monotonic()
        log = self.charons["initiator"].initiate(IKE_NAME)
        seconds = time.monotonic() - started
        self.timings.setdefault("ike", 0.0)
        self.timings["ike"] += seconds
        return Established(profile, seconds, log, self.list_sas())

    def reinitiate(self) -> float:
        """Bring the child SA up again with the profile already loaded; seconds taken."""
        started = time.monotonic()
        self.charons["initiator"].initiate(IKE_NAME)
        return time.monotonic() - started

    def delete_child(self) -> None:
        """Delete the child SA (INFORMATIONAL exchange), keeping the IKE SA."""
        self.charons["initiator"].terminate(child="iscsi")

    def terminate(self) -> None:
        """Delete every SA (the IKE SA with its children) on both hosts."""
        for charon in self.charons.values():
            if charon.running:
                charon.terminate(ike=IKE_NAME)

    def list_sas(self, role: str = "initiator") -> list[dict[str, Any]]:
        return self.charons[role].list_sas()

    def modes(self) -> dict[str, str]:
        """Where ESP ran on each host (for the report)."""
        return {role: charon.backend for role, charon in self.charons.items()}
