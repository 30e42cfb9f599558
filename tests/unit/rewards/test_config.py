"""RewardConfig as a Hydra structured config, and start-up validation by check_config."""
from __future__ import annotations

import psutil
import pytest
from omegaconf import OmegaConf

from rewards import RewardConfig, RewardError, RewardSpec, SandboxConfig, check_config


def test_default_is_one_exact_answer_reward_with_weight_one():
    cfg = RewardConfig()
    assert [(s.name, s.weight, s.kwargs) for s in cfg.rewards] == [("exact_answer", 1.0, {})]
    assert (cfg.on_failure, cfg.failure_score) == ("fixed_score", 0.0)
    [resolved] = check_config(cfg)
    assert (resolved.label, resolved.in_pool, resolved.batched) == ("exact_answer", False, False)


def test_structured_config_takes_overrides_and_converts_back():
    schema = OmegaConf.structured(RewardConfig)
    override = OmegaConf.from_dotlist([
        "rewards=[{name: math}, {name: format, weight: 0.2, kwargs: {required_tags: [think, answer]}}]",
        "on_failure=drop_group", "sandbox.cpu_seconds=1.5"])
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, override))
    assert isinstance(cfg, RewardConfig) and isinstance(cfg.rewards[1], RewardSpec)
    assert cfg.rewards[1].kwargs == {"required_tags": ["think", "answer"]}
    assert cfg.sandbox == SandboxConfig(cpu_seconds=1.5)
    assert [r.label for r in check_config(cfg)] == ["math", "format"]


def test_structured_config_rejects_a_misspelt_key():
    with pytest.raises(Exception, match="timeout_sec"):
        OmegaConf.merge(OmegaConf.structured(RewardConfig), OmegaConf.from_dotlist(["timeout_sec=3"]))


def test_check_config_resolves_traits_and_labels():
    cfg = RewardConfig(rewards=[RewardSpec("math"), RewardSpec("rewards.builtin:exact_answer", weight=0.5),
                                RewardSpec("python_tests", timeout_s=30.0),
                                RewardSpec("exact_answer", label="exact_again", run_in="process")])
    resolved = {r.label: r for r in check_config(cfg)}
    assert set(resolved) == {"math", "exact_answer", "python_tests", "exact_again"}
    assert resolved["math"].in_pool and resolved["python_tests"].in_pool and resolved["exact_again"].in_pool
    assert not resolved["exact_answer"].in_pool and resolved["exact_answer"].weight == 0.5
    assert resolved["python_tests"].wants_sandbox and not resolved["math"].wants_sandbox
    assert resolved["math"].timeout_s == 10.0 and resolved["python_tests"].timeout_s == 30.0


def test_check_config_starts_no_process():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    check_config(RewardConfig(rewards=[RewardSpec("math"), RewardSpec("python_tests", timeout_s=30.0)]))
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def _problems(cfg: RewardConfig) -> str:
    with pytest.raises(RewardError) as e:
        check_config(cfg)
    return str(e.value)


def test_unknown_name_names_the_entry_and_lists_registered_names():
    msg = _problems(RewardConfig(rewards=[RewardSpec("exact_answer"), RewardSpec("maths")]))
    assert "reward.rewards[1] (maths): unknown reward 'maths'" in msg
    assert "registered names: exact_answer, format, length_penalty, math, python_tests, reasoning_gym" in msg


def test_path_that_does_not_import_is_reported_with_the_available_names():
    msg = _problems(RewardConfig(rewards=[RewardSpec("no_such_pkg_xyz.scoring:reward")]))
    assert "cannot import module 'no_such_pkg_xyz.scoring'" in msg
    assert "available: registered names: exact_answer, format, length_penalty, math, python_tests, reasoning_gym" in msg


def test_wrong_signature_is_reported(plugin):
    name = plugin("def score(completion):\n    return 1.0\n")
    msg = _problems(RewardConfig(rewards=[RewardSpec(f"{name}:score")]))
    assert "must accept (prompt, completion, **fields); its signature is (completion)" in msg
    assert "available: registered names:" in msg


def test_wrong_signature_of_a_batched_reward_names_the_batched_form(plugin):
    name = plugin("def score(completions):\n    return [1.0]\nscore.batched = True\n")
    msg = _problems(RewardConfig(rewards=[RewardSpec(f"{name}:score")]))
    assert "must accept (prompts, completions, **fields)" in msg


def test_every_problem_is_listed_at_once():
    msg = _problems(RewardConfig(
        rewards=[RewardSpec("nope"), RewardSpec("format", kwargs={"pattern": "(["}),
                 RewardSpec("length_penalty", kwargs={"max_len": 10, "buffer": 20}),
                 RewardSpec("exact_answer", weight=float("nan")), RewardSpec("exact_answer", run_in="gpu"),
                 RewardSpec("exact_answer", timeout_s=0.0)],
        on_failure="skip", failure_score=float("inf"), timeout_s=-1.0))
    for fragment in ["unknown reward 'nope'", "not a valid regex", "0 < buffer <= max_len", "weight=nan",
                     "run_in='gpu'", "timeout_s=0.0", "reward.on_failure='skip'", "reward.failure_score=inf",
                     "reward.timeout_s=-1.0"]:
        assert fragment in msg


def test_duplicate_labels_are_refused():
    msg = _problems(RewardConfig(rewards=[RewardSpec("exact_answer"), RewardSpec("exact_answer", weight=2.0)]))
    assert "share the label 'exact_answer': set `label` on one" in msg


def test_empty_reward_list_is_refused():
    assert "reward.rewards is empty" in _problems(RewardConfig(rewards=[]))


def test_process_mode_needs_an_importable_function():
    from rewards import registry

    def local_reward(prompt, completion, **fields):
        return 1.0

    registry.REWARDS.register("test_local_reward")(local_reward)
    try:
        msg = _problems(RewardConfig(rewards=[RewardSpec("test_local_reward", run_in="process")]))
    finally:
        del registry.REWARDS._entries["test_local_reward"]
    assert "cannot run in the process pool" in msg and "set run_in: thread" in msg


def test_code_reward_time_limit_must_cover_the_sandbox_wall_clock():
    msg = _problems(RewardConfig(rewards=[RewardSpec("python_tests")], timeout_s=10.0,
                                 sandbox=SandboxConfig(wall_seconds=6.0)))
    assert "timeout_s=10 must exceed reward.sandbox.wall_seconds + 5 s of start-up (11)" in msg


def test_pool_needs_workers():
    assert "pool_workers=0" in _problems(RewardConfig(rewards=[RewardSpec("math")], pool_workers=0))


def test_sandbox_limits_must_be_positive():
    msg = _problems(RewardConfig(sandbox=SandboxConfig(memory_mb=0)))
    assert "reward.sandbox: every limit must be > 0" in msg
