"""Fixtures for reward tests: plugin modules written to a temporary directory on sys.path."""
from __future__ import annotations

import textwrap
import uuid

import pytest


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """plugin(source) -> module name: a module importable by that name (dotted path 'name:function')."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"reward_plugin_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write
