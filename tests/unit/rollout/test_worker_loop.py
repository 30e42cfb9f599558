"""The rollout worker loop over its contracts: the in-process MemoryBuffer (the Buffer contract's second backend),
the real vLLM engine on the tiny model, the real addition task and reward scorer. Integration and e2e tests run
the same loop against the real Redis server."""
from __future__ import annotations

import gc
import itertools
import time
import uuid
import weakref
from concurrent.futures import wait

import numpy as np
import pytest
import torch

from buffer.api import BufferConfig, connect
from rewards import RewardConfig, build_scorer
from rollout.api import DataConfig, Prompt, RolloutConfig, SourceContext, TaskConfig
from rollout.sources.indexed import IndexedSource
from rollout.tasks.addition import addition_source
from rollout.worker import RolloutWorker


class ListSource:
    """A PromptSource over fixed prompts, repeated (a real second implementation of the contract)."""

    def __init__(self, prompts: list[Prompt]):
        self._cycle, self._prompts = itertools.cycle(prompts), prompts

    def next(self, n: int) -> list[Prompt]:
        return [next(self._cycle) for _ in range(n)]

    def held_out(self) -> list[Prompt]:
        return self._prompts


def run_until(worker, groups: int, timeout_s: float = 120.0) -> int:
    """Turn the loop until at least `groups` groups were pushed; returns how many."""
    pushed, deadline = 0, time.monotonic() + timeout_s
    while pushed < groups:
        assert time.monotonic() < deadline, f"only {pushed} of {groups} groups pushed in {timeout_s}s"
        pushed += worker.step(wait_s=0.5)
    return pushed


def make_worker(engine, *, prompts=None, eta=1, groups_per_step=4, rollout=None, decay=1.0):
    cfg = rollout or RolloutConfig(group_size=4, groups_in_flight=4, max_new_tokens=6)
    buf = connect(f"memory://{uuid.uuid4().hex}", "test", BufferConfig(eta=eta, groups_per_step=groups_per_step,
                                                                        max_in_flight=8, max_buffered=64))
    buf.initialize(version=engine.version)  # the engine holds the weights of the run's version
    source = prompts or addition_source(DataConfig(), TaskConfig(held_out_size=16), SourceContext())
    worker = RolloutWorker(0, cfg, engine=engine, prompts=source, buffer=buf, prompt_stats=buf.prompt_stats(decay=decay),
                           scorer=build_scorer(RewardConfig()), make_scorer=build_scorer)
    return worker, buf


def test_the_loop_pushes_whole_scored_groups_tagged_with_the_engine_version(vllm_engine):
    worker, buf = make_worker(vllm_engine)
    accepted = buf.stats()["accepted"]  # version * B at start (the engine's version may be past 0)
    pushed = run_until(worker, 4)
    stats = buf.stats()  # every slot counted: pushed, or held by a group still in the engine
    assert (stats["running"], stats["accepted"] - accepted, stats["buffered"]) == (
        worker.stats()["groups_in_flight"], pushed, pushed)
    batch = buf.pop(4, timeout_s=1)
    for group in batch.groups:
        assert len(group.samples) == 4 and group.fields["answer"]
        for s in group.samples:
            assert len(s.response_ids) == len(s.behaviour_logprobs) == len(s.token_versions) > 0
            assert np.all(s.token_versions == vllm_engine.version) and np.all(s.behaviour_logprobs <= 0)
            assert s.reward in (0.0, 1.0)
    assert pushed > 4 or stats["gen_tokens"] == sum(g.num_response_tokens for g in batch.groups)


def test_the_admission_guard_holds_the_loop_back(vllm_engine):
    worker, buf = make_worker(vllm_engine, eta=0, groups_per_step=4)
    assert run_until(worker, 4) == 4  # (eta + v + 1) * B = 4 groups ahead of the trainer at eta = 0
    tokens = buf.stats()["gen_tokens"]
    assert sum(worker.step(wait_s=0.1) for _ in range(5)) == 0
    assert buf.stats()["gen_tokens"] == tokens and vllm_engine.in_flight() == 0  # nothing generated
    buf.commit(buf.pop(4, timeout_s=1))
    buf.bump_version()
    assert run_until(worker, 4) == 4  # the next version opens the next step's slots


def test_a_pushed_group_is_freed_by_reference_count_not_left_to_the_cycle_collector(vllm_engine):
    # a group -> future -> done-callback -> group cycle kept every group and its completions for the cyclic
    # collector: on the actor's heap (vLLM, torch) each full collection took ~0.4 s, 22 a minute
    worker, buf = make_worker(vllm_engine)  # eta 1, B 4: 8 groups admitted, then the guard holds the loop
    gc.collect()
    gc.disable()
    try:
        worker.step(wait_s=0.0)  # the first groups are submitted
        refs = [weakref.ref(g) for g in worker._in_flight.values()]
        assert refs
        run_until(worker, 8)  # all 8 admitted groups pushed: the first ones among them
        alive = [r() for r in refs if r() is not None]
    finally:
        gc.enable()
    assert alive == []


def test_weights_received_apply_before_the_next_submission_and_tag_its_tokens(vllm_engine, tiny_model_path):
    from safetensors.torch import load_file

    original = load_file(f"{tiny_model_path}/model.safetensors")
    worker, buf = make_worker(vllm_engine, eta=4)
    start = vllm_engine.version
    torch.manual_seed(0)
    noisy = {k: (v + 0.01 * torch.randn_like(v)).numpy() for k, v in original.items()}
    try:
        worker.receive_weights(start + 2, {"kind": "arrays", "arrays": noisy})
        worker.receive_weights(start + 1, {"kind": "arrays", "arrays": noisy})  # older than what is pending: ignored
        buf.bump_version()
        buf.bump_version()
        assert run_until(worker, 4) == 4
        groups = buf.pop(4, timeout_s=1).groups
        assert {int(v) for g in groups for s in g.samples for v in s.token_versions} == {start + 2}
        assert worker.stats()["weight_loads"] == 1 and worker.version == start + 2
    finally:
        vllm_engine.load_weights(start, original)


def test_a_prompt_too_long_is_skipped_before_it_takes_a_slot(vllm_engine):
    long_prompt = Prompt("long", "1+" * 40 + "1=", {"answer": "41"})
    worker, buf = make_worker(vllm_engine, prompts=ListSource([long_prompt, Prompt("p", "2+3=", {"answer": "5"})]))
    run_until(worker, 4)  # no slot goes to the long prompt
    stats = buf.stats()
    assert {g.prompt_id for g in buf.pop(4, timeout_s=1).groups} == {"p"}
    assert stats["too_long_prompts"] >= 2 and stats["released"] == 0
    assert stats["running"] == worker.stats()["groups_in_flight"]


def test_the_pass_rate_filter_reads_the_recent_rate_under_gvm_decay(vllm_engine):
    """decay 0.9 (allocation=gvm): passes and attempts decay alike. 30 all-pass records leave 240 plain attempts
    but about 76 decayed passes: read against plain attempts (the old bug) the rate looks like 0.32, not 1.0."""
    easy, hard = Prompt("easy", "1+1=", {"answer": "2"}), Prompt("hard", "2+2=", {"answer": "4"})
    cfg = RolloutConfig(group_size=4, groups_in_flight=2, max_new_tokens=6, max_pass_rate=0.5,
                        pass_rate_min_attempts=16)
    worker, buf = make_worker(vllm_engine, prompts=ListSource([easy, hard]), rollout=cfg, decay=0.9)
    for _ in range(30):
        worker.prompt_stats.record([("easy", 8, 8), ("hard", 8, 0)])
    stat = worker.prompt_stats.get_stats(["easy"])[0]
    assert stat.seen == 240 and stat.pass_rate == pytest.approx(1.0)
    assert run_until(worker, 2) >= 2
    assert {g.prompt_id for g in buf.pop(2, timeout_s=1).groups} == {"hard"}
    assert worker.counters["skipped_easy_prompts"] >= 2


def test_evaluate_scores_greedy_and_sampled_success_on_held_out_prompts(vllm_engine):
    worker, _ = make_worker(vllm_engine)
    result = worker.evaluate(worker.held_out_prompts(), max_new_tokens=6, samples=2)
    assert result["n"] == 16 and result["version"] == vllm_engine.version
    assert 0.0 <= result["success"] <= 1.0 and 0.0 <= result["sampled_success"] <= 1.0


def test_an_evaluation_set_reports_mean_and_pass_at_k_with_its_own_reward(vllm_engine):
    from rewards import RewardSpec

    worker, _ = make_worker(vllm_engine)
    prompts = worker.held_out_prompts()
    sampled = worker.evaluate_set("sums", prompts, samples=4, temperature=1.0, max_new_tokens=6)
    assert sampled["n"] == 16 and 0.0 < sampled["mean@4"] <= sampled["pass@4"] <= 1.0  # any of 4 >= their mean
    assert worker.evaluate_set("sums", prompts, samples=4, temperature=1.0, max_new_tokens=6) == sampled  # seeded
    greedy = worker.evaluate_set("sums", prompts, samples=1, max_new_tokens=6)
    assert greedy["mean@1"] == greedy["pass@1"] == worker.evaluate(prompts, max_new_tokens=6)["success"]
    # its own reward: a format check that every completion fails (no <answer> tag)
    tagged = worker.evaluate_set("tags", prompts, RewardConfig(rewards=[RewardSpec(
        "format", kwargs={"required_tags": ["answer"]})]), samples=1, max_new_tokens=6)
    assert tagged["mean@1"] == 0.0


def drain(buf) -> set[str]:
    """The prompt ids of every group in the buffer, taken out (popped and committed)."""
    batch = buf.pop(buf.stats()["buffered"], timeout_s=1)
    buf.commit(batch)
    return {g.prompt_id for g in batch.groups}


def test_a_restarted_worker_draws_again_every_prompt_its_dead_incarnation_did_not_push(vllm_engine):
    """The cursor recorded in the buffer is where the source stood before the oldest prompt drawn and not pushed:
    a worker that starts from it (as rollout/actor.py does after a restart) hands out every such prompt again
    (at least once), and few of those pushed already (not the source from its start)."""
    cfg = RolloutConfig(group_size=4, groups_in_flight=4, max_new_tokens=6)
    rows = [Prompt(str(i), f"{i % 50}+{i // 50}=", {"answer": str(i % 50 + i // 50)}) for i in range(400)]
    dead, buf = make_worker(vllm_engine, prompts=IndexedSource(rows, [], SourceContext(), shuffle=False),
                            rollout=cfg, eta=20)
    run_until(dead, 12)
    drawn = dead.prompts.position  # the first `drawn` rows (shuffle off): generating, planned, or pushed
    pushed = drain(buf)
    not_pushed = {str(i) for i in range(drawn)} - pushed
    cursor = buf.prompt_cursor(0)
    assert cursor["epoch"] == 0 and not_pushed and min(map(int, not_pushed)) >= cursor["position"]
    assert cursor["position"] >= len(pushed) - 2 * cfg.groups_in_flight  # pushed ones seen again: at most 8

    restarted = RolloutWorker(0, cfg, engine=vllm_engine, prompts=IndexedSource(rows, [], SourceContext(),
                              shuffle=False), buffer=buf, prompt_stats=buf.prompt_stats(),
                              scorer=build_scorer(RewardConfig()))
    restarted.restore_prompt_cursor(buf.prompt_cursor(0))
    again, deadline = set(), time.monotonic() + 120
    while not not_pushed <= again:
        assert time.monotonic() < deadline, not_pushed - again
        if restarted.step(wait_s=0.5):
            again |= drain(buf)
    assert min(map(int, again)) == cursor["position"]  # it went on from the cursor, not from row 0
    for worker in (dead, restarted):  # the shared engine is left with nothing in flight
        wait([g.future for g in worker._in_flight.values()], timeout=60)


def test_pass_statistics_are_written_in_batches_and_all_of_them_by_the_loops_end(vllm_engine, monkeypatch):
    """The loop notes each scored group's (attempts, passes) and writes them at most every PROMPT_STATS_FLUSH_S
    (one Redis round trip instead of one per push); stopping writes the rest: none is lost."""
    import rollout.worker as worker_module

    monkeypatch.setattr(worker_module, "PROMPT_STATS_FLUSH_S", 3600.0)
    prompts = [Prompt("one", "1+1=", {"answer": "2"}), Prompt("two", "2+2=", {"answer": "4"})]
    worker, _ = make_worker(vllm_engine, prompts=ListSource(prompts))
    worker._outcomes_at = time.monotonic()  # as if just written: the next write is an hour away
    assert run_until(worker, 4) >= 4
    assert [s.seen for s in worker.prompt_stats.get_stats(["one", "two"])] == [0, 0]  # noted, not written yet
    worker.stop()
    worker.run()  # stops at once, writing what it noted
    stats = worker.prompt_stats.get_stats(["one", "two"])
    assert sum(s.seen for s in stats) == worker.counters["samples"] and min(s.seen for s in stats) > 0


def test_a_worker_held_back_by_the_guard_still_writes_its_statistics_within_the_flush_interval(vllm_engine,
                                                                                              monkeypatch):
    """The statistics noted by the last pushes before the guard holds the loop back are written while it waits,
    not left in memory until the next push (a worker killed while held lost them: tests/e2e/test_resume.py)."""
    import rollout.worker as worker_module

    monkeypatch.setattr(worker_module, "PROMPT_STATS_FLUSH_S", 0.5)
    prompts = [Prompt("one", "1+1=", {"answer": "2"}), Prompt("two", "2+2=", {"answer": "4"})]
    worker, _ = make_worker(vllm_engine, prompts=ListSource(prompts))  # eta 1, B 4: 8 groups, then held
    assert run_until(worker, 8) == 8
    worker._outcomes_at = time.monotonic()  # as if just written: what the last pushes noted waits for the interval
    assert worker._outcomes
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert worker.step(wait_s=0.1) == 0  # held: nothing generated, nothing pushed
    stats = worker.prompt_stats.get_stats(["one", "two"])
    assert worker._outcomes == [] and sum(s.seen for s in stats) == worker.counters["samples"]
