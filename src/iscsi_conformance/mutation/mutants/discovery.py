"""SendTargets (filtering by name, session type and ACL; the answer's format) and
iSCSI names (RFC 7143 4.2.7, 13.3, 13.8, appendix C; RFC 3722)."""

from __future__ import annotations

import types
from typing import Any

from iscsi_conformance.core import naming
from iscsi_conformance.core.login import target as login_target
from iscsi_conformance.errors import NamingError
from iscsi_conformance.mutation.patching import Patcher, swapped
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.config import TargetConfig
from iscsi_conformance.target.engine import TargetEngine


def _send_targets(p: Patcher, change: Any) -> None:
    """``send_targets(session, which, ...)`` becomes ``change(old, self, session, which, *rest)``."""

    def make(old: Any) -> Any:
        def send_targets(self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
            return change(old, self, session, which, *rest)

        return send_targets

    p.wrap(TargetEngine, "send_targets", make)


def _names(engine: TargetEngine) -> set[str]:
    return set(engine.targets)


@mutant(
    "Discovery.SendTargets.AclIgnored",
    "discovery",
    "SendTargets lists targets whose ACL does not admit the initiator (13.3, appendix C)",
    catches=["Discovery.SendTargets.AclFiltering"],
)
def acl_ignored(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        with swapped(TargetConfig, "acl_for", lambda tc, ini: object()):
            return old(self, session, which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.NamedReturnsAll",
    "discovery",
    "SendTargets=<name> answers every target, not the one named (appendix C)",
    catches=["Discovery.SendTargets.Named"],
)
def named_all(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        return old(self, session, "All" if which not in ("", "All") else which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.UnknownNameReturnsAll",
    "discovery",
    "SendTargets=<a name the target does not have> answers every target (appendix C: nothing)",
    catches=["Discovery.SendTargets.UnknownName"],
)
def unknown_all(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        if which not in ("", "All") and which not in _names(self):
            which = "All"
        return old(self, session, which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.NamedAnswersNothing",
    "discovery",
    "SendTargets=<a name the target has> lists no target (appendix C: a named value MUST be "
    "supported on Discovery sessions)",
    catches=["Discovery.SendTargets.Named"],
)
def named_nothing(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        if which not in ("", "All"):
            which = "iqn.2024-01.org.iscsi-conformance:mutant-absent"
        return old(self, session, which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.EmptyInNormalReturnsAll",
    "discovery",
    "SendTargets= (empty) in a Normal session answers every target, not the session's own (appendix C)",
    catches=["Discovery.SendTargets.InNormalSession"],
)
def empty_all(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        return old(self, session, "All" if which == "" else which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.AllEmpty",
    "discovery",
    "SendTargets=All answers nothing (appendix C: every target the initiator may see)",
    catches=["Discovery.SendTargets.All"],
)
def all_empty(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        return [] if which == "All" else old(self, session, which, *rest)

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.NormalSessionAnswersNothing",
    "discovery",
    "SendTargets in a Normal session gets an empty answer (appendix C: the session's target)",
    catches=["Discovery.SendTargets.InNormalSession", "Discovery.SendTargets.AllInNormalSession"],
)
def normal_nothing(p: Patcher) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        if session is not None and session.target is not None:
            return []
        return old(self, session, which, *rest)

    _send_targets(p, change)


def _answer(p: Patcher, edit: Any) -> None:
    def change(old: Any, self: TargetEngine, session: Any, which: str, *rest: Any) -> Any:
        return edit(old(self, session, which, *rest))

    _send_targets(p, change)


@mutant(
    "Discovery.SendTargets.NoTargetAddress",
    "discovery",
    "SendTargets answers TargetName without any TargetAddress (13.8, appendix C)",
    catches=["Discovery.SendTargets.All", "Discovery.SendTargets.AddressFormat"],
)
def no_address(p: Patcher) -> None:
    _answer(p, lambda pairs: [(k, v) for k, v in pairs if k != "TargetAddress"])


@mutant(
    "Discovery.SendTargets.AddressWithoutTag",
    "discovery",
    "TargetAddress values lack their portal group tag (13.8: domainname[:port],tpgt)",
    catches=["Discovery.SendTargets.AddressFormat"],
)
def no_tag(p: Patcher) -> None:
    _answer(
        p, lambda pairs: [(k, v.rsplit(",", 1)[0] if k == "TargetAddress" else v) for k, v in pairs]
    )


@mutant(
    "Discovery.SendTargets.AddressWrongPort",
    "discovery",
    "TargetAddress values name a port the target does not listen on (13.8)",
    catches=["Discovery.SendTargets.AddressFormat", "Interop.Discovery.SendTargets"],
)
def wrong_port(p: Patcher) -> None:
    def edit(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = []
        for k, v in pairs:
            if k == "TargetAddress" and "," in v:
                addr, tag = v.rsplit(",", 1)
                host, _, port = addr.rpartition(":")
                if port.isdigit():
                    v = f"{host}:{int(port) + 1},{tag}"
            out.append((k, v))
        return out

    _answer(p, edit)


@mutant(
    "Discovery.SendTargets.AddressBeforeName",
    "discovery",
    "each TargetAddress comes before its TargetName (appendix C: TargetName first)",
    catches=["Discovery.SendTargets.All", "Discovery.SendTargets.AddressFormat"],
)
def address_first(p: Patcher) -> None:
    def edit(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        names = [i for i, (k, _) in enumerate(pairs) if k == "TargetName"]
        out = list(pairs)
        for i in reversed(names):
            name = out.pop(i)
            j = i
            while j < len(out) and out[j][0] == "TargetAddress":
                j += 1
            out.insert(j, name)
        return out

    _answer(p, edit)


@mutant(
    "Discovery.SendTargets.NameUppercased",
    "discovery",
    "TargetName values are sent in upper case, not in their normal form (4.2.7.2)",
    catches=["Discovery.SendTargets.Named", "Discovery.SendTargets.All"],
)
def name_upper(p: Patcher) -> None:
    _answer(p, lambda pairs: [(k, v.upper() if k == "TargetName" else v) for k, v in pairs])


def _validate(p: Patcher, swallow: Any = None, refuse: Any = None) -> None:
    """The target's check of InitiatorName ignores the NamingErrors ``swallow`` matches,
    or refuses the valid names ``refuse`` matches."""

    def validate(name: str) -> str:
        if refuse is not None and refuse(name):
            raise NamingError(f"{name!r} refused (mutant)", section="RFC 7143 4.2.7")
        try:
            return naming.validate(name)
        except NamingError as exc:
            if swallow is not None and swallow(name, str(exc)):
                return name
            raise

    proxy = types.SimpleNamespace(
        **{k: getattr(naming, k) for k in dir(naming) if not k.startswith("__")}
    )
    proxy.validate = validate
    p.setattr(login_target, "naming", proxy)


@mutant(
    "Naming.Prefix.Unchecked",
    "discovery",
    "an InitiatorName without iqn./eui./naa. prefix is accepted (4.2.7.3)",
    catches=["Naming.Initiator.Refused.NoPrefix"],
)
def no_prefix(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: "prefix" in msg)


@mutant(
    "Naming.Iqn.DateUnchecked",
    "discovery",
    "an iqn. name with a bad or missing date is accepted (4.2.7.4)",
    catches=["Naming.Initiator.Refused.IqnBadMonth", "Naming.Initiator.Refused.IqnNoDate"],
)
def iqn_date(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: "date" in msg or "yyyy-mm" in msg)


@mutant(
    "Naming.Eui.FormatUnchecked",
    "discovery",
    "an eui. name without exactly 16 hex digits is accepted (4.2.7.5)",
    catches=["Naming.Initiator.Refused.EuiShort", "Naming.Initiator.Refused.EuiNotHex"],
)
def eui_format(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: name[:4].lower() == "eui.")


@mutant(
    "Naming.Naa.LengthUnchecked",
    "discovery",
    "an naa. name of a length other than 16 or 32 hex digits is accepted (4.2.7.6)",
    catches=["Naming.Initiator.Refused.NaaWrongLength"],
)
def naa_length(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: name[:4].lower() == "naa.")


@mutant(
    "Naming.Length.Unchecked",
    "discovery",
    "an InitiatorName above 223 bytes is accepted (4.2.7.1)",
    catches=["Naming.Initiator.Refused.TooLong"],
)
def too_long(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: "at most" in msg)


@mutant(
    "Naming.Normalization.Unchecked",
    "discovery",
    "an iqn. name not in normal form (upper case) is accepted (4.2.7.2)",
    catches=["Naming.Initiator.Refused"],
)
def not_normalized(p: Patcher) -> None:
    _validate(p, swallow=lambda name, msg: "normalised" in msg)


@mutant(
    "Naming.Eui.Refused",
    "discovery",
    "a valid eui. InitiatorName is refused (4.2.7.5)",
    catches=["Naming.Initiator.Accepted.Eui"],
)
def eui_refused(p: Patcher) -> None:
    _validate(p, refuse=lambda name: name[:4].lower() == "eui.")


@mutant(
    "Naming.Naa.LongRefused",
    "discovery",
    "a valid 32-digit naa. InitiatorName is refused (4.2.7.6)",
    catches=["Naming.Initiator.Accepted.Naa32"],
)
def naa32_refused(p: Patcher) -> None:
    _validate(p, refuse=lambda name: name[:4].lower() == "naa." and len(name) == 36)


@mutant(
    "Naming.Iqn.WithoutSuffixRefused",
    "discovery",
    "a valid iqn. name without the optional ':' unique part is refused (4.2.7.4)",
    catches=["Naming.Initiator.Accepted.IqnWithoutSuffix"],
)
def iqn_without_suffix(p: Patcher) -> None:
    _validate(p, refuse=lambda name: name.startswith("iqn.") and ":" not in name)


@mutant(
    "Naming.TargetName.CaseSensitive",
    "discovery",
    "a TargetName that differs only in case from a configured name is not found (RFC 3722: case-insensitive)",
    catches=["Login.Session"],
)
def target_case(p: Patcher) -> None:
    from iscsi_conformance.target import login as target_login

    def find(targets: Any, name: str) -> Any:
        return targets.get(name)

    p.replace(target_login, "find_target", find)
