"""The requirements catalog and the suite's declarations agree.

- every requirement ID a conformance test names exists in the catalog;
- stable test IDs are unique (a deviation names exactly one test);
- every collected conformance test carries ``@spec`` with at least one reference;
- every peer manifest's deviation names a test ID (or prefix) that exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iscsi_conformance.plugin.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "conformance"


@pytest.fixture(scope="module")
def collected() -> list[dict[str, object]]:
    """The suite's spec declarations, collected by pytest in a subprocess."""
    code = (
        "import json, sys, pytest\n"
        "from iscsi_conformance.plugin.spec import info_of\n"
        "class P:\n"
        "    items = []\n"
        "    def pytest_collection_finish(self, session):\n"
        "        for it in session.items:\n"
        "            i = info_of(it)\n"
        "            P.items.append(None if i is None else {'nodeid': it.nodeid, 'id': i.test_id,\n"
        "                'requirements': list(i.requirements), 'refs': [str(r) for r in i.refs],\n"
        "                'function': it.function.__name__ + '@' + it.module.__name__})\n"
        f"pytest.main([{str(SUITE)!r}, '--collect-only', '-q', '--import-mode=importlib', '-p', 'no:cacheprovider'], plugins=[P()])\n"
        "print('JSON' + json.dumps(P.items))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("JSON")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    import json

    return json.loads(line[-1][4:])  # type: ignore[no-any-return]


def test_catalog_loads_and_ids_are_well_formed() -> None:
    catalog = load_catalog(SUITE / "requirements")
    assert len(catalog) >= 150
    for req in catalog:
        assert req["id"].startswith("R"), req
        assert req["text"] and not req["text"].startswith('"'), req


def test_every_named_requirement_exists(collected: list[dict[str, object]]) -> None:
    ids = {r["id"] for r in load_catalog(SUITE / "requirements")}
    missing = sorted(
        {req for item in collected if item for req in item["requirements"]} - ids - {"harness"}
    )  # type: ignore[union-attr]
    assert not missing, f"tests name requirements that are not in the catalog: {missing}"


def test_every_conformance_test_has_a_spec(collected: list[dict[str, object]]) -> None:
    assert collected, "no conformance test collected"
    assert all(item is not None for item in collected), "a conformance test lacks @spec"
    assert all(item["refs"] for item in collected)  # type: ignore[index]


def test_stable_ids_are_unique_per_function(collected: list[dict[str, object]]) -> None:
    by_id: dict[str, set[str]] = {}
    for item in collected:
        assert item is not None
        by_id.setdefault(str(item["id"]), set()).add(str(item["function"]))
    clashes = {k: v for k, v in by_id.items() if len(v) > 1}
    assert not clashes, f"one stable ID on several test functions: {clashes}"


def test_suite_is_large_enough(collected: list[dict[str, object]]) -> None:
    assert len(collected) >= 200


def test_manifest_deviations_name_existing_tests(collected: list[dict[str, object]]) -> None:
    import tomllib

    from iscsi_conformance.peers.manifest import Deviation

    ids = {str(i["id"]) for i in collected if i}
    for manifest in [
        *ROOT.glob("targets/*/manifest.toml"),
        *ROOT.glob("initiators/*/manifest.toml"),
    ]:
        doc = tomllib.loads(manifest.read_text())
        for dev in doc.get("deviations", []):
            pattern = str(dev.get("test", ""))
            if pattern.startswith("libiscsi."):  # a peer's own suite, reported cell by cell
                continue
            if pattern.startswith("Fuzz."):  # fuzz findings of no test (fuzz ci's gate)
                assert dev.get("fuzz") and dev.get("reason"), f"{manifest}: {pattern!r}"
                continue
            matcher = Deviation.from_dict(dev)  # an exact ID (and its cases) or a group X.*
            assert any(matcher.matches(i) for i in ids), (
                f"{manifest}: deviation names {pattern!r}, which matches no conformance test"
            )
            assert dev.get("reason"), f"{manifest}: deviation {pattern!r} gives no reason"
