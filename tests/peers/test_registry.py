"""The peer registry: peers found from their folders, drivers and shard weights from
their manifests (no peers needed; the bad cases live in ``tmp_path`` folders)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from iscsi_conformance import cli
from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers import registry
from iscsi_conformance.peers.base import Manifest, TargetDriver
from iscsi_conformance.peers.manifest import load_manifest

SHIPPED_WEIGHTS = {
    "target": {"lio": 3.0, "reference": 2.0, "tgt": 1.0},
    "initiator": {"libiscsi": 3.0, "open-iscsi": 6.0, "reference": 2.0},
}

# A complete target driver, written into a module of tmp_path.
DRIVER_SOURCE = """
from iscsi_conformance.peers.base import TargetDriver, TargetEndpoint


class DemoTarget(TargetDriver):
    def __init__(self, manifest, mode=None, **options):
        super().__init__(manifest)
        self.mode = mode or "native"
        self.options = options

    def start(self):
        pass

    def stop(self):
        pass

    def version(self):
        return "0.1"

    def configure(self, spec):
        return TargetEndpoint(host="127.0.0.1", port=3260, iqn=spec.iqn)


class HalfTarget(TargetDriver):  # no configure(): abstract
    def start(self):
        pass

    def stop(self):
        pass

    def version(self):
        return "0"
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A peers root (``$ISCSI_CONFORMANCE_PEERS_DIR``) and an importable folder, both
    in tmp_path; the modules imported from it are forgotten afterwards."""
    peers = tmp_path / "peers"
    (peers / "targets").mkdir(parents=True)
    (peers / "initiators").mkdir()
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.setenv("ISCSI_CONFORMANCE_PEERS_DIR", str(peers))
    monkeypatch.syspath_prepend(str(code))
    before = set(sys.modules)
    yield peers
    for name in set(sys.modules) - before:
        if name.startswith("demo_"):
            del sys.modules[name]


@pytest.fixture
def shipped_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISCSI_CONFORMANCE_PEERS_DIR", raising=False)


def _module(root: Path, name: str, source: str) -> None:
    (root.parent / "code" / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


def _peer(root: Path, name: str, peer_lines: str, role: str = "target") -> Path:
    folder = root / f"{role}s" / name
    folder.mkdir()
    path = folder / "manifest.toml"
    path.write_text(f'[peer]\nname = "{name}"\nrole = "{role}"\n{textwrap.dedent(peer_lines)}')
    return path


# --------------------------------------------------------------------------- discovery


def test_shipped_peers_are_found_from_their_folders(shipped_only: None) -> None:
    assert registry.target_names() == ["lio", "reference", "tgt"]
    assert registry.initiator_names() == ["libiscsi", "open-iscsi", "reference"]


def test_every_shipped_manifest_names_a_driver_that_imports(shipped_only: None) -> None:
    assert registry.import_errors() == {}
    assert registry.driver_class("target", "tgt").__name__ == "TgtTarget"
    assert registry.driver_class("target", "reference").__name__ == "ReferenceTargetDriver"
    assert registry.driver_class("initiator", "open-iscsi").__name__ == "OpenIscsiInitiator"
    for role in ("target", "initiator"):
        for name in registry.names(role):  # type: ignore[arg-type]
            cls = registry.driver_class(role, name)  # type: ignore[arg-type]
            assert cls.role == role


def test_no_peer_list_outside_the_folders() -> None:
    assert not hasattr(registry, "DRIVER_MODULES")
    assert not hasattr(cli, "SHARD_WEIGHTS")
    for path in Path(registry.__file__).parents[3].glob("*s/*/manifest.toml"):
        assert "peers.reference:" not in path.read_text()  # the module that never existed


def test_a_new_peer_is_one_folder_and_its_driver_is_imported_lazily(root: Path) -> None:
    _module(root, "demo_lazy", DRIVER_SOURCE)
    _peer(root, "demo", 'driver = "demo_lazy:DemoTarget"\nshard_weight = 4\n')
    assert "demo" in registry.target_names()
    assert "tgt" in registry.target_names()  # the shipped peers are still there
    assert "demo" not in registry.initiator_names()
    assert registry.shard_weight("target", "demo") == 4.0
    assert "demo_lazy" not in sys.modules  # listing and weighing imports no driver
    cls = registry.driver_class("target", "demo")
    assert cls.__module__ == "demo_lazy" and cls.__name__ == "DemoTarget"
    drv = registry.get_target_driver("demo", mode="native", flavour="x")
    assert isinstance(drv, TargetDriver)
    assert drv.manifest.name == "demo" and drv.options == {"flavour": "x"}  # type: ignore[attr-defined]
    assert drv.manifest.folder == root / "targets" / "demo"  # type: ignore[attr-defined]


def test_an_env_folder_overrides_a_shipped_peer(root: Path) -> None:
    _module(root, "demo_override", DRIVER_SOURCE)
    _peer(root, "tgt", 'driver = "demo_override:DemoTarget"\nshard_weight = 9\n')
    assert registry.driver_class("target", "tgt").__module__ == "demo_override"
    assert registry.shard_weight("target", "tgt") == 9.0


def test_unknown_peer_lists_the_known_ones(shipped_only: None) -> None:
    with pytest.raises(
        ConfigError, match=r"no target driver named 'nope' \(known: lio, reference, tgt\)"
    ):
        registry.driver_class("target", "nope")


def test_a_folderless_registration_still_works(
    shipped_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {"target": {}, "initiator": {}})
    ns: dict[str, object] = {}
    exec(textwrap.dedent(DRIVER_SOURCE), ns)
    cls = registry.register_target("folderless")(ns["DemoTarget"])  # type: ignore[arg-type]
    assert "folderless" in registry.target_names()
    assert registry.driver_class("target", "folderless") is cls
    drv = registry.get_target_driver("folderless")
    assert type(drv.manifest) is Manifest and drv.manifest.name == "folderless"
    # a peer folder wins over a registration of the same name
    registry.register_target("tgt")(ns["DemoTarget"])  # type: ignore[arg-type]
    assert registry.driver_class("target", "tgt").__name__ == "TgtTarget"


# --------------------------------------------------------------------------- weights


def test_shipped_weights(shipped_only: None) -> None:
    for role, weights in SHIPPED_WEIGHTS.items():
        assert registry.shard_weights(role) == weights  # type: ignore[arg-type]
    assert registry.shard_weight("target", "iscsi://10.0.0.1/iqn.x/0") == 1.0  # no folder


def test_sharding_uses_the_manifest_weights(shipped_only: None) -> None:
    # open-iscsi (6) alone; libiscsi (3) + reference (2) together
    assert cli.plan_shards(["reference", "libiscsi", "open-iscsi"], 2, role="initiator") == [
        ["open-iscsi"],
        ["reference", "libiscsi"],
    ]
    # lio (3) alone; reference (2) + tgt (1) together
    assert cli.plan_shards(["reference", "tgt", "lio"], 2) == [["lio"], ["reference", "tgt"]]
    plan = cli.plan_run(["reference"], ["reference", "libiscsi", "open-iscsi"], 2)
    assert [s.initiators for s in plan] == [["open-iscsi"], ["reference", "libiscsi"]]


def test_sharding_follows_a_changed_manifest(root: Path) -> None:
    _peer(root, "tgt", 'driver = "m:C"\nshard_weight = 10\n')  # now the heaviest
    _peer(root, "lio", 'driver = "m:C"\nshard_weight = 0.5\n')
    assert cli.plan_shards(["reference", "tgt", "lio"], 2) == [["tgt"], ["reference", "lio"]]


# --------------------------------------------------------------------------- bad manifests


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("shard_weight = 1\n", "missing (required)"),
        ('driver = "iscsi_conformance.peers.tgt"\n', "must be 'package.module:Class'"),
        ("driver = 7\n", "must be 'package.module:Class'"),
        ('driver = "m:C"\nshard_weight = 0\n', "must be a positive number"),
        ('driver = "m:C"\nshard_weight = -2\n', "must be a positive number"),
        ('driver = "m:C"\nshard_weight = "heavy"\n', "must be a positive number"),
        ('driver = "m:C"\nshard_weight = nan\n', "must be a positive number"),
    ],
)
def test_a_bad_manifest_names_its_file_and_field(root: Path, lines: str, message: str) -> None:
    path = _peer(root, "demo", lines)
    field = (
        "peer.shard_weight" if "shard_weight =" in lines and "driver" in lines else "peer.driver"
    )
    for call in (
        lambda: load_manifest(path),
        lambda: registry.driver_class("target", "demo"),
        lambda: registry.get_target_driver("demo"),
    ):
        with pytest.raises(ConfigError) as exc:
            call()
        assert exc.value.field == field
        assert str(exc.value).startswith(f"{path}: {field}: ")
        assert message in str(exc.value)


def test_a_bad_weight_stops_the_shard_plan(root: Path) -> None:
    path = _peer(root, "demo", 'driver = "m:C"\nshard_weight = 0\n')
    with pytest.raises(ConfigError, match=r"peer\.shard_weight") as exc:
        cli.plan_shards(["demo", "tgt"], 2)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("driver", "module_source", "message"),
    [
        # the module named in the old DRIVER_MODULES, which never existed
        ("iscsi_conformance.peers.reference:ReferenceTarget", None, "there is no module"),
        ("demo_absent_pkg.driver:DemoTarget", None, "there is no module 'demo_absent_pkg.driver'"),
        ("iscsi_conformance.peers.tgt:NoSuchTarget", None, "has no 'NoSuchTarget'"),
        ("demo_good:Missing", DRIVER_SOURCE, "module demo_good has no 'Missing'"),
        ("demo_good:HalfTarget", DRIVER_SOURCE, "is abstract"),
        ("iscsi_conformance.peers.libiscsi:LibiscsiInitiator", None, "is not a TargetDriver"),
        ("iscsi_conformance.peers.base:LunSpec", None, "is not a TargetDriver"),
        (
            "demo_raises:DemoTarget",
            "raise RuntimeError('driver exploded')\n",
            "importing demo_raises failed: RuntimeError: driver exploded",
        ),
        (
            "demo_needs_dep:DemoTarget",
            "import demo_dependency_not_installed\n",
            "importing demo_needs_dep failed: No module named 'demo_dependency_not_installed'",
        ),
        ("demo_syntax:DemoTarget", "def (:\n", "importing demo_syntax failed: SyntaxError"),
    ],
)
def test_a_driver_that_does_not_import_names_the_manifest_and_field(
    root: Path, driver: str, module_source: str | None, message: str
) -> None:
    if module_source is not None:
        _module(root, driver.partition(":")[0], module_source)
    path = _peer(root, "demo", f'driver = "{driver}"\n')
    load_manifest(path)  # the manifest itself is well formed: the driver is imported lazily
    assert "demo" in registry.target_names()
    with pytest.raises(ConfigError) as exc:
        registry.driver_class("target", "demo")
    assert exc.value.field == "peer.driver"
    assert str(exc.value).startswith(f"{path}: peer.driver: {driver!r}")
    assert message in str(exc.value)
    # `iscsi-conformance peers` warns about it; the other peers are not hidden
    errors = registry.import_errors()
    assert list(errors) == [driver.partition(":")[0]]
    assert str(path) in errors[driver.partition(":")[0]]
    assert registry.driver_class("target", "tgt").__name__ == "TgtTarget"


def test_import_errors_report_an_invalid_manifest_by_file(root: Path) -> None:
    path = _peer(root, "demo", 'driver = "m:C"\nshard_weight = -1\n', role="initiator")
    errors = registry.import_errors()
    assert list(errors) == [str(path)]
    assert "peer.shard_weight" in errors[str(path)]
