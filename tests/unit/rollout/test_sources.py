"""Prompt sources over real data: files of every supported kind read through `datasets`, reasoning-gym tasks, the
chat template, the length filter, held-out splits, epochs and the cursor, and each bad input's message."""
from __future__ import annotations

import json
import logging

import pytest

from rollout.api import DataConfig, DataError, SourceContext, TaskConfig, check_fields, load_prompt_source
from rollout.sources.files import file_source
from rollout.sources.reasoning_gym import reasoning_gym_source

ROWS = [{"question": f"{a}+{b}", "answer": str(a + b), "level": a % 3} for a, b in zip(range(40), range(40, 80))]


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def source(path, ctx=SourceContext(), **data):
    return file_source(DataConfig(source="files", path=str(path), **data), TaskConfig(), ctx)


@pytest.fixture
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_jsonl_rows_become_prompts_with_a_template_and_their_fields(tmp_path):
    src = source(write_jsonl(tmp_path / "d.jsonl"), template="{question}=", fields=["answer"], shuffle=False)
    first = src.next(2)
    assert [p.text for p in first] == ["0+40=", "1+41="]
    assert first[0].fields == {"answer": "40"} and first[0].prompt_id == "0"


@pytest.mark.parametrize("kind", ["json", "parquet", "csv", "save_to_disk", "save_to_disk_dict"])
def test_every_file_kind_reads_the_same_rows(tmp_path, kind):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"d.{kind}"
    if kind == "json":
        ds.to_json(str(path), lines=False)
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind == "save_to_disk":
        ds.save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(path))
    src = source(path, prompt_key="question", id_key="question", shuffle=False,
                 split="test" if kind == "save_to_disk_dict" else "train")
    expected = 3 if kind == "save_to_disk_dict" else len(ROWS)
    prompts = src.next(expected)
    assert [p.text for p in prompts] == [r["question"] for r in ROWS[:expected]]
    assert str(prompts[0].fields["answer"]) == "40" and prompts[0].prompt_id == "0+40"  # all other columns ride along


def test_workers_read_disjoint_shares_and_each_epoch_is_reshuffled(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl")
    a = source(path, SourceContext(seed=1, worker_id=0, num_workers=2), prompt_key="question")
    b = source(path, SourceContext(seed=1, worker_id=1, num_workers=2), prompt_key="question")
    epoch_a, epoch_b = [p.prompt_id for p in a.next(20)], [p.prompt_id for p in b.next(20)]
    assert not set(epoch_a) & set(epoch_b) and len(set(epoch_a) | set(epoch_b)) == 40
    second_a, second_b = [p.prompt_id for p in a.next(20)], [p.prompt_id for p in b.next(20)]
    assert len(set(second_a) | set(second_b)) == 40 and second_a != epoch_a  # every row again, in a new order
    assert a.state() == {"epoch": 1, "position": 20}


def test_the_cursor_restores_where_a_checkpoint_left_off(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl")
    a = source(path, SourceContext(seed=3), prompt_key="question")
    a.next(27)
    saved, expected = a.state(), [p.prompt_id for p in a.next(30)]
    b = source(path, SourceContext(seed=3), prompt_key="question")
    b.restore(saved)
    assert [p.prompt_id for p in b.next(30)] == expected


def test_held_out_rows_are_never_trained_on_and_the_same_for_every_seed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl")
    s0, s1 = (source(path, SourceContext(seed=s), prompt_key="question", held_out_size=8) for s in (0, 1))
    held = {p.prompt_id for p in s0.held_out()}
    assert len(held) == 8 and held == {p.prompt_id for p in s1.held_out()}
    assert not held & {p.prompt_id for p in s0.next(64)}


def test_prompts_too_long_for_the_context_are_dropped_at_load_with_one_warning(tmp_path, tokenizer, caplog):
    rows = ROWS[:10] + [{"question": "1+" * 30 + "1", "answer": "31"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="slipstream.data"):
        src = source(path, SourceContext(tokenizer=tokenizer, max_prompt_tokens=20), prompt_key="question")
    assert len(src) == 10
    assert "1 of 11 prompts are longer than 20 tokens" in caplog.text and "rollout.max_model_len" in caplog.text


def test_the_chat_template_wraps_prompts_with_the_system_prompt(tmp_path, tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    src = source(write_jsonl(tmp_path / "d.jsonl"), SourceContext(tokenizer=tokenizer), prompt_key="question",
                 chat_template=True, system_prompt="Add.", shuffle=False)
    assert src.next(1)[0].text == "<system>Add.<user>0+40<assistant>"
    rows = [{"prompt": [{"role": "user", "content": "2+2"}], "answer": "4"}]  # TRL's conversational format
    conv = source(write_jsonl(tmp_path / "c.jsonl", rows), SourceContext(tokenizer=tokenizer))
    assert conv.next(1)[0].text == "<user>2+2<assistant>"


@pytest.mark.parametrize("data, message", [
    ({"path": "no/such/file.jsonl"}, "does not exist"),
    ({"prompt_key": "questoin"}, "no column data.prompt_key='questoin'; columns: question, answer, level"),
    ({"template": "{questoin}="}, "data.template uses {questoin}, which is not a column"),
    ({"prompt_key": "level"}, "holds a int, not a string"),
    ({"prompt_key": "question", "fields": ["answr"]}, "data.fields names answr, not columns"),
    ({"prompt_key": "question", "chat_template": True}, "its tokenizer has none; use data.chat_template=false"),
    ({"prompt_key": "question", "held_out_size": 40}, "leaves no training prompts"),
])
def test_bad_input_names_the_key_and_the_fix(tmp_path, tokenizer, data, message):
    path = data.pop("path", write_jsonl(tmp_path / "d.jsonl"))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        source(path, SourceContext(tokenizer=tokenizer), **data)


def test_empty_and_unreadable_files_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        source(tmp_path / "empty.jsonl", prompt_key="question")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="a .txt file; give .jsonl, .json, .parquet or .csv"):
        source(tmp_path / "d.txt")


def test_a_reward_that_needs_a_missing_field_is_named(tmp_path):
    src = source(write_jsonl(tmp_path / "d.jsonl"), prompt_key="question", fields=["level"])
    check_fields(src, {"exact_answer": []}, "here")
    with pytest.raises(DataError, match="reward 'exact_answer' needs the field\\(s\\) answer"):
        check_fields(src, {"exact_answer": ["answer"]}, "here")


def test_reasoning_gym_prompts_carry_what_the_task_verifier_needs(tiny_model_path):
    from rewards import resolve_reward

    data = DataConfig(source="reasoning_gym", task="basic_arithmetic", size=50, held_out_size=10)
    src = load_prompt_source(data, TaskConfig(), model_path=tiny_model_path, max_model_len=64, max_new_tokens=6,
                             seed=0)
    prompt = src.next(1)[0]
    assert prompt.text.startswith("Calculate") and set(prompt.fields) == {"answer", "metadata"}
    reward = resolve_reward("reasoning_gym")
    assert reward(prompt.text, f" {prompt.fields['answer']}", **prompt.fields) == 1.0
    assert reward(prompt.text, "<answer>nonsense</answer>", **prompt.fields) == 0.0
    assert len(src.held_out()) == 10 and all(p.prompt_id.startswith("held-") for p in src.held_out())
    with pytest.raises(DataError, match="data.task='no_such_task'"):
        reasoning_gym_source(DataConfig(source="reasoning_gym", task="no_such_task"), TaskConfig(), SourceContext())


def test_fields_of_any_type_survive_the_buffers_msgpack():
    import datetime

    import numpy as np

    from buffer.api import Group, Sample, decode_group, encode_group
    from rollout.sources.indexed import build_prompts

    rows = [{"prompt": "1+1=", "answer": "2", "when": datetime.date(2026, 12, 1), "pair": (1, 2), "tags": {"a": None}}]
    fields = build_prompts(rows, DataConfig(), SourceContext(), "here")[0].fields
    empty = np.zeros(0, np.int32)
    sample = Sample(empty, empty, np.zeros(0, np.float32), empty, 0.0, "stop")
    assert decode_group(encode_group(Group("p", "1+1=", [sample], fields=fields))).fields == {
        "answer": "2", "when": "2026-12-01", "pair": [1, 2], "tags": {"a": None}}


@pytest.mark.parametrize("pool_size", [0, 50])
def test_the_addition_stream_restores_where_a_checkpoint_left_off(pool_size):
    """A resumed run or a restarted worker goes on with the built-in task's stream instead of repeating its start."""
    from rollout.tasks.addition import AdditionTask

    task = AdditionTask(seed=3, held_out_size=16, pool_size=pool_size)
    task.next(7)
    state = json.loads(json.dumps(task.state()))  # as the buffer stores it
    expected = [p.prompt_id for p in task.next(60)]
    again = AdditionTask(seed=3, held_out_size=16, pool_size=pool_size)
    assert [p.prompt_id for p in again.next(60)] != expected  # without the state: the stream's start again
    again = AdditionTask(seed=3, held_out_size=16, pool_size=pool_size)
    again.restore(state)
    assert [p.prompt_id for p in again.next(60)] == expected
