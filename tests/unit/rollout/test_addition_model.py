"""The tiny-model build is deterministic for a seed: a rebuild gives the same step count and the same weights."""
from rollout.tasks.addition_model import TinyModelSpec, build_tiny_model


def _spec(seed: int) -> TinyModelSpec:
    # a few steps of the real build (same code path, same stopping rule), small enough for the unit suite
    return TinyModelSpec(seed=seed, sft_max_steps=12, eval_every=6, sft_batch=16, target_success=1.0,
                         held_out_size=64, validation_size=32)


def test_rebuild_with_the_same_seed_gives_the_same_steps_and_weights(tmp_path):
    first = build_tiny_model(str(tmp_path / "a"), _spec(3), log=lambda *_: None)
    again = build_tiny_model(str(tmp_path / "b"), _spec(3), log=lambda *_: None)
    other = build_tiny_model(str(tmp_path / "c"), _spec(4), log=lambda *_: None)
    assert first["sft_steps"] == again["sft_steps"] == 12
    assert first["weights_sha256"] == again["weights_sha256"]
    assert first["validation_success"] == again["validation_success"]
    assert other["weights_sha256"] != first["weights_sha256"]  # the digest does tell builds apart


def test_the_warm_start_never_trains_on_the_held_out_or_validation_problems():
    from rollout.tasks.addition import AdditionTask

    spec = TinyModelSpec()
    build_task = AdditionTask(seed=spec.seed + 1_000, operands=spec.operands,
                              held_out_size=spec.held_out_size + spec.validation_size)
    run_task = AdditionTask(seed=0, operands=spec.operands, held_out_size=spec.held_out_size)
    # the run's held-out set is the first held_out_size of the build's excluded problems
    assert [p.prompt_id for p in run_task.held_out()] == \
        [p.prompt_id for p in build_task.held_out()[:spec.held_out_size]]
    excluded = {p.prompt_id for p in build_task.held_out()}
    assert not excluded & {p.prompt_id for p in build_task.next(5000)}
