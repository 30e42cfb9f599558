"""The rollout worker's evaluation calls (a mixin of rollout.worker.RolloutWorker): held-out success and
evaluation sets, generated beside the training requests on the weights the worker holds, scored by the training
rewards or a set's own."""
from __future__ import annotations

import numpy as np

from rollout.evaluation import summarize


class WorkerEvaluation:
    """Needs the worker's engine, cfg, scorer, make_scorer, _eval_scorers and _apply_pending_weights."""

    def evaluate(self, prompts: list[dict], max_new_tokens: int, samples: int = 0) -> dict:
        """Held-out success on prompts ({"text", "fields"}) with this engine's current weights: greedy, and with
        `samples` > 0 also the mean success of that many samples per prompt at the rollout temperature (what RL
        optimises: sharpening a distribution raises it before it flips any greedy answer)."""
        self._apply_pending_weights()
        with self.engine.hold_weights():  # both passes under the same weights; training requests run on beside
            ids = [self.engine.encode(p["text"]) for p in prompts]
            outs = self.engine.generate(ids, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
            sampled = self.engine.generate(ids, n=samples, max_new_tokens=max_new_tokens,
                                           temperature=self.cfg.temperature, seed=0) if samples else None
            version = self.version
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
        with self.engine.hold_weights():
            ids = [self.engine.encode(p["text"]) for p in prompts]
            outs = self.engine.generate(ids, n=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                                        seed=0 if temperature > 0 else None)
            version = self.version
        return {**summarize(self._rewards(scorer, prompts, outs), samples, pass_threshold), "n": len(prompts),
                "version": version}

    @staticmethod
    def _rewards(scorer, prompts: list[dict], outs) -> list[list[float]]:
        """Each evaluation prompt's completions scored: their rewards, per prompt."""
        scored = scorer.score_groups([(p["text"], [c.text for c in o], p["fields"]) for p, o in zip(prompts, outs)])
        return [[s.reward for s in g.samples] for g in scored]
