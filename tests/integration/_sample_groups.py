"""Sample groups from the real vLLM engine in a fresh process and save them encoded, as a rollout worker would
push them (rewards alternate so that advantages are not zero). Usage: python _sample_groups.py MODEL OUT_FILE T"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

from buffer.schema import Group, Sample, encode_group  # noqa: E402
from rollout.engine import AsyncVllmEngine  # noqa: E402

if __name__ == "__main__":
    model, out_file, temperature = sys.argv[1], sys.argv[2], float(sys.argv[3])
    engine = AsyncVllmEngine(model, max_model_len=64, seed=0, dtype="float32")
    prompts = ["12+34=", "5+77=", "99+1=", "40+47="]
    outs = engine.generate([engine.encode(p) for p in prompts], n=4, max_new_tokens=6, temperature=temperature)
    groups = []
    for p, completions in zip(prompts, outs):
        ids = np.asarray(engine.encode(p), np.int32)
        samples = [Sample(ids, c.token_ids, c.logprobs, np.zeros(len(c.token_ids), np.int32), float(j % 2),
                          c.finish_reason) for j, c in enumerate(completions)]
        groups.append(encode_group(Group(p, p, samples)))
    torch.save(groups, out_file)
    engine.shutdown()
