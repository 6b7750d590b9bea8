"""The CHAP accounts of a fuzzed reference target, and the values that spoil a login.

Theory of operation: a campaign (``fuzz.campaign``, ``fuzz.machine``) logs in as one
of three initiators: ``INITIATOR`` without authentication, ``CHAP_INITIATOR`` with
one-way CHAP and ``MUTUAL_INITIATOR`` with mutual CHAP (RFC 7143 12.1.3). ``Accounts``
holds their random secrets (never printed); ``chap_toml`` renders a reference target
configuration with those three ACLs (for ``fuzz.reference.ReferenceSubject``) and
``with_accounts`` adds them to a ``ServerConfig`` (in process). ``BAD_CHAP_VALUES``
are the wrong or over-long values a spoiled CHAP login carries.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from iscsi_conformance.credentials import ChapAccount

__all__ = [
    "ALGORITHMS",
    "BAD_CHAP_VALUES",
    "CHAP_INITIATOR",
    "INITIATOR",
    "MUTUAL_INITIATOR",
    "Accounts",
    "chap_toml",
    "with_accounts",
]

INITIATOR = "iqn.2024-01.org.iscsi-conformance:fuzzer"
CHAP_INITIATOR = "iqn.2024-01.org.iscsi-conformance:fuzzer-chap"
MUTUAL_INITIATOR = "iqn.2024-01.org.iscsi-conformance:fuzzer-mutual"
ALGORITHMS = {"MD5": 5, "SHA-1": 6, "SHA-256": 7, "SHA3-256": 8}


@dataclasses.dataclass(frozen=True)
class Accounts:
    """CHAP accounts the subject was configured with (secrets never printed)."""

    chap: ChapAccount
    mutual_target: ChapAccount  # what the target answers for MUTUAL_INITIATOR

    @classmethod
    def random(cls) -> Accounts:
        return cls(
            ChapAccount("fuzz-chap", os.urandom(12).hex()),
            ChapAccount("fuzz-target", os.urandom(12).hex()),
        )


def chap_toml(iqn: str, accounts: Accounts, luns: tuple[str, ...] = ("8M", "1M")) -> Any:
    """``config(host, port)`` for ``ReferenceSubject``: the target ``iqn`` with ACLs for
    the three initiators of the machine (none, CHAP, mutual CHAP)."""

    def render(host: str, port: int) -> str:
        def chap(a: ChapAccount) -> str:
            return f'{{ user = "{a.user}", secret = "{a.secret}" }}'

        lines = ["[server]", "nop_in_interval = 0", "", "[[portal_groups]]", "tag = 1",
                 f'portals = ["{host}:{port}"]', "", "[[targets]]", f'name = "{iqn}"']  # fmt: skip
        for i, size in enumerate(luns):
            lines += ["[[targets.luns]]", f"lun = {i}", f'size = "{size}"']
        lines += ["[[targets.acls]]", f'initiator = "{INITIATOR}"']
        lines += ["[[targets.acls]]", f'initiator = "{CHAP_INITIATOR}"',
                  f"chap = {chap(accounts.chap)}"]  # fmt: skip
        lines += ["[[targets.acls]]", f'initiator = "{MUTUAL_INITIATOR}"',
                  f"chap = {chap(accounts.chap)}", f"mutual_chap = {chap(accounts.mutual_target)}"]  # fmt: skip
        return "\n".join(lines) + "\n"

    return render


def with_accounts(config: Any, accounts: Accounts) -> Any:
    """A ``ServerConfig`` whose targets carry the machine's three ACLs (in process)."""
    from iscsi_conformance.target.config import AclConfig, ChapConfig

    def cc(a: ChapAccount) -> ChapConfig:
        return ChapConfig(a.user, a.secret)

    acls = (
        AclConfig(INITIATOR),
        AclConfig(CHAP_INITIATOR, chap=cc(accounts.chap)),
        AclConfig(MUTUAL_INITIATOR, chap=cc(accounts.chap), mutual_chap=cc(accounts.mutual_target)),
    )
    targets = tuple(dataclasses.replace(t, acls=acls) for t in config.targets)
    return dataclasses.replace(config, targets=targets)


BAD_CHAP_VALUES = [
    ("CHAP_R", "0x00"),
    ("CHAP_R", "0x" + "ab" * 16),
    ("CHAP_R", "0x" + "ab" * 3000),  # CVE-2018-14633's class: far longer than any digest
    ("CHAP_R", "0b" + "QUJD" * 8),
    ("CHAP_R", ""),
    ("CHAP_R", "0xZZ"),
    ("CHAP_N", "someone-else"),
    ("CHAP_N", "n" * 600),
    ("CHAP_A", "4"),
    ("CHAP_A", "5,6,7,8," + "9," * 200),
]
