"""Shared fixtures: a real Redis-compatible server and the locally built tiny model."""
from __future__ import annotations

import os
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def redis_server():
    from buffer.server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The demo's tiny model (built once, under a minute on 2 cores; reused from .cache/ afterwards)."""
    from launcher.tiny_model import build_tiny_model

    path = os.path.join(ROOT, ".cache", "tiny-model")
    if not os.path.exists(os.path.join(path, "slipstream_build.json")):
        build_tiny_model(path)
    return path
