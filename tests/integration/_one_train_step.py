"""One TrainerRank step in a fresh process (DeepSpeed's process group is per process), for the trainer
integration tests. Usage:
    python _one_train_step.py MODEL_DIR OUT_FILE [--cfg JSON] [--temperature T] [--groups GROUPS_FILE]
                              [--world-size N --rank R --port P]
--cfg holds TrainerConfig fields (nested sections as objects); --groups a torch.save'd list of encoded groups
(default: random tokens). With --world-size N, start N processes with the same --port, one per --rank."""
import argparse
import dataclasses
import json
import os
import socket
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from omegaconf import OmegaConf  # noqa: E402

from buffer.api import Group, Sample, encode_group  # noqa: E402
from trainer.api import TrainerConfig, TrainerRank, make_policy_loss  # noqa: E402


def groups(vocab: int) -> list[bytes]:
    """4 prompts x 3 samples of random tokens, mixed rewards, behaviour log-probs slightly off-policy; the first
    token of each group's first sample is far off-policy (mu = e^-30), so that decoupled PPO's cap on the behaviour
    weight masks tokens whatever the model (counted tokens then differ from response tokens)."""
    rng = np.random.default_rng(0)
    out = []
    for g in range(4):
        prompt = rng.integers(1, vocab, size=5 + g).astype(np.int32)
        samples = []
        for j in range(3):
            resp = rng.integers(1, vocab, size=2 + (g + j) % 4).astype(np.int32)
            reward = float((g + j) % 2)
            behaviour_logp = rng.uniform(-4, -1, len(resp)).astype(np.float32)
            if j == 0:
                behaviour_logp[0] = -30.0
            samples.append(Sample(prompt, resp, behaviour_logp,
                                  np.zeros(len(resp), np.int32), reward, "stop"))
        out.append(encode_group(Group(f"p{g}", "", samples)))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out_file")
    ap.add_argument("--cfg", default="{}")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--groups", default=None)
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--nan-rank", type=int, default=-1, help="this rank's loss is NaN (a fault on one rank only; "
                    "a NaN reward cannot reach a rank: the buffer sets such a group aside)")
    args = ap.parse_args()
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    overrides = {"lr": 1e-3, "micro_batches": 2, "zero_stage": 2, **json.loads(args.cfg)}
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), overrides))
    rank = TrainerRank(args.rank, args.world_size, "127.0.0.1", port, args.model, cfg, seed=0,
                       temperature=args.temperature)
    batch = torch.load(args.groups) if args.groups else groups(rank.engine.module.config.vocab_size)
    before = {k: v.detach().clone() for k, v in rank.engine.module.state_dict().items()}
    loss_fn = make_policy_loss(cfg.loss)
    if args.rank == args.nan_rank:
        policy_loss = loss_fn

        def loss_fn(*a, **kw):
            loss, *rest = policy_loss(*a, **kw)
            return (loss * float("nan"), *rest)
    result = rank.train_batch(batch, loss_fn)
    torch.save({"before": before, "weights": {k: v.detach().clone() for k, v in rank.engine.module.state_dict().items()},
                "result": dataclasses.asdict(result)}, args.out_file)
