"""TOML configuration of the reference target, validated into typed dataclasses.

Theory of operation: ``load_config(path)`` / ``parse_config(dict)`` turn a TOML
document (format: docs/target-config.md) into a ``ServerConfig``. Every check that
fails raises ``ConfigError`` whose ``field`` is the dotted path of the offending value
(``targets[0].luns[1].size``), so the CLI can print one clear line and exit 2.
Nothing here opens sockets or LUN files; it only describes them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError

__all__ = [
    "DATAIN_ORDERS",
    "AclConfig",
    "ChapConfig",
    "DiscoveryConfig",
    "IsnsConfig",
    "LunConfig",
    "PortalGroupConfig",
    "RedirectConfig",
    "ServerConfig",
    "TargetConfig",
    "load_config",
    "parse_config",
    "parse_portal",
    "parse_size",
    "simple_config",
]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NAME_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")

# Operational keys (RFC 7143 13) a target may declare or offer; values are checked by
# kind here so a typo fails at load time rather than in the middle of a login.
_NUMERIC_KEYS = {
    "MaxRecvDataSegmentLength": (512, 2**24 - 1),
    "MaxBurstLength": (512, 2**24 - 1),
    "FirstBurstLength": (512, 2**24 - 1),
    "DefaultTime2Wait": (0, 3600),
    "DefaultTime2Retain": (0, 3600),
    "MaxOutstandingR2T": (1, 65535),
    "ErrorRecoveryLevel": (0, 2),
    "MaxConnections": (1, 65535),
    # RFC 7144 7.1.1 allows 0-31; this target implements levels up to 2 (RFC 7144).
    "iSCSIProtocolLevel": (0, 2),
}
_BOOLEAN_KEYS = {"InitialR2T", "ImmediateData", "DataPDUInOrder", "DataSequenceInOrder"}
_LIST_KEYS = {"HeaderDigest": {"None", "CRC32C"}, "DataDigest": {"None", "CRC32C"}}
_FREE_KEYS = {"TargetAlias"}
DATAIN_ORDERS = ("offset", "reverse", "reverse-sequences")  # TargetConfig.datain_order


def parse_size(value: Any, field: str) -> int:
    """``"64M"``, ``"1G"``, ``"4096"`` or an int -> bytes (binary multiples)."""
    if isinstance(value, bool):
        raise ConfigError("must be a positive size like 64M", field=field)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        n = int(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
    else:
        raise ConfigError("must be a positive size like 64M", field=field)
    if n <= 0:
        raise ConfigError("must be a positive size like 64M", field=field)
    return n


def parse_portal(value: Any, field: str, default_port: int = 3260) -> tuple[str, int]:
    """``"127.0.0.1:3260"``, ``"[::1]:3260"``, ``"::1"`` -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a portal like 127.0.0.1:3260 or [::1]:3260", field=field)
    host, port = value, default_port
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"unbalanced '[' in {value!r}", field=field)
        host = value[1:end]
        rest = value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"bad portal {value!r}", field=field)
            port = _port(rest[1:], field)
    elif value.count(":") == 1:
        host, p = value.split(":")
        port = _port(p, field)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                f"host {host!r} must be an IP address (IPv6 in brackets)", field=field
            ) from None
    return host, port


def _port(text: str, field: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"port {text!r} must be a number 0-65535", field=field)
    return int(text)


@dataclasses.dataclass(frozen=True)
class ChapConfig:
    """CHAP credentials (RFC 7143 12.1.3). The secret never appears in a repr or log."""

    user: str
    secret: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"ChapConfig(user={self.user!r}, secret='***')"


@dataclasses.dataclass(frozen=True)
class LunConfig:
    lun: int
    size: int | None = None  # bytes; None for an existing file (its size is used)
    file: Path | None = None  # None: RAM-backed
    block_size: int = 512
    read_only: bool = False
    serial: str | None = None


@dataclasses.dataclass(frozen=True)
class AclConfig:
    """One initiator allowed to log in, with its own credentials (override the target's)."""

    initiator: str
    chap: ChapConfig | None = None
    mutual_chap: ChapConfig | None = None
    luns: tuple[int, ...] | None = None  # LUN masking; None: all LUNs


@dataclasses.dataclass(frozen=True)
class RedirectConfig:
    """Login redirection (RFC 7143 11.13.5: class 1, detail 1 temporary / 2 permanent)."""

    address: str  # TargetAddress value "host[:port]": a redirection carries no tag (13.8)
    permanent: bool = False


@dataclasses.dataclass(frozen=True)
class PortalGroupConfig:
    tag: int
    portals: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    name: str
    luns: tuple[LunConfig, ...] = ()
    alias: str | None = None
    portal_groups: tuple[int, ...] = ()  # empty: every portal group
    chap: ChapConfig | None = None
    mutual_chap: ChapConfig | None = None
    acls: tuple[AclConfig, ...] = ()  # empty: any initiator
    redirect: RedirectConfig | None = None
    # Keys we declare/offer during login (RFC 7143 13); strings as on the wire.
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    # CHAP_A values we accept (RFC 7143 12.1.3): 5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256.
    chap_algorithms: tuple[int, ...] = (5, 6, 7, 8)
    # Cap on the Data-In / text segments *we send*, independent of what the initiator
    # declares (RFC 7143 13.12 lets us send less): lets a test drive asymmetric limits.
    max_send_data_segment_length: int | None = None
    # The order of a sequence's Data-In PDUs on a session that agreed to
    # DataPDUInOrder=No (RFC 7143 13.18: then they may come in any order): "offset"
    # (increasing, as with Yes) or "reverse" (decreasing Buffer Offset, DataSN still
    # counting in sending order, 11.7.5). With DataPDUInOrder=Yes always "offset".
    # "reverse-sequences" acts on DataSequenceInOrder=No instead (13.19: sequences in
    # any order): the MaxBurstLength sequences go out last first, each in offset order.
    datain_order: str = "offset"
    # The CmdSN window this target grants a Normal session from its login on
    # (MaxCmdSN - ExpCmdSN + 1, RFC 7143 4.2.2.1); 0 holds it closed (MaxCmdSN =
    # ExpCmdSN - 1) until the test API opens it. None: the server's default (128).
    cmd_window: int | None = None
    # A target that takes no bidirectional command (R and W, RFC 7143 11.3.4) rejects
    # one with reason Command not supported (11.17.1) before its CmdSN is taken (7.3);
    # one without XDWRITEREAD(10) (an optional SBC-3 command, 5.48) answers it CHECK
    # CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE. Both serve the
    # negative FullFeature.Bidi tests' proofs, which need a target without them.
    bidirectional: bool = True
    xdwriteread: bool = True

    def acl_for(self, initiator: str) -> AclConfig | None:
        for acl in self.acls:
            if acl.initiator == initiator:
                return acl
        return None


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    chap: ChapConfig | None = None
    mutual_chap: ChapConfig | None = None
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class IsnsConfig:
    """Registration with an iSNS server (RFC 4171; the ``[isns]`` table, ``--isns``)."""

    server: tuple[str, int]
    entity_id: str = ""  # empty: derived from the first target's name
    esi_interval: int = 20  # seconds (RFC 4171 6.3.4); 0: no ESI port registered
    registration_period: int = 0  # seconds (6.2.6); 0: the server's choice


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    portal_groups: tuple[PortalGroupConfig, ...]
    targets: tuple[TargetConfig, ...]
    discovery: DiscoveryConfig = DiscoveryConfig()
    state_dir: Path | None = None  # reservation state of RAM LUNs (file LUNs: beside the file)
    nop_in_interval: float = 0.0  # seconds between NOP-In pings; 0: never
    nop_in_timeout: float = 30.0
    trace: bool = False
    max_sessions: int = 256
    # Connections that stay in login longer than this are closed (RFC 7143 6.1).
    login_timeout: float = 30.0
    isns: IsnsConfig | None = None

    def target(self, name: str) -> TargetConfig | None:
        for t in self.targets:
            if t.name == name:
                return t
        return None


# --------------------------------------------------------------------------- parsing


def _table(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("must be a table", field=field)
    return value


def _known(table: dict[str, Any], allowed: set[str], field: str) -> None:
    for key in table:
        if key not in allowed:
            sub = f"{field}.{key}" if field else key
            raise ConfigError(f"unknown field (allowed: {', '.join(sorted(allowed))})", field=sub)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty string", field=field)
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"must be an integer {lo}-{hi}", field=field)
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", field=field)
    return value


def _iscsi_name(value: Any, field: str) -> str:
    name = _str(value, field)
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{name!r} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:x], eui.<16 hex>, naa.<hex>; RFC 7143 4.2.7)",
            field=field,
        )
    return name


def _chap(value: Any, field: str) -> ChapConfig | None:
    if value is None:
        return None
    t = _table(value, field)
    _known(t, {"user", "secret"}, field)
    if "user" not in t:
        raise ConfigError("missing", field=f"{field}.user")
    if "secret" not in t:
        raise ConfigError("missing", field=f"{field}.secret")
    secret = _str(t["secret"], f"{field}.secret")
    # RFC 7143 12.1.3: secrets SHOULD be at least 12 bytes; up to 255 is accepted.
    if len(secret.encode()) > 255:
        raise ConfigError("must be at most 255 bytes", field=f"{field}.secret")
    return ChapConfig(user=_str(t["user"], f"{field}.user"), secret=secret)


def _parameters(value: Any, field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, v in _table(value, field).items():
        f = f"{field}.{key}"
        if key in _NUMERIC_KEYS:
            lo, hi = _NUMERIC_KEYS[key]
            out[key] = str(_int(v, f, lo, hi))
        elif key in _BOOLEAN_KEYS:
            if isinstance(v, bool):
                out[key] = "Yes" if v else "No"
            elif v in ("Yes", "No"):
                out[key] = v
            else:
                raise ConfigError("must be true/false (or Yes/No)", field=f)
        elif key in _LIST_KEYS:
            items = v if isinstance(v, list) else [x.strip() for x in str(v).split(",")]
            for item in items:
                if item not in _LIST_KEYS[key]:
                    raise ConfigError(f"{item!r} is not one of {sorted(_LIST_KEYS[key])}", field=f)
            if not items:
                raise ConfigError("must list at least one value", field=f)
            out[key] = ",".join(items)
        elif key in _FREE_KEYS:
            out[key] = _str(v, f)
        else:
            raise ConfigError("not an operational key a target can set (RFC 7143 13)", field=f)
    return out


def _lun(value: Any, field: str, base: Path | None) -> LunConfig:
    t = _table(value, field)
    _known(t, {"lun", "size", "file", "block_size", "read_only", "serial"}, field)
    if "lun" not in t:
        raise ConfigError("missing (the LUN number, 0-16383)", field=f"{field}.lun")
    lun = _int(t["lun"], f"{field}.lun", 0, 16383)
    size = parse_size(t["size"], f"{field}.size") if "size" in t else None
    path = None
    if "file" in t:
        path = Path(_str(t["file"], f"{field}.file"))
        if base is not None and not path.is_absolute():
            path = base / path
    if path is None and size is None:
        raise ConfigError(
            "must be a positive size like 64M (or give file =)", field=f"{field}.size"
        )
    block = _int(t.get("block_size", 512), f"{field}.block_size", 512, 65536)
    if block & (block - 1):
        raise ConfigError("must be a power of two", field=f"{field}.block_size")
    if size is not None and size % block:
        raise ConfigError(f"must be a multiple of block_size ({block})", field=f"{field}.size")
    return LunConfig(
        lun=lun,
        size=size,
        file=path,
        block_size=block,
        read_only=_bool(t.get("read_only", False), f"{field}.read_only"),
        serial=_str(t["serial"], f"{field}.serial") if "serial" in t else None,
    )


def _target(value: Any, field: str, base: Path | None, tags: set[int]) -> TargetConfig:
    t = _table(value, field)
    _known(
        t,
        {
            "name",
            "alias",
            "luns",
            "portal_groups",
            "chap",
            "mutual_chap",
            "acls",
            "redirect",
            "parameters",
            "max_send_data_segment_length",
            "chap_algorithms",
            "datain_order",
            "cmd_window",
            "bidirectional",
            "xdwriteread",
        },
        field,
    )
    if "name" not in t:
        raise ConfigError("missing", field=f"{field}.name")
    name = _iscsi_name(t["name"], f"{field}.name")
    luns_raw = t.get("luns", [])
    if not isinstance(luns_raw, list):
        raise ConfigError("must be an array of tables ([[targets.luns]])", field=f"{field}.luns")
    luns = tuple(_lun(v, f"{field}.luns[{i}]", base) for i, v in enumerate(luns_raw))
    seen: set[int] = set()
    for i, lu in enumerate(luns):
        if lu.lun in seen:
            raise ConfigError(f"LUN {lu.lun} defined twice", field=f"{field}.luns[{i}].lun")
        seen.add(lu.lun)
    groups = t.get("portal_groups", [])
    if not isinstance(groups, list):
        raise ConfigError("must be a list of portal group tags", field=f"{field}.portal_groups")
    for i, g in enumerate(groups):
        _int(g, f"{field}.portal_groups[{i}]", 1, 65535)
        if g not in tags:
            raise ConfigError(f"no portal group with tag {g}", field=f"{field}.portal_groups[{i}]")
    acls_raw = t.get("acls", [])
    if not isinstance(acls_raw, list):
        raise ConfigError("must be an array of tables ([[targets.acls]])", field=f"{field}.acls")
    acls = []
    for i, a in enumerate(acls_raw):
        af = f"{field}.acls[{i}]"
        at = _table(a, af)
        _known(at, {"initiator", "chap", "mutual_chap", "luns"}, af)
        if "initiator" not in at:
            raise ConfigError("missing", field=f"{af}.initiator")
        masked = None
        if "luns" in at:
            if not isinstance(at["luns"], list):
                raise ConfigError("must be a list of LUN numbers", field=f"{af}.luns")
            masked = tuple(_int(x, f"{af}.luns", 0, 16383) for x in at["luns"])
        acls.append(
            AclConfig(
                initiator=_iscsi_name(at["initiator"], f"{af}.initiator"),
                chap=_chap(at.get("chap"), f"{af}.chap"),
                mutual_chap=_chap(at.get("mutual_chap"), f"{af}.mutual_chap"),
                luns=masked,
            )
        )
    redirect = None
    if "redirect" in t:
        rf = f"{field}.redirect"
        rt = _table(t["redirect"], rf)
        _known(rt, {"address", "permanent"}, rf)
        if "address" not in rt:
            raise ConfigError("missing (host:port to send initiators to)", field=f"{rf}.address")
        addr = _str(rt["address"], f"{rf}.address")
        if "," in addr:
            raise ConfigError(
                "a redirection's TargetAddress carries no portal group tag "
                "(RFC 7143 13.8): give host[:port]",
                field=f"{rf}.address",
            )
        parse_portal(addr, f"{rf}.address")
        redirect = RedirectConfig(addr, _bool(rt.get("permanent", False), f"{rf}.permanent"))
    chap = _chap(t.get("chap"), f"{field}.chap")
    mutual = _chap(t.get("mutual_chap"), f"{field}.mutual_chap")
    if mutual is not None and chap is None:
        raise ConfigError(
            "mutual CHAP needs chap too (RFC 7143 12.1.3)", field=f"{field}.mutual_chap"
        )
    msdsl = None
    if "max_send_data_segment_length" in t:
        msdsl = _int(
            t["max_send_data_segment_length"],
            f"{field}.max_send_data_segment_length",
            512,
            2**24 - 1,
        )
    algs: tuple[int, ...] = (5, 6, 7, 8)
    if "chap_algorithms" in t:
        raw = t["chap_algorithms"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(
                "must be a non-empty list like [5, 7]", field=f"{field}.chap_algorithms"
            )
        algs = tuple(_int(a, f"{field}.chap_algorithms[{i}]", 5, 8) for i, a in enumerate(raw))
    datain_order = _str(t.get("datain_order", "offset"), f"{field}.datain_order")
    if datain_order not in DATAIN_ORDERS:
        raise ConfigError(
            f"must be one of {', '.join(DATAIN_ORDERS)}", field=f"{field}.datain_order"
        )
    window = None
    if "cmd_window" in t:
        # serial arithmetic (RFC 1982) compares CmdSNs less than 2**31 apart
        window = _int(t["cmd_window"], f"{field}.cmd_window", 0, 2**31 - 1)
    return TargetConfig(
        name=name,
        chap_algorithms=algs,
        datain_order=datain_order,
        cmd_window=window,
        bidirectional=_bool(t.get("bidirectional", True), f"{field}.bidirectional"),
        xdwriteread=_bool(t.get("xdwriteread", True), f"{field}.xdwriteread"),
        luns=luns,
        alias=_str(t["alias"], f"{field}.alias") if "alias" in t else None,
        portal_groups=tuple(groups),
        chap=chap,
        mutual_chap=mutual,
        acls=tuple(acls),
        redirect=redirect,
        parameters=_parameters(t.get("parameters", {}), f"{field}.parameters"),
        max_send_data_segment_length=msdsl,
    )


def parse_config(doc: dict[str, Any], *, base: Path | None = None) -> ServerConfig:
    """Validate a parsed TOML document; ``base`` resolves relative LUN file paths."""
    _known(doc, {"server", "portal_groups", "targets", "discovery", "isns"}, "")
    server = _table(doc.get("server", {}), "server")
    _known(
        server,
        {
            "state_dir",
            "nop_in_interval",
            "nop_in_timeout",
            "trace",
            "max_sessions",
            "login_timeout",
        },
        "server",
    )
    groups_raw = doc.get("portal_groups")
    if groups_raw is None:
        raise ConfigError(
            "missing: at least one [[portal_groups]] with portals", field="portal_groups"
        )
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ConfigError(
            "must be a non-empty array of tables ([[portal_groups]])", field="portal_groups"
        )
    groups = []
    tags: set[int] = set()
    for i, g in enumerate(groups_raw):
        f = f"portal_groups[{i}]"
        gt = _table(g, f)
        _known(gt, {"tag", "portals"}, f)
        tag = _int(gt.get("tag", i + 1), f"{f}.tag", 1, 65535)
        if tag in tags:
            raise ConfigError(f"tag {tag} used twice", field=f"{f}.tag")
        tags.add(tag)
        portals_raw = gt.get("portals")
        if not isinstance(portals_raw, list) or not portals_raw:
            raise ConfigError(
                'must be a non-empty list like ["127.0.0.1:3260"]', field=f"{f}.portals"
            )
        portals = tuple(parse_portal(p, f"{f}.portals[{j}]") for j, p in enumerate(portals_raw))
        groups.append(PortalGroupConfig(tag=tag, portals=portals))
    targets_raw = doc.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ConfigError("must be a non-empty array of tables ([[targets]])", field="targets")
    targets = tuple(_target(t, f"targets[{i}]", base, tags) for i, t in enumerate(targets_raw))
    names: set[str] = set()
    for i, t in enumerate(targets):
        if t.name in names:
            raise ConfigError(f"target {t.name} defined twice", field=f"targets[{i}].name")
        names.add(t.name)
    disc = _table(doc.get("discovery", {}), "discovery")
    _known(disc, {"chap", "mutual_chap", "enabled"}, "discovery")
    discovery = DiscoveryConfig(
        chap=_chap(disc.get("chap"), "discovery.chap"),
        mutual_chap=_chap(disc.get("mutual_chap"), "discovery.mutual_chap"),
        enabled=_bool(disc.get("enabled", True), "discovery.enabled"),
    )
    state_dir = None
    if "state_dir" in server:
        state_dir = Path(_str(server["state_dir"], "server.state_dir"))
        if base is not None and not state_dir.is_absolute():
            state_dir = base / state_dir

    def _seconds(key: str, default: float) -> float:
        v = server.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError("must be a number of seconds >= 0", field=f"server.{key}")
        return float(v)

    return ServerConfig(
        portal_groups=tuple(groups),
        targets=targets,
        discovery=discovery,
        state_dir=state_dir,
        nop_in_interval=_seconds("nop_in_interval", 0.0),
        nop_in_timeout=_seconds("nop_in_timeout", 30.0),
        trace=_bool(server.get("trace", False), "server.trace"),
        max_sessions=_int(server.get("max_sessions", 256), "server.max_sessions", 1, 65535),
        login_timeout=_seconds("login_timeout", 30.0),
        isns=_isns(doc["isns"]) if "isns" in doc else None,
    )


def _isns(value: Any) -> IsnsConfig:
    """The ``[isns]`` table: ``server = "HOST[:PORT]"`` (port 3205 by default),
    ``entity_id``, ``esi_interval``, ``registration_period``."""
    t = _table(value, "isns")
    _known(t, {"server", "entity_id", "esi_interval", "registration_period"}, "isns")
    if "server" not in t:
        raise ConfigError('required, like "127.0.0.1:3205"', field="isns.server")
    return IsnsConfig(
        server=parse_portal(_str(t["server"], "isns.server"), "isns.server", default_port=3205),
        entity_id=_str(t["entity_id"], "isns.entity_id") if "entity_id" in t else "",
        esi_interval=_int(t.get("esi_interval", 20), "isns.esi_interval", 0, 86400),
        registration_period=_int(
            t.get("registration_period", 0), "isns.registration_period", 0, 1 << 31
        ),
    )


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate a TOML file; ``ConfigError`` names the field that is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", field=str(p)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", field=str(p)) from None
    return parse_config(doc, base=p.parent)


def simple_config(
    listen: tuple[str, int] | list[tuple[str, int]],
    target: str,
    luns: list[str],
    *,
    state_dir: Path | None = None,
) -> ServerConfig:
    """The ``--listen/--target/--lun`` form: no auth, one portal group, LUNs 0..n-1.

    Each LUN is a size (``64M``: RAM) or a path (a file; created sparse with the size
    after ``=`` when given as ``PATH=SIZE``, else the existing file's size).
    """
    portals = [listen] if isinstance(listen, tuple) else list(listen)
    name = _iscsi_name(target, "--target")
    lun_cfgs = []
    for i, spec in enumerate(luns):
        field = f"--lun[{i}]"
        if _SIZE_RE.match(spec):
            lun_cfgs.append(LunConfig(lun=i, size=parse_size(spec, field)))
            continue
        path, _, size = spec.partition("=")
        lun_cfgs.append(
            LunConfig(lun=i, file=Path(path), size=parse_size(size, field) if size else None)
        )
    for lc in lun_cfgs:
        if lc.file is not None and lc.size is None and not lc.file.exists():
            raise ConfigError(
                f"file {lc.file} does not exist; give PATH=SIZE to create it", field="--lun"
            )
    return ServerConfig(
        portal_groups=(PortalGroupConfig(tag=1, portals=tuple(portals)),),
        targets=(TargetConfig(name=name, luns=tuple(lun_cfgs)),),
        state_dir=state_dir,
    )
