"""Checkpoints of a run, and finding the one to resume from.

<run dir>/checkpoints/step-NNNNNN/ holds the trainer ranks' DeepSpeed state (trainer/checkpoint.py), `hf/` (the
policy as a Hugging Face model directory) and `state.json`: the step, the policy version, the run's Redis key
prefix, each rollout worker's prompt cursor, the first evaluation and the driver's totals, and the config. A
checkpoint is written under `step-NNNNNN.partial` and renamed when complete, then `checkpoints/latest` names it
(written to a temporary file and renamed): a crash mid-save leaves the previous checkpoint the latest. The newest
`run.keep_checkpoints` are kept.

The buffer is not in the checkpoint: the embedded Redis keeps an append-only file under <run dir>/redis, so the
groups, the per-prompt statistics and the version outlive the driver. On resume the version goes back to the
checkpoint's, and the buffer's rule does the rest (buffer/redis_buffer.py): groups made by weights newer than it
are evicted, never trained as if they were older; older ones within eta are trained as usual. The metrics of
steps after the checkpoint move to metrics.superseded.jsonl.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

STATE = "state.json"


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step-{step:06d}")


def begin(run_dir: str, step: int) -> str:
    """A fresh directory for the checkpoint of `step` (its .partial name)."""
    partial = checkpoint_dir(run_dir, step) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    return partial


def finish(partial: str, state: dict, keep: int) -> str:
    """Write the state, make the checkpoint the latest, prune to the newest `keep`; returns its directory."""
    with open(os.path.join(partial, STATE), "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = partial.removesuffix(".partial")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    root = os.path.dirname(final)
    _replace(os.path.join(root, "latest"), os.path.basename(final))
    for old in sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".partial"))[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def _replace(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def find(resume: str, runs_root: str) -> tuple[str, str]:
    """(run dir, checkpoint dir) for run.resume: a run directory, a checkpoint directory, or "latest" (the newest
    checkpoint of any run under `runs_root`). Raises FileNotFoundError naming what is missing."""
    if resume == "latest":
        latest = sorted(glob.glob(os.path.join(runs_root, "**", "checkpoints", "latest"), recursive=True),
                        key=os.path.getmtime)
        if not latest:
            raise FileNotFoundError(f"run.resume=latest: no checkpoint under {runs_root}; give a run directory")
        resume = os.path.dirname(os.path.dirname(latest[-1]))
    resume = os.path.abspath(resume)
    if os.path.exists(os.path.join(resume, STATE)):  # a checkpoint directory itself
        return os.path.dirname(os.path.dirname(resume)), resume
    pointer = os.path.join(resume, "checkpoints", "latest")
    if not os.path.exists(pointer):
        raise FileNotFoundError(f"run.resume={resume}: no checkpoints/latest there (a run that never reached its "
                                f"first checkpoint, run.checkpoint_every); give a run directory with checkpoints")
    with open(pointer) as f:
        ckpt = os.path.join(resume, "checkpoints", f.read().strip())
    if not os.path.exists(os.path.join(ckpt, STATE)):
        raise FileNotFoundError(f"{ckpt} has no {STATE}: the checkpoint is incomplete")
    return resume, ckpt


def supersede_metrics(run_dir: str, step: int) -> int:
    """The records metrics.jsonl holds of steps after the checkpoint (trained by weights that a resume throws away)
    move to metrics.superseded.jsonl, so that each step appears once; returns how many moved."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    keep, moved = [], []
    for line in lines:
        try:
            later = json.loads(line)["step"] > step
        except (ValueError, KeyError):  # a record cut short by the crash
            later = True
        (moved if later else keep).append(line)
    if moved:
        with open(os.path.join(run_dir, "metrics.superseded.jsonl"), "a") as f:
            f.writelines(moved)
        _replace(path, "".join(keep))
    return len(moved)


def load_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, STATE)) as f:
        return json.load(f)
