#!/usr/bin/env python3
"""GVM (the paper's rule, and our Neyman rule) vs uniform sample allocation on the CPU tiny task, same seeds,
several seeds each.

Each run is `scripts/train.py +experiment=gvm_study rollout.allocation=A run.seed=S run.max_minutes=M`
(GVM runs add rollout.gvm.rule=paper|neyman and trainer.grad_norm_estimate=proxy). Every generated token counts, pilot samples included
(the buffer's gen_tokens counter). Reported per setting (mean and spread over seeds): generated tokens and
wall-clock to first reach the target held-out success, and held-out success at a fixed token budget.

    python scripts/bench/gvm_vs_uniform.py --seeds 0,1,2 --minutes 2.5 [--target 0.30]
Writes docs/bench/gvm.json, docs/bench/gvm.png (success vs generated tokens, one line per run) and
docs/bench/gvm_allocation.png (group sizes by third of the run; samples by the group's pass rate).
"""
import argparse
import json
import os
import statistics
import sys
import time

from training_runs import ROOT, run_training  # scripts/bench, beside this file
SETTINGS = {"uniform": ["rollout.allocation=uniform"],
            "gvm": ["rollout.allocation=gvm", "rollout.gvm.rule=paper", "trainer.grad_norm_estimate=proxy"],
            "gvm_neyman": ["rollout.allocation=gvm", "rollout.gvm.rule=neyman", "trainer.grad_norm_estimate=proxy"],
            # a Beta prior shaped like the pool's pass rates under uniform (mean ~0.17, most prompts never solved),
            # so that a prompt failed 8 times looks hopeless (p ~ 0.01) instead of Beta(1, 1)'s p = 0.1
            "gvm_neyman_pool_prior": ["rollout.allocation=gvm", "rollout.gvm.rule=neyman", "rollout.gvm.prior_a=0.1",
                                      "rollout.gvm.prior_b=0.5", "trainer.grad_norm_estimate=proxy"]}
COLORS = {"uniform": "tab:blue", "gvm": "tab:red", "gvm_neyman": "tab:green", "gvm_neyman_pool_prior": "tab:purple"}


def run_one(setting: str, seed: int, minutes: float, out_dir: str) -> dict:
    steps, _ = run_training(os.path.join(out_dir, f"{setting}-seed{seed}"), "gvm_study",
                            [f"run.seed={seed}", f"run.max_minutes={minutes}", *SETTINGS[setting]],
                            f"{setting} seed {seed}")
    curve = [(s.get("gen_tokens_total", 0), s["elapsed_s"], s["held_out_success"]) for s in steps
             if "held_out_success" in s]
    return {"setting": setting, "seed": seed, "curve": curve, "final_success": curve[-1][2],
            "gen_tokens": curve[-1][0], "group_size_hist": sum_hists(steps, "group_size_hist"),
            # where the budget went as the policy improved: thirds of the run, by step
            "phases": [{"group_size_hist": sum_hists(part, "group_size_hist"),
                        "pass_rate_hist": sum_hists(part, "pass_rate_hist"),
                        "pass_rate_samples": sum_hists(part, "pass_rate_samples"),
                        "groups_at_n_min": sum(s.get("groups_at_n_min", 0) for s in part),
                        "groups_at_n_max": sum(s.get("groups_at_n_max", 0) for s in part)}
                       for part in thirds([s for s in steps if s["step"] > 0])]}


def sum_hists(steps: list[dict], key: str) -> dict[str, int]:
    hist: dict[str, int] = {}
    for s in steps:
        for k, c in s.get(key, {}).items():
            hist[k] = hist.get(k, 0) + c
    return hist


def thirds(items: list) -> list[list]:
    k = len(items)
    return [items[i * k // 3:(i + 1) * k // 3] for i in range(3)]


def first_reaching(curve: list, target: float):
    return next(((tok, sec) for tok, sec, s in curve if s >= target), (None, None))


def success_at(curve: list, budget: int) -> float:
    return max((s for tok, _, s in curve if tok <= budget), default=0.0)


def summarize(vals: list) -> dict:
    vals = [v for v in vals if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": round(statistics.mean(vals), 4), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize_runs(runs: list[dict], target: float, budget: int) -> tuple[dict, dict]:
    summary = {}
    for setting in SETTINGS:
        rs = sorted((r for r in runs if r["setting"] == setting), key=lambda r: r["seed"])
        reach = [first_reaching(r["curve"], target) for r in rs]
        summary[setting] = {"reached_target": f"{sum(t is not None for t, _ in reach)}/{len(rs)}",
                            # per seed, None = not reached within the run (censored: mean/min/max are over the rest)
                            "tokens_to_target_per_seed": [t for t, _ in reach],
                            "tokens_to_target": summarize([t for t, _ in reach]),
                            "seconds_to_target": summarize([s for _, s in reach]),
                            "success_at_budget": summarize([success_at(r["curve"], budget) for r in rs]),
                            "final_success": summarize([r["final_success"] for r in rs])}
    ratios = {}
    for k, v in summary.items():  # paired by seed, over the seeds where both settings reached the target
        pairs = [(u, g) for u, g in zip(summary["uniform"]["tokens_to_target_per_seed"],
                                        v["tokens_to_target_per_seed"]) if u and g]
        if k != "uniform":
            ratios[f"uniform_over_{k}_tokens"] = {"per_seed_pairs": [round(u / g, 2) for u, g in pairs],
                                                  "mean": round(statistics.mean(u / g for u, g in pairs), 2)
                                                  if pairs else None}
    return summary, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, default=2.5)
    ap.add_argument("--target", type=float, default=None, help="default: best success uniform reaches on every seed")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "gvm.json"))
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "gvm_study"))
    ap.add_argument("--replot", action="store_true", help="only redraw the plots from the JSON at --out")
    args = ap.parse_args()
    if args.replot:
        with open(args.out) as f:
            saved = json.load(f)
        plot(saved["runs"], args.out.replace(".json", ".png"), saved["meta"]["target_success"])
        plot_allocation(saved["runs"], args.out.replace(".json", "_allocation.png"))
        return
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting in SETTINGS:
            r = run_one(setting, seed, args.minutes, args.runs_dir)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            runs.append(r)
    uniform = [r for r in runs if r["setting"] == "uniform"]
    target = args.target if args.target is not None else min(max(s for *_, s in r["curve"]) for r in uniform)
    budget = min(r["gen_tokens"] for r in runs)
    summary, ratios = summarize_runs(runs, target, budget)
    meta = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPU cores", "target_success": target, "token_budget": budget,
            **ratios}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=1)
    plot(runs, args.out.replace(".json", ".png"), target)
    plot_allocation(runs, args.out.replace(".json", "_allocation.png"))
    print(json.dumps({"meta": meta, "summary": summary}, indent=1))


def plot(runs: list[dict], path: str, target: float) -> None:
    """One line per setting: the mean over seeds of held-out success at each token count (each run's latest
    evaluation at or before it), with the seeds' min-max as a band, up to the shortest run of the setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def success_at_tokens(curve: list, tokens: float) -> float:
        return max((c for c in curve if c[0] <= tokens), key=lambda c: c[0])[2]

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for setting in SETTINGS:
        rs = [r for r in runs if r["setting"] == setting]
        end = min(r["curve"][-1][0] for r in rs)
        grid = [end * k / 200 for k in range(201)]
        per_seed = [[success_at_tokens(r["curve"], t) for t in grid] for r in rs]
        mean = [statistics.mean(v) for v in zip(*per_seed)]
        ax.plot(grid, mean, color=COLORS[setting], label=f"{setting} (mean of {len(rs)} seeds)")
        ax.fill_between(grid, [min(v) for v in zip(*per_seed)], [max(v) for v in zip(*per_seed)],
                        color=COLORS[setting], alpha=0.12, linewidth=0)
    ax.axhline(target, color="gray", linestyle=":", label="target")
    ax.set_xlabel("generated tokens (pilot samples included)")
    ax.set_ylabel("held-out greedy success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_allocation(runs: list[dict], path: str) -> None:
    """Top: each GVM setting's group-size histogram per third of the run (seeds pooled). Bottom: the share of
    generated samples that went to groups of each pass rate, per setting: samples at 0 or 1 are budget that a
    group-baselined advantage cannot learn from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from launcher.metrics import PASS_RATE_BINS

    rules = [k for k in SETTINGS if k != "uniform"]
    fig = plt.figure(figsize=(4 * len(rules), 7.5))
    for j, setting in enumerate(rules):
        ax = fig.add_subplot(2, len(rules), j + 1)
        rs = [r for r in runs if r["setting"] == setting]
        sizes = sorted({int(n) for r in rs for ph in r["phases"] for n in ph["group_size_hist"]})
        for i in range(3):
            counts = [sum(r["phases"][i]["group_size_hist"].get(str(n), 0) for r in rs) for n in sizes]
            total = max(sum(counts), 1)
            ax.bar([x + (i - 1) * 0.27 for x in range(len(sizes))], [c / total for c in counts], 0.27,
                   color=COLORS[setting], alpha=(0.35, 0.65, 1.0)[i], label=f"third {i + 1}")
        ax.set_xticks(range(len(sizes)), [str(n) for n in sizes], fontsize=6)
        ax.set_xlabel(f"samples in the group\n({setting})", fontsize=8)
        ax.set_ylabel("share of groups")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 1, 2)
    width = 0.8 / len(SETTINGS)
    for j, setting in enumerate(SETTINGS):
        rs = [r for r in runs if r["setting"] == setting]
        counts = [sum(ph.get("pass_rate_samples", {}).get(b, 0) for r in rs for ph in r["phases"])
                  for b in PASS_RATE_BINS]
        total = max(sum(counts), 1)
        ax.bar([x + (j - (len(SETTINGS) - 1) / 2) * width for x in range(len(PASS_RATE_BINS))],
               [c / total for c in counts], width, color=COLORS[setting], label=setting)
    ax.set_xticks(range(len(PASS_RATE_BINS)), PASS_RATE_BINS)
    ax.set_xlabel("pass rate of the trained group")
    ax.set_ylabel("share of generated samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
