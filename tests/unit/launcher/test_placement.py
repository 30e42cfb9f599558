"""The fit check before any placement group is asked for: the bundles a config wants against the nodes' totals."""
from __future__ import annotations

import pytest

from launcher.config import ConfigError, SlipstreamConfig, config_record, validate
from launcher.placement import Bundle, describe, fit, rank_bundle, wanted_bundles, worker_bundle


def _cfg(workers=1, ranks=1, **kw) -> SlipstreamConfig:
    cfg = SlipstreamConfig()
    cfg.rollout.num_workers, cfg.trainer.num_ranks = workers, ranks
    for key, value in kw.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_an_uneven_split_is_plain_config_and_fits_a_node_of_eight_gpus():
    """6 GPUs generating (3 engines of tensor parallelism 2), 2 training, on one 8-GPU node."""
    cfg = _cfg(workers=3, ranks=2, rollout__gpus_per_worker=2.0, rollout__tensor_parallel_size=2,
               trainer__gpus_per_rank=1.0)
    assert worker_bundle(cfg) == {"CPU": 1.0, "GPU": 2.0} and rank_bundle(cfg) == {"CPU": 1.0, "GPU": 1.0}
    assert fit(wanted_bundles(cfg), [("10.0.0.1", {"CPU": 16.0, "GPU": 8.0})]) == []
    # one GPU fewer: one part is left out, and the check says which
    left = fit(wanted_bundles(cfg), [("10.0.0.1", {"CPU": 16.0, "GPU": 7.0})])
    assert [b.name for b in left] == ["trainer rank 1"]


def test_an_engine_is_never_split_over_two_nodes():
    """Two nodes of one GPU each hold two GPUs, but not one engine that needs two GPUs on one node."""
    cfg = _cfg(workers=1, ranks=1, rollout__gpus_per_worker=2.0, rollout__tensor_parallel_size=2,
               trainer__cpus_per_rank=1.0)
    nodes = [("a", {"CPU": 4.0, "GPU": 1.0}), ("b", {"CPU": 4.0, "GPU": 1.0})]
    assert [b.name for b in fit(wanted_bundles(cfg), nodes)] == ["rollout worker 0"]


def test_custom_resources_pin_parts_to_the_nodes_that_advertise_them():
    cfg = _cfg(workers=2, ranks=2, rollout__resources={"rollout_node": 1.0}, trainer__resources={"trainer_node": 1.0})
    nodes = [("r", {"CPU": 8.0, "rollout_node": 2.0}), ("t", {"CPU": 8.0, "trainer_node": 1.0})]
    assert [b.name for b in fit(wanted_bundles(cfg), nodes)] == ["trainer rank 1"]
    message = describe(cfg, nodes)
    assert "2 rollout worker(s) x {'CPU': 1.0, 'rollout_node': 1.0}" in message
    assert "found 2 node(s): r {CPU: 8, rollout_node: 2}; t {CPU: 8, trainer_node: 1}" in message


def test_first_fit_decreasing_places_the_large_bundles_first():
    nodes = [("a", {"CPU": 2.0, "GPU": 1.0}), ("b", {"CPU": 2.0, "GPU": 2.0})]
    bundles = [Bundle("small", {"CPU": 1.0, "GPU": 1.0}), Bundle("big", {"CPU": 1.0, "GPU": 2.0})]
    assert fit(bundles, nodes) == []


def test_validate_names_the_placement_problems(tmp_path):
    (tmp_path / "config.json").write_text("")
    cfg = _cfg(rollout__tensor_parallel_size=2, rollout__gpus_per_worker=1.0, trainer__cpus_per_rank=0.0,
               run__placement_timeout_s=0.0)
    cfg.model.path = str(tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    text = str(e.value)
    assert "rollout.tensor_parallel_size=2 needs rollout.gpus_per_worker=2" in text
    assert "trainer.cpus_per_rank / trainer.gpus_per_rank are 0 and trainer.resources is empty" in text
    assert "run.placement_timeout_s=0.0" in text


def test_the_config_record_of_metrics_and_checkpoints_hides_the_redis_password():
    cfg = SlipstreamConfig()
    cfg.buffer.redis_url = "redis://:s3cret@cache:6379/0"
    record = config_record(cfg)
    assert record["buffer"]["redis_url"] == "redis://***@cache:6379/0"
    assert "s3cret" not in repr(record)
    assert cfg.buffer.redis_url == "redis://:s3cret@cache:6379/0"  # the run itself still connects with it


def test_a_node_with_other_code_or_packages_is_named_with_what_differs():
    from launcher.nodes import differences, fingerprint, mismatch_message

    own = fingerprint()
    assert set(own) >= {"slipstream", "ray", "torch", "source"} and own == fingerprint()  # stable
    node = {**own, "ray": "2.9.0", "source": "0" * 16}
    node.pop("slipstream")
    diffs = differences(own, node)
    assert diffs == [f"slipstream missing (driver: {own['slipstream']})", f"ray 2.9.0 (driver: {own['ray']})",
                     f"source {'0' * 16} (driver: {own['source']})"]
    text = mismatch_message("10.0.0.7", diffs)
    assert text.startswith("node 10.0.0.7 runs other code than the driver: slipstream missing")
    assert "scripts/cluster/submit.sh" in text


def test_custom_resources_are_set_from_the_command_line_and_other_keys_stay_checked():
    """A free-form dict (rollout.resources, data.task_kwargs) takes any key; the typed sections still refuse typos."""
    import os

    from hydra import compose, initialize_config_dir

    from launcher.config import register_configs, to_typed

    register_configs()
    configs = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs")
    with initialize_config_dir(config_dir=os.path.abspath(configs), version_base=None):
        cfg = to_typed(compose(config_name="config", overrides=[
            "+rollout.resources.rollout_node=1", "+trainer.resources.trainer_node=2", "+data.task_kwargs.min_value=3"]))
        assert cfg.rollout.resources == {"rollout_node": 1.0} and cfg.trainer.resources == {"trainer_node": 2.0}
        assert cfg.data.task_kwargs == {"min_value": 3}
        with pytest.raises(ConfigError, match="unknown config key.*rollout.gvm.n_mni"):
            to_typed(compose(config_name="config", overrides=["+rollout.gvm.n_mni=1"]))
