"""What a conformance test holds: the target or initiator under test, and its evidence.

Theory of operation: ``TargetUnderTest`` wraps a target of the run (a peer or a URL)
and hands out connections of the reference initiator to it by *profile*; every
connection's PDU trace is registered with the test's ``Evidence`` so that a failure
shows the PDUs and the report stores them. ``InitiatorUnderTest`` wraps an initiator
driver. Nothing here starts a peer: ``PeerPool`` did that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.harness.profiles import PROFILES, REFERENCE_INITIATOR_NAME, Credentials
from iscsi_conformance.peers.base import ChapAccount, InitiatorDriver, Manifest, TargetEndpoint

#: Heavy cluster work (tox -e cluster) is asked for with this variable.
ENV_CLUSTER_HEAVY = "ISCSI_CONFORMANCE_CLUSTER_HEAVY"


@dataclasses.dataclass
class Evidence:
    """PDU traces and notes gathered during one test."""

    traces: list[Any] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    captures: list[str] = dataclasses.field(default_factory=list)
    secrets: set[str] = dataclasses.field(default_factory=set)
    # structured evidence by name (JSON-able), e.g. "cluster_timeline" (Cluster area)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_trace(self, trace: Any) -> Any:
        if trace is not None and trace not in self.traces:
            self.traces.append(trace)
        return trace

    def note(self, text: str) -> None:
        self.notes.append(text)

    MAX_RECORDS = 2000  # per test: a peer that floods must not bloat the report
    MAX_HEX_BYTES = 1024  # per PDU in the report: the header and the start of the data

    def records(self) -> list[dict[str, Any]]:
        """Every traced PDU as plain data (direction, opcode, summary, hex), secrets
        masked; at most ``MAX_RECORDS`` per connection (the first ones)."""
        out: list[dict[str, Any]] = []
        for conn_no, trace in enumerate(self.traces):
            for secret in self.secrets:
                trace.add_secret(secret)
            entries = trace.to_json().get("entries", [])
            if len(entries) > self.MAX_RECORDS:
                self.note(
                    f"connection {conn_no}: {len(entries)} PDUs traced, "
                    f"the first {self.MAX_RECORDS} kept in the report"
                )
                entries = entries[: self.MAX_RECORDS]
            for entry in entries:
                fields = entry.get("fields", {})
                summary = ", ".join(
                    f"{k}={v}"
                    for k, v in fields.items()
                    if k not in ("data", "ahs") and v not in (0, False, "", None)
                )
                if entry.get("text"):
                    summary += f" | {entry['text']}"
                raw = entry.get("raw", "")
                if len(raw) > 2 * self.MAX_HEX_BYTES:
                    summary += f" | {len(raw) // 2} bytes, first {self.MAX_HEX_BYTES} kept"
                    raw = raw[: 2 * self.MAX_HEX_BYTES]
                out.append(
                    {
                        "direction": entry.get("direction"),
                        "opcode": entry.get("pdu"),
                        "summary": summary,
                        "hex": raw,
                        "time": entry.get("time"),
                        "note": entry.get("note", ""),
                        "connection": conn_no,
                    }
                )
        return out


class TargetUnderTest:
    def __init__(
        self, entry: Any, credentials: Credentials, evidence: Evidence, *, allow_dataloss: bool
    ) -> None:
        self.entry = entry
        self.name: str = entry.name
        self.manifest: Manifest = entry.manifest
        self.credentials = credentials
        self.evidence = evidence
        self.allow_dataloss = allow_dataloss
        self.initiator_name = REFERENCE_INITIATOR_NAME
        evidence.secrets.update({credentials.initiator.secret, credentials.target.secret})

    def __repr__(self) -> str:
        return f"TargetUnderTest({self.name!r})"

    @property
    def external(self) -> bool:
        return bool(self.entry.external)

    @property
    def lun(self) -> int:
        """The LUN tests may use: the URL's LUN for a third-party target, else the first
        LUN the peer serves for the default profile (tgt's LUN 0 is its controller)."""
        if self.external:
            return int(self.entry.lun)
        ep = self.entry.endpoint("default")
        return int(ep.luns[0]) if ep is not None and ep.luns else 0

    def endpoint(self, profile: str = "default") -> TargetEndpoint:
        ep = self.entry.endpoint(profile)
        if ep is None:
            why = self.entry.unservable.get(profile, f"profile {profile!r} unknown")
            pytest.skip(f"target {self.name} cannot serve profile {profile!r}: {why}")
        return ep  # type: ignore[no-any-return]

    def chap_for(self, profile: str) -> tuple[ChapAccount | None, ChapAccount | None]:
        """The CHAP credentials an initiator must use for ``profile``."""
        if self.external:
            return getattr(self.entry, "external_chap", None), (
                getattr(self.entry, "external_mutual", None)
                if profile.startswith("mutual")
                else None
            )
        spec = PROFILES[profile].build(self.credentials)
        # Credentials are regenerated only per run; the profile spec has the run's values.
        chap = self.credentials.initiator if spec.chap is not None else None
        mutual = self.credentials.target if spec.mutual_chap is not None else None
        return chap, mutual

    def require_dataloss(self) -> None:
        if self.external and not self.allow_dataloss:
            pytest.skip("writes to a third-party target need --iscsi-allow-dataloss")

    # -- reference-initiator connections -------------------------------------------------

    async def connect(self, profile: str = "default", **kw: Any) -> Any:
        """Log in with the reference initiator (a ``Session``); the trace is evidence."""
        from iscsi_conformance.initiator.client import Session

        ep = self.endpoint(profile)
        chap, mutual = self.chap_for(profile)
        kw.setdefault("initiator_name", self.initiator_name)
        kw.setdefault("chap", chap)
        kw.setdefault("mutual_chap", mutual)
        trace_sink = kw.pop("trace_sink", None)
        host, port = ep.host_side or (ep.host, ep.port)
        session = await Session.connect(host, port, ep.iqn, **kw)
        self.evidence.add_trace(getattr(session, "trace", None))
        if trace_sink is not None:
            trace_sink.append(session)
        return session

    def raw(self, profile: str = "default", **kw: Any) -> Any:
        """A raw connection (async context manager) to the target of ``profile``."""
        from iscsi_conformance.harness.probe import ProbeConnection
        from iscsi_conformance.initiator.raw import RawConnection

        ep = self.endpoint(profile)
        host, port = ep.host_side or (ep.host, ep.port)
        conn = ProbeConnection(RawConnection(host, port, **kw))
        self.evidence.add_trace(conn.trace)
        return conn

    def probe(self, raw: Any, profile: str = "default", **kw: Any) -> Any:
        """A ``LoginProbe`` for ``raw`` with this run's names for ``profile``."""
        from iscsi_conformance.harness.probe import LoginProbe

        kw.setdefault("initiator_name", self.initiator_name)
        kw.setdefault("target_name", self.endpoint(profile).iqn)
        return LoginProbe(raw, **kw)

    def chap_pair(self, profile: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
        """(user, secret) pairs for ``profile``: the initiator's, and the target's (mutual)."""
        chap, mutual = self.chap_for(profile)
        return (
            (chap.user, chap.secret) if chap else None,
            (mutual.user, mutual.secret) if mutual else None,
        )

    async def login(self, raw: Any, profile: str = "default", keys: Any = (), **kw: Any) -> Any:
        """A whole raw login to full feature phase for ``profile``; returns the probe."""
        probe = self.probe(raw, profile, **kw)
        chap, mutual = self.chap_pair(profile)
        step = await probe.to_full_feature(keys, chap=chap, mutual=mutual)
        if not probe.in_full_feature:
            from iscsi_conformance.plugin.spec import violation

            raise violation(
                "harness",
                f"could not log in to {self.name} profile {profile!r} (status {step.status!r})",
                sent=probe.sent,
                received=probe.received,
            )
        return probe

    def portal(self, profile: str = "default") -> tuple[str, int]:
        ep = self.endpoint(profile)
        return ep.host_side or (ep.host, ep.port)

    def send_async(
        self,
        tsih: int,
        event: int,
        *,
        cid: int | None = None,
        time2wait: int = 0,
        time2retain: int = 0,
        time_to_logout: int = 5,
        lun: int = 0,
        sense: bytes = b"",
        vcode: int = 0,
        data: bytes = b"",
    ) -> None:
        """Have the target send the Async Message ``event`` (RFC 7143 11.9.1) on the
        session ``tsih`` through the reference target's test API (an embedded reference
        target, the run's or a dedicated instance; elsewhere the test skips): every event
        is a target's own initiative, which no request can ask for. Event 2 goes on the
        connection ``cid``, event 1 too when ``cid`` is given; the others on every
        connection of the session. ``time_to_logout`` is Parameter3 of events 1 and 4
        (the seconds the initiator has to log out, or to send its Text Request)."""
        server, session = self._test_api(tsih, "send an Async Message")
        if event == 0:
            server.send_scsi_async_event(session, lun, sense)
        elif event == 1:
            server.request_logout(session, time_to_logout=time_to_logout, cid=cid)
        elif event == 2:
            conn = server.call(lambda: session.connections.get(cid))
            if conn is None:
                raise LookupError(f"session {tsih} has no connection with CID {cid}")
            server.drop_connection(conn, time2wait=time2wait, time2retain=time2retain)
        elif event == 3:
            server.drop_session(session, time2wait=time2wait, time2retain=time2retain)
        elif event == 4:
            server.request_renegotiation(session, time_to_answer=time_to_logout)
        elif event == 255:
            server.send_vendor_event(session, vcode, data)
        else:
            raise ValueError(f"AsyncEvent {event} is reserved (RFC 7143 11.9.1)")

    def set_cmd_window(self, tsih: int, window: int) -> None:
        """Have an embedded reference target resize the CmdSN window of session ``tsih``
        to ``window`` commands (0 closes it, RFC 7143 4.2.2.1), announced by a NOP-In
        (11.4.11); elsewhere the test skips, as in ``send_async``."""
        server, session = self._test_api(tsih, "resize a CmdSN window")
        server.set_cmd_window(session, window)

    def _test_api(self, tsih: int, what: str) -> tuple[Any, Any]:
        """The embedded reference target's server and its session ``tsih``; a target
        without that in-process test API skips the test (it cannot ``what``)."""
        driver = self.__dict__.get("driver") or getattr(self.entry, "driver", None)
        server = getattr(driver, "server", None)
        if server is None or not server.serving():
            pytest.skip(
                f"{self.name} has no in-process test API to {what} "
                "(only an embedded reference target has one)"
            )
        session = server.call(lambda: server.engine.sessions.get(tsih))
        if session is None:
            raise LookupError(f"{self.name} has no session with TSIH {tsih}")
        return server, session

    @contextlib.contextmanager
    def dedicated(self, **kw: Any) -> Iterator[DedicatedTarget]:
        """A reference target instance of this test alone (``DedicatedTarget``; keyword
        arguments are its options), stopped on exit. Only a target whose manifest declares
        ``dedicated_instance`` (the reference target) offers one; elsewhere the test skips."""
        from iscsi_conformance.harness.profiles import capability_satisfied

        if self.external or not capability_satisfied(self.manifest, "dedicated_instance"):
            pytest.skip(f"{self.name} does not declare capability 'dedicated_instance' (manifest)")
        instance = DedicatedTarget(self, **kw)
        try:
            yield instance
        finally:
            instance.close()

    @contextlib.contextmanager
    def power_cyclable(self, portal_groups: int = 1) -> Iterator[TargetUnderTest]:
        """A target of this test alone whose ``restart()`` is a power cycle (APTPL, SPC-4
        5.13.5): the reference target's dedicated instance, or, with
        ``ISCSI_CONFORMANCE_CLUSTER_HEAVY=1``, a LIO target of the test's own (its own
        IQN and backstore in the run's LIO guest, ``LioOwnTarget``). ``portal_groups=2``
        adds a second target port (profile "port-2"). Elsewhere the test skips, naming
        the capability."""
        from iscsi_conformance.harness.profiles import capability_satisfied

        driver = None if self.external else getattr(self.entry, "driver", None)
        if os.environ.get(ENV_CLUSTER_HEAVY) and hasattr(driver, "power_cycle"):
            lio = LioOwnTarget(self, portal_groups=portal_groups)
            try:
                yield lio
            finally:
                lio.close()
            return
        if self.external or not capability_satisfied(self.manifest, "dedicated_instance"):
            extra = (
                f" (LIO offers one with {ENV_CLUSTER_HEAVY}=1)"
                if hasattr(driver, "power_cycle")
                else ""
            )
            pytest.skip(
                f"{self.name} does not declare capability 'dedicated_instance' (manifest){extra}"
            )
        with self.dedicated(portal_groups=portal_groups) as inst:
            yield inst


class InitiatorUnderTest:
    def __init__(self, entry: Any, evidence: Evidence) -> None:
        self.entry = entry
        self.name: str = entry.name
        self.manifest: Manifest = entry.manifest
        self.evidence = evidence

    @property
    def driver(self) -> InitiatorDriver:
        return self.entry.driver  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"InitiatorUnderTest({self.name!r})"


class DedicatedTarget(TargetUnderTest):
    """A reference target instance of one test alone (capability ``dedicated_instance``).

    It runs embedded in this process beside the run's shared targets, on ports of its
    own, so a test may restart it (a power cycle: same state directory), give it a
    second portal group or discovery CHAP, or reset it, and no other test (or xdist
    worker) sees any of it. Profiles "default" (portal group 1) and "port-2" (portal
    group 2, relative target port 2) name its portals; CHAP (``chap_for``) is the run's
    initiator account wherever the instance requires CHAP. ``close()`` stops it and
    removes its directory; ``TargetUnderTest.dedicated`` does that on exit.
    """

    def __init__(
        self,
        parent: TargetUnderTest,
        *,
        luns: int = 1,
        portal_groups: int = 1,
        discovery_chap: bool = False,
        parameters: tuple[tuple[str, str], ...] = (),
    ) -> None:
        from iscsi_conformance.harness.profiles import IQN_PREFIX
        from iscsi_conformance.peers.base import LunSpec, TargetSpec
        from iscsi_conformance.peers.reference_target import ReferenceTargetDriver

        super().__init__(parent.entry, parent.credentials, parent.evidence, allow_dataloss=True)
        self.name = f"{parent.name} (dedicated instance)"
        self._discovery_chap = discovery_chap
        self.driver = ReferenceTargetDriver(
            mode="embedded",
            portal_groups=portal_groups,
            discovery_chap=self.credentials.initiator if discovery_chap else None,
        )
        spec = TargetSpec(
            iqn=f"{IQN_PREFIX}:dedicated",
            luns=tuple(LunSpec(1024 * 1024) for _ in range(luns)),
            parameters=parameters,
        )
        try:
            first = self.driver.configure(spec)
        except BaseException:
            self.driver.stop()
            raise
        self._endpoints = {
            "default" if tag == 1 else f"port-{tag}": dataclasses.replace(
                first, port=port, portal_group_tag=tag
            )
            for tag, port in self.driver.ports.items()
        }

    def __repr__(self) -> str:
        return f"DedicatedTarget({self.name!r})"

    @property
    def external(self) -> bool:
        return False

    @property
    def lun(self) -> int:
        return 0

    def endpoint(self, profile: str = "default") -> TargetEndpoint:
        return self._endpoints[profile]

    def chap_for(self, profile: str) -> tuple[ChapAccount | None, ChapAccount | None]:
        return (self.credentials.initiator if self._discovery_chap else None), None

    def restart(self) -> None:
        """Stop the instance and start it again with the same ports and state directory."""
        self.driver.restart()

    def close(self) -> None:
        self.driver.stop()


class LioOwnTarget(TargetUnderTest):
    """A LIO target of one test alone in the run's LIO guest: its own IQN and fileio
    backstore (1 MiB, demo-mode ACLs), deleted on ``close()``. ``restart()`` is a power
    cycle of its logical unit (``LioTarget.power_cycle``): the device and its in-kernel
    reservation state are freed and made again from the medium and the APTPL file LIO
    wrote, as at boot; the run's shared target is not touched. ``portal_groups=2``: a
    second target port, TPG 2 (profile "port-2"; a power cycle then is not offered)."""

    def __init__(self, parent: TargetUnderTest, *, portal_groups: int = 1) -> None:
        import secrets

        from iscsi_conformance.harness.profiles import IQN_PREFIX, OTHER_INITIATOR_NAME
        from iscsi_conformance.peers.base import LunSpec, TargetSpec

        super().__init__(parent.entry, parent.credentials, parent.evidence, allow_dataloss=True)
        self.name = f"{parent.name} (own target)"
        self.driver: Any = parent.entry.driver
        self.iqn = f"{IQN_PREFIX}:own-{secrets.token_hex(3)}"
        if portal_groups not in (1, 2):
            raise ValueError(
                f"a LIO target of the test's own has 1 or 2 portal groups, not {portal_groups}"
            )
        # Two target ports: node ACLs for the run's two initiator names on both, since
        # LIO's ALL_TG_PT=1 registers only through explicit mapped LUNs.
        names = (REFERENCE_INITIATOR_NAME, OTHER_INITIATOR_NAME) if portal_groups == 2 else ()
        spec = TargetSpec(iqn=self.iqn, luns=(LunSpec(1024 * 1024),), allowed_initiators=names)
        first = self.driver.configure(spec)
        self._endpoints = {"default": first}
        try:
            if portal_groups == 2:
                self._endpoints["port-2"] = self.driver.add_portal_group(self.iqn, names)
        except BaseException:
            self.driver.deconfigure(self.iqn)
            raise

    def __repr__(self) -> str:
        return f"LioOwnTarget({self.iqn!r})"

    @property
    def external(self) -> bool:
        return False

    @property
    def lun(self) -> int:
        return 0

    def endpoint(self, profile: str = "default") -> TargetEndpoint:
        if profile not in self._endpoints:
            pytest.skip(f"{self.name} has no profile {profile!r}")
        return self._endpoints[profile]  # type: ignore[no-any-return]

    def chap_for(self, profile: str) -> tuple[ChapAccount | None, ChapAccount | None]:
        return None, None

    def restart(self) -> None:
        """A power cycle of the target's logical unit (``lio power-cycle``)."""
        self.driver.power_cycle(self.iqn)

    def close(self) -> None:
        self.driver.deconfigure(self.iqn)
