"""Small builders shared by the mutant modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.mutation.patching import Patcher


def rewrite(
    p: Patcher, cls: type[P.PDU] | tuple[type[P.PDU], ...], change: Callable[[Any], Any]
) -> None:
    """Every outgoing PDU of ``cls`` becomes ``change(pdu)`` (see ``mutation.wire``)."""

    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        return change(pdu) if isinstance(pdu, cls) else pdu

    p.rewrite_output(fn)


def fields(
    p: Patcher, cls: type[P.PDU], when: Callable[[Any], bool] | None = None, **values: Any
) -> None:
    """Outgoing PDUs of ``cls`` (matching ``when``) carry these field values; a callable
    value is applied to the PDU to compute the field."""

    def change(pdu: Any) -> Any:
        if when is not None and not when(pdu):
            return pdu
        new = {k: (v(pdu) if callable(v) else v) for k, v in values.items()}
        return dataclasses.replace(pdu, **new)

    rewrite(p, cls, change)


def full_feature(pdu: Any) -> bool:
    """A PDU of full feature phase (not a Login Response)."""
    return not isinstance(pdu, P.LoginResponse)


def params(conn: Any, **changes: Any) -> Any:
    """The connection's negotiated parameters with ``changes`` (for a swapped call)."""
    return dataclasses.replace(conn.params, **changes)


def during(p: Patcher, owner: Any, name: str, attr: str, value: Callable[[Any], Any]) -> None:
    """While ``owner.name`` runs, ``self.attr`` is ``value(self)``."""

    def make(old: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            saved = getattr(self, attr)
            setattr(self, attr, value(self))
            try:
                return old(self, *args, **kwargs)
            finally:
                if getattr(self, attr) is not saved:
                    setattr(self, attr, saved)

        return method

    p.wrap(owner, name, make)
