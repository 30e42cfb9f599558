"""What the training-run benchmarks share: one `scripts/train.py` run in a fresh run directory, its per-step
metrics and summary read back."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_training(run_dir: str, preset: str, overrides: list[str], label: str) -> tuple[list[dict], dict]:
    """Run `train.py +experiment=<preset> <overrides>` into `run_dir`; return (metrics.jsonl records, summary)."""
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: never mix in an earlier run's steps
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"+experiment={preset}",
           f"hydra.run.dir={run_dir}", "run.tensorboard=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run {label} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(run_dir, "summary.json")) as f:
        return steps, json.load(f)
