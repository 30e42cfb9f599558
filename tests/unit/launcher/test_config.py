"""The Hydra config tree: presets compose into the typed schema, misspelt keys fail, validate() names the key."""
from __future__ import annotations

import os
import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from launcher.config import ConfigError, SlipstreamConfig, register_configs, validate

CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs"))


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def model_dir(tmp_path) -> str:
    """The least that passes the model.path check: a directory with a config.json."""
    (tmp_path / "config.json").write_text("")
    return str(tmp_path)


def _valid_config(model_dir: str) -> SlipstreamConfig:
    cfg = SlipstreamConfig()
    cfg.model.path = model_dir
    return cfg


def test_cpu_demo_preset_composes_into_the_typed_schema():
    cfg = OmegaConf.to_object(_compose(["+experiment=cpu_demo"]))
    assert isinstance(cfg, SlipstreamConfig)
    # values from configs/experiment/cpu_demo.yaml
    assert cfg.run.name == "cpu_demo"
    assert cfg.run.total_steps == 300
    assert cfg.run.max_minutes == 10.0
    assert cfg.rollout.group_size == 8
    assert cfg.rollout.max_new_tokens == 6
    assert cfg.buffer.eta == 2
    assert cfg.buffer.groups_per_step == 32
    assert cfg.trainer.lr == pytest.approx(1e-4)
    assert isinstance(cfg.trainer.lr, float)  # "1e-4" in YAML, typed by the schema
    # a default the preset does not touch
    assert cfg.trainer.loss.eps_high == pytest.approx(0.28)


def test_no_preset_gives_schema_defaults():
    cfg = OmegaConf.to_object(_compose([]))
    assert isinstance(cfg, SlipstreamConfig)
    assert cfg.run.name == "slipstream"
    assert [r.name for r in cfg.reward.rewards] == ["exact_answer"]


def test_command_line_override_of_a_known_key():
    cfg = OmegaConf.to_object(_compose(["+experiment=cpu_demo", "rollout.group_size=4", "buffer.eta=0"]))
    assert cfg.rollout.group_size == 4
    assert cfg.buffer.eta == 0


def test_misspelt_key_override_raises_naming_the_key():
    with pytest.raises(Exception) as e:
        _compose(["+experiment=cpu_demo", "rollout.groupsize=3"])
    assert "groupsize" in str(e.value)


def test_misspelt_key_in_a_preset_file_raises_naming_the_key(tmp_path):
    # a copy of the real config tree plus one preset with a typo
    shutil.copytree(CONFIG_DIR, tmp_path / "configs")
    (tmp_path / "configs" / "experiment" / "typo.yaml").write_text("# @package _global_\nrollout:\n  groupsize: 3\n")
    register_configs()
    with initialize_config_dir(config_dir=str(tmp_path / "configs"), version_base=None):
        with pytest.raises(Exception) as e:
            compose(config_name="config", overrides=["+experiment=typo"])
    assert "groupsize" in str(e.value)


def test_appending_a_misspelt_key_is_an_error_too():
    from launcher.config import ConfigError, to_typed

    with pytest.raises(ConfigError, match=r"rollout\.groupsize"):
        to_typed(_compose(["+rollout.groupsize=3"]))


def test_wrongly_typed_override_raises():
    with pytest.raises(Exception) as e:
        _compose(["rollout.group_size=eight"])
    text = str(e.value) + str(e.value.__cause__)
    assert "group_size" in text


def test_validate_accepts_cpu_demo_with_an_existing_model_dir(model_dir):
    cfg = OmegaConf.to_object(_compose(["+experiment=cpu_demo", f"model.path='{model_dir}'"]))
    assert cfg.model.path == model_dir
    validate(cfg)  # raises on any problem


def test_validate_accepts_defaults_with_an_existing_model_dir(model_dir):
    validate(_valid_config(model_dir))


def test_validate_rejects_missing_model_path(tmp_path):
    cfg = SlipstreamConfig()
    cfg.model.path = str(tmp_path / "no_model_here")
    with pytest.raises(ConfigError, match="model.path=") as e:
        validate(cfg)
    assert "config.json" in str(e.value)


def test_validate_rejects_directory_without_config_json(tmp_path):
    cfg = SlipstreamConfig()
    cfg.model.path = str(tmp_path)  # exists, but empty
    with pytest.raises(ConfigError, match="model.path="):
        validate(cfg)


def test_validate_rejects_negative_eta(model_dir):
    cfg = _valid_config(model_dir)
    cfg.buffer.eta = -1
    with pytest.raises(ConfigError, match=r"buffer\.eta=-1"):
        validate(cfg)


def test_validate_accepts_eta_zero(model_dir):
    cfg = _valid_config(model_dir)
    cfg.buffer.eta = 0  # synchronous
    validate(cfg)


def test_validate_rejects_group_size_one(model_dir):
    cfg = _valid_config(model_dir)
    cfg.rollout.group_size = 1
    with pytest.raises(ConfigError, match=r"rollout\.group_size=1"):
        validate(cfg)


def test_validate_lists_every_problem_at_once(tmp_path):
    cfg = SlipstreamConfig()
    cfg.model.path = str(tmp_path / "missing")
    cfg.buffer.eta = -1
    cfg.rollout.group_size = 1
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "model.path=" in msg and "buffer.eta=-1" in msg and "rollout.group_size=1" in msg


def test_validate_rejects_unknown_reward(model_dir):
    cfg = _valid_config(model_dir)
    cfg.reward.rewards[0].name = "no_such_reward"
    with pytest.raises(ConfigError, match=r"reward\.rewards\[0\].*no_such_reward"):
        validate(cfg)


def test_validate_checks_the_gvm_rule_only_when_gvm_is_on(model_dir):
    cfg = _valid_config(model_dir)
    cfg.rollout.gvm.rule = "neymann"
    validate(cfg)  # uniform allocation: the GVM block is not used
    cfg.rollout.allocation, cfg.trainer.grad_norm_estimate = "gvm", "proxy"
    with pytest.raises(ConfigError, match=r"rollout\.gvm\.rule='neymann': one of paper, neyman"):
        validate(cfg)
    cfg.rollout.gvm.rule = "neyman"
    validate(cfg)


def test_validate_rejects_top_p_below_one_naming_the_fix(model_dir):
    cfg = _valid_config(model_dir)
    cfg.rollout.top_p = 0.9
    with pytest.raises(ConfigError, match=r"rollout.top_p=0.9.*use rollout.top_p=1.0"):
        validate(cfg)


@pytest.mark.parametrize("cpus, gpus, message", [("0-", 0.0, r"'0-' is not a CPU id or a range like 0-3"),
                                                  ("0", 1.0, r"pins a CPU engine.*set rollout.engine_cpus=''")])
def test_validate_rejects_engine_cpus_that_do_not_parse_or_meet_a_gpu_engine(model_dir, cpus, gpus, message):
    cfg = _valid_config(model_dir)
    cfg.rollout.engine_cpus, cfg.rollout.gpus_per_worker = cpus, gpus
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("key, value", [("ppo_epochs", 0), ("mini_batches_per_step", 0),
                                        ("mini_batches_per_step", 17)])
def test_validate_rejects_impossible_ppo_schedules(model_dir, key, value):
    cfg = _valid_config(model_dir)
    cfg.buffer.groups_per_step = 16
    setattr(cfg.trainer, key, value)
    with pytest.raises(ConfigError, match=f"trainer.{key}={value}"):
        validate(cfg)


def test_validate_accepts_ppo_epochs_with_mini_batches(model_dir):
    cfg = _valid_config(model_dir)
    cfg.trainer.ppo_epochs, cfg.trainer.mini_batches_per_step = 2, 4
    validate(cfg)


@pytest.mark.parametrize("preset", sorted(p[:-5] for p in os.listdir(os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "configs",
    "experiment")) if p.endswith(".yaml")))
def test_every_preset_composes_and_validates(preset, model_dir):
    cfg = OmegaConf.to_object(_compose([f"+experiment={preset}", f"model.path='{model_dir}'"]))
    validate(cfg)


def test_the_math_example_reads_question_answer_jsonl_with_the_template(tmp_path, tiny_model_path):
    """The example a user copies: its data settings on a question/answer file, with a tokenizer that has a chat
    template (the tiny model's, given one), reach the math reward's `answer` field."""
    import json

    from rewards import fields_needed
    from rollout.api import check_fields, load_prompt_source

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                            for i in range(20)))
    cfg = OmegaConf.to_object(_compose(["+experiment=math_jsonl", f"data.path='{path}'", "data.chat_template=false",
                                        "data.held_out_size=5"]))
    source = load_prompt_source(cfg.data, cfg.task, model_path=tiny_model_path, max_model_len=200, max_new_tokens=8,
                                seed=0)
    check_fields(source, fields_needed(cfg.reward), "math_jsonl")
    prompt = source.next(1)[0]
    assert prompt.text.startswith("What is ") and prompt.text.endswith("final answer within \\boxed{}.")
    assert set(prompt.fields) == {"answer"}


def test_eval_sets_need_names_of_their_own_and_one_greedy_sample(model_dir):
    from launcher.config import EvalSetConfig

    cfg = _valid_config(model_dir)
    cfg.eval.sets = [EvalSetConfig(name="a"), EvalSetConfig(name="a", samples=4)]
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "eval.sets[1] (a): every evaluation set needs a name of its own" in str(e.value)
    assert "greedy decoding (temperature 0) gives one sample per prompt" in str(e.value)


def test_an_eval_set_with_a_missing_file_fails_the_data_check(tiny_model_path, tmp_path):
    from launcher.config import EvalSetConfig, check_data
    from rollout.api import DataConfig

    cfg = _valid_config(tiny_model_path)
    cfg.eval.sets = [EvalSetConfig(name="math", data=DataConfig(source="files", path=str(tmp_path / "nope.jsonl")))]
    with pytest.raises(ConfigError, match="nope.jsonl.*does not exist"):
        check_data(cfg)
