"""Every section the suite cites exists in a table of its document's sections.

The tables are ``fixtures/specs/<document>.tsv`` (``RFC 7143`` -> ``rfc7143.tsv``,
``SPC-4`` -> ``spc4.tsv``): ``section<TAB>title<TAB>source``, where ``source`` says
where the heading was read, or ``recalled`` when no stored copy showed it
(``fixtures/specs/PROVENANCE.md``). Checked here:

- each table is well formed and named in PROVENANCE.md;
- the section of every catalog row (``conformance/requirements/*.toml``) exists;
- the section of every ``SpecRef`` of every ``@spec`` in ``conformance/`` exists
  (the test modules are imported, not collected by pytest: well under two seconds);
- every catalog row carries ``verified`` (a string, ``""`` when not verified), and
  each RFC section a ``verified`` note names exists in that RFC's table.

A citation that fails here is fixed in the catalog or in the ``@spec`` line, or the
section is added to its table with the place where its heading was read.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from iscsi_conformance.plugin.spec import SpecInfo

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "conformance"
TABLES = ROOT / "fixtures" / "specs"
HEADER = ["section", "title", "source"]
SECTION = re.compile(r"^(?:\d+|[A-Z])(?:\.\d+)*$")
# "RFC 7143 6.1", "RFC 3720 10.12.8" inside a verified note
RFC_CITATION = re.compile(r"\bRFC (\d{4}) ((?:\d+|[A-E])(?:\.\d+)*)\b")


def table_name(document: str) -> str:
    """``RFC 7143`` -> ``rfc7143``, ``SPC-4`` -> ``spc4``."""
    return re.sub(r"[\s-]", "", document).lower()


def load_tables() -> dict[str, dict[str, tuple[str, str]]]:
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    for path in sorted(TABLES.glob("*.tsv")):
        rows = [line.split("\t") for line in path.read_text().splitlines() if line]
        assert rows and rows[0] == HEADER, f"{path.name}: first line must be {HEADER}"
        table: dict[str, tuple[str, str]] = {}
        for n, row in enumerate(rows[1:], start=2):
            assert len(row) == 3, f"{path.name}:{n}: three tab-separated fields"
            section, title, source = row
            assert SECTION.match(section), f"{path.name}:{n}: section {section!r}"
            assert title.strip() and source.strip(), f"{path.name}:{n}: empty title or source"
            assert section not in table, f"{path.name}:{n}: section {section} twice"
            table[section] = (title, source)
        tables[path.stem] = table
    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, tuple[str, str]]]:
    return load_tables()


@pytest.fixture(scope="module")
def catalog() -> list[tuple[str, dict[str, object]]]:
    rows: list[tuple[str, dict[str, object]]] = []
    for path in sorted((SUITE / "requirements").glob("*.toml")):
        with path.open("rb") as fh:
            rows += [(path.name, req) for req in tomllib.load(fh).get("requirement", [])]
    return rows


def _spec_infos(obj: object) -> Iterator[SpecInfo]:
    for mark in getattr(obj, "pytestmark", []) if callable(obj) else []:
        if mark.name == "iscsi" and mark.args and isinstance(mark.args[0], SpecInfo):
            yield mark.args[0]


def suite_spec_infos() -> list[tuple[str, SpecInfo]]:
    """Every ``@spec`` in ``conformance/``, found by importing each test module once
    under a private name (removed again: pytest imports them its own way)."""
    found: list[tuple[str, SpecInfo]] = []
    for path in sorted(SUITE.rglob("test_*.py")):
        name = "_spec_sections_" + "_".join(path.relative_to(SUITE).with_suffix("").parts)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            namespaces = [module] + [
                v for v in vars(module).values() if inspect.isclass(v) and v.__module__ == name
            ]
            for ns in namespaces:
                for value in list(vars(ns).values()):
                    found += [(path.name, info) for info in _spec_infos(value)]
        finally:
            del sys.modules[name]
    return found


def test_tables_are_well_formed_and_have_provenance(
    tables: dict[str, dict[str, tuple[str, str]]],
) -> None:
    assert {"rfc7143", "rfc1994", "spc4", "sbc3"} <= set(tables)
    provenance = (TABLES / "PROVENANCE.md").read_text()
    for name in tables:
        assert f"{name}.tsv" in provenance, f"PROVENANCE.md says nothing of {name}.tsv"


def test_every_catalog_section_exists(
    tables: dict[str, dict[str, tuple[str, str]]], catalog: list[tuple[str, dict[str, object]]]
) -> None:
    missing = [
        f"{file}: {req['id']} cites {req['document']} {req['section']}"
        for file, req in catalog
        if str(req["section"]) not in tables.get(table_name(str(req["document"])), {})
    ]
    assert not missing, "sections not in fixtures/specs:\n" + "\n".join(missing)


def test_every_spec_reference_exists(tables: dict[str, dict[str, tuple[str, str]]]) -> None:
    infos = suite_spec_infos()
    assert len(infos) >= 200, "the conformance suite's @spec declarations were not found"
    missing = sorted(
        {
            f"{file}: {info.test_id} cites {ref.document} {ref.section}"
            for file, info in infos
            for ref in info.refs
            if ref.section not in tables.get(table_name(ref.document), {})
        }
    )
    assert not missing, "sections not in fixtures/specs:\n" + "\n".join(missing)


def test_every_row_says_where_it_was_verified(
    tables: dict[str, dict[str, tuple[str, str]]], catalog: list[tuple[str, dict[str, object]]]
) -> None:
    problems: list[str] = []
    for file, req in catalog:
        verified = req.get("verified")
        if not isinstance(verified, str):
            problems.append(f"{file}: {req['id']} has no verified string ('' when not verified)")
            continue
        for number, section in RFC_CITATION.findall(verified):
            table = tables.get(f"rfc{number}")
            if table is not None and section not in table:
                problems.append(f"{file}: {req['id']} verified cites RFC {number} {section}")
    assert not problems, "\n".join(problems)
