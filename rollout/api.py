"""The rollout side's contract: what launcher/ and plugins may use of rollout/ (they import nothing else).

Plugin points, each a registry resolving a registered name or a dotted path (plugins.Registry):
- ENGINES (`rollout.engine`): factory `(model_path, rollout: RolloutConfig, *, seed, version) -> Engine`;
- PROMPT_SOURCES (`data.source`): factory `(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> PromptSource`
  (built-ins: addition, files, reasoning_gym); `load_prompt_source` builds one as a worker would;
- ALLOCATION_RULES (`rollout.gvm.rule`): `(pass_rates, grad_norms, *, alpha, beta) -> weights` for GVM.
`RolloutActor` is the Ray actor the driver starts; it is a `WeightReceiver` for the trainer's transport.
"""
from __future__ import annotations

from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Protocol

from rollout.actor import RolloutActor
from rollout.allocation import ALLOCATION_RULES
from rollout.config import DataConfig, GvmConfig, RolloutConfig, TaskConfig, problems
from rollout.engine import ENGINES, Completion, EngineError, WeightUpdateError
from rollout.prompts import PROMPT_SOURCES, DataError, Prompt, SourceContext, check_fields, load_prompt_source


class Engine(Protocol):
    """One generation engine, generating continuously. Invariants: every completion's `token_versions` names the
    weights that sampled each token (a sample may span several versions); its `logprobs` are those the sampler drew
    from; a failed weight update leaves the engine serving its old weights."""

    max_model_len: int
    version: int  # policy version of the weights loaded now

    def encode(self, text: str) -> list[int]:
        ...

    def submit(self, prompt_ids: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0,
               seed: int | None = None) -> Future:
        """n samples of one prompt, started now; the Future's result is their list[Completion] (thread-safe)."""

    def generate(self, prompt_ids: list[list[int]], *, n: int | list[int], max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        """submit() for every prompt (one n, or one per prompt), then wait for all; temperature 0 = greedy."""

    def load_weights(self, version: int, named_tensors: dict) -> None:
        """Hugging Face names -> tensors, loaded while requests run (by rollout.weight_update); raises
        WeightUpdateError if they could not be, the old weights still loaded."""

    def load_weights_from(self, version: int, weights: dict) -> None:
        """load_weights for a weight transport's message of kind files, cuda_ipc or nccl (trainer/weight_sync.py)."""

    def in_flight(self) -> int:
        """Samples being generated now (0: the engine is idle)."""

    def hold_weights(self) -> AbstractContextManager:
        """A block during which no weight update happens (an update waits for its end)."""

    def stats(self) -> dict:
        ...


class PromptSource(Protocol):
    """Finite sources also offer `state() -> dict` / `restore(dict)`: the cursor (epoch, position) a checkpoint
    saves."""

    def next(self, n: int) -> list[Prompt]:
        """The next n training prompts (never a held-out one)."""

    def held_out(self) -> list[Prompt]:
        """The fixed evaluation prompts."""


class WeightReceiver(Protocol):
    """What a weight transport delivers to (as a Ray actor handle: `receive_weights.remote(...)`)."""

    def receive_weights(self, version: int, weights: dict) -> None:
        """The weights of `version` as the transport's message (trainer/weight_sync.py lists the kinds: arrays,
        files, cuda_ipc, nccl). Returns once this worker holds them (arrays, files: the loop loads them) or has
        loaded them (cuda_ipc, nccl); raises if it cannot, its engine still on its old weights."""

    def gpu_uuid(self) -> str:
        """The GPU of this worker's engine (cuda_ipc checks it is the trainer rank's)."""

    def weight_group_size(self) -> int:
        """How many ranks this worker's engine brings to the NCCL weight group (its tensor-parallel size)."""

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> None:
        """Join trainer rank 0's NCCL weight group as ranks first_rank.. (returns once joined)."""


__all__ = ["ALLOCATION_RULES", "ENGINES", "PROMPT_SOURCES", "Completion", "DataConfig", "DataError", "Engine", "EngineError",
           "GvmConfig", "Prompt", "PromptSource", "RolloutActor", "RolloutConfig", "SourceContext", "TaskConfig",
           "WeightReceiver", "WeightUpdateError", "check_fields", "load_prompt_source", "problems"]
