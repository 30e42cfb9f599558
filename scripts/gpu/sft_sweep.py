#!/usr/bin/env python3
"""Warm-start dynamics of the tiny model over many seeds at once, on a GPU (pure torch + transformers; nothing
else from the project's stack is needed). For each (seed, sft_lr:sft_batch:sft_warmup, operands) it trains the tiny model
with the build's recipe and records greedy validation success every `--eval-every` steps, so that the step at
which each seed crosses a target shows how long, and how variable, the plateau before it is.

    python scripts/gpu/sft_sweep.py --seeds 0-7 --variants 3e-3:128:0,1e-3:128:200 --steps 2000 --out sweep.json
GPU numerics differ from the CPU build's: this maps the dynamics, the CPU build is still what the demo uses.
"""
import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from rollout.tasks.addition_model import TinyModelSpec, _sft_batch, build_model, build_tokenizer  # noqa: E402
from rollout.tasks.addition import AdditionTask  # noqa: E402


@torch.no_grad()
def success(model, tok, prompts, device, max_new: int) -> float:
    tok.padding_side = "left"
    enc = tok([p.text for p in prompts], return_tensors="pt", padding=True).to(device)
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=0)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == p.fields["answer"] for p, t in zip(prompts, texts)) / len(prompts)


def one(seed: int, variant: str, operands: str, steps: int, eval_every: int, device: str) -> dict:
    lr, batch, warmup = variant.split(":")
    lr, batch, warmup = float(lr), int(batch), int(warmup)
    spec = TinyModelSpec(seed=seed, sft_lr=lr, sft_batch=batch, operands=operands, sft_warmup=warmup)
    tok = build_tokenizer()
    model = build_model(spec, len(tok)).to(device)
    task = AdditionTask(seed=seed + 1_000, operands=operands, held_out_size=spec.held_out_size + spec.validation_size)
    held = task.held_out()
    validation = held[spec.held_out_size:]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(warmup, 1)))
    curve, t0 = [], time.time()
    for step in range(1, steps + 1):
        model.train()
        ids, labels = _sft_batch(tok, task.next(batch))
        loss = model(input_ids=ids.to(device), labels=labels.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % eval_every == 0:
            model.eval()
            curve.append((step, round(loss.item(), 3), success(model, tok, validation, device, 5)))
    return {"seed": seed, "variant": variant, "operands": operands, "seconds": round(time.time() - t0, 1),
            "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--variants", default="3e-3:128:0,1e-3:128:0", help="sft_lr:sft_batch:sft_warmup, comma-separated")
    ap.add_argument("--operands", default="digits")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--worker", default="0/1", help="i/n: run every n-th configuration from the i-th")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    grid = list(itertools.product(seeds, args.variants.split(","), args.operands.split(",")))
    i, n = map(int, args.worker.split("/"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for cfg in grid[i::n]:
        results.append(one(*cfg, args.steps, args.eval_every, device))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "curve"}), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
