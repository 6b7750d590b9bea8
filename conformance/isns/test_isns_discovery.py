"""iSNS.Discovery: an initiator finds a target through the run's iSNS server (RFC 4171).

For every pairing, the target registers with the run's iSNS server (``isns_server``:
isnsd in a container by default, or ours), and the initiator asks that server, not the
target, what it may log in to: RFC 4171 5.6.5.2 (DevAttrQry) and 5.6.5.3 (DevGetNext)
answer it, scoped by Discovery Domains. Then:

- it finds the target, at the portal the target serves, with the Portal Group Tag the
  login answers (RFC 7143 13.9), and logs in there;
- Discovery Domains restrict it (5.6.5.9 DDReg): the target is listed to an initiator
  of its domain, never to one outside, and the outsider never tries it;
- after a change, an SCN (5.6.5.8) is acted on: the reference initiator, registered for
  SCNs, lists the target that registered after it and logs in;
- open-iscsi's iscsid, registered for SCNs on a UDP SCN Port by its discovery daemon,
  receives the SCN (6.3.7, 2.9.2), logs in to the target it names, and logs out once an
  SCN says the target's node was deregistered. The server must
  reach the guest, and 2.9.2 has it send to every Portal the guest registered, its
  user-mode network address included: so this cell runs on a network of its own (a
  micro-VM with a tap into a namespace of ours, holding our server and a reference
  target; ``harness/isns_guest.py``), whatever server the run uses.

How each initiator discovers: open-iscsi with ``iscsiadm -m discovery -t isns`` in its
micro-VM; the reference initiator with its own iSNS client (``iscsi-conformance
initiator discover isns://``); libiscsi has no iSNS client (its source names no iSNS at
all), so a reference-initiator bridge discovers and libiscsi logs in to what it found.
Targets: the reference target (a dedicated ``--isns`` instance) and tgt (its built-in
client, ``iSNSServerIP``); LIO has none (``targets/lio/manifest.toml``), so its cells
skip as not supported.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.errors import LoginError
from iscsi_conformance.peers.base import LoginOptions, TargetEndpoint
from iscsi_conformance.plugin import require, spec, violation

#: What the iSNS area's discoveries take at most (a loaded CI host included).
TIMEOUT = 20.0
CLI = [sys.executable, "-m", "iscsi_conformance.cli"]


# --------------------------------------------------------------------------- discovery


def discover(initiator: Any, isns_server: Any, name: str) -> tuple[list[tuple[str, str, int, int | None]], str]:  # fmt: skip
    """What ``initiator``, named ``name``, finds through the run's iSNS server:
    (target name, portal host, port, PGT) items, and how it asked."""
    if initiator.name == "open-iscsi":
        return _iscsiadm_isns(initiator, isns_server, name), "iscsiadm -m discovery -t isns"
    found = isns_server.discover(name, timeout=TIMEOUT / 2)
    how = "the reference iSNS client" if initiator.name == "reference" else bridge(initiator)
    return [(t.name, h, p, tag) for t in found for h, p, tag in t.portals], how


def bridge(initiator: Any) -> str:
    """How discovery is done for an initiator without an iSNS client (libiscsi)."""
    return (
        f"a reference-initiator bridge: the reference initiator's iSNS client queried the "
        f"server (DevAttrQry, DevGetNext) on {initiator.name}'s behalf, as {initiator.name}'s "
        f"initiator node ({initiator.name} has no iSNS client); the login judged is "
        f"{initiator.name}'s own, at the iscsi:// URL built from the iSNS answer"
    )


def _guest_portal(initiator: Any, isns_server: Any) -> str:
    from iscsi_conformance.peers.openiscsi import guest_address

    host, port = isns_server.address
    return f"{guest_address(host, initiator.driver.mode)}:{port}"


def _iscsiadm_isns(initiator: Any, isns_server: Any, name: str) -> list[tuple[str, str, int, int | None]]:  # fmt: skip
    """``iscsiadm -m discovery -t isns -o nonpersistent`` as ``name`` (an iface)."""
    drv = initiator.driver
    iface = drv._iface(name)
    argv = ["iscsiadm", "-m", "discovery", "-t", "isns", "-p", _guest_portal(initiator, isns_server),
            "-I", iface, "-o", "nonpersistent"]  # fmt: skip
    res = drv.guest(argv, timeout=TIMEOUT)
    initiator.evidence.note(f"$ {shlex.join(argv)}\n(exit {res.returncode})\n{res.text}")
    # 21: ISCSI_ERR_NO_OBJS_FOUND, "No portals found": the server listed nothing to it
    if res.returncode not in (0, 21):
        raise violation(
            "R4171-5.6.5.2-1",
            f"open-iscsi's iSNS discovery failed (exit {res.returncode}): {res.error_text.strip()}",
        )
    out = []
    for line in res.text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "," in parts[0]:
            addr, _, tag = parts[0].rpartition(",")
            host, _, port = addr.rpartition(":")
            out.append((parts[1], host.strip("[]"), int(port), int(tag) if tag.isdigit() else None))
    return out


def _login(initiator: Any, iqn: str, host: str, port: int, tag: int | None, name: str) -> dict[str, str]:  # fmt: skip
    """Log ``initiator`` in as ``name`` at a portal iSNS listed; its negotiated keys."""
    ep = TargetEndpoint(host=host, port=port, iqn=iqn, luns=(0,), portal_group_tag=tag or 1)
    session = initiator.driver.login(ep, options=LoginOptions(initiator_name=name))
    url = getattr(getattr(session, "ref", None), "url_base", None)
    if url:  # libiscsi: the URL the bridge built from the iSNS answer
        initiator.evidence.note(f"{initiator.name} logged in as {name} at {url}")
    try:
        return dict(session.negotiated or {})
    finally:
        initiator.driver.logout(session)


# --------------------------------------------------------------------------- tests


@spec(
    "iSNS.Discovery.FindsTargetAndLogsIn",
    "RFC 4171 5.6.5.2",
    "RFC 4171 5.6.5.3",
    "RFC 7143 13.9",
    pairing="all",
    role="both",
    requirements=["R4171-5.6.5.2-1"],
    needs=("target:isns",),
)
def test_finds_target_and_logs_in(initiator: Any, target: Any, isns_server: Any) -> None:
    """The initiator finds the target through iSNS at the portal it serves and logs in
    there; the login's TargetPortalGroupTag is the PGT iSNS lists."""
    name = isns_server.unique_iqn("initiator")
    with isns_server.registered(target) as reg:
        found, how = discover(initiator, isns_server, name)
        target.evidence.note(f"{initiator.name} asked {isns_server.kind} through {how}: {found}")
        mine = [f for f in found if f[0] == reg.iqn]
        require(
            bool(mine),
            "R4171-5.6.5.2-1",
            f"{initiator.name} did not find {reg.iqn} through the {isns_server.kind} iSNS server "
            f"({how}); found {[f[0] for f in found]}",
        )
        at = [f for f in mine if (f[1], f[2]) == reg.portal]
        require(
            bool(at),
            "R4171-5.6.5.2-1",
            f"{target.name} registered {reg.iqn} at {[(f[1], f[2]) for f in mine]}, "
            f"not at the portal it serves {reg.portal[0]}:{reg.portal[1]}",
        )
        _iqn, host, port, tag = at[0]
        try:
            keys = _login(initiator, reg.iqn, host, port, tag, name)
        except LoginError as exc:
            raise violation(
                "R4171-5.6.5.2-1",
                f"{initiator.name} could not log in at {host}:{port}, where iSNS lists "
                f"{reg.iqn}: {exc}",
            ) from exc
        answered = keys.get("TargetPortalGroupTag")
        if tag is not None and answered is not None:
            require(
                int(answered) == tag,
                "R4171-5.6.5.2-1",
                f"iSNS lists {reg.iqn} at {host}:{port} with PGT {tag}, but the login "
                f"answered TargetPortalGroupTag={answered} (RFC 7143 13.9)",
            )


@spec(
    "iSNS.Discovery.DomainsRestrict",
    "RFC 4171 5.6.5.2",
    "RFC 4171 5.6.5.9",
    pairing="all",
    role="both",
    requirements=["R4171-5.6.5.2-2", "R4171-5.6.5.2-3"],
    needs=("target:isns",),
)
def test_domains_restrict(initiator: Any, target: Any, isns_server: Any) -> None:
    """A target is listed to an initiator of its Discovery Domain, never to one outside
    them, and the outsider never tries it."""
    inside = isns_server.unique_iqn("inside")
    outside = isns_server.unique_iqn("outside")
    with isns_server.registered(target) as reg:
        dds = [
            isns_server.register_dd(f"{inside}-dd", [inside, reg.iqn], source=reg.iqn),
            isns_server.register_dd(f"{outside}-dd", [outside], source=reg.iqn),
        ]
        try:
            found_in, how = discover(initiator, isns_server, inside)
            require(
                reg.iqn in [f[0] for f in found_in],
                "R4171-5.6.5.2-2",
                f"{initiator.name} in {reg.iqn}'s Discovery Domain did not find it ({how}); "
                f"found {[f[0] for f in found_in]}",
            )
            found_out, how = discover(initiator, isns_server, outside)
            require(
                reg.iqn not in [f[0] for f in found_out],
                "R4171-5.6.5.2-2",
                f"{initiator.name} outside {reg.iqn}'s Discovery Domains was told of it ({how})",
            )
            _never_tried(initiator, isns_server, outside, reg.iqn)
        finally:
            for dd in dds:
                isns_server.deregister_dd(dd, source=reg.iqn)


def _never_tried(initiator: Any, isns_server: Any, name: str, iqn: str) -> None:
    """The outsider, asked to log in to what iSNS lists, makes no attempt at ``iqn``."""
    if initiator.name == "open-iscsi":
        drv = initiator.driver
        argv = ["iscsiadm", "-m", "discovery", "-t", "isns", "-p", _guest_portal(initiator, isns_server),
                "-I", drv._iface(name), "--login"]  # fmt: skip
        res = drv.guest(argv, timeout=TIMEOUT * 2)
        sessions = drv.iscsiadm("-m", "session").text
        nodes = drv.iscsiadm("-m", "node").text
        initiator.evidence.note(f"$ {shlex.join(argv)} (exit {res.returncode})\n{res.text}\n"
                                f"sessions:\n{sessions}\nnodes:\n{nodes}")  # fmt: skip
        tried = iqn in res.text or iqn in sessions or iqn in nodes
        if iqn in sessions:
            drv.iscsiadm("-m", "node", "-T", iqn, "--logout")
        require(
            not tried,
            "R4171-5.6.5.2-3",
            f"open-iscsi, outside {iqn}'s Discovery Domains, recorded or logged in to it",
        )
        return
    if initiator.name != "reference":
        _bridge_never_tries(initiator, isns_server, name, iqn)
        return
    host, port = isns_server.host_side
    done = subprocess.run(
        [*CLI, "initiator", "discover", f"isns://{host}:{port}", "-i", name,
         "--timeout", "5", "--login", iqn],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    initiator.evidence.note(f"reference discover --login (exit {done.returncode}):\n"
                            f"{done.stdout}{done.stderr}")  # fmt: skip
    require(
        done.returncode == 1 and "Logged in" not in done.stdout,
        "R4171-5.6.5.2-3",
        f"the reference initiator, outside {iqn}'s Discovery Domains, logged in to it",
    )


#: At most this many listed targets are tried by the bridge's initiator in one cell.
BRIDGE_TRIES = 4


def _bridge_never_tries(initiator: Any, isns_server: Any, name: str, iqn: str) -> None:
    """The bridge asks iSNS as ``name`` and has the initiator (libiscsi) log in to every
    target listed (at most ``BRIDGE_TRIES``): ``iqn``, outside the node's Discovery
    Domains, must not be among them (RFC 4171 5.6.5.2: never returned, so never tried)."""
    found = isns_server.discover(name, timeout=TIMEOUT / 2)
    listed = [(t.name, h, p, tag) for t in found for h, p, tag in t.portals][:BRIDGE_TRIES]
    tried, results = [], []
    for t_iqn, host, port, tag in listed:
        tried.append(t_iqn)
        try:
            _login(initiator, t_iqn, host, port, tag, name)
            results.append(f"{t_iqn} at {host}:{port}: logged in")
        except Exception as exc:  # another test's target: only the attempt matters here
            results.append(f"{t_iqn} at {host}:{port}: {type(exc).__name__}: {exc}")
    initiator.evidence.note(
        f"{bridge(initiator)}; as {name}, iSNS listed {[x[0] for x in listed]}, and "
        f"{initiator.name} tried: {results or 'nothing'}"
    )
    require(
        iqn not in tried,
        "R4171-5.6.5.2-3",
        f"{initiator.name}, outside {iqn}'s Discovery Domains, was given it by iSNS and tried it",
    )


@spec(
    "iSNS.Discovery.ScnActedOn",
    "RFC 4171 5.6.5.5",
    "RFC 4171 5.6.5.8",
    pairing="target",
    role="both",
    requirements=["R4171-5.6.5.8-1"],
    needs=("target:isns",),
)
def test_scn_acted_on(target: Any, isns_server: Any) -> None:
    """The reference initiator, registered for SCNs before the target registers, is
    notified, lists the target again and logs in to it."""
    name = isns_server.unique_iqn("watcher")
    host, port = isns_server.host_side
    with (
        _watching(isns_server, name, "the reference initiator", "icc-isns-scn-") as watch,
        isns_server.registered(target) as reg,
    ):

        def listed_after_scn(text: str) -> bool:
            added = text.find(f" {reg.iqn}\n", text.find("SCN: "))
            return "SCN: " in text and added >= 0 and f"Target: {reg.iqn}\n" in text[added:]

        text = watch.until(listed_after_scn)
        target.evidence.note(f"reference initiator --watch:\n{text}")
        isns_server.check_alive()
        require(
            "SCN: " in text and f"Target: {reg.iqn}\n" in text,
            "R4171-5.6.5.8-1",
            f"no SCN naming {reg.iqn} reached the reference initiator, or it did not "
            f"list the target after it, within {TIMEOUT:.0f} s",
        )
        portal = text[text.index(f"Target: {reg.iqn}\n") :].splitlines()[1]
        done = subprocess.run(
            [*CLI, "initiator", "discover", f"isns://{host}:{port}", "-i", name + "-login",
             "--timeout", "5", "--login", reg.iqn],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        require(
            done.returncode == 0 and f"Logged in: {reg.iqn}" in done.stdout,
            "R4171-5.6.5.8-1",
            f"the reference initiator could not log in to {reg.iqn} ({portal.strip()}) "
            f"after the SCN: {done.stdout}{done.stderr}",
        )


class _Watch:
    """The reference initiator's ``discover --watch`` running, its output in ``log``
    (a plain class: tests/isns loads this module by path, outside sys.modules, where
    a dataclass cannot resolve its annotations)."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc, self.log = proc, log

    def until(self, seen: Callable[[str], bool]) -> str:
        """The watch's output once ``seen`` says it holds what is awaited, or as it is
        after ``TIMEOUT`` seconds."""
        deadline, text = time.monotonic() + TIMEOUT, ""
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if seen(text):
                break
            time.sleep(0.3)
        return text

    def stop(self) -> None:
        """End the watch (SIGTERM), at most 10 s, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def _watching(isns_server: Any, name: str, who: str, prefix: str) -> Iterator[_Watch]:
    """The reference initiator registered for SCNs with the run's iSNS server as
    ``name`` (``discover --watch``), for the block; ``who`` says whose watch it is in
    the failure when it ends before the block (R4171-5.6.5.8-1), and it is stopped
    after it."""
    host, port = isns_server.host_side
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        out_path = Path(tmp) / "watch.log"
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                [*CLI, "initiator", "discover", f"isns://{host}:{port}", "-i", name,
                 "--timeout", "5", "--watch", str(int(TIMEOUT) + 10)],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        watch = _Watch(proc, out_path)
        try:
            time.sleep(2.0)  # registered with its SCN port before the change
            require(proc.poll() is None, "R4171-5.6.5.8-1",
                    f"{who}'s watch ended: {out_path.read_text()}")  # fmt: skip
            yield watch
        finally:
            watch.stop()


@spec(
    "iSNS.Discovery.ScnActedOnByInitiator",
    "RFC 4171 6.3.7",
    "RFC 4171 2.9.2",
    "RFC 4171 5.6.5.8",
    pairing="initiator",
    role="initiator",
    requirements=["R4171-6.3.7-1", "R4171-5.6.5.8-2"],
)
def test_initiator_acts_on_scn(initiator: Any, request: pytest.FixtureRequest) -> None:
    """An initiator registered for SCNs by its own iSNS client gets the SCN that a
    target's registration causes, and logs in to that target without polling; then
    logs out once its node is deregistered. libiscsi, which has no iSNS client, gets
    it through the reference-initiator bridge and logs in (the login is judged). The run's server serves: isnsd with the
    guest's tap in its container, or ours in a namespace of the cell's own."""
    if initiator.name == "libiscsi":
        _bridge_acts_on_scn(initiator, request.getfixturevalue("isns_server"))
        return
    if initiator.name != "open-iscsi":
        pytest.skip(
            f"{initiator.name}: its SCN handling is judged by iSNS.Discovery.ScnActedOn"
            if initiator.name == "reference"
            else f"{initiator.name} lacks capability 'isns' (an iSNS client of its own)"
        )
    if os.geteuid() != 0:  # a tap and a network namespace
        why = "the SCN network of this cell needs root (a tap, a network namespace)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    isns_server = request.getfixturevalue("isns_server")  # only now: the others skip
    try:
        scn_in_guest(
            initiator.evidence, isnsd=isns_server.server if isns_server.kind == "isnsd" else None
        )
    finally:
        isns_server.check_alive()  # an isnsd that died sending SCNs is no failure of the guest


def _bridge_acts_on_scn(initiator: Any, isns_server: Any) -> None:
    """libiscsi has no iSNS client, so no SCN of its own: the bridge, the reference
    initiator registered for SCNs as libiscsi's initiator node (``--watch``), gets the
    SCN a reference target's registration causes (5.6.5.8), asks again as that node,
    and libiscsi logs in to what the answer names. The SCN is the bridge's; the login
    judged is libiscsi's."""
    name = isns_server.unique_iqn("bridged")
    iqn = isns_server.unique_iqn("scn-target")
    with (
        _watching(isns_server, name, "the bridge", "icc-isns-bridge-") as watch,
        isns_server.reference_target(iqn),
    ):
        text = watch.until(lambda out: "SCN: " in out and f"Target: {iqn}\n" in out)
        watch.stop()
        initiator.evidence.note(
            f"{bridge(initiator)}; the bridge registered for SCNs as {name} "
            f"(reference initiator --watch):\n{text}"
        )
        isns_server.check_alive()
        require(
            "SCN: " in text and f"Target: {iqn}\n" in text,
            "R4171-5.6.5.8-1",
            f"no SCN naming {iqn} reached the bridge registered as {name}, or it did "
            f"not list the target after it, within {TIMEOUT:.0f} s",
        )
        found = [(h, p, tag) for t in isns_server.discover(name, timeout=TIMEOUT / 2)
                 if t.name == iqn for h, p, tag in t.portals]  # fmt: skip
        require(bool(found), "R4171-5.6.5.8-1",
                f"after the SCN, {iqn} is not listed to {name}")  # fmt: skip
        at_host, at_port, tag = found[0]
        try:
            _login(initiator, iqn, at_host, at_port, tag, name)
        except LoginError as exc:
            raise violation(
                "R4171-5.6.5.8-2",
                f"{initiator.name} could not log in to {iqn} at {at_host}:{at_port}, "
                f"which the SCN announced and iSNS lists: {exc}",
            ) from exc


def scn_in_guest(
    evidence: Any, *, block_scn: bool = False, block_removal: bool = False, isnsd: Any = None
) -> None:
    """open-iscsi in a micro-VM of its own registers for SCNs with our server through
    iscsid's discovery daemon (no polling); a reference target then registers: the SCN
    must reach the guest (6.3.7), and open-iscsi logs in to the target; once the
    target's node is deregistered (it still serves), open-iscsi logs out (both
    informational). ``isnsd``: the run's isnsd serves instead of ours.
    ``block_scn``: the namespace drops the server's UDP, the network on which this
    fails; ``block_removal``: it does so only after the login, so that the SCN of the
    removal is lost (tests/isns/test_isns_guest_scn_proof.py)."""
    from iscsi_conformance.harness.isns_guest import SCN_BITMAP, GuestScnStage
    from iscsi_conformance.harness.profiles import IQN_PREFIX

    iqn = f"{IQN_PREFIX}:isns-scn-guest"
    with GuestScnStage(block_scn=block_scn, isnsd=isnsd) as stage:
        name = stage.initiator.initiator_name
        script = stage.start_discoveryd()
        reg = stage.wait_registered(name, TIMEOUT * 2)
        server = "the run's isnsd (the tap in its container)" if isnsd else "our server"
        if reg:
            ports = sorted({p["key"][1] for p in reg["portals"]})
            how = (f"bitmap {reg['node']['attrs'].get(SCN_BITMAP)}, portals "
                   f"{[p['key'] for p in reg['portals']]}, SCN Port values {ports}")  # fmt: skip
        else:
            how = "as iscsid logged it"
        evidence.note(f"guest: {script}\n{name} registered for SCN with {server} ({how})")
        stage.start_target(iqn)
        took = stage.wait_session(iqn, TIMEOUT)
        guest_log, server_log = stage.guest_log(), stage.server_log()
        evidence.note(f"session after {took} s:\n{stage.sessions()}\niscsid (guest):\n"
                      f"{guest_log}\n{server}'s log:\n{server_log}")  # fmt: skip
        at = re.escape(stage.guest_address)
        answered = re.search(
            rf"scn to {at}:\d+ over UDP: answered with function 0x8008 status 0", server_log
        )
        processed = f"(Target: {iqn}," in guest_log
        require(
            bool(answered or processed),
            "R4171-6.3.7-1",
            f"the SCN {server} sent to open-iscsi's registered UDP SCN Port at "
            f"{stage.guest_address} got no SCN Response and iscsid logged no SCN for {iqn}",
        )
        require(
            took is not None,
            "R4171-5.6.5.8-2",
            f"open-iscsi received the SCN announcing {iqn} but did not log in to it within "
            f"{TIMEOUT:.0f} s",
        )
        # The target's node is deregistered (DevDereg, 5.6.5.4) while the target keeps
        # serving: an SCN Object Removed, and nothing else tells open-iscsi to leave.
        if block_removal:
            stage.drop_udp()
        stage.deregister_node(iqn)
        gone = stage.wait_no_session(iqn, TIMEOUT)
        guest_log, server_log = stage.guest_log(), stage.server_log()
        evidence.note(f"after the target's node was deregistered (it still serves): session "
                      f"gone after {gone} s\n{stage.sessions()}\niscsid (guest):\n{guest_log}"
                      f"\n{server}'s log:\n{server_log}")  # fmt: skip
        require(
            gone is not None,
            "R4171-5.6.5.8-2",
            f"open-iscsi kept its session with {iqn} for {TIMEOUT:.0f} s after an SCN said "
            f"the target's node was deregistered",
        )
