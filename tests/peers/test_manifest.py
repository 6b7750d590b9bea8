"""Manifest loading and validation (no peers needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers.base import Manifest
from iscsi_conformance.peers.manifest import (
    Deviation,
    PeerManifest,
    load_all,
    load_manifest,
    load_peer_manifest,
    parse_manifest,
    peer_folder,
    peer_folders,
    peer_roots,
    version_key,
    version_matches,
)

GOOD = {
    "peer": {
        "name": "demo",
        "role": "target",
        "driver": "iscsi_conformance.peers.tgt:TgtTarget",
        "shard_weight": 2.5,
        "description": "d",
        "upstream": "u",
        "packages": ["p"],
    },
    "capabilities": {"chap_algorithms": [5, 7], "mutual_chap": True, "erl": [0], "new_thing": "x"},
    "deviations": [
        {"test": "Login.Keys.*", "reason": "broad", "versions": "*"},
        {
            "test": "Login.Keys.HeaderDigest",
            "reason": "narrow",
            "versions": ">=1.0.80,<1.1",
            "effect": "skip",
        },
    ],
}


def _with(path: str, value: object) -> dict:
    import copy

    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


def test_good_manifest_parses() -> None:
    m = parse_manifest(GOOD)
    assert isinstance(m, PeerManifest) and isinstance(m, Manifest)
    assert (m.name, m.role, m.upstream, m.packages) == ("demo", "target", "u", ("p",))
    assert (m.driver, m.shard_weight) == ("iscsi_conformance.peers.tgt:TgtTarget", 2.5)
    assert m.supports("mutual_chap") and not m.supports("ipv6")
    assert m.capabilities["new_thing"] == "x"
    assert len(m.deviations) == 2 and m.deviations[0]["test"] == "Login.Keys.*"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("peer.name", KeyError, "peer.name"),
        ("peer.name", "Bad Name", "peer.name"),
        ("peer.role", "router", "peer.role"),
        ("peer.packages", "tgt", "peer.packages"),
        ("peer.colour", "red", "peer"),
        ("peer.driver", KeyError, "peer.driver"),
        ("peer.driver", "iscsi_conformance.peers.tgt", "peer.driver"),
        ("peer.driver", "tgt:Tgt Target", "peer.driver"),
        ("peer.driver", 42, "peer.driver"),
        ("peer.shard_weight", 0, "peer.shard_weight"),
        ("peer.shard_weight", -1.5, "peer.shard_weight"),
        ("peer.shard_weight", "3", "peer.shard_weight"),
        ("peer.shard_weight", True, "peer.shard_weight"),
        ("peer.shard_weight", float("nan"), "peer.shard_weight"),
        ("peer.shard_weight", float("inf"), "peer.shard_weight"),
        ("capabilities.chap_algorithms", [4], "capabilities.chap_algorithms"),
        ("capabilities.mutual_chap", "yes", "capabilities.mutual_chap"),
        ("capabilities.erl", [3], "capabilities.erl"),
        ("capabilities.max_connections", 0, "capabilities.max_connections"),
        ("capabilities.digests", ["CRC32"], "capabilities.digests"),
        ("capabilities.weird", {"a": 1}, "capabilities.weird"),
        ("deviations.0.reason", KeyError, "deviations[0].reason"),
        ("deviations.0.reason", "  ", "deviations[0].reason"),
        ("deviations.0.test", "Login.", "deviations[0].test"),
        ("deviations.0.test", "Login*", "deviations[0].test"),
        ("deviations.0.test", "Login.*.Keys", "deviations[0].test"),
        ("deviations.0.test", "*", "deviations[0].test"),
        ("deviations.1.versions", "~~", "deviations[1].versions"),
        ("deviations.1.effect", "ignore", "deviations[1].effect"),
        ("deviations.1.extra", 1, "deviations[1]"),
    ],
)
def test_invalid_manifest_names_the_field(path: str, value: object, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_manifest(_with(path, value))
    assert exc.value.field == field
    assert field in str(exc.value)


def test_unknown_table_and_missing_peer() -> None:
    with pytest.raises(ConfigError, match="unknown table"):
        parse_manifest({**GOOD, "extra": {}})
    with pytest.raises(ConfigError) as exc:
        parse_manifest({"capabilities": {}})
    assert exc.value.field == "peer"


def test_deviation_matching_exact_group_and_versions() -> None:
    m = parse_manifest(GOOD)
    assert m.deviation_for("Login.Keys.HeaderDigest", "1.0.85").reason == "narrow"
    assert m.deviation_for("Login.Keys.HeaderDigest[CRC32C]", "1.0.85").reason == "narrow"
    # a test's own entry covers no longer ID: the group does
    assert m.deviation_for("Login.Keys.HeaderDigest.Foo", "1.0.85").reason == "broad"
    assert m.deviation_for("Login.Keys.HeaderDigest", "1.2").reason == "broad"
    assert m.deviation_for("Login.Keys.Other").reason == "broad"
    assert m.deviation_for("Login.Keys") is None  # the group is what lies under it
    assert m.deviation_for("Login.KeysX") is None
    assert m.deviation_for("Login") is None
    one = Deviation(test="A.B", reason="r")
    assert one.matches("A.B") and one.matches("A.B[512]")
    assert not one.matches("A.B.C") and not one.matches("A.BC")
    # the group's length does not beat a test's own entry
    long_group = Deviation(test="Login.Keys.HeaderDigest.*", reason="group")
    assert long_group.matches("Login.Keys.HeaderDigest.X[1]")
    assert not long_group.matches("Login.Keys.HeaderDigest")
    d = Deviation(test="A.B", reason="r", versions="<2")
    assert d.matches("A.B", "1:1.9-3") and not d.matches("A.B", "2.0")


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("1.0.85", "*", True),
        ("1:1.0.85-1+deb12u1", ">=1.0.85", True),
        ("1.0.84", ">=1.0.85", False),
        ("1.19.0", ">=1.18,<1.20", True),
        ("1.20.0", ">=1.18,<1.20", False),
        ("6.1.0-21-cloud-amd64", "==6.1", True),  # missing parts count as 0, as in PEP 440
        ("6.1.5-21-cloud-amd64", "==6.1", False),
        ("6.1", "==6.1", True),
        ("2.0", "!=2", False),
        ("2.1", "!=2", True),
    ],
)
def test_version_matches(version: str, spec: str, expected: bool) -> None:
    assert version_matches(version, spec) is expected


def test_version_key() -> None:
    assert version_key("1:1.0.85-1+deb12u1") == (1, 0, 85)
    assert version_key("1.19.0") == (1, 19, 0)


def test_load_manifest_from_folder(tmp_path: Path) -> None:
    folder = tmp_path / "targets" / "demo"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        textwrap.dedent(
            """
            [peer]
            name = "demo"
            role = "target"
            driver = "iscsi_conformance.peers.tgt:TgtTarget"
            [capabilities]
            ipv6 = true
            """
        )
    )
    m = load_manifest(folder, role="target")
    assert m.folder == folder and m.supports("ipv6")
    assert m.shard_weight == 1.0  # the default
    with pytest.raises(ConfigError, match="expected 'initiator'"):
        load_manifest(folder, role="initiator")
    (folder / "manifest.toml").write_text("[peer\nname=")
    with pytest.raises(ConfigError) as exc:
        load_manifest(folder)
    assert exc.value.field == "manifest.toml"
    other = tmp_path / "targets" / "other"
    other.mkdir()
    (other / "manifest.toml").write_text('[peer]\nname = "demo"\nrole = "target"\ndriver = "m:C"\n')
    with pytest.raises(ConfigError, match="differs from its folder"):
        load_manifest(other)


def test_env_root_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "targets" / "tgt"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        '[peer]\nname = "tgt"\nrole = "target"\ndescription = "override"\n'
        'driver = "iscsi_conformance.peers.tgt:TgtTarget"\n'
    )
    monkeypatch.setenv("ISCSI_CONFORMANCE_PEERS_DIR", str(tmp_path))
    assert peer_roots()[0] == tmp_path
    assert load_peer_manifest("target", "tgt").description == "override"


def test_shipped_manifests_are_valid() -> None:
    everything = load_all()
    assert ("target", "tgt") in everything
    assert ("initiator", "libiscsi") in everything
    tgt = everything[("target", "tgt")]
    assert tgt.capabilities["first_lun"] == 1
    assert tgt.deviation_for("CHAP.Algorithms.SHA256OrMD5", "1.0.85") is not None
    lib = everything[("initiator", "libiscsi")]
    assert lib.data_digests() == ["None"] and lib.header_digests() == ["None", "CRC32C"]


def test_unknown_peer_lists_known_ones() -> None:
    assert "tgt" in peer_folders("target")
    with pytest.raises(ConfigError, match=r"known: .*tgt"):
        peer_folder("target", "no-such-peer")


def test_fuzz_findings_of_a_deviation() -> None:
    """``fuzz`` lists campaign failures ("KIND at PLACE", wildcards) that the entry
    records; a ``Fuzz.*`` entry must have it; a bad pattern names the field."""
    data = _with("deviations.1.fuzz", ["liveness at dead: *(SIGSEGV)"])
    data["deviations"].append(
        {"test": "Fuzz.Robustness.Demo", "reason": "r", "fuzz": ["hang at *"], "versions": "<2"}
    )
    m = parse_manifest(data)
    narrow, fuzz_only = m.parsed_deviations[1], m.parsed_deviations[2]
    assert narrow.covers_fuzz("liveness", "dead: tgtd exited with status -11 (SIGSEGV)", "1.0.85")
    assert not narrow.covers_fuzz("liveness", "dead: tgtd exited with status -11 (SIGSEGV)", "1.2")
    assert not narrow.covers_fuzz("liveness", "dead: exited with status -6 (SIGABRT)", "1.0.85")
    assert not m.parsed_deviations[0].covers_fuzz("liveness", "dead")  # no fuzz key
    assert fuzz_only.covers_fuzz("hang", "iscsi-inq", "?") and m.deviations[2]["fuzz"] == [
        "hang at *"
    ]
    assert "fuzz" not in m.deviations[0]  # entries without it keep their old table
    for value in (["liveness"], "hang at x", [3]):
        with pytest.raises(ConfigError) as exc:
            parse_manifest(_with("deviations.1.fuzz", value))
        assert exc.value.field == "deviations[1].fuzz"
    bare = _with("deviations.0.test", "Fuzz.Robustness.Bare")
    with pytest.raises(ConfigError) as exc:
        parse_manifest(bare)
    assert exc.value.field == "deviations[0].fuzz"
