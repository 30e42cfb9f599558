"""Code execution against test cases in the real sandbox: limits, clean environment, scratch directory,
and the refusal (or, when allowed, the unisolated run with its warning) where bubblewrap cannot run.
The attacks are in test_sandbox_escapes.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from rewards import RewardConfig, RewardSpec, SandboxConfig, build_scorer
from rewards.code_tests import extract_code, python_tests
from rewards.box import probe
from rewards.sandbox import Case, run_cases

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = SandboxConfig(cpu_seconds=1.0, wall_seconds=4.0, memory_mb=256, output_bytes=10_000)


def statuses(run):
    return [c.status for c in run.cases]


# ---------------------------------------------------------------- python_tests on real cases

ADD_OK = "Here is my solution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
ADD_WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
ECHO_DOUBLE = "```python\nn = int(input())\nprint(n * 2)\n```"


def test_python_tests_assert_style():
    assert python_tests("q", ADD_OK, tests=ADD_TESTS, sandbox=FAST).score == 1.0
    wrong = python_tests("q", ADD_WRONG, tests=ADD_TESTS, sandbox=FAST)  # a - b passes only add(0, 0)
    assert wrong.score == pytest.approx(1 / 3)
    assert wrong.info["passed"] == 1 and wrong.info["statuses"] == {"error": 2, "passed": 1}
    assert python_tests("q", ADD_WRONG, tests=ADD_TESTS, partial=False, sandbox=FAST).score == 0.0


def test_python_tests_stdin_stdout_style_in_both_layouts():
    cases = [{"input": "2\n", "output": "4\n"}, {"input": "-5", "output": "-10"}, {"input": "1", "output": "3"}]
    assert python_tests("q", ECHO_DOUBLE, test_cases=cases, sandbox=FAST).score == pytest.approx(2 / 3)
    columns = {"inputs": ["2", "21"], "outputs": ["4", "42  \n\n"]}  # trailing whitespace is ignored
    assert python_tests("q", ECHO_DOUBLE, test_cases=columns, sandbox=FAST).score == 1.0


def test_python_tests_accepts_apps_json_and_a_single_test_string():
    apps = json.dumps({"inputs": ["3\n"], "outputs": ["6\n"]})
    assert python_tests("q", ECHO_DOUBLE, test_cases=apps, sandbox=FAST).score == 1.0
    assert python_tests("q", ADD_OK, tests="assert add(2, 2) == 4", sandbox=FAST).score == 1.0


def test_assert_cases_see_the_solution_through_plain_values():
    """What MBPP/HumanEval-style tests do: the solution's modules, classes, methods, exceptions, containers."""
    code = textwrap.dedent('''
        import math
        from collections import namedtuple
        Point = namedtuple("Point", "x y")
        class Solution:
            def two_sum(self, nums, target):
                seen = {}
                for i, n in enumerate(nums):
                    if target - n in seen:
                        return [seen[target - n], i]
                    seen[n] = i
        def area(r):
            if r < 0:
                raise ValueError("negative radius")
            return math.pi * r * r
        def stats(xs):
            return {"min": min(xs), "pair": (xs[0], xs[-1]), "set": set(xs), "raw": bytes(xs), "nan": float("nan")}
        def gen(n):
            yield from range(n)
        def origin():
            return Point(0, 0)
    ''')
    tests = ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert Solution().two_sum([2, 7, 11], 9) == [0, 1]",
             "try:\n    area(-1)\n    assert False\nexcept ValueError as e:\n    assert 'negative' in str(e)",
             "s = stats([3, 1, 2])\nassert s['min'] == 1 and s['pair'] == (3, 2) and s['set'] == {1, 2, 3}\n"
             "assert s['raw'] == bytes([3, 1, 2]) and s['nan'] != s['nan']",
             "assert list(gen(3)) == [0, 1, 2] and len(list(gen(4))) == 4", "assert origin() == (0, 0)"]
    result = python_tests("q", code, tests=tests, sandbox=FAST)
    assert result.info["statuses"] == {"passed": len(tests)}, result.info


def test_assert_cases_keep_python_semantics_across_the_boxes():
    """In-place changes of the test's arguments, functions of the test passed to the solution (calling back into
    it), objects of the solution passed back to it and compared with each other, isinstance of its classes."""
    code = textwrap.dedent('''
        from dataclasses import dataclass
        @dataclass
        class Point:
            x: int
            y: int
        class Stack:
            def __init__(self):
                self.items = []
            def push(self, x):
                self.items.append(x)
            def size(self):
                return len(self.items)
        def sort_in_place(xs):
            xs.sort()
        def fill(grid, value):
            for row in grid:
                row[:] = [value] * len(row)
        def count_into(counts, word):
            counts[word] = counts.get(word, 0) + 1
        def apply(f, x):
            return f(x)
        def by_key(xs, key):
            return sorted(xs, key=key)
        def double(v):
            return 2 * v
        def push_all(stack, xs):
            for x in xs:
                stack.push(x)
        def mid(a, b):
            return Point((a.x + b.x) // 2, (a.y + b.y) // 2)
    ''')
    tests = ["xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]",
             "grid = [[0, 0], [0, 0]]\nrow = grid[0]\nfill(grid, 7)\nassert row == [7, 7] and grid == [[7, 7]] * 2",
             "c = {}\ncount_into(c, 'a')\ncount_into(counts=c, word='a')\nassert c == {'a': 2}",
             "assert apply(lambda v: v + 1, 3) == 4 and by_key(['ccc', 'a', 'bb'], key=len) == ['a', 'bb', 'ccc']",
             "assert apply(lambda v: double(v) + 1, 4) == 9",  # a callback that calls the solution
             "s = Stack()\npush_all(s, [1, 2, 3])\nassert s.size() == 3 and s.items == [1, 2, 3]",
             "assert mid(Point(0, 0), Point(2, 4)) == Point(1, 2) and mid(Point(0, 0), Point(2, 4)) != Point(0, 0)",
             "assert isinstance(mid(Point(0, 0), Point(0, 0)), Point) and not isinstance(Stack(), Point)",
             "try:\n    apply(lambda v: 1 / v, 0)\n    assert False\nexcept ZeroDivisionError:\n    pass"]
    result = python_tests("q", code, tests=tests, sandbox=FAST)
    assert result.info["statuses"] == {"passed": len(tests)}, result.info
    wrong = code.replace("xs.sort()", "xs = sorted(xs)").replace("counts.get(word, 0) + 1", "1")
    result = python_tests("q", wrong, tests=tests[:3], sandbox=FAST)
    assert result.info["statuses"] == {"passed": 1, "error": 2}, result.info  # no change, no pass


@pytest.fixture
def box_starts(monkeypatch) -> list[str]:
    """The role of every box started, in order (the real boxes still start)."""
    from rewards import box

    starts, real_start = [], box.start
    monkeypatch.setattr(box, "start", lambda role, *a, **k: starts.append(role) or real_start(role, *a, **k))
    return starts


def test_each_assert_case_starts_from_the_loaded_solution_and_all_share_one_pair_of_boxes(box_starts):
    """A case's changes to the solution's state never reach the next case (each runs in a fork of the loaded
    solution), and a completion's assert cases cost two box start-ups, not two per case."""
    code = "calls = []\ndef bump():\n    calls.append(1)\n    return len(calls)\n"
    result = python_tests("q", code, tests=["assert bump() == 1 and bump() == 2"] * 5 + ["assert bump() == 9"],
                          sandbox=FAST)
    assert result.info["statuses"] == {"passed": 5, "error": 1}, result.info
    assert sorted(box_starts) == ["solution", "test"]


def test_a_case_that_kills_its_solution_process_costs_that_case_only():
    code = "import os\ndef add(a, b):\n    return a + b\ndef boom():\n    os._exit(3)\ndef spin():\n    while True:\n        pass\n"
    code += "def huge():\n    return 'x' * 3_000_000\n"  # an answer over the 1 MiB a message may have
    run = run_cases([Case(code, test="assert add(1, 2) == 3"), Case(code, test="boom()"),
                     Case(code, test="spin()"), Case(code, test="assert huge() == 0"),
                     Case(code, test="assert add(2, 2) == 4")], FAST)
    assert statuses(run) == ["passed", "error", "cpu_limit", "error", "passed"]


def test_code_that_ends_its_box_at_load_fails_every_case_in_one_round(box_starts):
    run = run_cases([Case("import os\nos._exit(0)", test="assert True")] * 4, FAST)
    assert statuses(run) == ["error"] * 4 and len(box_starts) == 2


def test_python_tests_without_tests_raises():
    with pytest.raises(ValueError, match="needs a `tests` or `test_cases` field"):
        python_tests("q", ADD_OK, sandbox=FAST)


def test_extract_code_takes_the_last_block_or_everything():
    assert extract_code("a\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```") == "x = 2\n"
    assert extract_code("```\nbare = True\n```") == "bare = True\n"
    assert extract_code("print(1)") == "print(1)"


def test_python_tests_through_the_scorer_runs_in_the_pool():
    cfg = RewardConfig(rewards=[RewardSpec("python_tests", timeout_s=15.0)], sandbox=FAST)
    with build_scorer(cfg) as scorer:
        [group] = scorer.score_groups([("write add", [ADD_OK, ADD_WRONG, "no code at all"], {"tests": ADD_TESTS})])
        assert [s.reward for s in group.samples] == pytest.approx([1.0, 1 / 3, 0.0])
        assert group.samples[0].details["info"]["python_tests"]["total"] == 3
        assert scorer._pool is not None


# ---------------------------------------------------------------- limits


def test_each_limit_gives_its_status():
    run = run_cases([
        Case("while True:\n    pass"),  # CPU time
        Case("x = bytearray(512 * 2**20)"),  # address space (256 MB)
        Case("while True:\n    print('y' * 1000)"),  # output file size
        Case("print(input())", stdin="hello", expected_stdout="hello"),
    ], FAST)
    assert statuses(run) == ["cpu_limit", "memory_limit", "output_limit", "passed"]
    assert "MemoryError" in run.cases[1].stderr_tail


def test_wall_clock_budget_kills_a_sleeper_and_skips_the_rest():
    run = run_cases([Case("import time\ntime.sleep(60)"), Case("print(1)", expected_stdout="1")],
                    SandboxConfig(wall_seconds=1.0))
    assert statuses(run) == ["wall_timeout", "not_run"]
    assert run.cases[0].seconds < 3.0


def test_exiting_early_does_not_pass_the_asserts():
    sneaky = "import os\nos._exit(0)\ndef add(a, b):\n    return 0"
    run = run_cases([Case(sneaky, test="assert add(1, 2) == 3"),
                     Case("import sys\nsys.exit(0)", test="assert False")], FAST)
    assert statuses(run) == ["error", "error"]


def test_a_stdin_stdout_program_may_exit_zero():
    run = run_cases([Case("print(7)\nraise SystemExit(0)", expected_stdout="7"),
                     Case("print(7)\nraise SystemExit(2)", expected_stdout="7")], FAST)
    assert statuses(run) == ["passed", "error"]


def test_background_processes_are_killed_with_their_case():
    marker = f"background-{os.getpid()}-{time.monotonic_ns()}"
    code = f"import subprocess\nsubprocess.Popen(['/bin/sleep', '30', {marker!r}])\nprint('started')"
    run = run_cases([Case(code, expected_stdout="started")], FAST)
    assert statuses(run) == ["passed"]
    time.sleep(0.5)
    assert [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, marker)] == []


def _cmdline_has(pid: str, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------- environment and scratch directory


def test_no_inherited_secrets_in_the_environment(monkeypatch):
    monkeypatch.setenv("SLIPSTREAM_TEST_API_KEY", "sk-secret")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    code = "import os\nprint(sorted(os.environ))"
    run = run_cases([Case(code, expected_stdout="['HOME', 'LANG', 'PATH', 'TMPDIR']")], FAST)
    assert statuses(run) == ["passed"]


def test_code_runs_in_a_fresh_scratch_directory_that_is_removed():
    code = ("import os\nassert os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']\n"
            "assert os.listdir('.') == []\n"
            "open('left_behind.txt', 'w').write('x')\nprint(os.getcwd())")
    run = run_cases([Case(code)], FAST)
    assert statuses(run) == ["passed"]
    # the directory is gone afterwards: a second run cannot see the first one's file
    again = run_cases([Case("import os\nassert not os.path.exists('left_behind.txt')")], FAST)
    assert statuses(again) == ["passed"]


# ---------------------------------------------------------------- without bubblewrap

UNISOLATED_SCRIPT = textwrap.dedent('''
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    from rewards import RewardConfig, RewardError, RewardSpec, SandboxConfig, build_scorer
    from rewards.box import probe
    from rewards.sandbox import Case, run_cases
    try:
        build_scorer(RewardConfig(rewards=[RewardSpec("python_tests", timeout_s=20.0)]))
        refused = ""
    except RewardError as e:
        refused = str(e)
    allowed = SandboxConfig(allow_unisolated=True)
    build_scorer(RewardConfig(rewards=[RewardSpec("python_tests", timeout_s=20.0)], sandbox=allowed)).close()
    run = run_cases([Case("print(6 * 7)", expected_stdout="42"),
                     Case("def add(a, b):\\n    return a + b", test="assert add(1, 2) == 3")], allowed)
    print(json.dumps({"probe": probe(), "isolated": run.isolated, "refused": refused,
                      "statuses": [c.status for c in run.cases]}))
''')


def test_without_bubblewrap_python_tests_refuses_unless_allowed():
    """Inside a user namespace whose namespace limits are 0 the kernel refuses bwrap its namespaces, as on
    a host without unprivileged user namespaces. Nothing is faked."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux `unshare` is not installed")
    limits = "echo 0 > /proc/sys/user/max_net_namespaces && echo 0 > /proc/sys/user/max_user_namespaces"
    trial = subprocess.run(["unshare", "-Ur", "sh", "-c", limits], capture_output=True, text=True)
    if trial.returncode != 0:
        pytest.skip(f"cannot build a restricted user namespace here: {trial.stderr.strip()}")
    proc = subprocess.run(["unshare", "-Ur", "sh", "-c", f'{limits} && exec "$0" -c "$1"', sys.executable,
                           UNISOLATED_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["probe"][0] is False and "bwrap cannot create its namespaces here" in result["probe"][1]
    refused = result["refused"]
    assert "python_tests refuses to run generated code without isolation" in refused
    assert "apt-get install -y bubblewrap" in refused and "reward.sandbox.allow_unisolated=true" in refused
    assert result["isolated"] is False and result["statuses"] == ["passed", "passed"]  # allowed: it ran
    assert proc.stderr.count("WARNING slipstream.rewards sandbox: generated code runs WITHOUT isolation") == 1


def test_python_tests_starts_where_the_box_is_available():
    available, note = probe()
    if not available:
        pytest.skip(f"no bubblewrap box here: {note}")
    build_scorer(RewardConfig(rewards=[RewardSpec("python_tests", timeout_s=20.0)])).close()


# ---------------------------------------------------------------- the non-root path

AS_ANOTHER_USER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from rewards.box import probe
    from rewards.config import SandboxConfig
    from rewards.sandbox import Case, run_cases
    write = f"open({sys.argv[1]!r} + '/pwned', 'w').write('x')\\nprint('written')"
    run = run_cases([Case("def add(a, b):\\n    return a + b", test="assert add(1, 2) == 3"),
                     Case("def add(a, b):\\n    return 0", test="assert add(1, 2) == 3"),
                     Case("import os\\nprint(os.getuid())"), Case(write, expected_stdout="written"),
                     Case("print(input()[::-1])", stdin="abc", expected_stdout="cba")],
                    SandboxConfig(wall_seconds=20.0))
    print(json.dumps({"uid": os.getuid(), "probe": probe(), "statuses": [c.status for c in run.cases],
                      "isolated": run.isolated, "pwned": os.path.exists(sys.argv[1] + "/pwned")}))
''')


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
def test_the_box_works_for_a_user_that_is_not_root(tmp_path_factory):
    """Started by root, the box makes its namespaces and then runs as nobody; started by any other user, bwrap
    makes a user namespace as well. This runs the sandbox as uid 65534 with the system's Python (the project's
    interpreter may live where that user cannot read), over a copy of the sandbox's modules it can read."""
    system_python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if system_python is None or not probe()[0]:
        pytest.skip("no system Python 3, or no bubblewrap box here")
    pkg = tempfile.mkdtemp(prefix="slipstream-nonroot-")
    os.chmod(pkg, 0o755)
    try:
        os.makedirs(os.path.join(pkg, "rewards"))
        open(os.path.join(pkg, "rewards", "__init__.py"), "w").close()
        for name in ("box.py", "sandbox.py", "config.py", "schema.py", "_sandbox_child.py"):
            shutil.copy(os.path.join(ROOT, "rewards", name), os.path.join(pkg, "rewards", name))
        for d, _, files in os.walk(pkg):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        os.chmod(pkg, 0o777)  # the attack's target: writable by that user outside the box
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-I",
                               "-c", AS_ANOTHER_USER, pkg], capture_output=True, text=True, timeout=120, cwd="/")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == 65534 and out["isolated"] and "user namespace" in out["probe"][1], out
        assert out["statuses"] == ["passed", "error", "passed", "error", "passed"], out
        assert not out["pwned"]
    finally:
        shutil.rmtree(pkg, ignore_errors=True)


def test_assert_cases_of_different_code_each_run_their_own():
    right, wrong = "def add(a, b):\n    return a + b", "def add(a, b):\n    return 0"
    run = run_cases([Case(right, test="assert add(1, 2) == 3"), Case(wrong, test="assert add(1, 2) == 3"),
                     Case(right, test="assert add(2, 2) == 4"), Case(wrong, test="assert add(0, 0) == 0")], FAST)
    assert statuses(run) == ["passed", "error", "passed", "passed"]
