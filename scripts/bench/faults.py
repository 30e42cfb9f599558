#!/usr/bin/env python3
"""What each fault costs: the CPU demo job run once without a fault and once per fault, each fault injected once
at the same step by SIGKILL, in one command.

    none     the reference run
    worker   the rollout worker's actor and its engine (Ray restarts it; its leased slots expire)
    redis    the embedded Redis server (the driver's watchdog restarts it from its append-only file)
    trainer  the trainer rank (the driver restarts the ranks from the last checkpoint)
    driver   the driver with its Ray and Redis (the machine went away), then `run.resume=<run dir>`

Per run: whether it finished, wall-clock of the command(s), the seconds lost (the gap in training wall-clock
between the step before the fault and the next step, minus a median step), steps redone (trainer, driver: those
since the last checkpoint), groups dropped as too stale and reservations that expired, and the held-out success at
the end (one evaluation's sd is about 1.5 points on the demo).

    python scripts/bench/faults.py [--steps 40] [--at 15] [--faults none,worker,redis,trainer,driver]
Writes docs/bench/faults.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ("+experiment=cpu_demo", "run.tensorboard=false", "buffer.eta=2", "buffer.lease_ttl_s=10")


def command(run_dir: str, args, *overrides: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *COMMON, f"hydra.run.dir={run_dir}",
            f"model.path={args.model}", f"run.checkpoint_every={args.checkpoint_every}", *overrides]


def records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def last_step(run_dir: str) -> int:
    return max((r["step"] for r in records(run_dir)), default=0)


def victims(pid: int, fault: str) -> list[psutil.Process]:
    tree = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    if fault == "driver":
        return tree
    if fault == "redis":
        return [p for p in tree if "valkey" in p.name()]
    marker = {"worker": "ray::RolloutActor", "trainer": "ray::TrainerRank"}[fault]
    hit = [p for p in tree if marker in " ".join(p.cmdline())]
    return hit[:1] + (hit[0].children(recursive=True) if hit else [])  # the worker's engine with it


def run_with_fault(fault: str, run_dir: str, args) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    proc = subprocess.Popen(command(run_dir, args, f"run.total_steps={args.steps}"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    injected_at, killed = None, []
    if fault != "none":
        while last_step(run_dir) < args.at:
            if proc.poll() is not None:
                return {"fault": fault, "finished": False, "error": proc.stderr.read()[-2000:]}
            time.sleep(0.1)
        injected_at, killed = last_step(run_dir), victims(proc.pid, fault)
        for p in killed:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    _, err = proc.communicate()
    if fault == "driver":
        psutil.wait_procs(killed, timeout=30)  # the whole job is gone before it resumes
        proc = subprocess.run(command(run_dir + "-again", args, f"run.resume={run_dir}",
                                      f"run.total_steps={args.steps}"), cwd=ROOT, capture_output=True, text=True)
        err = proc.stderr
    seconds = time.time() - t0
    summary_path = os.path.join(run_dir, "summary.json")
    if proc.returncode != 0 or not os.path.exists(summary_path):
        return {"fault": fault, "finished": False, "seconds": round(seconds, 1), "error": err[-2000:]}
    with open(summary_path) as f:
        summary = json.load(f)
    return {"fault": fault, "finished": True, "injected_after_step": injected_at, "command_seconds": round(seconds, 1),
            **measure(records(run_dir), injected_at), "steps": summary["steps"],
            "groups_dropped_stale": summary["groups_dropped_stale"],
            "reservations_expired": summary.get("reservations_expired", 0),
            "restarts": {k: summary.get(k, 0) for k in ("worker_restarts", "redis_restarts", "trainer_restarts")},
            "held_out_after": summary.get("held_out_success_after")}


def measure(steps: list[dict], injected_at: int | None) -> dict:
    """Seconds lost around the fault: the largest gap in training wall-clock between consecutive step records after
    it, minus the median gap; and the steps that ran more than once (a restart from a checkpoint)."""
    trained = [r for r in steps if "staleness_max" in r]
    by_step: dict[int, int] = {}
    for r in trained:
        by_step[r["step"]] = by_step.get(r["step"], 0) + 1
    times = [r["train_elapsed_s"] for r in trained]
    gaps = [b - a for a, b in zip(times, times[1:]) if b >= a]
    median = statistics.median(gaps) if gaps else 0.0
    out = {"median_step_s": round(median, 3), "staleness_max": max((r["staleness_max"] for r in trained), default=0),
           "steps_redone": sum(n - 1 for n in by_step.values())}
    if injected_at is not None:
        after = [r["train_elapsed_s"] for r in trained if r["step"] >= injected_at]
        later = [b - a for a, b in zip(after, after[1:]) if b >= a]
        out["seconds_lost"] = round(max(later, default=median) - median, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--at", type=int, default=15, help="inject once the run has logged this step")
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--faults", default="none,worker,redis,trainer,driver")
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "faults"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "faults.json"))
    args = ap.parse_args()
    results = []
    for fault in args.faults.split(","):
        results.append(run_with_fault(fault, os.path.join(args.runs_dir, fault), args))
        print(json.dumps(results[-1]), flush=True)
        meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
                "machine": f"{os.cpu_count()} CPU cores, no GPU", **{k: v for k, v in vars(args).items()
                                                                     if k not in ("out",)}}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
