"""A mutation score for the conformance suite (issue 10, item 5).

Named behavioural mutants of the reference target (``mutants/``, registered in
``registry``), applied one at a time by a pytest plugin (``activate``) in a process
of their own (``runner``), through monkeypatches that touch the target alone
(``patching``, ``wire``). ``iscsi-conformance mutate`` (``cli``) prints which tests
kill each mutant and the score; ``survivors.toml`` lists the known survivors and why.
"""

from __future__ import annotations

import importlib
import pkgutil

from iscsi_conformance.mutation.registry import AREAS, MUTANTS, Area, Mutant

_loaded = False


def all_mutants() -> dict[str, Mutant]:
    """Every registered mutant (importing ``mutation.mutants.*`` on first use), by name."""
    global _loaded
    if not _loaded:
        from iscsi_conformance.mutation import mutants

        for info in pkgutil.iter_modules(mutants.__path__):
            importlib.import_module(f"{mutants.__name__}.{info.name}")
        _loaded = True
    return MUTANTS


def get(name: str) -> Mutant:
    """The mutant of this name (KeyError naming the close matches otherwise)."""
    found = all_mutants().get(name)
    if found is None:
        import difflib

        close = difflib.get_close_matches(name, list(MUTANTS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"no mutant {name!r}{hint}")
    return found


__all__ = ["AREAS", "MUTANTS", "Area", "Mutant", "all_mutants", "get"]
