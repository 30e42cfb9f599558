"""The rollout worker loop, over the contracts only: an Engine, a PromptSource, a Buffer with its prompt statistics
and a reward scorer (rollout/actor.py builds them from config and runs this as a Ray actor).

One `step`: apply any weights received -> ask the buffer's admission guard for group slots -> draw prompts ->
generate n samples each with per-token behaviour log-probs -> score with the reward function -> push whole
groups. `run` steps until `stop`; it never waits for the trainer except through the admission guard.

Concurrency: the actor is threaded (Ray `max_concurrency`). `run` loops in one thread; `receive_weights`
only stashes the newest weights (the trainer never waits for a generation step), and `evaluate` shares the
engine between generation calls (the engine's own lock; `pause` for a section of several calls).

Invariant: every token is tagged with the policy version of the weights that produced it (the engine tags each
completion); weights change only between `generate` calls.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from buffer.api import METRIC_COUNTERS, Buffer, Group, PromptStatsStore, Sample
from rollout.config import RolloutConfig
from rollout.evaluation import summarize
from rollout.prompts import Prompt
from rollout.sampling_plan import plan_samples

log = logging.getLogger("slipstream.rollout")


class RolloutWorker:
    def __init__(self, worker_id: int, cfg: RolloutConfig, *, engine, prompts, buffer: Buffer,
                 prompt_stats: PromptStatsStore, scorer, make_scorer=None):
        """engine: rollout.api.Engine; prompts: rollout.api.PromptSource; scorer: rewards.Scorer; make_scorer:
        RewardConfig -> Scorer, for evaluation sets scored by rewards of their own."""
        self.worker_id, self.cfg = worker_id, cfg
        self.engine, self.prompts, self.buffer, self.prompt_stats, self.scorer = (
            engine, prompts, buffer, prompt_stats, scorer)
        self.make_scorer, self._eval_scorers = make_scorer, {}
        self._pending_lock = threading.Lock()
        self._apply_lock = threading.Lock()  # the loop and evaluate() both apply: never an older version last
        self._pending: tuple[int, dict] | None = None
        self._stop = threading.Event()
        self.counters = {"groups": 0, "samples": 0, "tokens": 0, "weight_loads": 0, "weight_load_seconds": 0.0,
                         "pilot_prompts": 0, "gen_seconds": 0.0, **dict.fromkeys(METRIC_COUNTERS, 0)}

    @property
    def version(self) -> int:
        return self.engine.version

    # -- called by the trainer / driver (rollout.api.WeightReceiver) --------------------------------------
    def receive_weights(self, version: int, named_arrays: dict) -> None:
        with self._pending_lock:
            if self._pending is None or version > self._pending[0]:
                self._pending = (version, named_arrays)

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version, **self.counters,
                **{f"reward/{k}": v for k, v in self.scorer.counters().items()}}

    def evaluate(self, prompts: list[dict], max_new_tokens: int, samples: int = 0) -> dict:
        """Held-out success on prompts ({"text", "fields"}) with this engine's current weights: greedy, and with
        `samples` > 0 also the mean success of that many samples per prompt at the rollout temperature (what RL
        optimises: sharpening a distribution raises it before it flips any greedy answer)."""
        self._apply_pending_weights()  # before pause(): the loop takes these two locks in this order too
        self.engine.pause()  # both passes under the same weights
        try:
            ids = [self.engine.encode(p["text"]) for p in prompts]
            outs = self.engine.generate(ids, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
            sampled = self.engine.generate(ids, n=samples, max_new_tokens=max_new_tokens,
                                           temperature=self.cfg.temperature, seed=0) if samples else None
            version = self.version
        finally:
            self.engine.resume()
        result = {"success": float(np.mean(self._rewards(self.scorer, prompts, outs))), "version": version,
                  "n": len(prompts)}
        if sampled is not None:
            result["sampled_success"] = float(np.mean(self._rewards(self.scorer, prompts, sampled)))
        return result

    def evaluate_set(self, name: str, prompts: list[dict], reward=None, *, samples: int = 1, temperature: float = 0.0,
                     max_new_tokens: int = 8, pass_threshold: float = 1.0) -> dict:
        """mean@k and pass@k (k = samples) on an evaluation set, scored by its own rewards (a RewardConfig) or, with
        reward None, the training ones. Sampled sets are seeded, so two evaluations of the same weights agree."""
        if reward is not None and name not in self._eval_scorers:
            self._eval_scorers[name] = self.make_scorer(reward)
        scorer = self._eval_scorers.get(name, self.scorer)
        self._apply_pending_weights()
        ids = [self.engine.encode(p["text"]) for p in prompts]
        outs = self.engine.generate(ids, n=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=0 if temperature > 0 else None)
        return {**summarize(self._rewards(scorer, prompts, outs), samples, pass_threshold), "n": len(prompts),
                "version": int(min(c.token_versions.min(initial=self.version) for o in outs for c in o))}

    @staticmethod
    def _rewards(scorer, prompts: list[dict], outs) -> list[list[float]]:
        """Each evaluation prompt's completions scored: their rewards, per prompt."""
        scored = scorer.score_groups([(p["text"], [c.text for c in o], p["fields"]) for p, o in zip(prompts, outs)])
        return [[s.reward for s in g.samples] for g in scored]

    def held_out_prompts(self) -> list[dict]:
        return [{"text": p.text, "fields": p.fields} for p in self.prompts.held_out()]

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Generate until stop(); returns the counters."""
        while not self._stop.is_set():
            if self.step() is None:
                time.sleep(self.cfg.idle_sleep_s)
        for scorer in (self.scorer, *self._eval_scorers.values()):
            scorer.close()  # safe: the pool restarts if evaluate() is called later
        return self.stats()

    def step(self) -> int | None:
        """One generate call's worth of groups; returns the number pushed, None if admission granted nothing."""
        self._apply_pending_weights()
        granted, version = self.buffer.admit(self.cfg.groups_per_call)
        if granted == 0:
            return None
        pushed, scored, before = [], [], {k: self.counters[k] for k in METRIC_COUNTERS}
        try:
            prompts = self._draw_prompts(granted)
            if version > self.version:  # the trainer stores weights before it bumps the version
                self._apply_pending_weights()
            scored = self._generate_groups(prompts, self._plan(prompts))
            pushed = self._filter(scored)
        finally:  # a failed call must still give its admission slots back
            self.buffer.push(pushed, released=granted - len(pushed),
                             gen_tokens=sum(g.num_response_tokens for g in scored),
                             counters={k: self.counters[k] - before[k] for k in METRIC_COUNTERS})
        return len(pushed)

    def _draw_prompts(self, n: int) -> list[Prompt]:
        """n prompts from the source, skipping those already solved often enough (max_pass_rate < 1)."""
        cfg = self.cfg
        if cfg.max_pass_rate >= 1.0:
            return self.prompts.next(n)
        chosen: list[Prompt] = []
        for _ in range(20):  # bounded: if nearly everything is solved, train on what comes rather than spin
            candidates = self.prompts.next(n - len(chosen))
            for p, stat in zip(candidates, self.prompt_stats.get_stats([p.prompt_id for p in candidates])):
                # the recent pass rate (decayed passes / decayed attempts) once the prompt has been seen enough
                if stat.seen >= cfg.pass_rate_min_attempts and stat.pass_rate > cfg.max_pass_rate:
                    self.counters["skipped_easy_prompts"] += 1
                else:
                    chosen.append(p)
            if len(chosen) == n:
                return chosen
        return chosen + self.prompts.next(n - len(chosen))

    def _plan(self, prompts: list[Prompt]) -> list[int]:
        """Samples per prompt for this call (uniform: group_size each; gvm: from the shared statistics)."""
        if self.cfg.allocation == "uniform":
            return [self.cfg.group_size] * len(prompts)
        stats = self.prompt_stats.get_stats([p.prompt_id for p in prompts])
        plan = plan_samples(stats, self.cfg.group_size, self.cfg.allocation, self.cfg.gvm)
        self.counters["pilot_prompts"] += plan.pilots
        return plan.counts

    def _filter(self, groups: list[Group]) -> list[Group]:
        """Record per-prompt pass statistics for every scored group, then drop the groups without signal."""
        self.prompt_stats.record([(g.prompt_id, len(g.samples), int((g.rewards >= self.cfg.pass_threshold).sum()))
                                  for g in groups])
        if not self.cfg.drop_zero_variance_groups:
            return groups
        kept = [g for g in groups if len(set(g.rewards.tolist())) > 1]
        self.counters["filtered_zero_variance"] += len(groups) - len(kept)
        return kept

    def _apply_pending_weights(self) -> None:
        import torch

        with self._apply_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, None
            if pending is None or pending[0] <= self.version:
                return
            t0 = time.perf_counter()
            version, arrays = pending
            self.engine.load_weights(version, {k: torch.from_numpy(v) for k, v in arrays.items()})
        self.counters["weight_loads"] += 1
        self.counters["weight_load_seconds"] += time.perf_counter() - t0

    def _generate_groups(self, prompts: list[Prompt], counts: list[int]) -> list[Group]:
        cfg = self.cfg
        encoded = []
        for p, n in zip(prompts, counts):
            ids = self.engine.encode(p.text)
            if len(ids) + cfg.max_new_tokens > self.engine.max_model_len:
                self.counters["too_long_prompts"] += 1
                log.warning("prompt %s has %d tokens; with max_new_tokens=%d it exceeds max_model_len=%d; "
                            "skipped (raise rollout.max_model_len or shorten the prompt)", p.prompt_id, len(ids),
                            cfg.max_new_tokens, self.engine.max_model_len)
                continue
            encoded.append((p, ids, n))
        if not encoded:
            return []
        t0 = time.perf_counter()
        outputs = self.engine.generate([ids for _, ids, _ in encoded], n=[n for _, _, n in encoded],
                                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       top_p=cfg.top_p)
        seconds = time.perf_counter() - t0
        self.counters["gen_seconds"] += seconds
        scored = self.scorer.score_groups(
            [(prompt.text, [c.text for c in completions], prompt.fields,
              [{"response_tokens": len(c.token_ids), "finish_reason": c.finish_reason} for c in completions])
             for (prompt, _, _), completions in zip(encoded, outputs)])
        groups = []
        for (prompt, ids, _), completions, score in zip(encoded, outputs, scored):
            self.counters["reward_errors"] += sum(s.failure is not None for s in score.samples)
            if score.drop:  # reward.on_failure=drop_group: run() gives its admission slot back
                continue
            samples = [Sample(prompt_ids=np.asarray(ids, np.int32), response_ids=c.token_ids,
                              behaviour_logprobs=c.logprobs,
                              token_versions=c.token_versions,
                              reward=s.reward, finish_reason=c.finish_reason, reward_details=s.details,
                              gen_seconds=seconds)
                       for c, s in zip(completions, score.samples)]
            groups.append(Group(prompt_id=prompt.prompt_id, prompt=prompt.text, samples=samples,
                                worker_id=self.worker_id, fields=prompt.fields))
            self.counters["groups"] += 1
            self.counters["samples"] += len(samples)
            self.counters["tokens"] += sum(len(s.response_ids) for s in samples)
        return groups
