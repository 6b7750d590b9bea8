"""Where each end of the link lies when a micro-VM guest is one of the hosts (in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iscsi_conformance.ipsec.hosts import GUEST_IFNAME, Link
from iscsi_conformance.ipsec.path import ProtectedPath


class _Shell:
    where = "guest"


def test_a_guest_target_puts_its_tap_in_the_initiator_namespace() -> None:
    link = Link(tag="77", guest=_Shell())
    assert link.target.shell is not None and link.target.ifname == GUEST_IFNAME
    assert link.namespace_side is link.initiator
    assert (link.initiator.netns, link.initiator.ifname) == ("isc77i", "isc77-i")
    assert link.guest is link.target


def test_a_guest_initiator_puts_its_tap_in_the_target_namespace() -> None:
    link = Link(tag="77", guest=_Shell(), guest_role="initiator")
    assert link.initiator.shell is not None and link.initiator.ifname == GUEST_IFNAME
    assert link.initiator.address == "10.77.0.1" and link.target.address == "10.77.0.2"
    assert link.namespace_side is link.target
    assert (link.target.netns, link.target.ifname) == ("isc77t", "isc77-i")  # the tap
    with pytest.raises(ValueError, match="run through its shell"):
        link.initiator.argv("true")


def test_without_a_guest_both_ends_are_namespaces() -> None:
    link = Link(tag="77")
    assert link.guest is None
    assert [h.ifname for h in link.hosts] == ["isc77-i", "isc77-t"]


def test_a_guest_role_is_initiator_or_target() -> None:
    with pytest.raises(ValueError, match="guest_role"):
        Link(tag="77", guest=_Shell(), guest_role="both")


def test_two_guests_meet_on_a_bridge_of_their_own() -> None:
    link = Link(tag="77", guests={"initiator": _Shell(), "target": _Shell()})
    assert link.initiator.shell is not None and link.target.shell is not None
    assert link.bridge is not None and link.namespace_side is link.bridge
    assert (link.bridge.netns, link.bridge.ifname, link.bridge.address) == (
        "isc77b",
        "br0",
        "10.77.0.3",
    )
    assert link._taps == ["isc77-i", "isc77-t"]  # make_tap(tag, end="i") and end="t"


def test_two_guests_are_both_kernel_esp() -> None:
    path = ProtectedPath(
        Path("/nonexistent"),
        guests={"initiator": (_Shell(), ("127.0.0.1", 1)), "target": (_Shell(), ("127.0.0.1", 2))},
    )
    assert path.backend == "kernel"
    assert path.capture_host is path.link.bridge
