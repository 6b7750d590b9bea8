"""iSNS.Registration: what a target registers with the run's iSNS server (RFC 4171).

The target is judged by what the server (isnsd by default, or ours) lists for it,
asked through the reference iSNS client as an observer of the default Discovery
Domain (DevAttrQry, 5.6.5.2), and, in WhatIsServed, also through open-isns's isnsadm
(this host's open-isns-utils, a second, independent client) with ``--query
iscsi-name=``: both must see the node as a Target and the same portals and PGTs.
isnsadm also checks the end state of ReplacedAfterRestart (the new portal alone) and of
DeregisteredAtStop (no node).

- the registration is what the target serves: every Portal listed for its node, with
  its Portal Group Tag, is one the target itself announces in a SendTargets answer
  with that Target Portal Group Tag (RFC 4171 3.2, 3.4; RFC 7143 13.3, 13.9);
- a target restarted without deregistering (SIGKILL) and registering again at another
  portal replaces its old entry: only the new portal is listed (5.6.5.1, the replace
  bit);
- a target that stops deregisters (5.6.5.4): its node is no longer listed;
- a target killed without deregistering, registered with ESI monitoring, stays listed
  while it answers ESIs and is removed once they go unanswered (5.6.5.13).

Targets: the reference target (a dedicated ``--isns`` process of each test) and tgt
(its built-in client, ``iSNS On``/``Off``; the restart test kills a tgtd of its own on
this host, since the run's is shared). tgt registers no ESI Port (usr/iscsi/isns.c
registers an SCN Port only), which RFC 4171 leaves to the client (2.3.2: a target "may
also register for ESI"; 6.3.4: a client asks for monitoring by registering an ESI
Interval; 6.2.6: an entity without ESI lives by its Registration Period), so its ESI
cell skips as a missing capability, not a failure. LIO has no iSNS client
(``targets/lio/manifest.toml``): its cells are not supported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from iscsi_conformance.plugin import require, spec

#: How long the server may take to show a change (a loaded CI host included).
SETTLE = 10.0
#: ESI Interval the reference target asks for in the ESI test (isnsd's container
#: allows 1 s: isns-servers/isnsd/isnsd.conf; ours by default).
ESI_INTERVAL = 1


def _send_targets(host: str, port: int) -> list[tuple[str, str, int, int | None]]:
    """(target, host, port, TPGT) of a SendTargets=All answer at ``host:port``."""
    from iscsi_conformance.initiator.client import discover

    found = asyncio.run(discover(host, port, timeout=10.0))
    return [(t.name, a.host, a.port, a.tpgt) for t in found for a in t.addresses]


def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _reference_only(target: Any, why: str) -> None:
    if target.name != "reference":
        pytest.skip(f"{target.name} lacks capability {why}")


def _isnsadm_agrees(target: Any, isns_server: Any, iqn: str, listed: list[Any]) -> None:
    """isnsadm (open-isns-utils), a second client independent of ours, sees the same
    node (name, type Target) and the same Portal Groups (portal, PGT) as the reference
    client: what is checked against SendTargets is what the server lists, not what
    one client makes of it."""
    view = isns_server.isnsadm_view(iqn)
    if view is None:
        target.evidence.note("isnsadm is not installed here: the reference client observed alone")
        return
    target.evidence.note(f"isnsadm sees nodes {list(view.nodes)}, portal groups "
                         f"{list(view.portal_groups)}:\n{view.log}")  # fmt: skip
    require(
        (iqn, "Target") in view.nodes,
        "R4171-5.6.5.2-1",
        f"isnsadm, asking the {isns_server.kind} server for {iqn}, sees no such Target node "
        f"(it sees {list(view.nodes)})",
    )
    ours = sorted((h, p, t) for h, p, t in listed)
    theirs = sorted(view.portal_groups)
    require(
        ours == theirs,
        "R4171-5.6.5.2-1",
        f"isnsadm sees {iqn}'s portal groups (portal, PGT) as {theirs}, the reference "
        f"client as {ours}: the two clients disagree on what the {isns_server.kind} server "
        "lists",
    )


@spec(
    "iSNS.Registration.WhatIsServed",
    "RFC 4171 3.4",
    "RFC 4171 5.6.5.1",
    "RFC 7143 13.9",
    pairing="target",
    requirements=["R4171-5.6.5.2-1"],
    needs=("target:isns",),
)
def test_registration_is_what_is_served(target: Any, isns_server: Any) -> None:
    """Every Portal and PGT the server lists for the target's node is a TargetAddress
    and Target Portal Group Tag of the target's own SendTargets answer."""
    with isns_server.registered(target) as reg:
        listed = isns_server.portals_of(reg.iqn)
        served = _send_targets(*reg.host_side)
        target.evidence.note(
            f"{isns_server.kind} lists {reg.iqn} at {listed} (reference iSNS client); "
            f"SendTargets at {reg.host_side[0]}:{reg.host_side[1]} answers {served}"
        )
        require(
            bool(listed),
            "R4171-5.6.5.2-1",
            f"the {isns_server.kind} server lists no portal for {reg.iqn} after {target.name} "
            "registered",
        )
        _isnsadm_agrees(target, isns_server, reg.iqn, listed or [])
        mine = {(h, p, t) for name, h, p, t in served if name == reg.iqn}
        for host, port, pgt in listed or []:
            if pgt is None:
                continue  # a NULL PGT: the portal gives no access to the node (3.4)
            require(
                (host, port, pgt) in mine,
                "R4171-5.6.5.2-1",
                f"{target.name} registered {reg.iqn} at {host}:{port} with PGT {pgt}, but its "
                f"SendTargets answer names {sorted(mine)}: the registered portal or tag is not "
                "one it serves (RFC 4171 3.4: a non-NULL PGT says the portal gives access)",
            )


@spec(
    "iSNS.Registration.ReplacedAfterRestart",
    "RFC 4171 5.6.5.1",
    pairing="target",
    role="both",
    requirements=["R4171-5.6.5.1-1"],
    needs=("target:isns",),
)
def test_restart_replaces_the_old_registration(target: Any, isns_server: Any) -> None:
    """Killed without deregistering, then started again at another port: the server
    lists the node at the new portal only."""
    if target.name not in ("reference", "tgt"):
        pytest.skip(f"{target.name} does not declare capability 'isns' (manifest)")
    iqn = isns_server.unique_iqn("restarted")
    with isns_server.dedicated(target, iqn) as first:
        old = first.registered.portal
        first.kill()
    with isns_server.dedicated(target, iqn) as second:
        new = second.registered.portal
        listed: list[Any] | None = None

        def replaced() -> bool:
            nonlocal listed
            listed = isns_server.portals_of(iqn)
            return listed is not None and [(h, p) for h, p, _t in listed] == [new]

        ok = _until(replaced, SETTLE)
        target.evidence.note(f"killed at {old}, registered again at {new}; listed: {listed}")
        isns_server.check_alive()
        require(
            ok,
            "R4171-5.6.5.1-1",
            f"after the restart the {isns_server.kind} server lists {iqn} at {listed}, not at "
            f"{new[0]}:{new[1]} alone: the old portal {old[0]}:{old[1]} was not replaced",
        )
        view = isns_server.isnsadm_view(iqn)
        if view is not None:
            target.evidence.note(f"isnsadm sees portal groups {list(view.portal_groups)}")
            seen = sorted({(h, p) for h, p, _t in view.portal_groups})
            require(
                seen == [new],
                "R4171-5.6.5.1-1",
                f"isnsadm sees {iqn} at {seen} after the restart, not at {new[0]}:{new[1]} "
                "alone: the old portal was not replaced",
            )


@spec(
    "iSNS.Registration.DeregisteredAtStop",
    "RFC 4171 5.6.5.4",
    pairing="target",
    requirements=["R4171-5.6.5.4-1"],
    needs=("target:isns",),
)
def test_stop_deregisters(target: Any, isns_server: Any) -> None:
    """Once the target stops (the reference target: SIGTERM; tgt: ``iSNS Off``), the
    server no longer lists its node."""
    with isns_server.registered(target) as reg:
        require(
            isns_server.portals_of(reg.iqn) is not None,
            "R4171-5.6.5.4-1",
            f"the {isns_server.kind} server does not list {reg.iqn} while {target.name} runs",
        )
    gone = _until(lambda: isns_server.portals_of(reg.iqn) is None, SETTLE)
    require(
        gone,
        "R4171-5.6.5.4-1",
        f"{SETTLE:.0f} s after {target.name} stopped, the {isns_server.kind} server still lists "
        f"{reg.iqn}: it did not deregister (DevDereg)",
    )
    view = isns_server.isnsadm_view(reg.iqn)
    require(
        view is None or not view.nodes,
        "R4171-5.6.5.4-1",
        f"after {target.name} stopped, isnsadm still sees {reg.iqn} on the {isns_server.kind} "
        f"server: {list(view.nodes) if view else []}",
    )


@spec(
    "iSNS.Registration.RemovedWhenEsiUnanswered",
    "RFC 4171 5.6.5.13",
    "RFC 4171 6.3.4",
    pairing="target",
    role="both",
    requirements=["R4171-5.6.5.13-1"],
    needs=("target:isns",),
)
def test_killed_target_is_removed_when_esi_goes_unanswered(target: Any, isns_server: Any) -> None:
    """With an ESI Interval of 1 s the target stays listed for several intervals (it
    answers the ESIs); killed, it is removed after the unanswered ones."""
    _reference_only(
        target,
        "'isns-esi': it registers no ESI Port (usr/iscsi/isns.c), which RFC 4171 leaves to "
        "the client (2.3.2 'may also register for ESI'; 6.3.4); its registration lives by "
        "the Registration Period instead (6.2.6)",
    )
    iqn = isns_server.unique_iqn("esi")
    with isns_server.reference_target(iqn, esi_interval=ESI_INTERVAL) as running:
        time.sleep(4 * ESI_INTERVAL)
        isns_server.check_alive()
        require(
            isns_server.portals_of(iqn) is not None,
            "R4171-5.6.5.13-1",
            f"the reference target, alive and answering ESI, was removed by the "
            f"{isns_server.kind} server within {4 * ESI_INTERVAL} s",
        )
        running.kill()
        started = time.monotonic()
        gone = _until(lambda: isns_server.portals_of(iqn) is None, 3 * SETTLE)
        target.evidence.note(
            f"killed; {'removed' if gone else 'still listed'} after "
            f"{time.monotonic() - started:.1f} s"
        )
        isns_server.check_alive()
        require(
            gone,
            "R4171-5.6.5.13-1",
            f"{3 * SETTLE:.0f} s after the target was killed, the {isns_server.kind} server "
            f"still lists {iqn}: its unanswered ESIs did not remove it",
        )
