"""Sending new weights from the trainer to the generators: one small interface, one class per transport.

Contract with the receivers (rollout workers, reached as Ray actor handles, never imported; rollout/api.py
`WeightReceiver` holds the other side): `receiver.receive_weights.remote(version, weights)` where `weights` is a
plain dict whose "kind" names the transport:
  {"kind": "arrays", "arrays": {name: ndarray}, "dtypes": {name: dtype}}  store: in the object store; bfloat16
                                                                      travels as its int16 bits (numpy has no bf16)
  {"kind": "files", "paths": [...]}                                   disk: safetensors files every node reads
  {"kind": "cuda_ipc", "blob": bytes, "layout": {name: shape}}        cuda_ipc: CUDA IPC handles of the trainer's
                                                                      staging buffers, same GPU only
  {"kind": "nccl", "buckets": [[(name, dtype, shape), ...], ...]}     nccl: announced; the tensors follow as one
                                                                      broadcast per bucket
Names are Hugging Face parameter names; tensors keep the training dtype (no float32 round trip). `send` returns
only once every receiver has acknowledged: it holds the weights (store, disk) or has loaded them (cuda_ipc and
nccl, whose buffers are reused or streamed), so the trainer may then bump the policy version. A receiver that
fails or does not answer within `trainer.weight_sync_timeout_s` is a WeightSyncError naming it.

Weights arrive in buckets of about `trainer.weight_bucket_mb` (`module_buckets` gathers each bucket's
ZeRO-3 shards at once: module_buckets); on the GPU a bucket's copy or broadcast is queued on the stream, so the next bucket is
gathered while the last one is still moving.
"""
from __future__ import annotations

import abc
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from plugins import Registry

# name -> transport class `(receivers: list[rollout.api.WeightReceiver handles], options: TransportOptions)`
TRANSPORTS: Registry = Registry("weight transport", "trainer.weight_transport")

Bucket = list[tuple[str, torch.Tensor]]


class WeightSyncError(RuntimeError):
    """The weights of a version did not reach every receiver; the policy version must not bump."""


@dataclass(frozen=True)
class TransportOptions:
    timeout_s: float = 120.0  # per acknowledgement
    weight_dir: str = ""  # disk: where the version directories go (a file system every node shares)
    keep_versions: int = 3  # disk: version directories kept (a lagging worker still finds the one it was sent)


class WeightTransport(abc.ABC):
    def __init__(self, receivers: list, options: TransportOptions):
        self.receivers, self.options = receivers, options

    @abc.abstractmethod
    def send(self, version: int, buckets: Buckets) -> int:
        """Deliver the weights of `version` to every receiver; returns the bytes sent to one receiver."""

    def _await(self, refs: list, version: int, what: str = "acknowledge") -> list:
        """Every live receiver's answer, or a WeightSyncError naming the first that failed or did not answer. A
        receiver whose actor died or is restarting does not hold the version back: the driver sends the weights
        of the current version to it once Ray has restarted it (launcher/workers.py), before it generates again."""
        return await_receivers(refs, self.options.timeout_s, f"{what} the weights of version {version}",
                               skip_dead=True)


def await_receivers(refs: list, timeout_s: float, what: str, skip_dead: bool = False) -> list:
    """The receivers' answers (None for a dead one when `skip_dead`); WeightSyncError names any other failure."""
    import logging

    import ray
    from ray.exceptions import RayActorError

    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = ", ".join(str(refs.index(r)) for r in pending)
        raise WeightSyncError(f"rollout worker(s) {late} did not {what} within trainer.weight_sync_timeout_s="
                              f"{timeout_s:g}s; the version does not bump")
    out = []
    for i, ref in enumerate(refs):
        try:
            out.append(ray.get(ref))
        except RayActorError as e:
            if not skip_dead:
                raise WeightSyncError(f"rollout worker {i} died before it could {what}: {e}") from e
            logging.getLogger("slipstream.trainer").warning("rollout worker %d is down (%s): it gets the weights "
                                                             "when it is back", i, type(e).__name__)
            out.append(None)
        except Exception as e:  # the receiver raised: it serves its old weights (rollout/api.py)
            raise WeightSyncError(f"rollout worker {i} could not {what}: {e}") from e
    return out


def plan_buckets(sizes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Indices of consecutive tensors grouped so that each group holds at most `bucket_bytes` (a tensor larger than
    that is a bucket of its own); the order is kept."""
    buckets, current, filled = [], [], 0
    for i, size in enumerate(sizes):
        if current and filled + size > bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
        current.append(i)
        filled += size
    return buckets + [current] if current else buckets


def pack_layout(specs: list[tuple[str, str, tuple]], align: int = 256) -> tuple[list[tuple], int]:
    """Where each tensor of a bucket, given as (name, dtype name, shape), sits in one flat byte buffer:
    (name, dtype, shape, offset, nbytes) per tensor, offsets aligned so that every view is aligned for its dtype,
    and the buffer's size."""
    entries, offset = [], 0
    for name, dtype, shape in specs:
        nbytes = getattr(torch, dtype).itemsize * int(torch.Size(shape).numel())
        entries.append((name, dtype, tuple(shape), offset, nbytes))
        offset += -(-nbytes // align) * align
    return entries, offset


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the wire format's dtype names (getattr(torch, name) reads them back)."""
    return str(dtype).removeprefix("torch.")


def tensor_specs(bucket: Bucket) -> list[tuple[str, str, tuple]]:
    """(name, dtype name, shape) of each tensor of a bucket: what pack_layout lays out."""
    return [(name, dtype_name(t.dtype), tuple(t.shape)) for name, t in bucket]


class Buckets:
    """The weights of one version, bucket by bucket. `layout` ((name, dtype, shape) per tensor, per bucket) is known
    before any tensor exists; iterating yields each bucket's (name, tensor) pairs (TrainerRank gathers them then)."""

    def __init__(self, layout: list[list[tuple[str, str, tuple]]], produce: Callable[[], Iterator[Bucket]]):
        self.layout, self._produce = layout, produce

    def __iter__(self) -> Iterator[Bucket]:
        return self._produce()

    @classmethod
    def of(cls, named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> "Buckets":
        """Tensors already in memory, cut into buckets (benchmarks, tests)."""
        tensors = list(named_tensors)
        plan = plan_buckets([t.numel() * t.element_size() for _, t in tensors], bucket_bytes)
        buckets = [[tensors[i] for i in idx] for idx in plan]
        return cls([tensor_specs(b) for b in buckets], lambda: iter(buckets))


def module_buckets(module: torch.nn.Module, bucket_bytes: int) -> Buckets:
    """A module's weights as Hugging Face names -> full tensors in the training dtype, in buckets of about
    `bucket_bytes`; collective under ZeRO-3 (every rank iterates: each bucket's shards are gathered together, and
    released when the next bucket is asked for)."""
    params = list(module.named_parameters())
    shapes = [tuple(p.ds_shape) if hasattr(p, "ds_id") else tuple(p.shape) for _, p in params]
    sizes = [p.element_size() * int(torch.Size(s).numel()) for (_, p), s in zip(params, shapes)]
    plan = plan_buckets(sizes, bucket_bytes)
    layout = [[(params[i][0], dtype_name(params[i][1].dtype), shapes[i]) for i in idx] for idx in plan]

    def produce() -> Iterator[Bucket]:
        import deepspeed

        for idx in plan:
            bucket = [params[i] for i in idx]
            if any(hasattr(p, "ds_id") for _, p in bucket):  # ZeRO-3 shards: gather the bucket at once
                with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
                    yield [(name, p.data.detach()) for name, p in bucket]
            else:
                yield [(name, p.data.detach()) for name, p in bucket]

    return Buckets(layout, produce)


@TRANSPORTS.register("store")
class StoreTransport(WeightTransport):
    """Through the Ray object store (shared memory on one node): for CPU runs, tests and small models.

    One `ray.put` per update; every receiver maps the same object, so N receivers cost one copy per node.
    """

    def send(self, version: int, buckets: Buckets) -> int:
        import ray

        arrays, dtypes = {}, {}
        for bucket in buckets:
            for name, t in bucket:
                t = t.detach().to("cpu").contiguous()
                dtypes[name] = dtype_name(t.dtype)
                arrays[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().copy()
        ref = ray.put({"kind": "arrays", "arrays": arrays, "dtypes": dtypes})
        self._await([r.receive_weights.remote(version, ref) for r in self.receivers], version)
        return sum(a.nbytes for a in arrays.values())


@TRANSPORTS.register("disk")
class DiskTransport(WeightTransport):
    """safetensors files, one per bucket, under `trainer.weight_dir/v<version>/`: the fallback for clusters without
    NCCL between trainers and engines (the directory must be on a file system every node shares). A version's
    directory appears whole (written under a temporary name, then renamed); the newest `keep_versions` stay."""

    def send(self, version: int, buckets: Buckets) -> int:
        from safetensors.torch import save_file

        root = self.options.weight_dir
        if not root:
            raise WeightSyncError("trainer.weight_transport=disk needs trainer.weight_dir (a directory every node "
                                  "reads)")
        final, partial = os.path.join(root, f"v{version}"), os.path.join(root, f".v{version}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        paths, nbytes = [], 0
        for i, bucket in enumerate(buckets):
            tensors = {name: t.detach().to("cpu").contiguous() for name, t in bucket}
            nbytes += sum(t.numel() * t.element_size() for t in tensors.values())
            save_file(tensors, os.path.join(partial, f"part-{i:04d}.safetensors"))
            paths.append(os.path.join(final, f"part-{i:04d}.safetensors"))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
        self._await([r.receive_weights.remote(version, {"kind": "files", "paths": paths})
                     for r in self.receivers], version)
        self._prune(root, version)
        return nbytes

    def _prune(self, root: str, version: int) -> None:
        versions = sorted(int(d[1:]) for d in os.listdir(root) if d.startswith("v") and d[1:].isdigit())
        for old in versions[:-self.options.keep_versions]:
            if old < version:
                shutil.rmtree(os.path.join(root, f"v{old}"), ignore_errors=True)


def make_transport(name: str, receivers: list, options: TransportOptions | None = None) -> WeightTransport:
    return TRANSPORTS.resolve(name)(receivers, options or TransportOptions())


from trainer import weight_gpu  # noqa: E402,F401  registers cuda_ipc and nccl (nothing GPU-only at import)
