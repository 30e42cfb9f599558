#!/usr/bin/env python3
"""Synchronous (eta = 0) vs asynchronous (eta = 1, 2, 4) training throughput, with each weight-update mode.

Each setting is one real run (`scripts/train.py +experiment=<preset> buffer.eta=E rollout.weight_update=M`), one
after another on the same machine, for the same number of trainer steps; evaluations only before the first and
after the last step, so that they do not count. Reported per setting, over the steps after the first --skip:
- groups trained per minute (of training wall-clock) and the speed-up over eta = 0;
- the time lost to the slowest sample: the trainer's wait for a batch (s per step), and the share of the run
  during which the engine had no request at all (`engine_idle_s` of the worker; a synchronous step drains the
  engine's batch down to its last, longest sample before the trainer can start);
- staleness (mean, max), groups evicted as too stale, weight loads and the seconds the engine spent paused;
- the driver's phases per step (waiting for a batch, the trainer's phases, weight sync), and on the GPU the peak
  memory of each process (trainer rank, engine core).

    python scripts/bench/sync_vs_async.py [--steps 60] [--settings 0:between,1:keep,...] [hydra overrides...]
    python scripts/bench/sync_vs_async.py --gpu --model /tmp/qwen2-0.5b-random ...   (see scripts/gpu/)
Writes docs/bench/sync_vs_async.json (or --out).
"""
import argparse
import json
import os
import sys
import time

from training_runs import ROOT, run_training  # scripts/bench, beside this file

DEFAULT_SETTINGS = "0:keep,1:keep,2:keep,4:keep,1:abort,2:abort,4:abort,2:between"


def measure(steps: list[dict], summary: dict, skip: int) -> dict:
    trained = [s for s in steps if s["step"] > skip]
    span_s = trained[-1]["train_elapsed_s"] - (steps[skip]["train_elapsed_s"] if skip else 0.0)
    worker = summary["workers"][0]
    return {
        "steps_measured": len(trained),
        "groups_per_minute": round(len(trained) * summary["groups_per_step"] / max(span_s, 1e-9) * 60, 1),
        "trainer_wait_s_per_step": round(sum(s["wait_batch_s"] for s in trained) / len(trained), 3),
        "step_s": round(span_s / len(trained), 3),
        "engine_idle_share": round(worker["engine_idle_s"] / max(summary["minutes"] * 60, 1e-9), 3),
        "staleness_mean": round(sum(s["staleness_mean"] for s in trained) / len(trained), 3),
        "staleness_max": max(s["staleness_max"] for s in trained),
        "groups_dropped_stale": summary["groups_dropped_stale"],
        "generation_tokens_per_s": summary["generation_tokens_per_s"],
        "weight_loads": worker["weight_loads"], "weight_load_s_mean":
            round(worker["weight_load_seconds"] / max(worker["weight_loads"], 1), 3),
        "engine_paused_s": round(worker["engine/pause_seconds"], 2), "aborted_requests": worker["engine/aborted"],
        # the driver's per-step phases (launcher/loop.py), mean seconds per step
        "phase_s": {p: round(sum(s.get(f"{p}_s", 0.0) for s in trained) / len(trained), 4) for p in PHASES},
    }


PHASES = ("wait_batch", "load_batch", "logprobs", "advantages", "update", "weight_sync", "version_bump", "commit")


class GpuMemory:
    """Peak GPU memory of each process of a run, by what it is (the trainer rank, the engine core), polled from
    nvidia-smi every second while the run lasts."""

    def __init__(self):
        import threading

        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import subprocess

        while not self._stop.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,"
                                  "nounits"], capture_output=True, text=True).stdout
            for line in out.strip().splitlines():
                pid, mib = (x.strip() for x in line.split(","))
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        name = f.read().split(b"\0")[0].decode()[:40]
                except OSError:
                    continue
                self.peak[name] = max(self.peak.get(name, 0), int(mib))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {name: f"{mib} MiB" for name, mib in sorted(self.peak.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="staleness_study", help="configs/experiment/<preset>.yaml")
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model-chain"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=5, help="first steps left out (engine warm-up, pipeline filling)")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="eta:mode,...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="for the record only: the overrides place the run")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "sync_vs_async.json"))
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "sync_vs_async"))
    ap.add_argument("extra", nargs="*", help="Hydra overrides added to every run")
    args = ap.parse_args()
    results = []
    for setting in args.settings.split(","):
        eta, mode = setting.split(":")
        overrides = [f"buffer.eta={eta}", f"rollout.weight_update={mode}", f"run.total_steps={args.steps}",
                     "run.max_minutes=0", f"run.eval_every={10**6}", f"run.seed={args.seed}",
                     f"model.path={args.model}", *args.extra]
        t0, memory = time.time(), GpuMemory() if args.gpu else None
        try:
            steps, summary = run_training(os.path.join(args.runs_dir, f"eta{eta}-{mode}"), args.preset, overrides,
                                          setting)
        finally:
            peaks = memory.stop() if memory else None
        r = {"eta": int(eta), "weight_update": mode, "command_seconds": round(time.time() - t0, 1),
             **measure(steps, summary, args.skip), **({"gpu_memory_peak": peaks} if peaks is not None else {})}
        print(json.dumps(r), flush=True)
        results.append(r)
        write(args, results)  # after every setting: a run cut short by a time limit keeps what it measured
    print(f"wrote {args.out}")


def write(args, results: list[dict]) -> None:
    sync = next((r for r in results if r["eta"] == 0), None)
    for r in results:
        r["speedup_vs_sync"] = round(r["groups_per_minute"] / sync["groups_per_minute"], 2) if sync else None
    meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
            "machine": machine(args.gpu), "preset": args.preset, "model": args.model, "steps": args.steps,
            "skip": args.skip, "seed": args.seed, "overrides": args.extra}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)


def machine(gpu: bool) -> str:
    from two_sided import machine as describe

    return describe(gpu)


if __name__ == "__main__":
    main()
