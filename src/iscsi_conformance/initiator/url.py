"""``iscsi://`` URLs, in the form libiscsi's tools accept.

Theory of operation: one function, :func:`parse_url`, turns
``iscsi://[user[%secret]@]host[:port]/target-name/lun`` into an :class:`ISCSIURL`.
Host may be a name, an IPv4 address or a bracketed IPv6 literal (``[::1]``, RFC 3986
3.2.2); the port defaults to 3260 (the IANA-registered iSCSI port). User,
secret and target name are percent-decoded (RFC 3986 2.1), so a secret may contain
``%``, ``@`` or ``/`` when written ``%25``, ``%40``, ``%2F``. A query string carries what
libiscsi also accepts there: ``target_user`` / ``target_password`` (mutual CHAP) and
``header_digest`` / ``data_digest``.

Every error is a one-line :class:`~iscsi_conformance.errors.URLError` that never
quotes the secret. The secret has ``repr=False`` and ``str()`` masks it.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote

from iscsi_conformance.core.discovery import (
    DEFAULT_PORT,
    DiscoveryError,
    format_hostport,
    parse_hostport,
)
from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import URLError

__all__ = ["DEFAULT_PORT", "ISCSIURL", "format_hostport", "parse_portal", "parse_url"]

MAX_LUN = 0x3FFF  # flat space addressing holds 14 bits (SAM-5 4.7.7)

_SCHEME = "iscsi://"
_DIGESTS = {"none": "None", "crc32c": "CRC32C"}


@dataclasses.dataclass(frozen=True)
class ISCSIURL:
    """A parsed ``iscsi://`` URL. ``target``/``lun`` are None in a portal-only URL."""

    host: str
    port: int = DEFAULT_PORT
    target: str | None = None
    lun: int | None = None
    user: str | None = None
    secret: str | None = dataclasses.field(default=None, repr=False)
    target_user: str | None = None
    target_secret: str | None = dataclasses.field(default=None, repr=False)
    header_digest: str | None = None
    data_digest: str | None = None

    @property
    def chap(self) -> ChapAccount | None:
        """One-way CHAP credentials (initiator authenticates to target), if given."""
        if self.user is None:
            return None
        return ChapAccount(self.user, self.secret or "")

    @property
    def mutual_chap(self) -> ChapAccount | None:
        """Credentials the target must prove (mutual CHAP), if given."""
        if self.target_user is None:
            return None
        return ChapAccount(self.target_user, self.target_secret or "")

    @property
    def portal(self) -> str:
        return format_hostport(self.host, self.port)

    def keys(self) -> dict[str, str]:
        """Operational keys the URL asks for (digests)."""
        out: dict[str, str] = {}
        if self.header_digest:
            out["HeaderDigest"] = self.header_digest
        if self.data_digest:
            out["DataDigest"] = self.data_digest
        return out

    def __str__(self) -> str:
        cred = ""
        if self.user is not None:
            cred = _quote(self.user) + ("%***" if self.secret is not None else "") + "@"
        path = ""
        if self.target is not None:
            path = "/" + _quote(self.target)
            if self.lun is not None:
                path += f"/{self.lun}"
        return f"{_SCHEME}{cred}{self.portal}{path}"


def _quote(s: str) -> str:
    return "".join(c if c.isalnum() or c in ".:-_" else f"%{ord(c):02X}" for c in s)


def _decode(text: str, what: str) -> str:
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise URLError(f"bad percent-encoding in the {what}")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise URLError(f"the {what} is not valid UTF-8 once percent-decoded") from None


def parse_portal(text: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    try:
        return parse_hostport(text, default_port=default_port)
    except DiscoveryError as exc:
        raise URLError(exc.message) from None


def parse_url(url: str, *, require_target: bool = True, require_lun: bool = True) -> ISCSIURL:
    """Parse an ``iscsi://`` URL; raise a one-line :class:`URLError` if malformed.

    ``require_target=False`` accepts a portal-only URL (``iscsi://host[:port]``) as used
    for discovery; ``require_lun=False`` accepts ``iscsi://host/iqn`` without a LUN.
    """
    if not isinstance(url, str):
        raise URLError("URL must be a string")
    if not url.lower().startswith(_SCHEME):
        shown = url.split("@")[-1] if "@" in url else url
        raise URLError(f"not an iscsi:// URL: {shown!r}")
    rest = url[len(_SCHEME) :]
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    cred, at, hostport = authority.rpartition("@")
    user = secret = None
    if at:
        raw_user, pct, raw_secret = cred.partition("%")
        # libiscsi form: user%secret. A '%' that is followed by two hex digits and
        # then more text could also be an escape; libiscsi treats the first '%' as the
        # separator and so do we: write a '%' inside the user name as '%25'.
        if not raw_user:
            raise URLError("empty user name before '@'")
        user = _decode(raw_user, "user name")
        if pct:
            secret = _decode(raw_secret, "secret")
    host, port = parse_portal(hostport)

    target = lun = None
    parts = path.split("/") if slash else []
    if parts and parts[-1] == "" and len(parts) <= 2:
        parts = parts[:-1]  # tolerate one trailing slash
    if len(parts) > 2:
        raise URLError("too many path components: expected /target-name/lun")
    if parts:
        if not parts[0]:
            raise URLError("empty target name")
        target = _decode(parts[0], "target name")
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise URLError(f"LUN {parts[1]!r} is not a decimal number")
        lun = int(parts[1])
        if lun > MAX_LUN:
            raise URLError(f"LUN {lun} is out of range 0..{MAX_LUN}")
    if require_target and target is None:
        raise URLError("missing target name: expected iscsi://host[:port]/target-name/lun")
    if require_lun and target is not None and lun is None:
        raise URLError("missing LUN: expected iscsi://host[:port]/target-name/lun")

    opts: dict[str, str] = {}
    if query:
        for item in query.split("&"):
            if not item:
                continue
            k, eq, v = item.partition("=")
            if not eq:
                raise URLError(f"query item {k!r} has no value")
            k = k.replace("-", "_").lower()
            if k in opts:
                raise URLError(f"query parameter {k!r} given twice")
            what = "target secret" if k == "target_password" else f"{k} value"
            opts[k] = _decode(v, what)
    unknown = set(opts) - {"target_user", "target_password", "header_digest", "data_digest"}
    if unknown:
        raise URLError(f"unknown query parameter {sorted(unknown)[0]!r}")
    digests: dict[str, str | None] = {}
    for name in ("header_digest", "data_digest"):
        value = opts.get(name)
        if value is not None:
            parts_v = [p.strip().lower() for p in value.split(",")]
            if not all(p in _DIGESTS for p in parts_v):
                raise URLError(f"{name} must be none, crc32c or a list of them, not {value!r}")
            value = ",".join(_DIGESTS[p] for p in parts_v)
        digests[name] = value
    if "target_password" in opts and "target_user" not in opts:
        raise URLError("target_password given without target_user")
    return ISCSIURL(
        host=host,
        port=port,
        target=target,
        lun=lun,
        user=user,
        secret=secret,
        target_user=opts.get("target_user"),
        target_secret=opts.get("target_password"),
        header_digest=digests["header_digest"],
        data_digest=digests["data_digest"],
    )
