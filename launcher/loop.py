"""The training loop of the job driver, phase by phase.

Per step, each phase timed under its name (`<phase>_s` in metrics.jsonl):
  wait_batch -> load_batch -> logprobs (proximal / reference) -> advantages -> update -> weight_sync
  -> version_bump -> commit -> prompt_stats -> evaluate (every run.eval_every steps) -> checkpoint (every
  run.checkpoint_every steps; the step's record is written after it, so that it holds checkpoint_s)
Generation never appears here: rollout workers loop on their own and are held back only by the buffer's
admission guard (launcher/workers.py restarts their loops). Every call to a trainer rank or a worker has a timeout
(run.call_timeout_s).

Invariants: weights are labelled with the version they become, and the version is bumped only after every
generator holds them; a batch is committed (leaves the buffer) only after the step that used it is done.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque

from buffer.api import METRIC_COUNTERS, Buffer, BufferUnavailable, PoppedBatch
from launcher import checkpoints
from launcher.config import SlipstreamConfig, config_record
from launcher.eval_sets import EvalSet
from launcher.metrics import MetricsWriter, pass_rate_histogram
from launcher.plots import write_plots
from launcher.workers import RolloutWorkers
from trainer.api import StepResult, make_policy_loss, merge_step_results

log = logging.getLogger("slipstream")


class TrainerDied(RuntimeError):
    """A trainer rank's actor died: the group must be restarted (its process group is broken)."""


class TrainerGroup:
    """The trainer ranks as one: a call goes to every rank at once (phases hold collectives) and waits for all."""

    def __init__(self, ranks: list, timeout_s: float):
        self.ranks, self.timeout_s = ranks, timeout_s

    def call(self, method: str, *args) -> list:
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get([getattr(r, method).remote(*args) for r in self.ranks], timeout=self.timeout_s)
        except RayActorError as e:
            raise TrainerDied(f"a trainer rank died during {method}: {str(e).splitlines()[0]}") from e


class TrainingLoop:
    def __init__(self, cfg: SlipstreamConfig, buffer: Buffer, workers: list, ranks: list, run_dir: str,
                 eval_sets: list[EvalSet], resumed: dict | None = None, redis_server=None, start_trainers=None,
                 last_checkpoint: str | None = None):
        """eval_sets: loaded and checked before the run (launcher.config.check_data); resumed: the state of the
        checkpoint this run continues from (launcher/checkpoints.py), or None; redis_server: the embedded server
        (buffer.server.EmbeddedRedis, restarted by its watchdog when it dies), or None for an external one;
        start_trainers(checkpoint dir or None) -> ranks: new trainer ranks restored from it, with their transport
        (a rank that dies restarts the group); last_checkpoint: the one the run resumed from."""
        self.cfg, self.buffer, self.workers, self.run_dir, self.eval_sets = cfg, buffer, workers, run_dir, eval_sets
        self.trainers = TrainerGroup(ranks, cfg.run.call_timeout_s)
        self.rollout = RolloutWorkers(workers, cfg.rollout.max_restarts, cfg.run.call_timeout_s,
                                      self._send_current_weights)
        self.loss_fn = make_policy_loss(cfg.trainer.loss)  # the trainer is handed the loss, it does not pick one
        self.prompt_stats = buffer.prompt_stats(grad_mix=cfg.rollout.gvm.grad_mix)
        self.timers: dict[str, float] = {}
        self.eval_seconds, self.checkpoint_seconds = 0.0, 0.0
        self.totals = {"train_tokens": 0, "train_s": 0.0, "sync_s": 0.0, "trained_groups": 0}
        self.trainer_restarts = 0
        self.start_trainers, self.last_checkpoint = start_trainers, last_checkpoint
        self.redis_server, self.redis_restarts = redis_server, 0
        self.recent_commits: deque[PoppedBatch] = deque(maxlen=16)  # what a restarted server's file may lack
        self.resumed, self.start_step, self.elapsed_before = resumed, 0, {"elapsed_s": 0.0, "train_elapsed_s": 0.0}
        if resumed:
            self.start_step, self.totals = resumed["step"], resumed["totals"]
            self.elapsed_before = {k: resumed[k] for k in self.elapsed_before}

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timers[f"{name}_s"] = time.perf_counter() - t0

    def _get(self, ref):
        import ray

        return ray.get(ref, timeout=self.cfg.run.call_timeout_s)

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Evaluate, train run.total_steps steps (or until run.max_minutes), evaluate; returns the summary."""
        cfg = self.cfg
        self.held_out = self._get(self.workers[0].held_out_prompts.remote())  # also waits for worker 0's engine
        self.metrics = MetricsWriter(self.run_dir, cfg.run.tensorboard, cfg.run.wandb, config_record(cfg))
        self._get([r.__ray_ready__.remote() for r in self.trainers.ranks + self.workers])
        self.t_start, self.version = time.time(), self.buffer.version()
        self.first_eval = self.last_eval = self.evaluate()
        self.metrics.write(self.start_step, {**self.first_eval, "version": self.version,
                                             **self.elapsed_before, **({"resumed": 1} if self.resumed else {})})
        if self.resumed:  # "before" stays the run's start; the prompt sources go on where they stood
            self.first_eval = self.resumed["first_eval"]
            self._get([w.restore_prompt_cursor.remote(c) for w, c in zip(self.workers, self.resumed["cursors"])])
        self.rollout.start()
        self.prev_gen, self.prev_t = self.buffer.stats()["gen_tokens"], time.time()
        step = self.start_step
        try:
            while step < cfg.run.total_steps:
                try:
                    record, out_of_time = self.step(step + 1)
                except TrainerDied as e:
                    self._restart_trainers(e)  # then the same step again, on the same groups
                    continue
                step += 1
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 or out_of_time \
                        or step == cfg.run.total_steps:
                    self.checkpoint(step)  # after commit: a checkpoint never holds a batch twice
                    record["checkpoint_s"] = self.timers["checkpoint_s"]
                self.metrics.write(step, record)
                self.metrics.progress(step, cfg.run.total_steps, record, self.last_eval["held_out_success"])
                if out_of_time:
                    break
        finally:  # also after an error or Ctrl-C: what was logged is plotted
            self.metrics.close()
            self.t_end = time.time()  # the run's wall-clock ends here, not after the plots
            self._plot()
        return self._summary(step)

    def checkpoint(self, step: int) -> None:
        """Every trainer rank's state, the policy as a Hugging Face model, and the driver's state (atomic)."""
        with self.phase("checkpoint"):
            partial = checkpoints.begin(self.run_dir, step)
            self.trainers.call("save_checkpoint", partial)
            now = time.time()
            # the cursors the workers recorded (at least once: rollout/worker.py); asks no worker, so a worker
            # restarting now does not fail the checkpoint
            state = {"step": step, "version": self.version, "prefix": self.buffer.prefix,
                     "cursors": [self.buffer.prompt_cursor(i) for i in range(len(self.workers))],
                     "first_eval": self.first_eval, "totals": self.totals,
                     "elapsed_s": self.elapsed_before["elapsed_s"] + now - self.t_start,
                     "train_elapsed_s": self._train_elapsed(now), "config": config_record(self.cfg)}
            self.last_checkpoint = checkpoints.finish(partial, state, self.cfg.run.keep_checkpoints)
        self.checkpoint_seconds += self.timers["checkpoint_s"]

    def _train_elapsed(self, now: float) -> float:
        return self.elapsed_before["train_elapsed_s"] + now - self.t_start - self.eval_seconds

    def _plot(self) -> None:
        try:
            write_plots(self.run_dir)
        except Exception:  # noqa: BLE001 - a plot must never hide the run's own outcome
            log.exception("writing the plots of %s failed", self.run_dir)

    def step(self, step: int) -> tuple[dict, bool]:
        """One trainer step; returns its metrics record (written by `run`, after a checkpoint) and whether the
        run is out of time (after its final evaluation)."""
        self.timers = {}
        self._check_redis()
        with self.phase("wait_batch"):
            batch = self._wait_for_batch()
        try:
            result, version = self._train(batch)
        except TrainerDied:
            self.buffer.release(batch)  # at least once: the restarted trainers get the same groups first
            raise
        with self.phase("commit"):
            self.buffer.commit(batch)
            self.recent_commits.append(batch)
            self.totals["trained_groups"] += len(batch.entry_ids)
        with self.phase("prompt_stats"):
            self.prompt_stats.record_grad_norms(result.grad_norms, version)  # GVM's G_i, read by the workers
        elapsed = time.time() - self.t_start
        out_of_time = self.cfg.run.max_minutes > 0 and elapsed > self.cfg.run.max_minutes * 60
        evaluated = step % self.cfg.run.eval_every == 0 or step == self.cfg.run.total_steps or out_of_time
        if evaluated:
            with self.phase("evaluate"):
                self.last_eval = self.evaluate()
        m = self._step_metrics(batch, result, version, elapsed)
        if evaluated:
            m.update(self.last_eval)
        return m, out_of_time

    def _train(self, batch: PoppedBatch) -> tuple[StepResult, int]:
        """The trainer's phases over `batch`, the new weights to every generator, the version bumped."""
        import ray

        with self.phase("load_batch"):
            self.trainers.call("load_batch", ray.put(batch.payloads))  # one copy, every rank reads the whole batch
        with self.phase("logprobs"):
            self.trainers.call("compute_logprobs")
        with self.phase("advantages"):
            self.trainers.call("compute_advantages")
        with self.phase("update"):
            result = merge_step_results(self.trainers.call("update", self.loss_fn))
        next_version = batch.version + 1  # pop read the version; only this driver bumps it (checked below)
        with self.phase("weight_sync"):
            self.trainers.call("send_weights", next_version)  # labelled with the version they become
        with self.phase("version_bump"):
            version = self._bump_version(next_version)  # only after every generator holds the new weights
        return result, version

    def _restart_trainers(self, error: TrainerDied) -> None:
        """A rank died: every rank is replaced (their process group is broken) by ranks restored from the last
        checkpoint, whose weights go out as a new version (versions only go up: generators never go back)."""
        if self.trainer_restarts >= self.cfg.trainer.max_restarts:
            raise RuntimeError(f"{error}; trainer.max_restarts={self.cfg.trainer.max_restarts} used up") from error
        import ray

        log.warning("%s: restarting the trainer ranks from %s", error, self.last_checkpoint or "model.path")
        for rank in self.trainers.ranks:
            ray.kill(rank)  # the survivors too: their process group is gone, and they hold GPU memory
        self.trainers = TrainerGroup(self.start_trainers(self.last_checkpoint), self.cfg.run.call_timeout_s)
        version = self.version + 1
        self.trainers.call("send_weights", version)
        self._bump_version(version)
        self.trainer_restarts += 1

    def _wait_for_batch(self) -> PoppedBatch:
        """Block until B fresh groups are claimed; surface a dead rollout worker's error instead of hanging."""
        B, deadline = self.cfg.buffer.groups_per_step, time.monotonic() + self.cfg.run.batch_timeout_s
        while True:
            self.rollout.check()  # a dead worker's restart, without blocking: the others' batches train meanwhile
            try:
                batch = self.buffer.pop(B, timeout_s=2.0)
            except BufferUnavailable:  # the server is down: its watchdog restarts it, then we go on
                if time.monotonic() > deadline:
                    raise
                self._check_redis(wait_s=1.0)
                continue
            if batch is not None:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"no batch of {B} groups within run.batch_timeout_s={self.cfg.run.batch_timeout_s}s;"
                                   f" buffer: {self.buffer.stats()}")

    def _send_current_weights(self) -> int:
        """The weights of the version the run is at, to every worker (a restarted one holds older ones)."""
        version = self.version
        self.trainers.call("send_weights", version)
        return version

    def _check_redis(self, wait_s: float = 0.0) -> None:
        """After the embedded server came back from its append-only file (synced every second), the last second of
        writes may be missing: commit the recent batches again (so that none is trained twice), and put back the
        version this driver knows (it alone bumps it) with the admission counters rebased on it."""
        if self.redis_server is None:
            return
        if self.redis_server.restarts == self.redis_restarts:
            time.sleep(wait_s)
            return
        self.redis_restarts = self.redis_server.restarts
        version = self.version
        for batch in self.recent_commits:
            self.buffer.commit(batch)
        self.buffer.initialize(version=version)
        log.warning("Redis came back (restart %d): recent commits applied again, version %d", self.redis_restarts,
                    version)

    def _bump_version(self, expected: int) -> int:
        version = self.buffer.bump_version()
        self.version = expected
        if version != expected:
            raise RuntimeError(f"policy version went to {version}, expected {expected}: another trainer is bumping "
                               f"the version of this run (buffer.key_prefix {self.cfg.buffer.key_prefix!r})")
        return version

    def evaluate(self) -> dict:
        """Greedy held-out success, and sampled success at the rollout temperature, timed (not training time)."""
        t = time.perf_counter()
        out = self.rollout.evaluate(self.version, "evaluate", self.held_out, self.cfg.run.eval_max_new_tokens,
                                    self.cfg.run.eval_samples)
        result = {"held_out_success": out["success"],
                  **({"held_out_sampled_success": out["sampled_success"]} if "sampled_success" in out else {})}
        for s in self.eval_sets:
            scores = self.rollout.evaluate(self.version, "evaluate_set", s.name, s.prompts, s.reward,
                                           samples=s.samples, temperature=s.temperature,
                                           max_new_tokens=s.max_new_tokens,
                                           pass_threshold=self.cfg.rollout.pass_threshold)
            result.update({f"eval/{s.name}/{k}": v for k, v in scores.items() if "@" in k})
        self.eval_seconds += time.perf_counter() - t
        return result

    # -- metrics and summary ----------------------------------------------------------------------------------
    def _step_metrics(self, batch: PoppedBatch, result: StepResult, version: int, elapsed: float) -> dict:
        stats, now = self.buffer.stats(), time.time()
        train_s = sum(self.timers[f"{p}_s"] for p in ("load_batch", "logprobs", "advantages", "update"))
        m = {**result.as_metrics(), "version": version,
             "trainer_tokens": result.tokens, "trainer_tokens_per_s": result.tokens / max(train_s, 1e-9),
             "staleness_mean": sum(batch.staleness) / len(batch.staleness), "staleness_max": max(batch.staleness),
             "staleness_hist": {str(v): batch.staleness.count(v) for v in sorted(set(batch.staleness))},
             "buffer_depth": stats["buffered"], "running_groups": stats["running"],
             "dropped_stale": batch.dropped_stale, "dropped_stale_total": stats["dropped_stale"],
             "quarantined_total": stats["quarantined"],
             "gen_tokens_per_s": (stats["gen_tokens"] - self.prev_gen) / max(now - self.prev_t, 1e-9),
             "gen_tokens_total": stats["gen_tokens"], **{f"{k}_total": stats[k] for k in METRIC_COUNTERS},
             "elapsed_s": self.elapsed_before["elapsed_s"] + elapsed, "train_elapsed_s": self._train_elapsed(now),
             **self.timers, "train_s": train_s, **self._allocation_metrics(result, version)}
        for k in ("tokens", "seconds"):
            m.pop(k)  # as trainer_tokens and the phase timers
        self.prev_gen, self.prev_t = stats["gen_tokens"], now
        self.totals["train_tokens"] += result.tokens
        self.totals["train_s"] += train_s
        self.totals["sync_s"] += self.timers["weight_sync_s"]
        return m

    def _allocation_metrics(self, result: StepResult, version: int) -> dict:
        """Group sizes trained this step (the allocation's histogram), pass rates, and the gradient-norm estimates."""
        cfg, sizes = self.cfg, [len(rewards) for rewards in result.group_rewards]
        out = {"group_size_hist": {str(n): sizes.count(n) for n in sorted(set(sizes))},
               "groups_at_n_min": sum(n <= cfg.rollout.gvm.n_min for n in sizes),
               "groups_at_n_max": sum(n >= cfg.rollout.gvm.n_max for n in sizes)}
        out["pass_rate_hist"], out["pass_rate_samples"] = pass_rate_histogram(result.group_rewards,
                                                                              cfg.rollout.pass_threshold)
        if cfg.rollout.allocation == "gvm":
            ages = [version - s.grad_version for s in self.prompt_stats.get_stats(result.prompt_ids)
                    if s.grad_version >= 0]
            out["grad_stats_age"] = sum(ages) / len(ages) if ages else 0.0
        if result.grad_norms:
            out["grad_norm_mean"] = sum(result.grad_norms.values()) / len(result.grad_norms)
        return out

    def _summary(self, step: int) -> dict:
        cfg, stats = self.cfg, self.buffer.stats()
        worker_stats = self.rollout.stats()
        elapsed = self.t_end - self.t_start
        summary = {
            "steps": step, "minutes": round(elapsed / 60, 2),
            "train_minutes": round((elapsed - self.eval_seconds) / 60, 2), "eval_seconds": round(self.eval_seconds, 1),
            "checkpoint_seconds": round(self.checkpoint_seconds, 1),
            "held_out_size": len(self.held_out), **before_after(self.first_eval, self.last_eval),
            **{k: v for k, v in self.last_eval.items() if k.startswith("eval/")},
            "generation_tokens_per_s": round(stats["gen_tokens"] / elapsed, 1),
            "trainer_tokens_per_s": round(self.totals["train_tokens"] / max(self.totals["train_s"], 1e-9), 1),
            "weight_sync_s_mean": round(self.totals["sync_s"] / max(step, 1), 4),
            "groups_dropped_stale": stats["dropped_stale"], "eta": cfg.buffer.eta,
            "groups_per_step": cfg.buffer.groups_per_step, "workers": worker_stats,
            "worker_restarts": self.rollout.restarts, "evaluation_retries": self.rollout.evaluation_retries,
            "reservations_expired": stats["expired_reservations"],
            "redis_restarts": self.redis_restarts, "trainer_restarts": self.trainer_restarts,
            # every group pushed is committed, dropped as stale, quarantined (did not decode) or still buffered; the driver trained each
            # committed one once (after a resume, those of the steps it superseded were committed by the old run)
            "groups": {"pushed": stats["pushed"], "committed": stats["committed"],
                       "trained": self.totals["trained_groups"], "dropped_stale": stats["dropped_stale"],
                       "quarantined": stats["quarantined"], "buffered": stats["buffered"]},
        }
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        before, after = self.first_eval["held_out_success"], self.last_eval["held_out_success"]
        print(f"done: held-out success {before:.3f} -> {after:.3f} in {summary['minutes']} min "
              f"({step} steps); run directory {self.run_dir}", flush=True)
        return summary


def before_after(first: dict, last: dict) -> dict:
    """held_out_success_before/_after and improvement_points (and the same with _sampled, when evaluated)."""
    out = {}
    for key, suffix in (("held_out_success", ""), ("held_out_sampled_success", "_sampled")):
        if key in first and key in last:
            out.update({f"{key}_before": first[key], f"{key}_after": last[key],
                        f"improvement_points{suffix}": round(100 * (last[key] - first[key]), 1)})
    return out
