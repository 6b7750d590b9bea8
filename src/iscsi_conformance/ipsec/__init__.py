"""IPsec-protected transport for iSCSI (RFC 3723 as updated by RFC 7146).

Theory of operation: the peers of a pairing run on hosts of their own, joined by one
link the suite can capture (:mod:`.hosts`: network namespaces for the reference peers).
Each host runs a strongSwan charon (IKEv2) configured through VICI (:mod:`.charon`);
the security associations are data (:mod:`.profiles`); certificate authentication
uses a CA the run creates (:mod:`.ca`); :mod:`.path` puts it together and removes it
on every exit, and :mod:`.capture` proves the wire carries no cleartext iSCSI.

This package drives processes and netlink; it builds on :mod:`iscsi_conformance.errors`
alone (a layering contract in pyproject.toml).
"""

from __future__ import annotations

from .capture import Capture, WireSummary, dissect
from .charon import Charon, IkeFailed, charon_available
from .hosts import Host, Link, call_in, sweep
from .path import Established, ProtectedPath
from .profiles import DEFAULT, PROFILES, SaProfile, unsupported

__all__ = [
    "DEFAULT",
    "PROFILES",
    "Capture",
    "Charon",
    "Established",
    "Host",
    "IkeFailed",
    "Link",
    "ProtectedPath",
    "SaProfile",
    "WireSummary",
    "call_in",
    "charon_available",
    "dissect",
    "sweep",
    "unsupported",
]
