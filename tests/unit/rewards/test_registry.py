"""Reward registry and the built-in exact_answer reward."""
from __future__ import annotations

import uuid

import pytest

import rewards.registry as registry
from rewards import RewardError, register, registered_names, resolve_reward
from rewards.registry import ENTRY_POINT_GROUP, entry_point_names, is_async, is_batched, is_cpu_heavy
from rewards.builtin import exact_answer, normalize_answer


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path in which a test writes its own reward module."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"reward_plugin_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by the test disappear afterwards."""
    registry.REWARDS.names()  # built-ins first
    monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))


# ---------------------------------------------------------------- exact_answer


@pytest.mark.parametrize("completion, answer", [
    ("19", "19"),
    (" 19\n", "19"),  # surrounding whitespace stripped
    ("019", "19"),  # leading zero
    ("0019", 19),  # answer field given as int -> str(19)
    ("000", "0"),  # all zeros -> "0"
    ("-007", "-7"),  # sign kept, zeros after it stripped
])
def test_exact_answer_scores_one_for_normalised_match(completion, answer):
    assert exact_answer("9+10=", completion, answer=answer) == 1.0


@pytest.mark.parametrize("completion, answer", [
    ("190", "19"),  # trailing zero is significant
    ("1 9", "19"),  # inner whitespace is not stripped
    ("19 apples", "19"),
    ("-19", "19"),
    ("", "0"),
])
def test_exact_answer_scores_zero_otherwise(completion, answer):
    assert exact_answer("9+10=", completion, answer=answer) == 0.0


def test_exact_answer_ignores_extra_fields():
    assert exact_answer("1+1=", "2", answer="2", difficulty=3, source="synthetic") == 1.0


def test_normalize_answer_by_hand():
    assert normalize_answer("  0042 ") == "42"
    assert normalize_answer("-0042") == "-42"  # sign kept: "-" + "0042".lstrip("0")
    assert normalize_answer(" abc ") == "abc"  # not an integer: only stripped


def test_exact_answer_rejects_doubled_minus_sign():
    # "--7" is not an integer: only stripped, stays "--7" != "-7" -> 0.0
    assert exact_answer("3-10=", "--7", answer="-7") == 0.0


# ---------------------------------------------------------------- resolve_reward


def test_resolve_reward_by_registered_name():
    assert resolve_reward("exact_answer") is exact_answer
    assert "exact_answer" in registered_names()


def test_resolve_reward_by_dotted_path():
    assert resolve_reward("rewards.builtin:exact_answer") is exact_answer


def test_resolve_reward_by_dotted_path_to_a_plugin_module(plugin_dir):
    name = plugin_dir("def length_reward(prompt, completion, **fields):\n    return float(len(completion))\n")
    fn = resolve_reward(f"{name}:length_reward")
    assert fn("p", "abc", answer="x") == 3.0  # len("abc")


def test_resolve_reward_unknown_name_lists_registered_names():
    with pytest.raises(RewardError) as e:
        resolve_reward("exact_answr")
    msg = str(e.value)
    assert "'exact_answr'" in msg
    assert "registered names: exact_answer" in msg


def test_resolve_reward_missing_module_names_the_module():
    with pytest.raises(RewardError, match="cannot import module 'no_such_reward_module_xyz'"):
        resolve_reward("no_such_reward_module_xyz:score")


def test_resolve_reward_module_whose_own_import_fails_names_the_module(plugin_dir):
    name = plugin_dir("import no_such_dependency_xyz\n\ndef score(prompt, completion, **f):\n    return 0.0\n")
    with pytest.raises(RewardError, match=f"cannot import module '{name}'"):
        resolve_reward(f"{name}:score")


def test_resolve_reward_module_with_syntax_error_raises_reward_error_naming_the_module(plugin_dir):
    name = plugin_dir("def score(prompt, completion, **f)\n    return 0.0\n")  # missing ':'
    with pytest.raises(RewardError, match=name):
        resolve_reward(f"{name}:score")


def test_resolve_reward_missing_attribute_raises():
    with pytest.raises(RewardError, match="has no attribute 'nope'"):
        resolve_reward("rewards.builtin:nope")


def test_resolve_reward_not_callable_raises():
    with pytest.raises(RewardError, match="not callable"):
        resolve_reward("math:pi")


def test_resolve_reward_function_with_one_positional_arg_raises(plugin_dir):
    name = plugin_dir("def score(completion):\n    return 1.0\n")
    with pytest.raises(RewardError, match=r"must accept \(prompt, completion, \*\*fields\)"):
        resolve_reward(f"{name}:score")


def test_resolve_reward_function_with_keyword_only_args_raises(plugin_dir):
    name = plugin_dir("def score(*, prompt, completion):\n    return 1.0\n")
    with pytest.raises(RewardError, match="must accept"):
        resolve_reward(f"{name}:score")


def test_resolve_reward_accepts_varargs_function(plugin_dir):
    name = plugin_dir("def score(*args, **fields):\n    return 0.5\n")
    assert resolve_reward(f"{name}:score")("p", "c") == 0.5


def test_registered_function_with_wrong_signature_raises_on_resolve(isolated_registry):
    @register("test_one_arg_reward")
    def one_arg(completion):
        return 1.0

    with pytest.raises(RewardError, match="test_one_arg_reward"):
        resolve_reward("test_one_arg_reward")


def test_register_same_name_twice_with_another_function_raises(isolated_registry):
    def first(prompt, completion, **f):
        return 0.0

    def second(prompt, completion, **f):
        return 1.0

    register("test_dup_reward")(first)
    register("test_dup_reward")(first)  # the same function again is fine
    with pytest.raises(RewardError, match="already registered"):
        register("test_dup_reward")(second)
    assert resolve_reward("test_dup_reward") is first


# ---------------------------------------------------------------- entry points (hand-written dist-info)


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    """A directory on sys.path holding installed-package metadata written by hand (what pip writes)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(dist: str, module_source: str, entry_points: dict[str, str]) -> str:
        module = f"{dist.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (site / f"{module}.py").write_text(module_source)
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = [f"{name} = {module}:{attr}" for name, attr in entry_points.items()]
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
        return module

    return install


def test_resolve_reward_by_entry_point_of_an_installed_package(site_dir):
    site_dir("demo-rewards", "def score(prompt, completion, **fields):\n    return 0.75\n", {"demo_score": "score"})
    assert "demo_score" in entry_point_names()
    fn = resolve_reward("demo_score")
    assert fn("p", "c") == 0.75


def test_unknown_name_lists_installed_entry_points(site_dir):
    site_dir("demo-rewards", "def score(prompt, completion, **fields):\n    return 0.75\n", {"demo_score": "score"})
    with pytest.raises(RewardError, match=f"entry points in group '{ENTRY_POINT_GROUP}': .*demo_score"):
        resolve_reward("demo_scor")


def test_entry_point_that_fails_to_load_names_the_package(site_dir):
    site_dir("broken-rewards", "import no_such_dependency_xyz\n", {"broken_score": "score"})
    with pytest.raises(RewardError, match="of package broken-rewards fails to load .*no_such_dependency_xyz"):
        resolve_reward("broken_score")


def test_entry_point_with_wrong_signature_raises(site_dir):
    site_dir("one-arg-rewards", "def score(completion):\n    return 1.0\n", {"one_arg_score": "score"})
    with pytest.raises(RewardError, match="must accept"):
        resolve_reward("one_arg_score")


def test_two_packages_claiming_one_entry_point_name_raise(site_dir):
    site_dir("first-rewards", "def score(prompt, completion, **f):\n    return 0.0\n", {"shared_name": "score"})
    site_dir("second-rewards", "def score(prompt, completion, **f):\n    return 1.0\n", {"shared_name": "score"})
    with pytest.raises(RewardError, match="several installed entry points"):
        resolve_reward("shared_name")


def test_registered_name_wins_over_an_entry_point_of_the_same_name(site_dir):
    site_dir("shadow-rewards", "def score(prompt, completion, **f):\n    return 0.5\n", {"exact_answer": "score"})
    assert resolve_reward("exact_answer") is exact_answer


# ---------------------------------------------------------------- traits


def test_register_flags_become_attributes(isolated_registry):
    def check(kwargs):
        pass

    @register("test_batched_heavy", batched=True, cpu_heavy=True, check_kwargs=check)
    def scores(prompts, completions, **fields):
        return [0.0] * len(prompts)

    assert is_batched(scores) and is_cpu_heavy(scores) and scores.check_kwargs is check
    assert not is_batched(exact_answer) and not is_cpu_heavy(exact_answer)


def test_traits_set_as_plain_attributes_without_slipstream(plugin_dir):
    name = plugin_dir("def score(prompts, completions, **f):\n    return [1.0] * len(prompts)\n"
                      "score.batched = True\nscore.cpu_heavy = True\n")
    fn = resolve_reward(f"{name}:score")
    assert is_batched(fn) and is_cpu_heavy(fn)


def test_truthy_non_bool_attribute_is_no_mark(plugin_dir):
    name = plugin_dir("def score(prompt, completion, **f):\n    return 1.0\nscore.batched = 'yes'\n")
    assert not is_batched(resolve_reward(f"{name}:score"))


def test_is_async_detects_coroutine_functions_and_callables(plugin_dir):
    name = plugin_dir("async def score(prompt, completion, **f):\n    return 1.0\n"
                      "class Judge:\n    async def __call__(self, prompt, completion, **f):\n        return 1.0\n"
                      "judge = Judge()\n")
    assert is_async(resolve_reward(f"{name}:score"))
    assert is_async(resolve_reward(f"{name}:judge"))
    assert not is_async(exact_answer)


def test_dotted_path_to_a_method_of_a_class(plugin_dir):
    name = plugin_dir("class Scores:\n    @staticmethod\n    def length(prompt, completion, **f):\n"
                      "        return float(len(completion))\n")
    assert resolve_reward(f"{name}:Scores.length")("p", "abcd") == 4.0


def test_builtins_are_registered():
    assert {"exact_answer", "format", "length_penalty", "math", "python_tests"} <= set(registered_names())
