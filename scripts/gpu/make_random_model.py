#!/usr/bin/env python3
"""A randomly initialised Qwen2-style model of a realistic size with the project's character tokenizer, for
GPU throughput benchmarks (no hub access on the GPU machines). Not trained: it answers nothing correctly, and
with 96 tokens in its vocabulary it samples end-of-sequence about once per 96 tokens.

    python scripts/gpu/make_random_model.py --out /tmp/qwen2-0.5b-random [--hidden 896 --layers 24 ...]
Defaults are Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864), bf16 on disk.
The same long-tailed lengths on CPU, with the tiny model's shape (docs/benchmarks.md, "Long answers on 2 CPU cores"):
    python scripts/gpu/make_random_model.py --out .cache/random-tiny --hidden 128 --layers 4 --heads 4 \
        --kv-heads 2 --mlp 384 --max-positions 512
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rollout.tasks.addition_model import TinyModelSpec, build_model, build_tokenizer  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mlp", type=int, default=4864)
    ap.add_argument("--max-positions", type=int, default=4096)
    args = ap.parse_args()
    tokenizer = build_tokenizer()
    spec = TinyModelSpec(hidden_size=args.hidden, intermediate_size=args.mlp, num_layers=args.layers,
                         num_heads=args.heads, num_kv_heads=args.kv_heads, max_positions=args.max_positions)
    model = build_model(spec, len(tokenizer)).to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {args.out}")
