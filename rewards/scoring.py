"""Score groups of completions with the configured rewards: the one entry point the rollout worker uses.

    scorer = build_scorer(reward_cfg)          # start-up: RewardError on bad config; no pool yet
    scored = scorer.score_groups([(prompt, [completion, ...], fields, sample_fields_or_None), ...])
    for group, gs in zip(groups, scored):      # gs.drop: the failure policy drops this group
        for s in gs.samples: s.reward, s.details, s.failure
    scorer.counters()                          # cumulative numbers for metrics
    scorer.close()                             # kills the process pool

`check_config(cfg)` is the pure half of `build_scorer`: it imports and checks every reward (name, path
or entry point; signature; kwargs; labels; limits) and is what launcher validation calls before any engine.

Where calls run: rewards marked cpu_heavy (math, python_tests) in a pool of `pool_workers` processes,
started on first use; those marked inline (exact_answer, length_penalty: they cannot hang) in the calling thread,
with no thread hand-off per call; the others in a watched thread of this process; all at once. Sync rewards get
one call per sample, batched ones one call per `score_groups`, async ones run concurrently.

Reward of a sample = sum(weight * score) over the configured rewards. If any of them fails (see
rewards.schema.FAILURE_KINDS), the sample is marked with the first failure and, by `on_failure`, gets
`failure_score` ("fixed_score"), or its group is marked `drop` ("drop_group": the caller discards the
group; its failed samples carry `failure_score` as a placeholder, the others their real rewards).

Invariants: score_groups never raises for anything a reward function does; calls are serialised by a
lock (one pool, one set of counters); details hold only JSON/msgpack-safe values.
"""
from __future__ import annotations

import logging
import math
import pickle
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from rewards import registry
from rewards.calls import Chunk, ThreadRunner, run_inline
from rewards.config import FAILURE_POLICIES, RUN_IN, RewardConfig, RewardSpec
from rewards.pool import ProcessPool
from rewards.schema import CRASH, FAILURE_KINDS, NON_FINITE, GroupScore, GroupToScore, Outcome, RewardError, SampleScore

log = logging.getLogger("slipstream.rewards")


@dataclass
class ResolvedReward:
    label: str
    spec: str
    fn: Any
    weight: float
    kwargs: dict[str, Any]
    batched: bool
    is_async: bool
    in_pool: bool  # run in the process pool
    inline: bool  # run in the calling thread, unwatched (else, not in the pool, a watched thread of the caller)
    timeout_s: float
    wants_sandbox: bool  # declares a `sandbox` keyword: gets RewardConfig.sandbox


def check_config(cfg: RewardConfig) -> list[ResolvedReward]:
    """Resolve and check every reward; RewardError listing every problem. Imports plugins, starts nothing."""
    problems: list[str] = []
    if not cfg.rewards:
        problems.append("reward.rewards is empty: give at least one reward, e.g. [{name: exact_answer}]")
    if cfg.on_failure not in FAILURE_POLICIES:
        problems.append(f"reward.on_failure={cfg.on_failure!r}: one of {', '.join(FAILURE_POLICIES)}")
    if not math.isfinite(cfg.failure_score):
        problems.append(f"reward.failure_score={cfg.failure_score}: must be finite")
    if not cfg.timeout_s > 0:
        problems.append(f"reward.timeout_s={cfg.timeout_s}: must be > 0")
    resolved, list_names = [], False
    for i, spec in enumerate(cfg.rewards):
        where = f"reward.rewards[{i}] ({spec.name})"
        try:
            fn = registry.resolve_reward(spec.name)
        except RewardError as e:
            problems.append(f"{where}: {e}")
            list_names = list_names or "registered names:" not in str(e)
            continue
        try:
            resolved.append(_resolve_one(spec, fn, cfg))
        except RewardError as e:
            problems.append(f"{where}: {e}")
    if list_names:  # a path or a signature was wrong: say once what is available
        installed = ", ".join(registry.entry_point_names()) or "none installed"
        problems.append(f"available: registered names: {', '.join(registry.registered_names())}; entry points "
                        f"in group {registry.ENTRY_POINT_GROUP!r}: {installed}; or 'package.module:function'")
    labels = Counter(r.label for r in resolved)
    problems += [f"two rewards share the label {label!r}: set `label` on one" for label, n in labels.items() if n > 1]
    if any(r.in_pool for r in resolved) and cfg.pool_workers < 1:
        problems.append(f"reward.pool_workers={cfg.pool_workers}: cpu_heavy rewards need at least 1")
    problems += _check_sandbox(cfg, resolved)
    if problems:
        raise RewardError("invalid reward config:\n  - " + "\n  - ".join(problems))
    return resolved


def _resolve_one(spec: RewardSpec, fn: Any, cfg: RewardConfig) -> ResolvedReward:
    """RewardError naming every problem of this one entry, once its function is found."""
    kwargs = _plain_kwargs(spec.kwargs)
    timeout_s = cfg.timeout_s if spec.timeout_s is None else spec.timeout_s
    problems = []
    if not math.isfinite(spec.weight):
        problems.append(f"weight={spec.weight}: must be finite")
    if spec.run_in not in RUN_IN:
        problems.append(f"run_in={spec.run_in!r}: one of {', '.join(RUN_IN)}")
    if not timeout_s > 0:
        problems.append(f"timeout_s={timeout_s}: must be > 0")
    check = getattr(fn, "check_kwargs", None)
    if callable(check):
        try:
            check(kwargs)
        except (ValueError, TypeError) as e:
            problems.append(f"bad kwargs {kwargs}: {e}")
    in_pool = spec.run_in == "process" or (spec.run_in == "auto" and registry.is_cpu_heavy(fn))
    inline = spec.run_in == "inline" or (spec.run_in == "auto" and registry.is_inline(fn) and not in_pool)
    if in_pool:
        problems += _check_sendable(fn)
    if inline and registry.is_async(fn):
        problems.append("run_in=inline is for plain functions; an async reward runs in a thread (run_in: thread)")
    if problems:
        raise RewardError("; ".join(problems))
    label = spec.label or spec.name.rpartition(":")[2].rpartition(".")[2]
    return ResolvedReward(label=label, spec=spec.name, fn=fn, weight=float(spec.weight), kwargs=kwargs,
                          batched=registry.is_batched(fn), is_async=registry.is_async(fn), in_pool=in_pool,
                          inline=inline, timeout_s=float(timeout_s),
                          wants_sandbox=registry.accepts_keyword(fn, "sandbox"))


def _check_sendable(fn: Any) -> list[str]:
    """A pool process imports the function by module and name: it must be reachable that way."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<locals>" in qualname:
        return [f"{qualname or fn!r} (module {module}) cannot run in the process pool: it is not importable "
                f"by module and name; define it at module level, or set run_in: thread"]
    try:
        pickle.dumps(fn)
    except Exception as e:  # noqa: BLE001 - pickle raises several types
        return [f"{qualname} cannot be sent to the process pool ({e}); set run_in: thread"]
    return []


def _plain_kwargs(kwargs: Any) -> dict[str, Any]:
    """Hydra may hand over DictConfig/ListConfig; the pool needs plain picklable values."""
    def plain(value: Any) -> Any:
        if hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
            return [plain(v) for v in value]
        return value
    return plain(kwargs or {})


def _check_sandbox(cfg: RewardConfig, resolved: list[ResolvedReward]) -> list[str]:
    from rewards.sandbox import STARTUP_ALLOWANCE_S

    box, problems = cfg.sandbox, []
    if not (box.cpu_seconds > 0 and box.wall_seconds > 0 and box.memory_mb > 0 and box.output_bytes > 0):
        problems.append(f"reward.sandbox: every limit must be > 0, got {box}")
    for r in resolved:
        if r.wants_sandbox and r.timeout_s <= box.wall_seconds + STARTUP_ALLOWANCE_S:
            problems.append(f"reward {r.label!r}: timeout_s={r.timeout_s:g} must exceed reward.sandbox."
                            f"wall_seconds + {STARTUP_ALLOWANCE_S:g} s of start-up "
                            f"({box.wall_seconds + STARTUP_ALLOWANCE_S:g}), or its test runs are cut short")
    return problems


def build_scorer(cfg: Optional[RewardConfig] = None) -> "Scorer":
    """check_config, plus a one-process network-isolation probe when a reward runs generated code."""
    cfg = cfg or RewardConfig()
    resolved = check_config(cfg)
    if any(r.wants_sandbox for r in resolved):
        from rewards.sandbox import check_isolation

        check_isolation(cfg.sandbox)
    return Scorer(cfg, resolved)


class Scorer:
    def __init__(self, cfg: RewardConfig, rewards: list[ResolvedReward]):
        self.cfg, self.rewards = cfg, rewards
        self._lock = threading.Lock()
        self._threads = ThreadRunner()
        self._pool: Optional[ProcessPool] = None  # started on first use
        self._counts: Counter = Counter()  # cumulative, for counters(); guarded by _counts_lock
        self._counts_lock = threading.Lock()  # separate: counters() must not wait for a long scoring call
        self._logged: Counter = Counter()  # failures per (label, kind), for log throttling; under _lock

    def score_groups(self, groups: Iterable[Sequence]) -> list[GroupScore]:
        groups = [GroupToScore(*g) for g in groups]
        samples = [(g.prompt, completion, {**g.fields, **(g.sample_fields[j] if g.sample_fields else {})})
                   for g in groups for j, completion in enumerate(g.completions)]
        with self._lock:
            table = self._run_all(samples)
            counts: Counter = Counter()
            results = self._combine(groups, table, counts)
        with self._counts_lock:
            self._counts.update(counts)
        return results

    def score(self, prompt: str, completion: str, **fields: Any) -> SampleScore:
        """One sample (evaluation, tests, a notebook); the failure policy's drop shows as `failure`."""
        return self.score_groups([(prompt, [completion], fields)])[0].samples[0]

    def warm_up(self) -> None:
        """Start the pool's processes and import the cpu_heavy rewards' modules there now, so the first
        score_groups does not pay for it (seconds, with SymPy). Optional; a no-op without such rewards."""
        pooled = [r for r in self.rewards if r.in_pool]
        if not pooled:
            return
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(self.cfg.pool_workers)
            empty = [Chunk(r.fn, r.batched, r.is_async, r.timeout_s, [], [], []) for r in pooled]
            self._pool.run(empty * self.cfg.pool_workers, lambda call_id, outcomes: None)

    # -- running the calls -------------------------------------------------------------------------------
    def _run_all(self, samples: list[tuple[str, str, dict]]) -> list[list[Optional[Outcome]]]:
        """table[r][s]: the Outcome of reward r on sample s."""
        table: list[list[Optional[Outcome]]] = [[None] * len(samples) for _ in self.rewards]
        targets: list[tuple[int, list[int]]] = []  # call id -> (reward index, sample indices)

        def sink(call_id: int, outcomes: list[Outcome]) -> None:
            r, sample_ids = targets[call_id]
            for s, outcome in zip(sample_ids, outcomes):
                table[r][s] = outcome

        in_thread, in_pool, inline = [], [], []
        for r, reward in enumerate(self.rewards):
            chunks = self._chunks(r, reward, samples, targets)
            (in_pool if reward.in_pool else inline if reward.inline else in_thread).extend(chunks)
        job = self._threads.start(in_thread)  # runs while the inline calls and the pool work
        for chunk in inline:
            run_inline(chunk, sink)
        if in_pool:
            if self._pool is None:
                self._pool = ProcessPool(self.cfg.pool_workers)
            self._pool.run(in_pool, sink)
        job.finish(sink)
        return table

    def _chunks(self, r: int, reward: ResolvedReward, samples: list, targets: list) -> list[Chunk]:
        extra = {"sandbox": self.cfg.sandbox} if reward.wants_sandbox else {}
        if not samples:
            return []
        if reward.batched:  # fields become columns, config kwargs stay scalars
            keys = {k for _, _, fields in samples for k in fields}
            columns = {k: [fields.get(k) for _, _, fields in samples] for k in keys}
            call = ([p for p, _, _ in samples], [c for _, c, _ in samples], {**columns, **reward.kwargs, **extra})
            targets.append((r, list(range(len(samples)))))
            return [Chunk(reward.fn, True, reward.is_async, reward.timeout_s, [call], [len(targets) - 1],
                          [len(samples)])]
        first_id = len(targets)
        targets.extend((r, [s]) for s in range(len(samples)))
        calls = [(p, c, {**fields, **reward.kwargs, **extra}) for p, c, fields in samples]
        ids = list(range(first_id, first_id + len(samples)))
        whole = Chunk(reward.fn, False, reward.is_async, reward.timeout_s, calls, ids, [1] * len(calls))
        if not reward.in_pool or reward.is_async:
            return [whole]
        per_chunk = max(1, math.ceil(len(calls) / (2 * self.cfg.pool_workers)))  # 2 per worker: load balance
        return [whole.subset(list(range(i, min(i + per_chunk, len(calls))))) for i in range(0, len(calls), per_chunk)]

    # -- combining ---------------------------------------------------------------------------------------
    def _combine(self, groups: list[GroupToScore], table: list[list[Optional[Outcome]]],
                 counts: Counter) -> list[GroupScore]:
        results, s = [], 0
        for group in groups:
            scored = [self._sample(table, s + j, counts) for j in range(len(group.completions))]
            s += len(group.completions)
            drop = self.cfg.on_failure == "drop_group" and any(x.failure for x in scored)
            counts["dropped_groups"] += int(drop)
            results.append(GroupScore(samples=scored, drop=drop))
        return results

    def _sample(self, table: list[list[Optional[Outcome]]], s: int, counts: Counter) -> SampleScore:
        total, scores, info, failure, errors = 0.0, {}, {}, None, []
        for r, reward in enumerate(self.rewards):
            outcome = table[r][s] or Outcome(failure=CRASH, error="no outcome was recorded (a bug in rewards/)")
            if outcome.failure is not None:
                failure = failure or outcome.failure
                errors.append(f"{reward.label}: {outcome.error}")
                self._note_failure(reward, outcome)
                continue
            total += reward.weight * outcome.score
            scores[reward.label] = outcome.score
            scores.update({f"{reward.label}/{k}": v for k, v in outcome.sub_scores.items()})
            if outcome.info:
                info[reward.label] = outcome.info
        counts["scored_samples"] += 1
        details: dict[str, Any] = {"scores": scores}
        if info:
            details["info"] = info
        if failure is None and math.isfinite(total):
            return SampleScore(reward=total, details=details)
        failure = failure or NON_FINITE  # finite scores times finite weights can still overflow
        details.update(failure=failure, error="; ".join(errors)[:1000] or f"weighted sum is {total}")
        counts["failed_samples"] += 1
        counts[f"failures/{failure}"] += 1
        return SampleScore(reward=self.cfg.failure_score, details=details, failure=failure)

    def _note_failure(self, reward: ResolvedReward, outcome: Outcome) -> None:
        """Log the 1st, 10th, 100th, ... failure of each kind and reward: visible, never a flood."""
        key = (reward.label, outcome.failure)
        self._logged[key] += 1
        n = self._logged[key]
        if n == 10 ** int(math.log10(n)):
            log.warning("reward %s failed (%s, occurrence %d): %s; sample scored by on_failure=%s",
                        reward.label, outcome.failure, n, outcome.error, self.cfg.on_failure)

    def counters(self) -> dict[str, float]:
        """Cumulative: scored_samples, failed_samples, failures/<kind>, dropped_groups, pool_restarts,
        abandoned_threads."""
        with self._counts_lock:
            out = {"scored_samples": 0, "failed_samples": 0, "dropped_groups": 0,
                   **{f"failures/{kind}": 0 for kind in FAILURE_KINDS}, **self._counts}
        pool = self._pool
        out["pool_restarts"] = out.get("pool_restarts", 0) + (pool.restarts if pool is not None else 0)
        out["abandoned_threads"] = self._threads.abandoned_threads
        return out

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                with self._counts_lock:  # keep the count cumulative across a close and a later reopen
                    self._counts["pool_restarts"] += self._pool.restarts
                self._pool = None

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reward_metrics(details: Iterable[dict]) -> dict[str, float]:
    """Mean of every score and sub-score over samples that have it, as {"reward/<label>": mean}."""
    sums: Counter = Counter()
    counts: Counter = Counter()
    for d in details:
        for key, value in d.get("scores", {}).items():
            sums[key] += value
            counts[key] += 1
    return {f"reward/{key}": sums[key] / counts[key] for key in sorted(counts)}
