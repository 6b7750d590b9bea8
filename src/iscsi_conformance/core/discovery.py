"""Discovery: SendTargets answers and TargetAddress values (RFC 7143 13.3, 13.8, appendix C).

Theory of operation: discovery is data, not I/O.  A SendTargets answer (RFC 7143
appendix C, key SendTargets in 13.3) is a sequence of text key=value pairs in which each
``TargetName`` (13.3) opens a record and the ``TargetAddress`` keys (13.8) that follow it,
``domainname[:port][,portal-group-tag]`` with an IPv6 literal in brackets, belong to it.
This module turns such a sequence into :class:`DiscoveredTarget` records (a name and its
:class:`Portal` tuples) and back: :func:`format_send_targets` builds the pairs a target
answers, :func:`parse_send_targets` groups the pairs an initiator receives, and
:func:`format_target_address` / :func:`parse_target_address` handle one value.  The
sessions, the ACL filtering and the sockets live in the engines; a second discovery
method (iSNS, RFC 4171) can produce the same :class:`DiscoveredTarget` records beside
this one.

Parsing is strict by default (a malformed value raises :class:`DiscoveryError` naming
the value and the section); ``strict=False`` is the initiator's forgiving reading of a
peer's answer: a value it cannot read is kept verbatim as the host, port 3260.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from iscsi_conformance.core import text
from iscsi_conformance.errors import ISCSIConformanceError, ProtocolError

__all__ = [
    "DEFAULT_PORT",
    "DiscoveredTarget",
    "DiscoveryError",
    "Portal",
    "format_hostport",
    "format_send_targets",
    "format_target_address",
    "parse_hostport",
    "parse_send_targets",
    "parse_target_address",
    "remap_addresses",
]

#: The iSCSI well-known port (RFC 7143 13.8: the port when TargetAddress has none).
DEFAULT_PORT = 3260

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")


class DiscoveryError(ProtocolError):
    """A SendTargets answer or a TargetAddress value is malformed."""

    def __init__(
        self, message: str, *, section: str = "RFC 7143 13.8", level: str = "MUST"
    ) -> None:
        super().__init__(message, section=section, level=level)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, bracketing an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Portal(NamedTuple):
    """A network portal as a target announced it: (host, port, portal group tag)."""

    host: str
    port: int
    tpgt: int | None

    def __str__(self) -> str:
        return format_target_address(self.host, self.port, self.tpgt)


@dataclasses.dataclass(frozen=True)
class DiscoveredTarget:
    """One TargetName of a SendTargets answer with its TargetAddresses (RFC 7143 13.3)."""

    name: str
    addresses: tuple[Portal, ...] = ()

    def remap(
        self, mapping: Mapping[tuple[str, int], tuple[str, int]] | Callable[[Portal], Portal]
    ) -> DiscoveredTarget:
        """The same target with its addresses translated (NAT: what the target
        announces may not be reachable from here). ``mapping`` is a dict
        ``{(host, port): (host, port)}`` (unlisted addresses stay) or a function."""
        out = []
        for p in self.addresses:
            if callable(mapping):
                out.append(mapping(p))
            else:
                new = mapping.get((p.host, p.port))
                out.append(Portal(new[0], new[1], p.tpgt) if new else p)
        return DiscoveredTarget(self.name, tuple(out))

    def via(self, host: str, port: int) -> DiscoveredTarget:
        """Every address replaced by ``host:port`` (portal group tags kept): the usual
        answer to NAT, logging in where discovery went."""
        if not self.addresses:
            return DiscoveredTarget(self.name, (Portal(host, port, None),))
        return self.remap(lambda p: Portal(host, port, p.tpgt))


def remap_addresses(
    targets: Iterable[DiscoveredTarget],
    mapping: Mapping[tuple[str, int], tuple[str, int]] | Callable[[Portal], Portal],
) -> list[DiscoveredTarget]:
    """:meth:`DiscoveredTarget.remap` over a whole discovery answer."""
    return [t.remap(mapping) for t in targets]


# ---------------------------------------------------------------- TargetAddress


def format_target_address(host: str, port: int, tpgt: int | None = None) -> str:
    """``host:port[,tpgt]`` (RFC 7143 13.8), an IPv6 literal in brackets."""
    tag = f",{tpgt}" if tpgt is not None else ""
    return format_hostport(host, port) + tag


def _parse_port(value: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise DiscoveryError(f"port {value!r} in {where!r} is not a number")
    port = int(value)
    if not 1 <= port <= 65535:
        raise DiscoveryError(f"port {port} in {where!r} is out of range 1..65535")
    return port


def parse_hostport(value: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port); no resolution.

    The one host-and-port reader: TargetAddress values here, ``iscsi://`` URLs in
    :mod:`iscsi_conformance.initiator.url` (which turns the error into a URLError).
    """
    if not value:
        raise DiscoveryError("missing host: the address has no host")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise DiscoveryError(f"unterminated '[' in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise DiscoveryError(f"{host!r} is not an IPv6 address") from None
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise DiscoveryError(f"unexpected {rest!r} after the IPv6 address in {value!r}")
        return host, _parse_port(rest[1:], value)
    if value.count(":") > 1:
        raise DiscoveryError(f"IPv6 address {value!r} must be in brackets, e.g. [::1]")
    host, sep, port_text = value.partition(":")
    if not _HOSTNAME.match(host):
        raise DiscoveryError(f"{host!r} in {value!r} is not a valid host name or address")
    return host, (_parse_port(port_text, value) if sep else default_port)


def parse_target_address(value: str, *, strict: bool = True) -> Portal:
    """``domainname[:port][,portal-group-tag]`` (RFC 7143 13.8); IPv6 in brackets.

    The host is kept as given (no resolution).  Strict: a malformed value raises
    :class:`DiscoveryError` and the tag must be 0..65535.  ``strict=False``: a tag that
    is not a number is read as part of the address, and an address that is not
    ``host[:port]`` is kept verbatim as the host with port 3260.
    """
    addr, sep, tag = value.rpartition(",") if "," in value else (value, "", "")
    tpgt: int | None = None
    if sep:
        try:
            tpgt = text.parse_number(tag)
        except ISCSIConformanceError:
            if strict:
                raise DiscoveryError(
                    f"portal group tag {tag!r} in TargetAddress {value!r} is not a number"
                ) from None
            addr, tpgt = value, None
        if strict and tpgt is not None and tpgt > 0xFFFF:
            raise DiscoveryError(
                f"portal group tag {tpgt} in TargetAddress {value!r} is out of range 0..65535"
            )
    try:
        host, port = parse_hostport(addr)
    except DiscoveryError:
        if strict:
            raise
        host, port = addr, DEFAULT_PORT
    return Portal(host, port, tpgt)


# ---------------------------------------------------------------- SendTargets


def format_send_targets(targets: Iterable[DiscoveredTarget]) -> list[tuple[str, str]]:
    """A SendTargets answer (RFC 7143 appendix C): each ``TargetName`` (13.3) followed
    by one ``TargetAddress=host:port[,tpgt]`` (13.8) per portal."""
    out: list[tuple[str, str]] = []
    for t in targets:
        out.append(("TargetName", t.name))
        out.extend(("TargetAddress", str(p)) for p in t.addresses)
    return out


def parse_send_targets(
    pairs: Sequence[tuple[str, str]], *, strict: bool = False
) -> list[DiscoveredTarget]:
    """Group a SendTargets answer: each TargetName, then its TargetAddress keys.

    Other keys (TargetAlias, ...) are skipped.  Not strict (the default, an initiator
    reading a peer): a TargetAddress before any TargetName is ignored and addresses are
    read with ``parse_target_address(strict=False)``.  Strict: both raise
    :class:`DiscoveryError`.
    """
    out: list[DiscoveredTarget] = []
    name: str | None = None
    addrs: list[Portal] = []
    for key, value in pairs:
        if key == "TargetName":
            if name is not None:
                out.append(DiscoveredTarget(name, tuple(addrs)))
            if strict and not value:
                raise DiscoveryError(
                    "empty TargetName in a SendTargets answer", section="RFC 7143 13.3"
                )
            name, addrs = value, []
        elif key == "TargetAddress":
            if name is None:
                if strict:
                    raise DiscoveryError(
                        f"TargetAddress={value!r} before any TargetName in a SendTargets answer",
                        section="RFC 7143 appendix C",
                    )
                continue
            addrs.append(parse_target_address(value, strict=strict))
    if name is not None:
        out.append(DiscoveredTarget(name, tuple(addrs)))
    return out
