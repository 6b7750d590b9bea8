"""core.keys: the KeySpec table against the data in fixtures/keys/rfc7143_keys.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given

from iscsi_conformance.core import keys
from iscsi_conformance.core.negotiation import check_value
from iscsi_conformance.fuzz import keys as fk

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "keys"
EXPECTED = json.loads((FIXTURES / "rfc7143_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED["keys"]))
def test_key_matches_independent_transcription(name: str) -> None:
    want = EXPECTED["keys"][name]
    spec = keys.KEYS[name]
    assert spec.default == want["default"]
    assert [spec.min, spec.max] == want["range"]
    assert spec.result_function.name == want["result"]
    assert spec.scope.value == want["scope"]
    assert spec.usable_in_discovery == want["discovery"]
    assert spec.leading_only == want["leading_only"]


def test_every_key_in_the_table_is_transcribed() -> None:
    assert set(keys.KEYS) == set(EXPECTED["keys"])


@pytest.mark.parametrize("spec", keys.KEYS.values(), ids=lambda s: s.name)
def test_defaults_are_legal_values(spec: keys.KeySpec) -> None:
    if spec.default is not None:
        check_value(spec, spec.default)
    assert spec.section.startswith("RFC")
    assert spec.direction is spec.senders


@pytest.mark.parametrize("spec", keys.KEYS.values(), ids=lambda s: s.name)
@given(data=__import__("hypothesis").strategies.data())
def test_generated_values_are_legal(spec: keys.KeySpec, data) -> None:  # type: ignore[no-untyped-def]
    check_value(spec, data.draw(fk.values_for(spec)))


def test_helpers() -> None:
    assert keys.is_extension_key("X-com.example.foo")
    assert keys.is_extension_key("X#NodeArchitecture")
    assert not keys.is_extension_key("MaxBurstLength")
    assert keys.spec_for("Nope") is None
    assert "MaxConnections" in keys.LEADING_ONLY
    assert "HeaderDigest" not in keys.LEADING_ONLY
    d = keys.defaults("Discovery")
    assert "MaxBurstLength" not in d and d["HeaderDigest"] == "None"
    assert "OFMarker" not in keys.defaults()
    spec = keys.KEYS["MaxRecvDataSegmentLength"]
    assert spec.declarative and not spec.login_only
    assert keys.KEYS["AuthMethod"].security
    assert keys.KEYS["SendTargets"].phase & keys.Phase.FFPO
