"""Built-in `python_tests`: run the completion's Python code against the sample's test cases.

Two test formats, as dataset fields (either or both):
- `tests`: a list of Python statements run after the code, each in its own process (MBPP/HumanEval
  style: `["assert add(1, 2) == 3", ...]`);
- `test_cases`: stdin/stdout pairs, a list of `{"input": str, "output": str}` or a dict of lists
  `{"inputs": [...], "outputs": [...]}`, also as a JSON string (APPS / CodeContests style).

The code is the last ```python (or bare ```) fenced block of the completion, else the whole completion.
It runs in rewards.sandbox with the limits of `RewardConfig.sandbox` (the scorer passes them as the
`sandbox` keyword). Score: the fraction of cases passed (`partial=False`: 1 only if all pass).

Marked cpu_heavy: it runs in the process pool, so its subprocesses never stall the rollout worker.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Optional

from rewards.config import SandboxConfig
from rewards.registry import register
from rewards.sandbox import Case, run_cases
from rewards.schema import RewardResult

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The last fenced code block, or the whole completion when it has none."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def _io_pairs(test_cases: Any) -> list[tuple[str, str]]:
    if isinstance(test_cases, str):  # APPS ships `input_output` as a JSON string
        test_cases = json.loads(test_cases)
    if isinstance(test_cases, dict):  # {"inputs": [...], "outputs": [...]}
        return list(zip(test_cases["inputs"], test_cases["outputs"], strict=True))
    return [(case["input"], case["output"]) for case in test_cases]


def _build_cases(code: str, tests: Optional[list], test_cases: Any) -> list[Case]:
    if isinstance(tests, str):  # one statement block given as a string, not a list
        tests = [tests]
    cases = [Case(source=code, test=str(test)) for test in tests or []]
    cases += [Case(source=code, stdin=str(i), expected_stdout=str(o)) for i, o in _io_pairs(test_cases or [])]
    return cases


@register("python_tests", cpu_heavy=True)
def python_tests(prompt: str, completion: str, *, tests: Optional[list] = None, test_cases: Any = None,
                 partial: bool = True, sandbox: Optional[SandboxConfig] = None, **_: object) -> RewardResult:
    cases = _build_cases(extract_code(completion), tests, test_cases)
    if not cases:  # a dataset without tests is a configuration bug: fail loudly (counted), not score 0
        raise ValueError("python_tests needs a `tests` or `test_cases` field in the sample")
    run = run_cases(cases, sandbox)
    passed = sum(c.passed for c in run.cases)
    rate = passed / len(cases)
    score = rate if partial else float(passed == len(cases))
    statuses = Counter(c.status for c in run.cases)
    return RewardResult(score=score, sub_scores={"pass_rate": rate},
                        info={"passed": passed, "total": len(cases), "statuses": dict(statuses),
                              "isolated": run.isolated})
