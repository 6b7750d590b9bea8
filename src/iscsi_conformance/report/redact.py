"""Mask secrets before anything is written.

Theory of operation: every writer (JSON, HTML, JUnit) passes the document through
:func:`redact` first, so no code path can forget. Three rules, applied to every string
of the document (argv, stdout, messages, PDU summaries, evidence, hex dumps):

1. *Known secrets* (the run's CHAP secrets, ``Results.secrets`` plus any given) are
   replaced by ``***`` wherever they occur, also hex-encoded, and inside the bytes of
   a PDU hex dump (there the bytes become ``*``, keeping lengths and offsets).
2. *Values of CHAP_R and CHAP_C* (RFC 7143 12.1.3) are masked: a response together
   with its challenge allows an offline dictionary attack on the secret.
3. *Fields named like a secret*: a mapping key containing ``secret``, ``password``,
   ``passwd`` (or exactly ``CHAP_R``/``CHAP_C``) gets its value replaced; in text,
   ``password=...``, ``--password X``, iscsiadm's ``-n ...password -v X`` likewise,
   and the password of a URL (``iscsi://user%secret@host``, libiscsi's form).

Redaction never changes the document's shape, so the result still validates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .model import Results

__all__ = ["MASK", "Redactor", "redact", "redact_text"]

MASK = "***"

_SECRET_KEY = re.compile(r"(secret|password|passwd|passphrase|^chap_[rc]$)", re.IGNORECASE)
# CHAP_R=0x.. / CHAP_C=0b.. / "CHAP_R": "..": value up to a separator.
_CHAP_TEXT = re.compile(r"(CHAP_[RC])([\"']?\s*[=:]\s*[\"']?)([^\s\"',;&\x00]+)")
_WORD = r"[\w.-]*(?:secret|password|passwd|passphrase)[\w.-]*"
_VALUE = r"[^\s\"',;&\x00]+"
_SECRET_TEXT = (
    # password=foo, secret: foo, "password": "foo", auth.password = foo
    re.compile(rf"({_WORD})([\"']?\s*(?:=|:)\s*[\"']?)({_VALUE})", re.IGNORECASE),
    # --password foo, --mutual-secret foo (an option and its value)
    re.compile(rf"(--?{_WORD})(\s+[\"']?)({_VALUE})", re.IGNORECASE),
    # iscsiadm -n node.session.auth.password -v foo
    re.compile(rf"({_WORD})(\s+(?:-v|--value)\s+[\"']?)({_VALUE})", re.IGNORECASE),
    # URL credentials: iscsi://user%secret@host (libiscsi), scheme://user:secret@host
    re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:%@]*)([:%])([^@\s/]+)(?=@)"),
)
_CHAP_BYTES = re.compile(rb"(CHAP_[RC]=)([^\x00]*)")
_VALUE_FLAG = re.compile(r"^(-v|--value)$")


class Redactor:
    """Masks ``secrets`` (and the key-based rules) in strings, bytes and documents."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        raw: set[bytes] = set()
        for s in secrets:
            if not s:
                continue
            variants.add(s)
            b = s.encode("utf-8", "surrogateescape")
            raw.add(b)
            if len(b) >= 3:  # a hex dump of the secret in some log
                variants.update({b.hex(), b.hex().upper()})
            if s.lower().startswith("0x") and len(s) > 2:  # a CHAP secret given in hex
                try:
                    raw.add(bytes.fromhex(s[2:]))
                except ValueError:
                    pass
        self._texts = sorted(variants, key=len, reverse=True)
        self._bytes = sorted(raw, key=len, reverse=True)

    # ------------------------------------------------------------------ leaves

    def text(self, s: str) -> str:
        for v in self._texts:
            if v in s:
                s = s.replace(v, MASK)
        low = s.lower()  # cheap checks first: most strings need no regex at all
        if "chap_" in low:
            s = _CHAP_TEXT.sub(lambda m: m.group(1) + m.group(2) + MASK, s)
        if "secret" in low or "passw" in low or "passphrase" in low or "://" in s:
            for rx in _SECRET_TEXT:
                s = rx.sub(lambda m: m.group(1) + m.group(2) + MASK, s)
        return s

    def data(self, b: bytes) -> bytes:
        """Mask inside raw bytes, keeping the length (hex annotations stay valid)."""
        for v in self._bytes:
            b = b.replace(v, b"*" * len(v))
        return _CHAP_BYTES.sub(lambda m: m.group(1) + b"*" * len(m.group(2)), b)

    def argv(self, argv: list[str]) -> list[str]:
        """Like :meth:`text` per element, plus the value *after* a secret-named option
        (``--password X``, ``-n node.session.auth.password -v X``)."""
        out = [self.text(a) for a in argv]
        i = 0
        while i < len(out):
            a = out[i]
            if _SECRET_KEY.search(a) and "=" not in a and MASK not in a:
                j = i + 1
                if j < len(out) and _VALUE_FLAG.match(out[j]):
                    j += 1
                if j < len(out):
                    out[j] = MASK
                    i = j
            i += 1
        return out

    # ------------------------------------------------------------------ trees

    def tree(self, value: Any, key: str = "") -> Any:
        """Redact a JSON tree (dicts, lists, strings)."""
        if isinstance(value, dict):
            return {k: self._field(k, v) for k, v in value.items()}
        if isinstance(value, list):
            if key == "argv" and all(isinstance(x, str) for x in value):
                return self.argv(value)
            if key == "command_line" and all(isinstance(x, str) for x in value):
                return self.argv(value)
            return [self.tree(x, key) for x in value]
        if isinstance(value, str):
            if key == "hex":
                return self._hex(value)
            return self.text(value)
        return value

    def _field(self, key: str, value: Any) -> Any:
        if (
            _SECRET_KEY.search(key)
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
            and value != ""
        ):
            return MASK
        return self.tree(value, key)

    def _hex(self, value: str) -> str:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return self.text(value)
        return self.data(raw).hex()

    def results(self, results: Results) -> Results:
        """A redacted copy (the original is untouched)."""
        doc = self.tree(results.to_json())
        out = Results.from_json(doc, check=False)
        out.version = results.version
        return out


def redact(results: Results, secrets: Iterable[str] = ()) -> Results:
    """A copy of ``results`` with its registered secrets, ``secrets`` and every
    secret-looking field masked (see the module docstring)."""
    return Redactor({*results.secrets, *secrets}).results(results)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask one string (for attachments written outside a results document)."""
    return Redactor(secrets).text(text)
