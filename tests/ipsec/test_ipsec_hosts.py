"""Where each end of the link lies when a micro-VM guest is one of the hosts (in memory)."""

from __future__ import annotations

import pytest

from iscsi_conformance.ipsec.hosts import GUEST_IFNAME, Link


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
