"""The folder layout is the architecture: packages import each other only through their contract modules.

Rules (checked on every import statement, including the lazy ones inside functions):
- a package imports another package only through its contract: `buffer.api`, `rollout.api`, `trainer.api`,
  `rewards` (the package itself); `plugins` (the registry helper) is open to all;
- `rollout` and `trainer` never import each other, not even their contracts;
- `buffer` and `rewards` import no other package of ours but `plugins`;
- nothing imports `launcher` (the driver is the top; scripts/ and tests/ may).
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("buffer", "rollout", "trainer", "rewards", "launcher", "plugins")
CONTRACTS = {"buffer": "buffer.api", "rollout": "rollout.api", "trainer": "trainer.api", "rewards": "rewards",
             "plugins": "plugins"}
FORBIDDEN = {  # importer -> packages it may not import at all
    "buffer": {"rollout", "trainer", "rewards", "launcher"},
    "rewards": {"buffer", "rollout", "trainer", "launcher"},
    "rollout": {"trainer", "launcher"},
    "trainer": {"rollout", "launcher"},
    "plugins": {"buffer", "rollout", "trainer", "rewards", "launcher"},
    "launcher": set(),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in `source`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(importer: str, source: str) -> list[str]:
    """What `source`, a module of package `importer`, imports against the rules."""
    out = []
    for line, module in imported_modules(source):
        target = module.split(".")[0]
        if target not in PACKAGES or target == importer:
            continue
        if target in FORBIDDEN[importer]:
            out.append(f"line {line}: {importer} must not import {target} ({module})")
        elif module != CONTRACTS[target]:
            out.append(f"line {line}: {module} is inside {target}; import {CONTRACTS[target]} instead")
    return out


def _modules():
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield package, os.path.relpath(os.path.join(folder, name), ROOT)


@pytest.mark.parametrize("package, path", list(_modules()), ids=lambda x: x if "/" in str(x) else "")
def test_module_imports_other_packages_only_through_their_contracts(package, path):
    with open(os.path.join(ROOT, path)) as f:
        assert violations(package, f.read()) == []


def test_the_checker_catches_each_kind_of_violation():
    assert violations("rollout", "from buffer.redis_buffer import RedisBuffer") == [
        "line 1: buffer.redis_buffer is inside buffer; import buffer.api instead"]
    assert violations("rollout", "def f():\n    import trainer.api\n") == [
        "line 2: rollout must not import trainer (trainer.api)"]
    assert violations("trainer", "from rollout.api import Engine") == [
        "line 1: trainer must not import rollout (rollout.api)"]
    assert violations("launcher", "from rewards.registry import register") == [
        "line 1: rewards.registry is inside rewards; import rewards instead"]
    assert violations("buffer", "import launcher.main") == ["line 1: buffer must not import launcher (launcher.main)"]
    assert violations("launcher", "from buffer.api import connect\nimport rewards\nfrom plugins import Registry") == []
    assert violations("rollout", "from rollout.worker import RolloutWorker\nimport numpy") == []


def test_every_package_is_covered():
    found = {p for p in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, p, "__init__.py"))}
    assert found == set(PACKAGES), "a new package needs its rules here"
