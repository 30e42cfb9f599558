#!/usr/bin/env python3
"""GVM vs uniform sample allocation on the CPU tiny task, same seeds, several seeds each.

Each run is `scripts/train.py +experiment=gvm_study rollout.allocation=A run.seed=S run.max_minutes=M`
(GVM runs add trainer.grad_norm_estimate=proxy). Every generated token counts, pilot samples included
(the buffer's gen_tokens counter). Reported per setting (mean and spread over seeds): generated tokens and
wall-clock to first reach the target held-out success, and held-out success at a fixed token budget.

    python scripts/bench/gvm_vs_uniform.py --seeds 0,1,2 --minutes 2.5 [--target 0.30]
Writes docs/bench/gvm.json and docs/bench/gvm.png (success vs generated tokens, one line per run).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = {"uniform": ["rollout.allocation=uniform"],
            "gvm": ["rollout.allocation=gvm", "trainer.grad_norm_estimate=proxy"]}


def run_one(setting: str, seed: int, minutes: float, out_dir: str) -> dict:
    run_dir = os.path.join(out_dir, f"{setting}-seed{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "+experiment=gvm_study", f"run.seed={seed}",
           f"run.max_minutes={minutes}", f"hydra.run.dir={run_dir}", "run.tensorboard=false", *SETTINGS[setting]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{setting} seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    curve = [(s.get("gen_tokens_total", 0), s["elapsed_s"], s["held_out_success"]) for s in steps
             if "held_out_success" in s]
    hist: dict[str, int] = {}
    for s in steps:
        for n, c in s.get("group_size_hist", {}).items():
            hist[n] = hist.get(n, 0) + c
    return {"setting": setting, "seed": seed, "curve": curve, "group_size_hist": hist,
            "final_success": curve[-1][2], "gen_tokens": curve[-1][0]}


def first_reaching(curve: list, target: float):
    return next(((tok, sec) for tok, sec, s in curve if s >= target), (None, None))


def success_at(curve: list, budget: int) -> float:
    return max((s for tok, _, s in curve if tok <= budget), default=0.0)


def summarize(vals: list) -> dict:
    vals = [v for v in vals if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": round(statistics.mean(vals), 4), "min": min(vals), "max": max(vals), "n": len(vals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, default=2.5)
    ap.add_argument("--target", type=float, default=None, help="default: best success uniform reaches on every seed")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "gvm.json"))
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "gvm_study"))
    args = ap.parse_args()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting in SETTINGS:
            r = run_one(setting, seed, args.minutes, args.runs_dir)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            runs.append(r)
    uniform = [r for r in runs if r["setting"] == "uniform"]
    target = args.target if args.target is not None else min(max(s for *_, s in r["curve"]) for r in uniform)
    budget = min(r["gen_tokens"] for r in runs)
    summary = {}
    for setting in SETTINGS:
        rs = [r for r in runs if r["setting"] == setting]
        reach = [first_reaching(r["curve"], target) for r in rs]
        summary[setting] = {"tokens_to_target": summarize([t for t, _ in reach]),
                            "seconds_to_target": summarize([s for _, s in reach]),
                            "success_at_budget": summarize([success_at(r["curve"], budget) for r in rs])}
    u, g = summary["uniform"]["tokens_to_target"]["mean"], summary["gvm"]["tokens_to_target"]["mean"]
    meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPU cores", "target_success": target, "token_budget": budget,
            "uniform_over_gvm_tokens": round(u / g, 2) if u and g else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=1)
    plot(runs, args.out.replace(".json", ".png"), target)
    print(json.dumps({"meta": meta, "summary": summary}, indent=1))


def plot(runs: list[dict], path: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        toks, _, succ = zip(*r["curve"])
        ax.plot(toks, succ, color="tab:red" if r["setting"] == "gvm" else "tab:blue", alpha=0.8,
                label=f"{r['setting']} seed {r['seed']}")
    ax.axhline(target, color="gray", linestyle=":", label="target")
    ax.set_xlabel("generated tokens (pilot samples included)")
    ax.set_ylabel("held-out greedy success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
