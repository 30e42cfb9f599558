"""Per-step metrics: JSON lines and TensorBoard events under the run directory, plus one live console line."""
from __future__ import annotations

import json
import os
import sys
import time


class MetricsWriter:
    def __init__(self, run_dir: str, tensorboard: bool = True, wandb=None, config: dict | None = None):
        """wandb: a launcher.config.WandbConfig (None or no project: off); config: the run's, for its record."""
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        self._wandb = _start_wandb(wandb, run_dir, config) if wandb is not None and wandb.project else None
        self._live = sys.stdout.isatty()

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def progress(self, step: int, total: int, m: dict, last_eval: float | None) -> None:
        """One line, rewritten in place on a terminal, printed every step otherwise."""
        ev = f"{last_eval:.3f}" if last_eval is not None else "-"
        line = (f"step {step}/{total} v{m.get('version', 0)} | reward {m.get('reward_mean', 0):.3f} "
                f"held-out {ev} | stale {m.get('staleness_mean', 0):.2f}/{m.get('staleness_max', 0)} "
                f"buf {m.get('buffer_depth', 0)} drop {m.get('dropped_stale_total', 0)} | "
                f"gen {m.get('gen_tokens_per_s', 0):.0f} tok/s train {m.get('trainer_tokens_per_s', 0):.0f} tok/s "
                f"sync {m.get('weight_sync_s', 0):.2f}s | {m.get('elapsed_s', 0) / 60:.1f} min")
        if self._live:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._live:
            sys.stdout.write("\n")
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(cfg, run_dir: str, config: dict | None):
    try:
        import wandb
    except ImportError as e:
        raise RuntimeError("run.wandb.project is set but wandb is not installed: pip install 'slipstream[wandb]', or "
                           "leave run.wandb.project empty") from e
    return wandb.init(project=cfg.project, entity=cfg.entity or None, mode=cfg.mode, dir=run_dir,
                      name=os.path.basename(os.path.normpath(run_dir)), config=config or {})


PASS_RATE_BINS = ("0", "0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1", "1")


def pass_rate_histogram(group_rewards: list[list[float]],
                        pass_threshold: float) -> tuple[dict[str, int], dict[str, int]]:
    """Groups trained this step by their pass rate, and their samples: "0" and "1" exactly (the groups GRPO learns
    nothing from), the rest in quarters with the upper edge included. Where the groups fall shows the prompts'
    difficulty; where the samples fall shows where the allocation spent the budget."""
    groups_hist, samples_hist = dict.fromkeys(PASS_RATE_BINS, 0), dict.fromkeys(PASS_RATE_BINS, 0)
    for rewards in group_rewards:  # one list of sample rewards per group, as the trainers return them
        rate = sum(r >= pass_threshold for r in rewards) / len(rewards)
        if rate <= 0.0:
            key = "0"
        elif rate >= 1.0:
            key = "1"
        else:
            key = PASS_RATE_BINS[1 + min(int((rate - 1e-9) * 4), 3)]
        groups_hist[key] += 1
        samples_hist[key] += len(rewards)
    return groups_hist, samples_hist
