"""Fixtures for the report tests: a realistic merged sample and a small hand-made one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from iscsi_conformance.report import (
    Results,
)

HERE = Path(__file__).resolve().parent


def _load_sample_module() -> ModuleType:
    # by path: tests/ is not a package and other test folders may have the same names
    name = "iscsi_conformance_report_sample"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "report_sample.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def sample_module() -> ModuleType:
    return _load_sample_module()


@pytest.fixture
def sample(sample_module: ModuleType) -> Results:
    results: Results = sample_module.build_sample()
    return results


from report_data import make_small  # noqa: E402


@pytest.fixture
def small() -> Results:
    return make_small()
