#!/usr/bin/env python3
"""Staleness study: eta in {0, 1, 2, 4, 8} x {decoupled PPO, plain PPO clip}, same seed, same wall-clock budget.

Each run is `scripts/train.py +experiment=staleness_study buffer.eta=E trainer.loss.name=L run.max_minutes=M`,
one after another on the same machine. eta = 0 is the synchronous baseline. Reported per run: groups trained
per minute, held-out success vs wall-clock, mean/max staleness, groups dropped, and the wall-clock to reach
the success the synchronous run ends with (the speed-up is the ratio to the synchronous run's time).

    python scripts/bench/staleness_study.py --minutes 3 [--etas 0,1,2,4,8] [--losses decoupled_ppo,ppo_clip]
Writes docs/bench/staleness.json and docs/bench/staleness.png.
"""
import argparse
import json
import os
import sys
import time

from training_runs import ROOT, run_training  # scripts/bench, beside this file


def run_one(eta: int, loss: str, minutes: float, seed: int, model: str, out_dir: str, extra: list[str]) -> dict:
    overrides = [f"buffer.eta={eta}", f"trainer.loss.name={loss}", f"run.max_minutes={minutes}", f"run.seed={seed}",
                 f"model.path={model}", *extra]
    t0 = time.time()
    steps, summary = run_training(os.path.join(out_dir, f"{loss}-eta{eta}"), "staleness_study", overrides,
                                  f"{loss} eta={eta}")
    trained = [s for s in steps if s["step"] > 0]
    minutes_run = trained[-1]["elapsed_s"] / 60 if trained else 0.0
    return {
        "eta": eta, "loss": loss, "command_seconds": round(time.time() - t0, 1),
        "steps": len(trained), "groups_per_minute": round(len(trained) * summary["groups_per_step"] / max(minutes_run, 1e-9), 1),
        "staleness_mean": round(sum(s["staleness_mean"] for s in trained) / max(len(trained), 1), 3),
        "staleness_max": max((s["staleness_max"] for s in trained), default=0),
        "groups_dropped_stale": summary["groups_dropped_stale"],
        "success_before": summary["held_out_success_before"], "success_after": summary["held_out_success_after"],
        "curve": [(round(s["elapsed_s"], 1), s["held_out_success"]) for s in steps if "held_out_success" in s],
    }


def time_to(curve: list, target: float) -> float | None:
    return next((t for t, s in curve if s >= target), None)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, loss in zip(axes, ("decoupled_ppo", "ppo_clip")):
        for r in (r for r in results if r["loss"] == loss):
            xs, ys = zip(*r["curve"])
            ax.plot([x / 60 for x in xs], ys, marker=".", label=f"eta={r['eta']}" + (" (sync)" if r["eta"] == 0 else ""))
        ax.set_title(loss)
        ax.set_xlabel("wall-clock (min)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("held-out greedy success")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--etas", default="0,1,2,4,8")
    ap.add_argument("--losses", default="decoupled_ppo,ppo_clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model-chain"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "staleness.json"))
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "staleness_study"))
    ap.add_argument("extra", nargs="*", help="Hydra overrides added to every run")
    args = ap.parse_args()
    results = []
    for loss in args.losses.split(","):
        for eta in (int(e) for e in args.etas.split(",")):
            r = run_one(eta, loss, args.minutes, args.seed, args.model, args.runs_dir, args.extra)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            results.append(r)
    for loss in args.losses.split(","):
        sync = next((r for r in results if r["loss"] == loss and r["eta"] == 0), None)
        if sync is None:
            continue
        target, t_sync = sync["success_after"], time_to(sync["curve"], sync["success_after"])
        for r in (r for r in results if r["loss"] == loss):
            t = time_to(r["curve"], target)
            r["target_success"], r["seconds_to_target"] = target, t
            r["speedup_vs_sync"] = round(t_sync / t, 2) if t and t_sync else None
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"), "machine":
            f"{os.cpu_count()} CPU cores", "minutes_per_run": args.minutes, "seed": args.seed}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    plot(results, args.out.replace(".json", ".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
