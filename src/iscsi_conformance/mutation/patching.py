"""Applying and reverting a mutant: monkeypatches of the reference target, undone in reverse.

Theory of operation: a :class:`Patcher` records every change it makes (class or
module attributes, mapping items) and ``undo()`` puts each back, last first. Replacing
a function also replaces the references to that same object that the reference
target's modules hold (``from x import f`` copies, and dispatch tables such as
``connection._FFP_HANDLERS``), and only there: the reference initiator and the probe
share ``core`` with the target, and a mutant must break the target alone. For the
same reason, methods of shared classes are patched through :meth:`Patcher.for_target`,
which keeps the original for the initiator's role.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

#: Modules that belong to the reference target alone (where references are replaced).
TARGET_MODULES = (
    "iscsi_conformance.target",
    "iscsi_conformance.core.login.target",
    "iscsi_conformance.scsi.device",
    "iscsi_conformance.scsi.reservations",
    "iscsi_conformance.scsi.nolu",
)

_MISSING = object()


def _target_modules() -> list[Any]:
    return [
        mod
        for name, mod in list(sys.modules.items())
        if mod is not None and any(name == p or name.startswith(p + ".") for p in TARGET_MODULES)
    ]


class Patcher:
    """Changes made for one mutant, and how to undo them."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ primitives

    def setattr(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` (a class, module or object); undo restores or deletes it."""
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        old = own.get(name, _MISSING)
        setattr(owner, name, value)
        if old is _MISSING:
            self._undo.append(lambda: delattr(owner, name))
        else:
            self._undo.append(lambda: setattr(owner, name, old))

    def setitem(self, mapping: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        """Set ``mapping[key]``; undo restores or removes it."""
        old = mapping.get(key, _MISSING)
        mapping[key] = value
        if old is _MISSING:
            self._undo.append(lambda: mapping.pop(key, None))
        else:
            self._undo.append(lambda: mapping.__setitem__(key, old))

    def undo(self) -> None:
        """Revert every change, last first."""
        while self._undo:
            self._undo.pop()()

    # ------------------------------------------------------------------ functions

    def replace(self, owner: Any, name: str, new: Callable[..., Any]) -> Callable[..., Any]:
        """Replace the function ``owner.name`` by ``new`` there and wherever the reference
        target's modules hold the same object; return the original."""
        old = getattr(owner, name)
        raw_old = vars(owner).get(name, old) if isinstance(owner, type) else old
        wrapped = staticmethod(new) if isinstance(raw_old, staticmethod) else new
        self.setattr(owner, name, wrapped)
        target = getattr(old, "__func__", old)
        for mod in _target_modules():
            for attr, value in list(vars(mod).items()):
                if value is target and mod is not owner:
                    self.setattr(mod, attr, new)
                elif isinstance(value, dict) and not attr.startswith("__"):
                    for key, item in list(value.items()):
                        if item is target:
                            self.setitem(value, key, new)
        return old  # type: ignore[no-any-return]

    def wrap(
        self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Replace ``owner.name`` by ``make(original)``."""
        old = getattr(owner, name)
        new = make(old)
        functools.update_wrapper(new, old)
        self.replace(owner, name, new)

    def for_target(
        self, cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Like :meth:`wrap` for a method of a class both roles use (``Negotiator``):
        the mutated method runs only for instances whose ``role`` is the target."""
        from iscsi_conformance.core.negotiation import Role

        old = getattr(cls, name)
        mutated = make(old)

        def method(self_: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(self_, "role", None) is Role.TARGET:
                return mutated(self_, *args, **kwargs)
            return old(self_, *args, **kwargs)

        functools.update_wrapper(method, old)
        self.replace(cls, name, method)

    def after(
        self, owner: Any, name: str, post: Callable[..., Any], *, result: bool = False
    ) -> None:
        """Run ``post(self, *args)`` after ``owner.name`` (or ``post(self, value, *args)``
        returning the new value, with ``result=True``)."""

        def make(old: Callable[..., Any]) -> Callable[..., Any]:
            def method(self_: Any, *args: Any, **kwargs: Any) -> Any:
                value = old(self_, *args, **kwargs)
                if result:
                    return post(self_, value, *args, **kwargs)
                post(self_, *args, **kwargs)
                return value

            return method

        self.wrap(owner, name, make)

    def noop(self, owner: Any, name: str, value: Any = None) -> None:
        """Make ``owner.name`` do nothing (return ``value``)."""
        self.wrap(owner, name, lambda old: lambda *a, **k: value)

    # ------------------------------------------------------------------ the wire

    def rewrite_output(self, rewrite: Callable[..., Any]) -> None:
        """Pass every PDU the reference target sends through ``rewrite`` (see
        :mod:`iscsi_conformance.mutation.wire`)."""
        from iscsi_conformance.mutation import wire

        wire.install(self, rewrite)


@contextlib.contextmanager
def swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name = value`` for the duration of a block (inside one mutated call)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)
