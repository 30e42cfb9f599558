"""PNG plots of a run, from its metrics.jsonl: written at the end of every run (also after an error or Ctrl-C) into
<run dir>/plots/, and by `python scripts/plot_run.py RUN_DIR` for any run afterwards.

  held_out.png     held-out success (greedy, sampled) and every eval/<set>/<metric>, against training wall-clock
                   (evaluations excluded) and against generated tokens
  reward.png       training reward per step and its moving average
  staleness.png    trained groups by staleness (versions behind), and staleness per step
  throughput.png   generation and trainer tokens/s per step (moving averages)
  timing.png       per-step seconds of the phases (wait for a batch, update, weight sync)
  allocation.png   under GVM: trained group sizes over time, and groups at n_min / n_max
"""
from __future__ import annotations

import json
import os

SMOOTH = 20  # steps in a moving average


def _moving(values: list[float], n: int = SMOOTH) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(rows: list[dict], key: str, x: str = "step") -> tuple[list, list]:
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_plots(run_dir: str) -> list[str]:
    """Every plot the metrics allow; returns their paths (none for a run with no trained step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    steps = [r for r in rows if r.get("step", 0) > 0]
    if not steps:
        return []
    out_dir = os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    save(_held_out(plt, rows), "held_out.png")
    for name, draw in (("reward.png", _reward), ("staleness.png", _staleness), ("throughput.png", _throughput),
                       ("timing.png", _timing)):
        save(draw(plt, steps), name)
    if any("group_size_hist" in r and len(r["group_size_hist"]) > 1 for r in steps):
        save(_allocation(plt, steps), "allocation.png")
    return written


def _held_out(plt, rows):
    keys = [k for k in ("held_out_success", "held_out_sampled_success") if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r if k.startswith("eval/")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], "train_elapsed_s", "training wall-clock (s, evaluations excluded)"),
                         (axes[1], "gen_tokens_total", "generated tokens")):
        for key in keys:
            xs, ys = _series([r if x in r else {**r, x: 0} for r in rows], key, x)
            ax.plot(xs, ys, marker="o", label=key.replace("held_out_", "held-out ").replace("_", " "))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success")
    axes[0].legend(fontsize=8)
    fig.suptitle("Held-out evaluation")
    return fig


def _lines(plt, steps, series: list[tuple[str, str]], *, ylabel: str, title: str, per_step: bool = False,
           from_zero: bool = False):
    """One panel: each (key, label)'s moving mean against the step, and with per_step its raw values behind it."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in series:
        xs, ys = _series(steps, key)
        if not ys:
            continue
        if per_step:
            ax.plot(xs, ys, alpha=0.35, label=f"{label}, per step")
        ax.plot(xs, _moving(ys), label=f"{label}, moving mean ({SMOOTH} steps)")
    ax.set(xlabel="trainer step", ylabel=ylabel, title=title)
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _reward(plt, steps):
    return _lines(plt, steps, [("reward_mean", "reward")], ylabel="mean reward of the trained samples",
                  title="Training reward", per_step=True)


def _staleness(plt, steps):
    counts: dict[int, int] = {}
    for r in steps:
        for v, n in r.get("staleness_hist", {}).items():
            counts[int(v)] = counts.get(int(v), 0) + n
    unit = "groups trained"
    if not counts:  # a run from before staleness_hist was logged: its steps by their mean staleness
        unit = "steps (by mean staleness)"
        for r in steps:
            v = round(r.get("staleness_mean", 0))
            counts[v] = counts.get(v, 0) + 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar([str(v) for v in sorted(counts)], [counts[v] for v in sorted(counts)])
    axes[0].set(xlabel="staleness (policy versions behind)", ylabel=unit, title="Staleness of trained groups")
    for key, style in (("staleness_mean", "-"), ("staleness_max", "--")):
        xs, ys = _series(steps, key)
        axes[1].plot(xs, ys, style, label=key.replace("_", " "))
    axes[1].set(xlabel="trainer step", ylabel="versions", title="Staleness per step")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    return fig


def _throughput(plt, steps):
    series = [("gen_tokens_per_s", "generation (rollout workers)"), ("trainer_tokens_per_s", "trainer")]
    return _lines(plt, steps, series, ylabel="tokens / s", title="Throughput of both sides", from_zero=True)


def _timing(plt, steps):
    return _lines(plt, steps, [(k, k[:-2].replace("_", " ")) for k in ("wait_batch_s", "update_s", "weight_sync_s")],
                  ylabel="seconds per step", title="Seconds per step, by phase")


def _allocation(plt, steps):
    sizes = sorted({int(n) for r in steps for n in r.get("group_size_hist", {})})
    xs = [r["step"] for r in steps]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    shares = [[r.get("group_size_hist", {}).get(str(n), 0) for r in steps] for n in sizes]
    axes[0].stackplot(xs, *[_moving(s) for s in shares], labels=[f"{n} samples" for n in sizes])
    axes[0].set(xlabel="trainer step", ylabel="groups per step (moving mean)", title="Trained group sizes (GVM)")
    axes[0].legend(fontsize=7, ncol=2)
    for key in ("groups_at_n_min", "groups_at_n_max"):
        x, y = _series(steps, key)
        axes[1].plot(x, _moving(y), label=key.replace("_", " "))
    axes[1].set(xlabel="trainer step", ylabel="groups per step (moving mean)", title="Groups at the bounds")
    axes[1].legend()
    return fig
