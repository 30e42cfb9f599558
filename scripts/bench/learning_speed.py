#!/usr/bin/env python3
"""Learning speed on the demo task: training wall-clock (evaluations excluded) to +10, +15 and +20 points of
held-out success, per seed, asynchronous (eta = 2) against synchronous (eta = 0) through the same code.

Each seed is the whole pipeline: the tiny model is built from nothing with that seed (into --models-dir, a
clean directory per seed unless --reuse-models), then `scripts/train.py +experiment=cpu_demo run.seed=S
buffer.eta=E run.max_minutes=M` runs for each eta, one after another on the same machine.

    python scripts/bench/learning_speed.py --seeds 0,1,2 --steps 300 --minutes 10 [--etas 2,0] [-- hydra overrides]
    (--preset and --build-args run another task and model: scripts/gpu/study_100m.sh, the 100M model on a GPU)
With --steps 300 and eta 2 each seed's run is the demo's pipeline (build with --seed S, then +experiment=cpu_demo).
Writes docs/bench/learning_speed.json and docs/bench/learning_speed.png (held-out success vs training wall-clock,
greedy and sampled at the rollout temperature).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from training_runs import ROOT, run_training  # scripts/bench, beside this file

GAINS = (10, 15, 20)  # points of held-out success


def build_model(seed: int, models_dir: str, reuse: bool, build_args: list[str]) -> dict:
    out = os.path.join(models_dir, f"tiny-model-seed{seed}")
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "build_tiny_model.py"), "--out", out, "--seed", str(seed),
           *build_args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"model build for seed {seed} failed:\n{proc.stderr[-4000:]}")
    with open(os.path.join(out, "slipstream_build.json")) as f:
        report = json.load(f)
    return {"path": out, "sft_steps": report["sft_steps"], "build_seconds": report["seconds"],
            "validation_success": report["validation_success"], "weights_sha256": report["weights_sha256"]}


def run_one(seed: int, eta: int, args, model: str) -> dict:
    overrides = [f"run.seed={seed}", f"buffer.eta={eta}", f"run.max_minutes={args.minutes}",
                 f"run.total_steps={args.steps or 100000}", f"model.path={model}", *args.extra]
    records, summary = run_training(os.path.join(args.runs_dir, f"seed{seed}-eta{eta}"), args.preset, overrides,
                                    f"seed={seed} eta={eta}")
    evals = [s for s in records if "held_out_success" in s]
    curve = [(round(s["train_elapsed_s"], 1), s["held_out_success"], s.get("held_out_sampled_success"))
             for s in evals]
    base, base_sampled = curve[0][1], curve[0][2]
    return {
        "seed": seed, "eta": eta, "steps": summary["steps"], "train_minutes": summary["train_minutes"],
        "eval_seconds": summary["eval_seconds"], "success_before": base, "success_after": curve[-1][1],
        "gain_points": round(100 * (curve[-1][1] - base), 1), "best_gain_points": round(100 * (max(c[1] for c in curve) - base), 1),
        "sampled_before": base_sampled, "sampled_after": curve[-1][2],
        "seconds_to_gain": {str(g): next((t for t, s, _ in curve if s - base >= g / 100), None) for g in GAINS},
        "curve": curve,
    }


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, column, title in zip(axes, (1, 2), ("greedy", "sampled at the rollout temperature")):
        for r in results:
            if r["curve"][0][column] is None:
                continue
            xs = [c[0] for c in r["curve"]]
            ax.plot(xs, [c[column] for c in r["curve"]], marker=".", linestyle="-" if r["eta"] else "--",
                    label=f"seed {r['seed']} eta={r['eta']}")
        ax.set_title(f"held-out success, {title}")
        ax.set_xlabel("training wall-clock (s, evaluations excluded)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out success")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="cpu_demo", help="configs/experiment/<preset>.yaml")
    ap.add_argument("--build-args", default="", help="added to scripts/build_tiny_model.py, e.g. "
                    "'--size 100m --device cuda --max-operands 5 --target-success 0.15'")
    ap.add_argument("--machine", default=f"{os.cpu_count()} CPU cores", help="for the record")
    ap.add_argument("--etas", default="2,0")
    ap.add_argument("--minutes", type=float, default=2.0, help="wall-clock per run (evaluations included)")
    ap.add_argument("--steps", type=int, default=0, help="> 0: every run trains this many steps (the demo's 300), "
                    "with --minutes as a guard only")
    ap.add_argument("--models-dir", default=os.path.join(ROOT, ".cache", "bench"))
    ap.add_argument("--reuse-models", action="store_true", help="keep models already built (default: rebuild)")
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "learning_speed"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "learning_speed.json"))
    ap.add_argument("extra", nargs="*", help="Hydra overrides added to every run")
    args = ap.parse_args()
    builds, results = {}, []
    for seed in (int(s) for s in args.seeds.split(",")):
        builds[seed] = build_model(seed, args.models_dir, args.reuse_models, args.build_args.split())
        print(json.dumps({"seed": seed, **builds[seed]}), flush=True)
        for eta in (int(e) for e in args.etas.split(",")):
            r = run_one(seed, eta, args, builds[seed]["path"])
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            results.append(r)
    worst = {eta: min((r for r in results if r["eta"] == eta), key=lambda r: r["gain_points"])
             for eta in {r["eta"] for r in results}}
    meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
            "machine": args.machine, "preset": args.preset, "build_args": args.build_args,
            "minutes_per_run": args.minutes, "steps_per_run": args.steps, "extra": args.extra}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "builds": {str(k): v for k, v in builds.items()},
                   "worst_gain_by_eta": {str(k): v["gain_points"] for k, v in worst.items()}, "runs": results},
                  f, indent=1)
    plot(results, args.out.replace(".json", ".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
