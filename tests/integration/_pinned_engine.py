"""Start the real engine through the rollout factory with rollout.engine_cpus set, generate one group, and print
(as JSON) the CPUs every thread of the engine core and of this process may run on.
Usage: python _pinned_engine.py MODEL ENGINE_CPUS"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from rollout.config import RolloutConfig  # noqa: E402
from rollout.cpu_pinning import engine_core_pids  # noqa: E402
from rollout.engine import vllm_engine  # noqa: E402


def masks(pid: int) -> list[list[int]]:
    tasks = os.listdir(f"/proc/{pid}/task")
    return sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in tasks})


if __name__ == "__main__":
    model, cpus = sys.argv[1], sys.argv[2]
    engine = vllm_engine(model, RolloutConfig(engine_cpus=cpus, max_new_tokens=6), seed=0)
    try:
        (completions,) = engine.generate([engine.encode("12+34=")], n=4, max_new_tokens=6, temperature=1.0)
        result = {"engine_core": [masks(p) for p in engine_core_pids()], "worker": masks(os.getpid()),
                  "lengths": [len(c.token_ids) for c in completions]}
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        engine.shutdown()
