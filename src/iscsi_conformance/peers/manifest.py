"""Peer manifests: capabilities and known deviations, read from ``manifest.toml``.

Theory of operation: a peer is one folder (``targets/<name>/`` or
``initiators/<name>/``) holding its container file, its configuration templates and
its ``manifest.toml``. The manifest is data: which class drives the peer
(``peer.driver``, imported lazily by ``peers.registry``), what a share of a run on it
costs (``peer.shard_weight``, for ``run --shards``), what the peer can do
(``[capabilities]``) and where it is known to depart from the RFC
(``[[deviations]]``, keyed by stable test ID or a group ``Family.Suite.*`` and a
version range), so test code never says ``if peer == ...``. The format is documented in
``targets/README.md``.

Peer folders are looked up in the source checkout first (``<repo>/targets``) and then
in the installed wheel, where pyproject force-includes them as package data
(``iscsi_conformance/_peers/targets``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers.base import Manifest, Role

ROLES: dict[str, str] = {"target": "targets", "initiator": "initiators"}
"""Role -> name of the folder that holds the peers of that role."""

ENV_PEERS_DIR = "ISCSI_CONFORMANCE_PEERS_DIR"
"""Extra root searched first: a folder holding ``targets/`` and/or ``initiators/``."""

# Known capabilities and their checkers. Unknown keys are accepted (the conformance
# suite may introduce new ones) as long as their value is a plain TOML scalar or list.
_DIGESTS = {"None", "CRC32C"}


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _int_list(allowed: set[int]) -> Any:
    def check(v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and x in allowed for x in v
        )

    check.__doc__ = f"a list of integers from {sorted(allowed)}"
    return check


def _str_list(allowed: set[str] | None = None) -> Any:
    def check(v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, str) and (allowed is None or x in allowed) for x in v
        )

    check.__doc__ = f"a list of strings from {sorted(allowed)}" if allowed else "a list of strings"
    return check


_is_bool.__doc__ = "true or false"
_is_pos_int.__doc__ = "an integer >= 1"
_is_nonneg_int.__doc__ = "an integer >= 0"

CAPABILITIES: dict[str, Any] = {
    # RFC 7143 12.1.3 CHAP; algorithm numbers 5 MD5, 6 SHA1, 7 SHA-256, 8 SHA3-256
    "chap_algorithms": _int_list({5, 6, 7, 8}),
    "mutual_chap": _is_bool,
    "discovery_auth": _is_bool,
    # the target can be configured with one CHAP secret for both directions, to show it
    # refuses that pairing (RFC 7143 9.2.1): serves the "same-secret" profile
    "chap_same_secret": _is_bool,
    # the target can serve the "cold-reset" profile as a target of its own, whose TARGET
    # COLD RESET (RFC 7143 11.5.1: all its connections end) ends no other profile's sessions
    "cold_reset_target": _is_bool,
    # the target can be run as an instance of one test alone, which the test may restart
    # (same state directory), give a second portal group or discovery CHAP: only the
    # embedded reference target (plugin/under_test.py DedicatedTarget)
    "dedicated_instance": _is_bool,
    # RFC 7143 13.1 / 13.2: digests offered; `digests` applies to both when the
    # specific keys are absent
    "digests": _str_list(_DIGESTS),
    "header_digests": _str_list(_DIGESTS),
    "data_digests": _str_list(_DIGESTS),
    "digest_required": _is_bool,  # the target can be set to refuse Digest=None
    "erl": _int_list({0, 1, 2}),  # ErrorRecoveryLevel values supported (13.20)
    "max_connections": _is_pos_int,  # 13.2
    "immediate_data": _is_bool,  # 13.11
    "initial_r2t": _is_bool,  # 13.10: can run with InitialR2T=No
    "send_targets": _is_bool,  # 13.3 / Appendix C
    "login_redirect": _is_bool,  # 11.13.5 class 1
    "reservations_scsi2": _is_bool,  # SPC-2 RESERVE/RELEASE
    "persistent_reservations": _is_bool,  # SPC-4 5.9
    "ipv6": _is_bool,
    "isns": _is_bool,  # RFC 4171
    "acl_by_initiator_name": _is_bool,
    "acl_by_address": _is_bool,
    "task_management": _str_list(),  # e.g. ["ABORT_TASK", "LUN_RESET"]
    "first_lun": _is_nonneg_int,  # lowest LUN that carries data (tgt: 1, LUN 0 is a controller)
    "block_sizes": _str_list(),
    "nat_portal": _is_bool,  # SendTargets answers a guest-side address
    "own_suite": _is_bool,  # the peer ships a conformance suite the driver can run
    # the target survives Data-Out PDUs it never asked for (unsolicited data the keys
    # forbid, tags it never issued); tgt 1.0.85 segfaults on some (targets/tgt/manifest.toml)
    "stray_data_out": _is_bool,
    # the target can be told to send a sequence's Data-In at decreasing offsets when
    # DataPDUInOrder=No is agreed (profile "datain-reverse"; reference target only)
    "datain_out_of_order": _is_bool,
    # the target can hold a session's CmdSN window closed from its login on and open
    # it later through its test API (profile "window-closed"; reference target only)
    "cmd_window_initial": _is_bool,
    # the target can be configured to answer iSCSIProtocolLevel=1 (RFC 7143 alone) where
    # it would answer 2 (RFC 7144), profile "level1"; reference target only
    "protocol_level_configurable": _is_bool,
}

DEVIATION_EFFECTS = ("xfail", "intermittent", "skip")

PEER_KEYS = ("name", "role", "description", "upstream", "packages", "driver", "shard_weight")
"""The keys of ``[peer]``."""

_DRIVER_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
DRIVER_EXAMPLE = "iscsi_conformance.peers.tgt:TgtTarget"

DEFAULT_SHARD_WEIGHT = 1.0
"""The shard weight of a peer whose manifest gives none (and of an external target)."""


def manifest_error(path: str | os.PathLike[str], field: str, message: str) -> ConfigError:
    """A ``ConfigError`` that reads ``<path>: <field>: <message>`` and keeps ``field``."""
    exc = ConfigError(f"{path}: {field}: {message}" if field else f"{path}: {message}")
    exc.field = field
    return exc


@dataclasses.dataclass(frozen=True)
class Deviation:
    """A known departure of a peer from the spec, as its manifest states it."""

    #: A stable test ID ("Login.Keys.Foo" covers it and its cases "Login.Keys.Foo[512]"),
    #: or a group ("Login.Keys.*" covers every ID under "Login.Keys.", not "Login.Keys").
    test: str
    reason: str
    versions: str = "*"
    upstream: str = ""
    effect: str = (
        "xfail"  # "xfail": run, must fail; "intermittent": run, may fail; "skip": do not run
    )
    #: Fuzz findings this entry records, each "KIND at PLACE" (a campaign failure's
    #: identity, fnmatch wildcards allowed): ``fuzz ci`` passes a third-party peer's
    #: campaign failure that one of them covers (``fuzz.ci``). Entries under the
    #: reserved family ``Fuzz.*`` are fuzz findings that no conformance test covers.
    fuzz: tuple[str, ...] = ()

    def matches(self, test_id: str, version: str | None = None) -> bool:
        """Whether this deviation covers ``test_id`` for the peer at ``version``.

        The entry ``Foo.Bar.Baz`` covers that ID and its parametrised cases
        (``Foo.Bar.Baz[512]``), never a longer ID such as ``Foo.Bar.Baz.Qux``: a new test
        does not fall under an older entry by its name. A group ``Foo.Bar.*`` covers every
        ID under ``Foo.Bar.``, said so in the manifest. A version with no number in it
        (not known yet, or a peer that does not say) is assumed to still have the
        deviation.
        """
        base = test_id.split("[", 1)[0]
        if self.is_group:
            if not base.startswith(self.test[:-1]):
                return False
        elif base != self.test:
            return False
        if version is None or self.versions.strip() == "*" or not re.search(r"\d", version):
            return True
        return version_matches(version, self.versions)

    @property
    def is_group(self) -> bool:
        """Whether the entry names a group of tests (``Foo.Bar.*``), not one test."""
        return self.test.endswith(".*")

    def covers_fuzz(self, kind: str, place: str, version: str | None = None) -> bool:
        """Whether this entry records the fuzz failure ``kind`` at ``place`` of the peer
        at ``version`` (a version with no number in it is assumed to still have it)."""
        if not any(fnmatch.fnmatchcase(f"{kind} at {place}", pat) for pat in self.fuzz):
            return False
        if version is None or self.versions.strip() == "*" or not re.search(r"\d", version):
            return True
        return version_matches(version, self.versions)

    @classmethod
    def from_dict(cls, raw: Any) -> Deviation:
        """A deviation from its manifest table (or an already parsed one)."""
        if isinstance(raw, Deviation):
            return raw
        return cls(
            test=str(raw.get("test", "")),
            reason=str(raw.get("reason", "known deviation")),
            versions=str(raw.get("versions", "*")),
            upstream=str(raw.get("upstream", "") or ""),
            effect=str(raw.get("effect", "xfail")),
            fuzz=tuple(str(p) for p in raw.get("fuzz", ()) or ()),
        )

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.fuzz:
            out["fuzz"] = list(self.fuzz)
        else:
            del out["fuzz"]  # the tables of conformance deviations stay as they were
        return out


@dataclasses.dataclass
class PeerManifest(Manifest):
    """``base.Manifest`` plus what only the loader knows: upstream, packages, folder,
    the driver (``"package.module:Class"``) and the shard weight."""

    upstream: str = ""
    packages: tuple[str, ...] = ()
    folder: Path | None = None
    driver: str = ""
    shard_weight: float = DEFAULT_SHARD_WEIGHT
    parsed_deviations: tuple[Deviation, ...] = ()

    def deviation_for(self, test_id: str, version: str | None = None) -> Deviation | None:
        """The deviation that covers ``test_id`` (at ``version``), or ``None``."""
        return find_deviation(self.parsed_deviations, test_id, version)

    @property
    def path(self) -> Path | str:
        """The manifest file, for error messages (``manifest.toml`` when not from a folder)."""
        return self.folder / "manifest.toml" if self.folder is not None else "manifest.toml"

    def header_digests(self) -> list[str]:
        return list(
            self.capabilities.get("header_digests", self.capabilities.get("digests", ["None"]))
        )

    def data_digests(self) -> list[str]:
        return list(
            self.capabilities.get("data_digests", self.capabilities.get("digests", ["None"]))
        )


def find_deviation(deviations: Any, test_id: str, version: str | None = None) -> Deviation | None:
    """The one matcher of deviations (the plugin's and the drivers'): the most specific
    entry that covers ``test_id`` at ``version`` wins (the test's own entry, then the
    longest group), so a narrow entry can override a broad one. ``deviations`` are
    ``Deviation`` objects or manifest tables."""
    parsed = [Deviation.from_dict(d) for d in deviations or ()]
    for dev in sorted(parsed, key=lambda d: (not d.is_group, len(d.test)), reverse=True):
        if dev.matches(test_id, version):
            return dev
    return None


# --------------------------------------------------------------------------- versions

_VERSION_OP = re.compile(r"^\s*(>=|<=|==|!=|>|<|=)?\s*([0-9A-Za-z.:+~_-]+)\s*$")


def version_key(version: str) -> tuple[int, ...]:
    """A tolerant sort key: Debian epoch and revision dropped, numbers compared.

    ``"1:1.0.85-1+deb12u1"`` -> ``(1, 0, 85)``; ``"6.1.0-21-cloud-amd64"`` -> ``(6, 1, 0)``.
    """
    v = version.strip()
    # the first dotted number anywhere ("tgt 1.0.85", "Linux 6.1.0-21 (... v4.1.0)",
    # past a Debian epoch "1:"); a bare number otherwise
    dotted = re.search(r"\d+(?:\.\d+)+", v.split(":", 1)[1] if re.match(r"^\d+:", v) else v)
    if dotted:
        return tuple(int(n) for n in dotted.group(0).split("."))
    v = v.split("-", 1)[0].split("+", 1)[0].split("~", 1)[0]
    return tuple(int(n) for n in re.findall(r"\d+", v))


def version_matches(version: str, spec: str) -> bool:
    """``spec`` is ``"*"`` or comma-separated clauses like ``">=1.0.80,<1.1"``."""
    if spec.strip() in ("", "*"):
        return True
    have = version_key(version)
    for clause in spec.split(","):
        m = _VERSION_OP.match(clause)
        if not m or not re.search(r"\d", m.group(2)):
            raise ConfigError(f"cannot parse version clause {clause!r}", field="versions")
        op, want_s = m.group(1) or "==", m.group(2)
        want = version_key(want_s)
        width = max(len(have), len(want))  # 6.1 means 6.1.0
        have_p, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {
            ">=": have_p >= want,
            "<=": have_p <= want,
            ">": have_p > want,
            "<": have_p < want,
            "==": have_p == want,
            "=": have_p == want,
            "!=": have_p != want,
        }[op]
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- loading


def _require(table: dict[str, Any], key: str, kind: type, where: str, *, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError("missing (required)", field=f"{where}.{key}")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"must be a {kind.__name__}, got {type(value).__name__} {value!r}",
            field=f"{where}.{key}",
        )
    return value


def parse_manifest(
    data: dict[str, Any], *, source: str = "manifest.toml", folder: Path | None = None
) -> PeerManifest:
    """Validate an already-parsed TOML document; raise ``ConfigError`` naming the field."""
    known_tables = {"peer", "capabilities", "deviations"}
    peer_keys = set(PEER_KEYS)
    flat = {k: v for k, v in data.items() if k in peer_keys}
    if flat:
        # Also accepted: the [peer] keys at the top level, before any table.
        if "peer" in data:
            raise ConfigError(
                f"{sorted(flat)} given both at the top level and in [peer]", field="peer"
            )
        data = {"peer": flat, **{k: v for k, v in data.items() if k not in peer_keys}}
    for key in data:
        if key not in known_tables:
            raise ConfigError(
                f"unknown table in {source}; expected {sorted(known_tables)}", field=key
            )
    peer = data.get("peer")
    if not isinstance(peer, dict):
        raise ConfigError(f"{source} needs a [peer] table", field="peer")
    name = _require(peer, "name", str, "peer")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(
            f"{name!r} must be lower-case letters, digits, '-' or '_'", field="peer.name"
        )
    role = _require(peer, "role", str, "peer")
    if role not in ROLES:
        raise ConfigError(f"must be one of {sorted(ROLES)}, got {role!r}", field="peer.role")
    description = _require(peer, "description", str, "peer", default="")
    upstream = _require(peer, "upstream", str, "peer", default="")
    packages = _require(peer, "packages", list, "peer", default=[])
    if not all(isinstance(p, str) for p in packages):
        raise ConfigError("must be a list of strings", field="peer.packages")
    extra = set(peer) - peer_keys
    if extra:
        raise ConfigError(f"unknown key(s) {sorted(extra)}; known: {list(PEER_KEYS)}", field="peer")
    driver = _driver(peer)
    shard_weight = _shard_weight(peer)

    caps = data.get("capabilities", {})
    if not isinstance(caps, dict):
        raise ConfigError("must be a table", field="capabilities")
    for key, value in caps.items():
        check = CAPABILITIES.get(key)
        if check is not None:
            if not check(value):
                raise ConfigError(
                    f"must be {check.__doc__}, got {value!r}", field=f"capabilities.{key}"
                )
        elif not _plain(value):
            raise ConfigError(
                f"must be a boolean, number, string or a list of those, got {value!r}",
                field=f"capabilities.{key}",
            )

    raw_devs = data.get("deviations", [])
    if not isinstance(raw_devs, list):
        raise ConfigError("must be an array of tables ([[deviations]])", field="deviations")
    devs: list[Deviation] = []
    for i, raw in enumerate(raw_devs):
        where = f"deviations[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError("must be a table", field=where)
        extra = set(raw) - {"test", "versions", "reason", "upstream", "effect", "fuzz"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", field=where)
        test = _require(raw, "test", str, where)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*(\.\*)?", test):
            raise ConfigError(
                f"not a test ID or a group of IDs (Family.Suite.*): {test!r}",
                field=f"{where}.test",
            )
        reason = _require(raw, "reason", str, where)
        if not reason.strip():
            raise ConfigError("must say why", field=f"{where}.reason")
        versions = _require(raw, "versions", str, where, default="*")
        try:
            version_matches("0", versions)
        except ConfigError as exc:
            raise ConfigError(str(exc), field=f"{where}.versions") from None
        effect = _require(raw, "effect", str, where, default="xfail")
        if effect not in DEVIATION_EFFECTS:
            raise ConfigError(f"must be one of {DEVIATION_EFFECTS}", field=f"{where}.effect")
        fuzz = _require(raw, "fuzz", list, where, default=[])
        if not all(isinstance(p, str) and " at " in p for p in fuzz):
            raise ConfigError(
                'must be a list of fuzz failure identities "KIND at PLACE"',
                field=f"{where}.fuzz",
            )
        if test.startswith("Fuzz.") and not fuzz:
            raise ConfigError(
                "an entry of the reserved family Fuzz.* records fuzz findings: it needs "
                'fuzz = ["KIND at PLACE", ...]',
                field=f"{where}.fuzz",
            )
        devs.append(
            Deviation(
                test=test,
                reason=reason.strip(),
                versions=versions,
                upstream=_require(raw, "upstream", str, where, default=""),
                effect=effect,
                fuzz=tuple(fuzz),
            )
        )

    return PeerManifest(
        name=name,
        role=role,
        description=description,
        capabilities=dict(caps),
        deviations=[d.as_dict() for d in devs],
        upstream=upstream,
        packages=tuple(packages),
        folder=folder,
        parsed_deviations=tuple(devs),
        driver=driver,
        shard_weight=shard_weight,
    )


def _driver(peer: dict[str, Any]) -> str:
    """``peer.driver``: required, ``"package.module:Class"`` (imported by the registry)."""
    if "driver" not in peer:
        raise ConfigError(
            f"missing (required): the class that drives the peer, as "
            f"'package.module:Class', e.g. {DRIVER_EXAMPLE!r}",
            field="peer.driver",
        )
    driver = peer["driver"]
    if not isinstance(driver, str) or not _DRIVER_SPEC.fullmatch(driver.strip()):
        raise ConfigError(
            f"must be 'package.module:Class', e.g. {DRIVER_EXAMPLE!r}, got {driver!r}",
            field="peer.driver",
        )
    return driver.strip()


def _shard_weight(peer: dict[str, Any]) -> float:
    """``peer.shard_weight``: optional positive number, the relative cost of the peer's
    share of a run (``run --shards`` balances shards by it)."""
    weight = peer.get("shard_weight", DEFAULT_SHARD_WEIGHT)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise ConfigError(
            f"must be a positive number (the relative cost of a run on this peer, "
            f"e.g. 1 or 2.5), got {weight!r}",
            field="peer.shard_weight",
        )
    return float(weight)


def _plain(value: Any) -> bool:
    scalar = (bool, int, float, str)
    return isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(x, scalar) for x in value)
    )


def load_manifest(path: str | os.PathLike[str], *, role: Role | None = None) -> PeerManifest:
    """Load ``manifest.toml`` (or a peer folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.toml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}", field="manifest.toml") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}", field="manifest.toml") from None
    try:
        manifest = parse_manifest(data, source=str(p), folder=p.parent)
    except ConfigError as exc:
        if str(p) in str(exc):
            raise
        # name the file: "<path>: <field>: <message>"
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        raise manifest_error(p, exc.field, message) from None
    if role is not None and manifest.role != role:
        raise manifest_error(p, "peer.role", f"says {manifest.role!r}, expected {role!r}")
    if manifest.name != p.parent.name:
        raise manifest_error(
            p, "peer.name", f"{manifest.name!r} differs from its folder {p.parent.name!r}"
        )
    return manifest


# --------------------------------------------------------------------------- finding


def peer_roots() -> list[Path]:
    """Folders that may hold ``targets/`` and ``initiators/``, most specific first."""
    roots: list[Path] = []
    env = os.environ.get(ENV_PEERS_DIR)
    if env:
        roots.append(Path(env))
    here = Path(__file__).resolve()
    # Source checkout: src/iscsi_conformance/peers/manifest.py -> repo root
    checkout = here.parents[3]
    if (checkout / "pyproject.toml").is_file():
        roots.append(checkout)
    # Installed wheel: iscsi_conformance/_peers/{targets,initiators}
    roots.append(here.parents[1] / "_peers")
    return roots


def peer_folders(role: Role) -> dict[str, Path]:
    """Every peer folder of ``role`` (name -> folder); earlier roots win."""
    found: dict[str, Path] = {}
    sub = ROLES[role]
    for root in peer_roots():
        base = root / sub
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if (child / "manifest.toml").is_file() and child.name not in found:
                found[child.name] = child
    return found


def peer_folder(role: Role, name: str) -> Path:
    """The folder of peer ``name``; ``ConfigError`` listing the known ones otherwise."""
    folders = peer_folders(role)
    try:
        return folders[name]
    except KeyError:
        known = ", ".join(sorted(folders)) or "none"
        raise ConfigError(f"no {role} peer named {name!r} (known: {known})", field="peer") from None


def load_peer_manifest(role: Role, name: str) -> PeerManifest:
    return load_manifest(peer_folder(role, name), role=role)


def load_all(
    roles: Iterable[Role] = ("target", "initiator"),
) -> dict[tuple[str, str], PeerManifest]:
    """Every manifest found, keyed by (role, name); for ``iscsi-conformance peers``."""
    out: dict[tuple[str, str], PeerManifest] = {}
    for role in roles:
        for name, folder in peer_folders(role).items():
            out[(role, name)] = load_manifest(folder, role=role)
    return out
