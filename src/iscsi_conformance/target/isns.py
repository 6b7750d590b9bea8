"""The reference target's iSNS registration (RFC 4171): what it serves, as iSNS objects.

The target's configuration and the portals it actually bound become one Network Entity
(3.1): every bound portal, every target as an iSCSI Storage Node of type Target (6.4.2,
with its alias, 6.4.3), and one Portal Group per (target, portal) the target answers on,
with the portal group's tag as PGT (6.5.4; RFC 7143 4.4.1's TPGT), and one with a NULL
PGT where a target is not served (otherwise the server's implicit PG, PGT 1, would
offer it there, 5.6.5.1). The client itself is
``isns/client_io.py``; this module only builds what it registers.
"""

from __future__ import annotations

from collections.abc import Iterable

from iscsi_conformance.core.isns import NodeType
from iscsi_conformance.isns.client import NodeSpec, PortalGroupSpec, Registration
from iscsi_conformance.isns.client_io import ISNSClient

from .config import IsnsConfig, ServerConfig

__all__ = ["registration_for", "start_isns"]


def registration_for(
    config: ServerConfig, isns: IsnsConfig, portals: Iterable[tuple[str, int, int]]
) -> Registration:
    """The Registration of the targets of ``config`` on the bound ``portals``
    ((host, port, portal group tag))."""
    bound = list(dict.fromkeys(portals))
    nodes = tuple(
        NodeSpec(t.name, NodeType.TARGET, t.alias or t.parameters.get("TargetAlias", ""))
        for t in config.targets
    )
    groups = tuple(
        PortalGroupSpec(t.name, host, port, tag if not t.portal_groups or tag in t.portal_groups
                        else None)
        for t in config.targets
        for host, port, tag in bound
    )  # fmt: skip
    esi = isns.esi_interval > 0
    return Registration(
        entity_id=isns.entity_id or config.targets[0].name,
        nodes=nodes,
        portals=tuple(dict.fromkeys((host, port) for host, port, _tag in bound)),
        groups=groups,
        esi_port=0 if esi else None,  # 0: the client opens one
        esi_interval=isns.esi_interval,
        scn_port=0 if esi else None,
        registration_period=isns.registration_period,
    )


def start_isns(
    config: ServerConfig, isns: IsnsConfig, portals: Iterable[tuple[str, int, int]]
) -> ISNSClient:
    """Register in a thread of its own (raises ISNSClientError when refused);
    ``stop_thread()`` deregisters."""
    client = ISNSClient(isns.server, registration=registration_for(config, isns, portals))
    client.start_in_thread()
    return client
