"""The protocol layer is sans-IO (STYLE.md 1): no module of it imports a socket, event
loop, process, clock or RNG. The protocol layer is what pyproject.toml's [tool.mypy] lists
(packages and modules, checked with --strict): core/, scsi/, and the engines and logins of
the reference peers. ruff's TID251 enforces the same; this test enforces it without ruff,
and checks that the two lists agree.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "iscsi_conformance"
BANNED = {"socket", "asyncio", "subprocess", "time", "random", "secrets", "selectors", "threading"}
BANNED_ATTRS = {("os", "urandom"), ("os", "system"), ("os", "popen")}
ROOT = SRC.parents[1]
_MYPY = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]


def _path(dotted: str) -> Path:
    return ROOT / "src" / Path(*dotted.split("."))


FILES = sorted(
    [p for pkg in _MYPY["packages"] for p in _path(pkg).rglob("*.py")]
    + [_path(mod).with_suffix(".py") for mod in _MYPY.get("modules", [])]
)


def test_ruff_ban_covers_the_same_modules() -> None:
    """The TID251 exemption in pyproject names every module mypy checks strictly."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for mod in _MYPY.get("modules", []):
        rel = mod.removeprefix("iscsi_conformance.").replace(".", "/") + ".py"
        assert rel in text, f"{rel} is strictly typed but not in the sans-IO ban"


def banned_imports(source: str) -> list[str]:
    """Every banned import in ``source``, as 'line: module'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
        else:
            continue
        for name in names:
            root = name.split(".")[0]
            if root in BANNED or tuple(name.split(".")[:2]) in BANNED_ATTRS:
                found.append(f"{node.lineno}: {name}")
    return found


def test_there_is_something_to_check() -> None:
    assert any(p.name == "pdu.py" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_is_sans_io(path: Path) -> None:
    assert banned_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import asyncio.streams",
        "from time import monotonic",
        "from os import urandom",
        "import random as r",
        "x = __import__('subprocess')",
    ],
)
def test_checker_catches(source: str) -> None:
    assert banned_imports(source)


def test_checker_allows_harmless_imports() -> None:
    assert banned_imports("import struct\nfrom os import path\nfrom .time import x") == []
