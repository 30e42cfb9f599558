"""The GPU transports (trainer/weight_sync.py has the contract): `cuda_ipc` when a trainer rank and the engines
share its GPU, `nccl` when they do not (another GPU, another node).

cuda_ipc: the trainer copies each bucket into a staging buffer of its own (allocated once, reused every version)
and sends the buffers' CUDA IPC handles (a few hundred bytes, pickled, between processes of one machine only);
the engine maps them once and loads from them, so an update costs one device copy on each side. Because the
buffers are reused, a receiver acknowledges only after it has loaded them.

nccl: trainer rank 0 and every engine worker (each tensor-parallel rank of each engine) form one process group
(vLLM's StatelessProcessGroup and PyNccl communicator, outside torch.distributed's global group, so the
trainer's own DeepSpeed group is untouched); the trainer announces the version's layout, then broadcasts one
flat buffer per bucket. Every engine worker receives the whole tensors and its model's `load_weights` keeps its
tensor-parallel shard. Engines receive into staging buffers and load only once every bucket has arrived, so a
broadcast that fails part-way leaves them on the old weights.
"""
from __future__ import annotations

import pickle

import torch

from buffer.api import free_port
from trainer.weight_sync import (TRANSPORTS, Bucket, Buckets, TransportOptions, WeightSyncError, WeightTransport,
                                 await_receivers, pack_layout, tensor_specs)


def gpu_uuid() -> str:
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def group_ranks(engine_sizes: list[int]) -> tuple[list[int], int]:
    """Rank of each engine's first worker in the weight group (trainer rank 0 is rank 0), and the group's size."""
    firsts, rank = [], 1
    for size in engine_sizes:
        if size < 1:
            raise WeightSyncError(f"an engine reported {size} workers for the weight group")
        firsts.append(rank)
        rank += size
    return firsts, rank


def _fill(flat: torch.Tensor, bucket: Bucket, entries: list) -> None:
    for (_, t), (_, _, _, offset, nbytes) in zip(bucket, entries):
        flat[offset:offset + nbytes].view(t.dtype).view(t.shape).copy_(t.detach(), non_blocking=True)


def _require_gpu(name: str) -> None:
    if not torch.cuda.is_available():
        raise WeightSyncError(f"trainer.weight_transport={name} needs the trainer rank on a GPU "
                              "(trainer.gpus_per_rank > 0); on CPU use store")


@TRANSPORTS.register("cuda_ipc")
class CudaIpcTransport(WeightTransport):
    def __init__(self, receivers: list, options: TransportOptions):
        super().__init__(receivers, options)
        _require_gpu("cuda_ipc")
        mine = gpu_uuid()
        theirs = await_receivers([r.gpu_uuid.remote() for r in receivers], options.timeout_s, "report its GPU")
        for i, uuid in enumerate(theirs):
            if uuid != mine:
                raise WeightSyncError(f"trainer.weight_transport=cuda_ipc needs every engine on the trainer rank's "
                                      f"GPU ({mine}); rollout worker {i} is on {uuid}: use nccl (or disk)")
        self._staging: list[torch.Tensor] = []  # one flat buffer per bucket, kept: the engines map them once

    def _buffer(self, i: int, size: int, device) -> torch.Tensor:
        if i == len(self._staging):
            self._staging.append(torch.empty(0, dtype=torch.uint8, device=device))
        if self._staging[i].numel() < size:  # the first version, or a layout that grew
            self._staging[i] = torch.empty(size, dtype=torch.uint8, device=device)
        return self._staging[i]

    def send(self, version: int, buckets: Buckets) -> int:
        weights, nbytes = self.pack(buckets)
        self._await([r.receive_weights.remote(version, weights) for r in self.receivers], version, "load")
        return nbytes

    def pack(self, buckets: Buckets) -> tuple[dict, int]:
        """Copy the buckets into the staging buffers; returns the message that maps them, and the bytes."""
        from torch.multiprocessing.reductions import reduce_tensor

        described, layout, nbytes = [], {}, 0
        for i, bucket in enumerate(buckets):
            specs = tensor_specs(bucket)
            entries, size = pack_layout(specs)
            flat = self._buffer(i, size, bucket[0][1].device)
            _fill(flat, bucket, entries)  # queued: the next bucket is gathered while this one copies
            layout.update({name: shape for name, _, shape in specs})
            nbytes += sum(e[4] for e in entries)
            described.append((reduce_tensor(flat)[1], entries))
        torch.cuda.current_stream().synchronize()  # the engines read the buffers from another process
        blob = pickle.dumps({"gpu": gpu_uuid(), "buckets": described})
        return {"kind": "cuda_ipc", "blob": blob, "layout": layout}, nbytes


@TRANSPORTS.register("nccl")
class NcclTransport(WeightTransport):
    def __init__(self, receivers: list, options: TransportOptions):
        super().__init__(receivers, options)
        _require_gpu("nccl")
        import ray
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        sizes = await_receivers([r.weight_group_size.remote() for r in receivers], options.timeout_s,
                                "report its engine's workers")
        firsts, world = group_ranks(sizes)
        host, port = ray.util.get_node_ip_address(), free_port()
        joined = [r.join_weight_group.remote(host, port, first, world) for r, first in zip(receivers, firsts)]
        group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world,
                                             store_timeout=int(options.timeout_s))
        self.comm = PyNcclCommunicator(group, device=torch.cuda.current_device())
        await_receivers(joined, options.timeout_s, "join the weight group")

    def send(self, version: int, buckets: Buckets) -> int:
        # the layout goes first: the engines allocate their receive buffers before the first broadcast arrives
        layout = [pack_layout(specs) for specs in buckets.layout]
        loaded = [r.receive_weights.remote(version, {"kind": "nccl", "buckets": layout}) for r in self.receivers]
        nbytes = 0
        for bucket, (entries, size) in zip(buckets, layout):
            if tensor_specs(bucket) != [e[:3] for e in entries]:
                raise WeightSyncError(f"bucket of {bucket[0][0]}...: the tensors differ from the announced layout")
            flat = torch.empty(size, dtype=torch.uint8, device=bucket[0][1].device)
            _fill(flat, bucket, entries)
            self.comm.broadcast(flat, src=0, stream=torch.cuda.current_stream())  # the allocator keeps it alive
            nbytes += sum(e[4] for e in entries)
        torch.cuda.current_stream().synchronize()
        self._await(loaded, version, "load")
        return nbytes
