"""Checkpoint directories: atomic completion, pruning, and which one run.resume finds."""
from __future__ import annotations

import os
import time

import pytest

from launcher import checkpoints


def make(run_dir, step: int, keep: int = 2) -> str:
    partial = checkpoints.begin(str(run_dir), step)
    return checkpoints.finish(partial, {"step": step}, keep)


def test_a_checkpoint_becomes_the_latest_only_when_complete_and_the_newest_k_stay(tmp_path):
    make(tmp_path, 2)
    partial = checkpoints.begin(str(tmp_path), 4)  # a crash mid-save: never finished
    assert checkpoints.find(str(tmp_path), str(tmp_path))[1].endswith("step-000002")
    assert os.path.isdir(partial)
    make(tmp_path, 4)
    make(tmp_path, 6)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-000004", "step-000006"]
    assert checkpoints.load_state(checkpoints.find(str(tmp_path), str(tmp_path))[1]) == {"step": 6}


def test_resume_takes_a_run_dir_a_checkpoint_dir_or_latest_under_runs(tmp_path):
    older, newer = tmp_path / "runs" / "a" / "1", tmp_path / "runs" / "b" / "2"
    make(older, 3)
    time.sleep(0.05)
    make(newer, 5)
    assert checkpoints.find("latest", str(tmp_path / "runs")) == (str(newer), str(newer / "checkpoints" / "step-000005"))
    ckpt = str(older / "checkpoints" / "step-000003")
    assert checkpoints.find(ckpt, "unused") == (str(older), ckpt)
    with pytest.raises(FileNotFoundError, match="run.checkpoint_every"):
        checkpoints.find(str(tmp_path / "runs" / "never"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        checkpoints.find("latest", str(tmp_path / "nothing"))


def test_a_resume_moves_the_metrics_of_steps_after_its_checkpoint_aside(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5}\n{"step": 6}\n{"step": 7}\n{"step": 8')  # cut by the crash
    assert checkpoints.supersede_metrics(str(tmp_path), 6) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 5}\n{"step": 6}\n'
    assert (tmp_path / "metrics.superseded.jsonl").read_text() == '{"step": 7}\n{"step": 8\n'
