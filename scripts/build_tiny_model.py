#!/usr/bin/env python3
"""Build the tiny demo/test model locally: char tokenizer + small Qwen2 + short supervised warm start.

    python scripts/build_tiny_model.py --out .cache/tiny-model [--target-success 0.3] [--seed 0]
    python scripts/build_tiny_model.py --out .cache/tiny-model-chain --max-operands 5 --target-success 0.15
    python scripts/build_tiny_model.py --out /tmp/chain-100m --size 100m --device cuda --max-operands 5 \
        --target-success 0.15        # the GPU-scale study's model (scripts/gpu/study_100m.sh)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".cache/tiny-model")
    ap.add_argument("--target-success", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-operands", type=int, default=None,
                    help="> 2 builds for the long-tailed chain task (task.max_operands in the run config)")
    ap.add_argument("--operands", choices=("uniform", "digits"), default=None,
                    help="the task's operand distribution (task.operands of the runs that use the model)")
    ap.add_argument("--size", choices=("tiny", "100m"), default="tiny",
                    help="the model's shape (rollout/tasks/addition_model.py SIZES)")
    ap.add_argument("--device", default="cpu", help="where the warm start runs (cuda for the larger sizes)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the directory holds a model")
    args = ap.parse_args()
    if os.path.exists(os.path.join(args.out, "slipstream_build.json")) and not args.force:
        print(f"tiny model already at {args.out} (use --force to rebuild)")
        return
    from rollout.tasks.addition_model import SIZES, TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(device=args.device, **SIZES[args.size])
    if args.target_success is not None:
        spec.target_success = args.target_success
    if args.seed is not None:
        spec.seed = args.seed
    if args.max_operands is not None:
        spec.max_operands = args.max_operands
    if args.operands is not None:
        spec.operands = args.operands
    print(json.dumps(build_tiny_model(args.out, spec)))


if __name__ == "__main__":
    main()
