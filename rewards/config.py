"""Typed configuration of rewards (a Hydra structured config: plain dataclasses, no Union or Callable).

The default equals the walking skeleton's behaviour: one `exact_answer` reward with weight 1, a failed
sample scored 0. YAML example (see docs/rewards.md for every key):

    reward:
      rewards:
        - {name: math, weight: 1.0}
        - {name: format, weight: 0.2, kwargs: {required_tags: [think, answer]}}
        - {name: length_penalty, weight: 1.0, kwargs: {max_len: 4096, buffer: 512}}
      on_failure: drop_group

Invariant: this module imports nothing heavy; `rewards.scoring.check_config` validates the values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

FAILURE_POLICIES = ("fixed_score", "drop_group")
RUN_IN = ("auto", "inline", "thread", "process")


@dataclass
class RewardSpec:
    # A registered name ("math"), a dotted path ("my_pkg.scoring:reward") or the name of an entry point
    # in the "slipstream.rewards" group of an installed package.
    name: str = "exact_answer"
    weight: float = 1.0  # the reward of a sample is the weighted sum of its rewards
    # Fixed keyword arguments of every call (e.g. {max_len: 4096}); they win over same-named dataset fields.
    # Any: values are heterogeneous (numbers, strings, lists of tags); OmegaConf accepts Any here.
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: Optional[str] = None  # key in details and metrics; None: the name (a dotted path's function name)
    timeout_s: Optional[float] = None  # time limit of one call; None: RewardConfig.timeout_s
    # "auto": a process-pool worker if the function is marked cpu_heavy, the caller's own thread if it is marked
    # inline (returns in microseconds, cannot hang: exact_answer, length_penalty), else a watched thread of the caller.
    # "inline" cannot be stopped: a call past timeout_s is still marked a timeout, but only once it returns.
    # "process" needs a function importable by module and name (not one defined inside another function).
    run_in: str = "auto"


@dataclass
class SandboxConfig:
    """Limits of rewards that execute generated code (e.g. `python_tests`); one test case at a time, in
    bubblewrap boxes (rewards/box.py: a box per stdin/stdout case; a completion's assert cases share a box for
    the code and one for the tests, each case in forks of its own)."""
    cpu_seconds: float = 2.0  # CPU time of each process of a test case (RLIMIT_CPU, rounded up to seconds)
    memory_mb: int = 1024  # address space of each process of a test case (RLIMIT_AS)
    # stdout and stderr, each, of a stdin/stdout case's box, or of a box shared by a completion's assert cases
    output_bytes: int = 1 << 20
    wall_seconds: float = 6.0  # wall clock of all test cases of one completion together
    # False: refuse to run generated code (at start-up and per call) where bubblewrap cannot make its box.
    # True: run it there anyway with resource limits only, NOT isolated (a logged warning; docs/rewards.md).
    allow_unisolated: bool = False


@dataclass
class RewardConfig:
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])  # summed with their weights
    timeout_s: float = 10.0  # default time limit of one call (a batched call counts as one)
    # What a sample whose reward failed (raised, non-number, NaN, timeout, crash) becomes:
    # "fixed_score": its reward is `failure_score`; "drop_group": its whole group is marked `drop`.
    on_failure: str = "fixed_score"
    failure_score: float = 0.0  # the score of a sample whose reward failed (fixed_score; placeholder under drop_group)
    pool_workers: int = 2  # processes for cpu_heavy rewards; started on first use, not at start-up
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
