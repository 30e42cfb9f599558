"""Whole runs on real data through the README's command: a JSONL file with a prompt template whose fields reach
the reward, and a reasoning-gym task scored by its own verifier; a bad data key stops the run before any engine."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_run import ROOT, run_job, train_cmd  # noqa: E402  (the same runner as the other whole-run tests)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def addition_jsonl(path, n=600, seed=0) -> str:
    """Question/answer rows in the common math-data shape, here 2-digit sums the tiny model has half-learnt."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randrange(100), rng.randrange(100)
            f.write(json.dumps({"question": f"{a}+{b}", "answer": str(a + b), "source": "synthetic"}) + "\n")
    return str(path)


def test_a_jsonl_file_with_a_template_feeds_prompts_and_answers_to_the_reward(tmp_path, tiny_model_path):
    data = addition_jsonl(tmp_path / "train.jsonl")
    other = addition_jsonl(tmp_path / "eval.jsonl", n=60, seed=1)
    eval_set = (f"eval.sets=[{{name:sums,data:{{source:files,path:'{other}',template:'{{question}}=',"
                f"fields:[answer]}},samples:4,temperature:1.0}}]")
    summary, steps = run_job(tmp_path / "run", tiny_model_path, "run.total_steps=6", "run.eval_every=6",
                             "data.source=files", f"data.path={data}", "data.template='{question}='",
                             "data.fields=[answer]", "data.held_out_size=100", eval_set)
    assert summary["steps"] == 6 and summary["held_out_size"] == 100
    # the evaluation set: 4 seeded samples per problem at T = 1, logged before the first step and after the last
    for record in (steps[0], steps[-1]):
        assert 0.0 < record["eval/sums/mean@4"] <= record["eval/sums/pass@4"] <= 1.0
    assert summary["eval/sums/pass@4"] == steps[-1]["eval/sums/pass@4"]
    plots = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert plots == ["held_out.png", "reward.png", "staleness.png", "throughput.png", "timing.png"]
    # exact_answer scores against the file's answer column: the warm-started model solves a good share of these
    # (about 30% on the addition task's own held-out set); a template or field that did not arrive scores 0
    assert summary["held_out_success_before"] > 0.1
    assert sum(s["reward_mean"] for s in steps if s["step"] > 0) / 6 > 0.1


def test_a_reasoning_gym_task_runs_scored_by_its_own_verifier(tmp_path, tiny_model_path):
    summary, steps = run_job(tmp_path, tiny_model_path, "run.total_steps=4", "run.eval_every=4",
                             "data.source=reasoning_gym", "data.task=basic_arithmetic", "data.size=400",
                             "data.held_out_size=50", "reward.rewards=[{name:reasoning_gym}]",
                             "rollout.max_new_tokens=6")
    # 50 held-out problems from another seed, minus those the 400 training problems also hold (1 for this seed)
    assert summary["steps"] == 4 and 45 <= summary["held_out_size"] <= 50
    last = steps[-1]
    assert last["reward_errors_total"] == 0  # every sample was scored by the task's verifier, none failed
    assert 0.0 <= last["held_out_success"] <= 1.0


def test_a_misspelt_data_key_stops_the_run_before_any_engine(tmp_path, tiny_model_path):
    data = addition_jsonl(tmp_path / "train.jsonl", n=20)
    proc = subprocess.run(train_cmd(str(tmp_path / "run"), tiny_model_path, "data.source=files", f"data.path={data}",
                                    "data.prompt_key=questoin"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no column data.prompt_key='questoin'; columns: question, answer, source" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
