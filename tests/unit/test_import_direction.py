"""Imports flow one way (docs/architecture.md): front ends -> cluster -> storage.

Every import statement of every module counts, also those inside functions and under
TYPE_CHECKING, since a cycle that only type checkers see still tangles the design.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node" / "limedb"
OPERATOR = ROOT / "operator" / "limedb_operator"
WEB = {"fastapi", "starlette", "uvicorn", "httptools", "httpx", "hiredis"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@functools.cache
def imports_of(part: str) -> dict[str, set[str]]:
    """module path -> the modules it imports, for `part` (a package or a module of limedb)."""
    paths = sorted((NODE / part).rglob("*.py")) if (NODE / part).is_dir() else [NODE / part]
    return {path.relative_to(ROOT).as_posix(): _imported(path) for path in paths}


def _violations(part: str, allowed: Callable[[str], bool]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in imports_of(part).items()
        for name in sorted(names)
        if not allowed(name)
    ]


def _limedb_part(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "limedb" and len(parts) > 1 else None


def test_storage_imports_nothing_of_limedb_but_the_clock() -> None:
    def allowed(name: str) -> bool:
        return name.split(".")[0] != "limedb" or _limedb_part(name) in ("storage", "hlc")

    assert _violations("storage", allowed) == []


def test_cluster_knows_no_front_end_and_no_web_framework() -> None:
    front = {"api", "resp", "server", "cli", "cluster_cli", "admin_cli", "client"}

    def allowed(name: str) -> bool:
        return _limedb_part(name) not in front and name.split(".")[0] not in WEB

    assert _violations("cluster", allowed) == []


def test_auth_knows_no_front_end_and_no_web_framework() -> None:
    front = {"api", "resp", "server", "cli", "cluster_cli", "admin_cli", "user_cli", "client"}

    def allowed(name: str) -> bool:
        return _limedb_part(name) not in front and name.split(".")[0] not in WEB

    assert _violations("auth", allowed) == []


def test_the_two_front_ends_do_not_import_each_other() -> None:
    assert _violations("api", lambda name: _limedb_part(name) != "resp") == []
    assert _violations("resp", lambda name: _limedb_part(name) != "api") == []


def test_the_leaves_import_nothing_of_limedb() -> None:
    for leaf in ("hlc.py", "config.py", "tasks.py"):
        assert _violations(leaf, lambda name: name.split(".")[0] != "limedb") == []


def test_the_client_depends_only_on_httpx() -> None:
    assert _violations("client.py", lambda name: name.split(".")[0] != "limedb") == []


# The one exception: LimeBackupSchedule retention deletes backups from the *bucket* (not the
# database) with the code `limedb admin backup delete` uses, so the bucket layout is written once.
BUCKET_DOOR = ("bucket.py", "limedb.cluster.backup")


def test_the_operator_reaches_the_database_only_through_the_client() -> None:
    paths = sorted(OPERATOR.rglob("*.py"))
    reached = {
        f"{path.name} imports {name}"
        for path in paths
        for name in _imported(path)
        if name.split(".")[0] == "limedb"
        and name != "limedb.client"
        and not (path.name == BUCKET_DOOR[0] and name.startswith(BUCKET_DOOR[1]))
    }
    assert reached == set()


def test_the_bucket_code_the_operator_uses_reaches_no_database_module() -> None:
    """What bucket.py may import (limedb.cluster.backup: location, store, retention, manifest) stays
    about objects in a bucket: it imports nothing else of limedb."""
    backup = NODE / "cluster" / "backup"
    reached = {
        f"{module}.py imports {name}"
        for module in ("location", "store", "retention", "manifest", "__init__")
        for name in _imported(backup / f"{module}.py")
        if name.split(".")[0] == "limedb" and not name.startswith(BUCKET_DOOR[1])
    }
    assert reached == set()


def _protocol_members() -> set[str]:
    tree = ast.parse((NODE / "cluster" / "service.py").read_text())
    members: set[str] = set()
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name in ("KeyValueService", "AdminService"):
            for node in cls.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    members.add(node.name)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    members.add(node.target.id)
    return members


def test_the_front_ends_use_only_the_service_protocols() -> None:
    """What `api` and `resp` ask of the service (`...service.x`, `require_service().x`) is a
    member of KeyValueService or AdminService, and they never ask by getattr or hasattr."""
    members = _protocol_members()
    asked = {
        (path.name, name)
        for part in ("api", "resp")
        for path in sorted((NODE / part).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if (name := _asked_of_service(node)) is not None
    }
    assert asked, "the front ends must ask the service something"
    assert {(module, name) for module, name in asked if name not in members} == set()


def _asked_of_service(node: ast.AST) -> str | None:
    """`x` for `...service.x` or `require_service().x`; "getattr" / "hasattr" for a reflective
    call on a service; None for anything else."""
    if isinstance(node, ast.Attribute):
        return node.attr if ast.unparse(node.value).endswith(_SERVICE) else None
    reflective = isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr")
    if reflective and node.args and ast.unparse(node.args[0]).endswith(_SERVICE):
        return ast.unparse(node.func)
    return None


_SERVICE = ("service", "require_service()")


def test_no_setting_default_is_repeated_by_getattr() -> None:
    """Defaults live once, in config.py's SETTINGS: no `getattr(config, name, default)`."""
    repeated = {
        f"{path.relative_to(NODE)}: {ast.unparse(node)}"
        for path in sorted(NODE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "getattr"
        and len(node.args) == 3
        and ast.unparse(node.args[0]).endswith(("config", "settings", "options"))
    }
    assert repeated == set()
