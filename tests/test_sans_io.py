"""The protocol core and SCSI layer are sans-IO (STYLE.md 1): no module under
src/iscsi_conformance/core or src/iscsi_conformance/scsi imports a socket, event loop,
process, clock or RNG. ruff's TID251 enforces the same; this test enforces it without ruff.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "iscsi_conformance"
BANNED = {"socket", "asyncio", "subprocess", "time", "random", "secrets", "selectors", "threading"}
BANNED_ATTRS = {("os", "urandom"), ("os", "system"), ("os", "popen")}
FILES = sorted(p for d in ("core", "scsi") for p in (SRC / d).rglob("*.py"))


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
