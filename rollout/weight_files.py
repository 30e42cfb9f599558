"""New weights on their way into the engine: the transports' wire format decoded (trainer/weight_sync.py writes it),
checked against the model's layout, and, for tensors in memory, written to a file in shared memory that the vLLM
worker loads by path (rollout/vllm_extension.py says why a file)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile


def checkpoint_files(model_path: str) -> list[str]:
    """The safetensors files of a Hugging Face model directory (one, or the shards its index names)."""
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted({os.path.join(model_path, name) for name in json.load(f)["weight_map"].values()})
    return sorted(glob.glob(os.path.join(model_path, "*.safetensors")))


def checkpoint_layout(model_path: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, read from the safetensors headers (no tensor is loaded)."""
    return files_layout(checkpoint_files(model_path))


WIRE_KINDS = ("arrays", "files", "cuda_ipc", "nccl")
LOADED_ON_RECEIPT = ("cuda_ipc", "nccl")  # the sender reuses (cuda_ipc) or streams (nccl) its buffers: load at once


def check_weights(weights: dict) -> None:
    """Raise ValueError naming the problem if a transport's message cannot be loaded by this worker."""
    kind = weights.get("kind") if isinstance(weights, dict) else None
    if kind not in WIRE_KINDS:
        raise ValueError(f"weights of kind {kind!r}: this worker reads {', '.join(WIRE_KINDS)} "
                         "(trainer/weight_sync.py describes each)")
    missing = [p for p in weights.get("paths", []) if not os.access(p, os.R_OK)]
    if missing:
        raise ValueError(f"this worker cannot read {missing[0]} ({len(missing)} of {len(weights['paths'])} files): "
                         "trainer.weight_dir must be on a file system that every node shares")


def tensors_of(weights: dict) -> dict:
    """{"kind": "arrays"} -> Hugging Face names -> torch tensors in their training dtype (zero-copy views)."""
    import torch

    dtypes = weights.get("dtypes", {})
    return {name: torch.from_numpy(a).view(getattr(torch, dtypes.get(name, str(a.dtype))))
            for name, a in weights["arrays"].items()}


def files_layout(paths: list[str]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the tensors in these safetensors files (headers only)."""
    from safetensors import safe_open

    layout = {}
    for path in paths:
        with safe_open(path, framework="pt") as f:
            layout.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return layout


def layout_problems(named_tensors: dict, layout: dict[str, tuple[int, ...]]) -> list[str]:
    """What makes these tensors unfit for the engine's model (empty: fit); checked before the engine is touched."""
    if not layout:
        return []  # a model directory without safetensors: nothing to check against
    out = [f"{name}: not a parameter of the engine's model" for name in named_tensors if name not in layout]
    shapes = {name: tuple(getattr(t, "shape", t)) for name, t in named_tensors.items()}  # tensors or shapes
    out += [f"{name}: shape {shape}, the engine's model has {layout[name]}"
            for name, shape in shapes.items() if name in layout and shape != layout[name]]
    return out


class WeightFiles:
    """One safetensors file per version under a private directory in /dev/shm (a temporary directory where there
    is none); the file of the weights now loaded is kept as the fallback of a failed load."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="slipstream-weights-", dir=base)

    def write(self, version: int, named_tensors: dict) -> str:
        from safetensors.torch import save_file

        path = os.path.join(self.dir, f"v{version}.safetensors")
        save_file({k: v.detach().contiguous() for k, v in named_tensors.items()}, path)
        return path

    def keep_only(self, keep: list[str]) -> None:
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if path not in keep:
                os.unlink(path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
