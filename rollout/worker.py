"""The rollout worker loop, over the contracts only: an Engine, a PromptSource, a Buffer with its prompt statistics
and a reward scorer (rollout/actor.py builds them from config and runs this as a Ray actor).

Continuous generation: the worker keeps `rollout.groups_in_flight` groups in the engine. One turn of the loop
(`step`): apply any weights received (the engine swaps them under the requests in flight, rollout/engine.py) ->
ask the admission guard for as many group slots as are free -> submit one group per slot -> wait a moment for
groups to finish -> submit their successors -> score the finished ones (the reward scorer, on this thread, never
the engine's) -> push them.
No group waits for another: each is pushed the turn its last sample finishes. `run` turns until `stop`; it never
waits for the trainer except through the admission guard.

Prompts are drawn and planned (uniform or GVM sample counts) `groups_in_flight` at a time, so GVM spreads its
budget over that many prompts, and each slot the guard grants takes the next planned prompt.

Concurrency: the actor is threaded (Ray `max_concurrency`). `run` loops in one thread; `receive_weights`
stashes the newest weights in memory or on disk (the trainer never waits for a generation step) and loads those
of the GPU transports at once (the engine swaps them under running requests); `evaluate` runs its requests
beside the loop's, holding weight updates off until it is done.

Invariant: every token is tagged with the policy version of the weights that sampled it (the engine tags each
completion), and a group's oldest token is no older than the version at its admission: weights the worker holds
are loaded before it submits.

Prompt cursor (a finite source's `state()`), at least once: after each push the worker records in the buffer where
its source stood before it handed out the oldest prompt it has drawn and not pushed yet (generating or planned).
A worker that Ray restarts continues from there (rollout/actor.py), so it draws those prompts again, and with them
the ones drawn after them that were pushed already: about 2 x rollout.groups_in_flight at most, since groups
finish in about the order they were submitted. Checkpoints save the same cursor.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from buffer.api import METRIC_COUNTERS, Buffer, BufferUnavailable, Group, PromptStatsStore, Sample
from rollout.config import RolloutConfig
from rollout.prompts import Prompt
from rollout.sampling_plan import plan_samples
from rollout.weight_files import LOADED_ON_RECEIPT, check_weights, tensors_of
from rollout.worker_evaluation import WorkerEvaluation

log = logging.getLogger("slipstream.rollout")
LEASE_RENEW_S = 1.0  # buffer.lease_ttl_s must be several times this (buffer/config.py checks >= 5 s)
PUSH_LINGER_S = 0.05  # how long a finished group may wait for others to share its push (see _push_due)
BUFFER_OUTAGE_S = 120.0  # Redis unreachable for longer than this ends the worker's loop with the error
# prompt pass statistics are written at most this often (and before the worker reads them): one round trip per push
# would be ~15 a second on the CPU bench, each a wake-up of Redis and of this thread beside the engine core
PROMPT_STATS_FLUSH_S = 0.5


@dataclass
class _GroupInFlight:
    prompt: Prompt
    prompt_ids: list[int]
    future: object  # concurrent.futures.Future of list[Completion]
    submitted_at: float
    drawn_at: dict | None = None  # the source's cursor before it handed out this prompt's batch
    finished_at: float = 0.0  # when its last sample finished (it then waits for its push in _finished)


class RolloutWorker(WorkerEvaluation):
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
        # (prompt, its tokens, samples, the source's cursor before its batch was drawn) to submit
        self._planned: deque[tuple[Prompt, list[int], int, dict | None]] = deque()
        self._recorded: dict | None = None  # the prompt cursor last recorded in the buffer
        self._in_flight: dict[object, _GroupInFlight] = {}  # generating, by their future, in submission order
        # their futures' callbacks put the futures here: a wait costs O(1), not a waiter on every future in flight.
        # The callback is the queue's own method, not a closure over the group: a group -> future -> callback ->
        # group cycle would leave every group to the cyclic garbage collector (seconds of full collections a minute)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._finished: list[_GroupInFlight] = []  # generated, waiting to be pushed together (_push_due)
        self._idle_since: float | None = None
        self._outcomes: list[tuple[str, int, int]] = []  # (prompt id, attempts, passes) not yet in prompt_stats
        self._outcomes_at = 0.0  # when they were last written
        self.counters = {"groups": 0, "samples": 0, "tokens": 0, "weight_loads": 0, "weight_load_seconds": 0.0,
                         "weight_load_failures": 0, "engine_errors": 0, "pilot_prompts": 0, "gen_seconds": 0.0,
                         "engine_idle_s": 0.0, "buffer_errors": 0,
                         **dict.fromkeys(METRIC_COUNTERS, 0)}
        self._reported = dict.fromkeys(METRIC_COUNTERS, 0)  # what push() has passed on to the buffer's stats
        # this incarnation's reservations, leased: a restarted worker (same id) must not inherit a dead one's
        self.holder, self._renewed = f"worker-{worker_id}-{uuid.uuid4().hex[:8]}", 0.0

    @property
    def version(self) -> int:
        return self.engine.version

    # -- called by the trainer / driver (rollout.api.WeightReceiver) --------------------------------------
    def receive_weights(self, version: int, weights: dict) -> None:
        """The weights of `version` in a transport's wire format (trainer/weight_sync.py). Those in memory or on
        disk are stashed (only the newest) for the loop to load; those the sender streams or reuses the buffers of
        (nccl, cuda_ipc) are loaded now, and an error here reaches the trainer (the engine keeps its old weights)."""
        if weights.get("kind") in LOADED_ON_RECEIPT:
            with self._apply_lock:
                try:
                    self._load(version, weights)
                except Exception:
                    self.counters["weight_load_failures"] += 1
                    raise
            return
        check_weights(weights)  # a file a worker cannot read fails the send, not a later load
        with self._pending_lock:
            if self._pending is None or version > self._pending[0]:
                self._pending = (version, weights)

    def gpu_uuid(self) -> str:
        return self.engine.gpu_uuid()

    def weight_group_size(self) -> int:
        return self.engine.weight_group_size()

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> None:
        self.engine.join_weight_group(host, port, first_rank, world_size)

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        held = len(self._in_flight) + len(self._finished)  # the admission slots this worker holds
        return {"worker_id": self.worker_id, **self.counters, "groups_in_flight": held,
                **{f"engine/{k}": v for k, v in self.engine.stats().items()}, "version": self.version,
                **{f"reward/{k}": v for k, v in self.scorer.counters().items()}}

    def prompt_cursor(self) -> dict | None:
        """Where this worker's prompt source stands now (a data file's epoch and row, a task's random stream), or None
        for a source that keeps no state."""
        return self.prompts.state() if hasattr(self.prompts, "state") else None

    def restore_prompt_cursor(self, cursor: dict | None) -> None:
        """Continue the prompt source from a recorded cursor (a checkpoint's, or the one this worker's dead
        incarnation recorded; before `run`), and record it as this worker's."""
        if cursor is not None and hasattr(self.prompts, "restore"):
            self.prompts.restore(cursor)
            self._planned.clear()  # drawn from the old position
            self._record_cursor()

    def _record_cursor(self) -> None:
        """Record (when it moved) where the source stood before it handed out the oldest prompt not pushed yet:
        the generating ones were drawn before the planned ones, in order (see the module's docstring)."""
        unpushed = sorted([*self._finished, *self._in_flight.values()], key=lambda g: g.submitted_at)
        pending = [g.drawn_at for g in unpushed] or [p[3] for p in self._planned]
        cursor = pending[0] if pending else self.prompt_cursor()
        if cursor is not None and cursor != self._recorded:
            self.buffer.set_prompt_cursor(self.worker_id, cursor)
            self._recorded = cursor

    def held_out_prompts(self) -> list[dict]:
        return [{"text": p.text, "fields": p.fields} for p in self.prompts.held_out()]

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Generate until stop(); returns the counters. Redis going away for less than BUFFER_OUTAGE_S (a server
        restarting from its file) costs the groups that finished meanwhile, not the worker."""
        down_since = None
        while not self._stop.is_set():
            try:
                self.step()
                down_since = None
            except BufferUnavailable as e:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > BUFFER_OUTAGE_S:
                    raise
                self.counters["buffer_errors"] += 1
                log.warning("worker %d: %s; retrying", self.worker_id, str(e).splitlines()[0])
                time.sleep(1.0)
        if self._finished:
            finished, self._finished = self._finished, []
            self._push(finished)
        self._record_outcomes(force=True)
        # the groups still in the engine will not be pushed: their admission slots go back
        self.buffer.push([], released=len(self._in_flight), holder=self.holder)
        self._in_flight = {}
        for scorer in (self.scorer, *self._eval_scorers.values()):
            scorer.close()  # safe: the pool restarts if evaluate() is called later
        return self.stats()

    def step(self, wait_s: float | None = None) -> int:
        """One turn of the loop; returns the number of groups pushed (0: none is due yet, see _push_due)."""
        self._apply_pending_weights()
        self._renew_lease()
        self._record_outcomes()  # also while the guard holds the loop back: a worker killed idle loses none of them
        self._fill()
        self._track_idle()
        if self._in_flight:
            self._collect(self.cfg.idle_sleep_s if wait_s is None else wait_s)
        elif not self._finished:
            time.sleep(self.cfg.idle_sleep_s)  # the admission guard says no: poll again
            return 0
        if not self._push_due():
            return 0
        finished, self._finished = self._finished, []
        pushed = self._push(finished)
        self._record_cursor()  # after the push, not before: a worker dying in between draws these again
        return pushed

    def _collect(self, wait_s: float) -> None:
        """Wait up to `wait_s` (less while finished groups wait for their push) for groups to finish; submit their
        successors at once, before they are scored and pushed."""
        if self._finished:
            wait_s = min(wait_s, max(0.0, self._finished[0].finished_at + PUSH_LINGER_S - time.perf_counter()))
        try:
            done = [self._done.get(timeout=wait_s)]
        except queue.Empty:
            return
        while not self._done.empty():
            done.append(self._done.get_nowait())
        now = time.perf_counter()
        for future in done:
            g = self._in_flight.pop(future, None)
            if g is not None:  # not one abandoned by an earlier run()
                g.finished_at = now
                self._finished.append(g)
        self._fill()

    def _push_due(self) -> bool:
        """Finished groups are pushed together: one scoring call, one statistics update and one push per batch
        instead of per group (each costs a Redis round trip and a thread hand-off on the rollout worker's CPU).
        They wait at most PUSH_LINGER_S, and not at all when nothing else is generating (a synchronous step's
        last groups, or a worker held back by the admission guard), so no trainer waits on the lingering."""
        if not self._finished:
            return False
        return (not self._in_flight or len(self._finished) >= max(1, self.cfg.groups_in_flight // 4)
                or time.perf_counter() - self._finished[0].finished_at >= PUSH_LINGER_S)

    def _renew_lease(self) -> None:
        """Once a second: the reservations of groups still generating stay this worker's (buffer.lease_ttl_s)."""
        now = time.monotonic()
        if now - self._renewed >= LEASE_RENEW_S:
            self.buffer.renew(self.holder)
            self._renewed = now

    def _track_idle(self) -> None:
        """engine_idle_s: wall-clock during which the engine ran no request of this worker's (what a synchronous
        step loses to its slowest sample, and any worker to the admission guard)."""
        now = time.perf_counter()
        if self._idle_since is not None:
            self.counters["engine_idle_s"] += now - self._idle_since
        self._idle_since = now if self.engine.in_flight() == 0 else None

    def _fill(self) -> None:
        """Submit a group for every slot the admission guard grants, up to rollout.groups_in_flight in flight."""
        free = self.cfg.groups_in_flight - len(self._in_flight)
        if free <= 0:
            return
        granted, version = self.buffer.admit(free, holder=self.holder)
        if granted == 0:
            return
        if version > self.version:  # the trainer stores weights before it bumps the version
            self._apply_pending_weights()
        cfg, unused = self.cfg, 0
        for _ in range(granted):
            if not self._planned:
                self._plan_more()
            if not self._planned:  # nothing fits rollout.max_model_len: give the slot back
                unused += 1
                continue
            prompt, ids, n, drawn_at = self._planned.popleft()
            group = _GroupInFlight(prompt, ids, None, time.perf_counter(), drawn_at)
            group.future = self.engine.submit(ids, n=n, max_new_tokens=cfg.max_new_tokens,
                                              temperature=cfg.temperature, top_p=cfg.top_p)
            self._in_flight[group.future] = group
            group.future.add_done_callback(self._done.put)
        if unused:
            self.buffer.push([], released=unused, holder=self.holder)

    def _plan_more(self) -> None:
        """The next groups_in_flight prompts, encoded, with their sample counts; prompts too long are skipped."""
        cfg, ready, drawn_at = self.cfg, [], self.prompt_cursor()
        for p in self._draw_prompts(cfg.groups_in_flight):
            ids = self.engine.encode(p.text)
            if len(ids) + cfg.max_new_tokens > self.engine.max_model_len:
                self.counters["too_long_prompts"] += 1
                log.warning("prompt %s has %d tokens; with max_new_tokens=%d it exceeds max_model_len=%d; "
                            "skipped (raise rollout.max_model_len or shorten the prompt)", p.prompt_id, len(ids),
                            cfg.max_new_tokens, self.engine.max_model_len)
                continue
            ready.append((p, ids))
        if ready:
            counts = self._plan([p for p, _ in ready])
            self._planned.extend((p, ids, n, drawn_at) for (p, ids), n in zip(ready, counts))

    def _draw_prompts(self, n: int) -> list[Prompt]:
        """n prompts from the source, skipping those already solved often enough (max_pass_rate < 1)."""
        cfg = self.cfg
        if cfg.max_pass_rate >= 1.0:
            return self.prompts.next(n)
        self._record_outcomes(force=True)  # read this worker's own latest results too
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
        self._record_outcomes(force=True)
        stats = self.prompt_stats.get_stats([p.prompt_id for p in prompts])
        plan = plan_samples(stats, self.cfg.group_size, self.cfg.allocation, self.cfg.gvm)
        self.counters["pilot_prompts"] += plan.pilots
        return plan.counts

    def _filter(self, groups: list[Group]) -> list[Group]:
        """Note per-prompt pass statistics for every scored group (_record_outcomes writes them), then drop the
        groups without signal."""
        self._outcomes += [(g.prompt_id, len(g.samples), int((g.rewards >= self.cfg.pass_threshold).sum()))
                           for g in groups]
        if not self.cfg.drop_zero_variance_groups:
            return groups
        kept = [g for g in groups if len(set(g.rewards.tolist())) > 1]
        self.counters["filtered_zero_variance"] += len(groups) - len(kept)
        return kept

    def _record_outcomes(self, force: bool = False) -> None:
        """Write the noted pass statistics to prompt_stats, if PROMPT_STATS_FLUSH_S have passed (or `force`); each
        turn of the loop calls it. Kept for the next try if Redis is away; a worker that dies loses at most the last
        PROMPT_STATS_FLUSH_S of them (statistics, not samples)."""
        if not self._outcomes:
            return
        now = time.monotonic()
        if force or now - self._outcomes_at >= PROMPT_STATS_FLUSH_S:
            self.prompt_stats.record(self._outcomes)
            self._outcomes, self._outcomes_at = [], now

    def _apply_pending_weights(self) -> None:
        from rollout.engine import WeightUpdateError

        with self._apply_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, None
            if pending is None or pending[0] <= self.version:
                return
            try:
                self._load(*pending)
            except WeightUpdateError as e:  # the engine still serves its old weights; the next version retries
                self.counters["weight_load_failures"] += 1
                log.error("worker %d: %s", self.worker_id, e)

    def _load(self, version: int, weights: dict) -> None:
        t0 = time.perf_counter()
        if weights.get("kind") == "arrays":
            self.engine.load_weights(version, tensors_of(weights))
        else:
            self.engine.load_weights_from(version, weights)
        self.counters["weight_loads"] += 1
        self.counters["weight_load_seconds"] += time.perf_counter() - t0

    def _push(self, finished: list[_GroupInFlight]) -> int:
        """Score the finished groups, record their statistics, push those with signal; returns how many."""
        ok, scored, pushed = [], [], []
        for g in finished:
            try:
                ok.append((g, g.future.result()))
            except Exception as e:  # the engine failed this group: its slot goes back, the loop goes on
                self.counters["engine_errors"] += 1
                log.error("worker %d: generation of prompt %s failed: %s", self.worker_id, g.prompt.prompt_id, e)
        try:
            scored = self._groups(ok)
            pushed = self._filter(scored)
        finally:  # a failure must still give the admission slots back
            delta = {k: self.counters[k] - self._reported[k] for k in METRIC_COUNTERS}
            self._reported.update({k: self.counters[k] for k in METRIC_COUNTERS})
            self.buffer.push(pushed, released=len(finished) - len(pushed), holder=self.holder,
                             gen_tokens=sum(g.num_response_tokens for g in scored), counters=delta)
        self._record_outcomes()
        return len(pushed)

    def _groups(self, finished: list[tuple[_GroupInFlight, list]]) -> list[Group]:
        """Finished groups scored by the reward function (those it drops are left out)."""
        now = time.perf_counter()
        scored = self.scorer.score_groups(
            [(g.prompt.text, [c.text for c in completions], g.prompt.fields,
              [{"response_tokens": len(c.token_ids), "finish_reason": c.finish_reason} for c in completions])
             for g, completions in finished])
        groups = []
        for (g, completions), score in zip(finished, scored):
            self.counters["reward_errors"] += sum(s.failure is not None for s in score.samples)
            seconds = now - g.submitted_at
            self.counters["gen_seconds"] += seconds
            if score.drop:  # reward.on_failure=drop_group: its admission slot goes back
                continue
            prompt_ids = np.asarray(g.prompt_ids, np.int32)  # one array for the group: samples only read it
            samples = [Sample(prompt_ids=prompt_ids, response_ids=c.token_ids,
                              behaviour_logprobs=c.logprobs, token_versions=c.token_versions,
                              reward=s.reward, finish_reason=c.finish_reason, reward_details=s.details,
                              gen_seconds=seconds)
                       for c, s in zip(completions, score.samples)]
            groups.append(Group(prompt_id=g.prompt.prompt_id, prompt=g.prompt.text, samples=samples,
                                worker_id=self.worker_id, fields=g.prompt.fields))
            self.counters["groups"] += 1
            self.counters["samples"] += len(samples)
            self.counters["tokens"] += sum(len(s.response_ids) for s in samples)
        return groups
