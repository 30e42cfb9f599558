"""New weights on their way into the engine: checked against the model's layout, then written to a file in shared
memory that the vLLM worker loads by path (rollout/vllm_extension.py says why a file)."""
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
    from safetensors import safe_open

    layout = {}
    for path in checkpoint_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                layout[name] = tuple(f.get_slice(name).get_shape())
    return layout


def layout_problems(named_tensors: dict, layout: dict[str, tuple[int, ...]]) -> list[str]:
    """What makes these tensors unfit for the engine's model (empty: fit); checked before the engine is touched."""
    if not layout:
        return []  # a model directory without safetensors: nothing to check against
    out = [f"{name}: not a parameter of the engine's model" for name in named_tensors if name not in layout]
    out += [f"{name}: shape {tuple(t.shape)}, the engine's model has {layout[name]}"
            for name, t in named_tensors.items() if name in layout and tuple(t.shape) != layout[name]]
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
