"""No module touches another module's private members (issue 12, acceptance 1).

A name with a leading underscore is private to the module that defines it. The test walks the
AST of every module under node/ and operator/ and reports:
- `obj._name` where `obj` is not `self`, `cls` or `super()` and `_name` is not a member of a
  class defined in the same module (a method, a class attribute or a `self._name = ...`
  assignment): `other._ring` inside the class that owns `_ring` is fine, `engine._lock` in
  a module that is not the engine's is not, and neither is `module._function`;
- `from module import _name`.
Dunder names are not private. What remains is listed in ALLOWED with the reason, line by line;
an entry that no longer matches any access fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node/limedb", "operator/limedb_operator")

# (module path, the expression as ast.unparse writes it) -> why it stays.
ALLOWED: dict[tuple[str, str], str] = {
    ("node/limedb/api/wire.py", "waiting._asyncio_future_blocking"): (
        "asyncio's future protocol: a coroutine stepped by hand, outside a Task, must have its "
        "yielded future's flag cleared as Task.__step clears it; asyncio has no public call"
    ),
    ("node/limedb/resp/server.py", "waiting._asyncio_future_blocking"): (
        "asyncio's future protocol, as in api/wire.py"
    ),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _class_members(tree: ast.Module) -> set[str]:
    """Every name a class of this module defines: methods, class attributes, self._x = ..."""
    names: set[str] = set()
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    names.add(node.attr)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _is_own(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def private_accesses(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every access to another module's private name in `source`."""
    tree = ast.parse(source)
    members = _class_members(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not _is_own(node.value) and node.attr not in members:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return found


@functools.cache
def _all_accesses() -> dict[tuple[str, str], list[int]]:
    accesses: dict[tuple[str, str], list[int]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = path.relative_to(ROOT).as_posix()
            for line, expr in private_accesses(path.read_text()):
                accesses.setdefault((module, expr), []).append(line)
    return accesses


def test_no_module_touches_another_modules_private_members() -> None:
    accesses = _all_accesses()
    unjustified = [
        f"{module}:{lines[0]}: {expr}"
        for (module, expr), lines in sorted(accesses.items())
        if (module, expr) not in ALLOWED
    ]
    assert not unjustified, (
        "private members reached from another module (give the owner a public method or "
        "property, or justify the line in ALLOWED):\n" + "\n".join(unjustified)
    )


def test_every_allowlist_entry_still_matches_an_access() -> None:
    stale = sorted(set(ALLOWED) - set(_all_accesses()))
    assert not stale, "no longer needed, delete from ALLOWED: " + ", ".join(map(str, stale))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "class A:\n    def f(self, other):\n        return self._x + other._x\n"
            "    def g(self):\n        self._x = 1\n",
            [],
        ),
        (
            "class A(B):\n    def f(self):\n        return super()._hook() + type(self).__name__\n",
            [],
        ),
        ("import engine\ndef f(e):\n    return e._lock\n", [(3, "e._lock")]),
        ("from limedb import keys\nx = keys._xxh64(b'k')\n", [(2, "keys._xxh64")]),
        (
            "class A:\n    def f(self):\n        return self.engine._lock\n",
            [(3, "self.engine._lock")],
        ),
        (
            "from limedb.resp.keyspace import _check_key\n",
            [(1, "from limedb.resp.keyspace import _check_key")],
        ),
    ],
)
def test_the_rule_tells_own_privates_from_another_modules(source: str, expected: list) -> None:
    assert private_accesses(source) == expected
