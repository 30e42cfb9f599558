"""The weight transports' pure parts: buckets, the flat-buffer layout both sides of cuda_ipc and nccl read, the NCCL
group's ranks, and the store's bfloat16 bits. (The GPU transports themselves run in scripts/gpu/; store and disk run
end to end in the suite.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rollout.vllm_extension import _views
from rollout.weight_files import check_weights, tensors_of
from trainer.weight_gpu import _fill, group_ranks
from trainer.weight_sync import Buckets, WeightSyncError, pack_layout, plan_buckets, tensor_specs


def test_buckets_keep_the_order_and_hold_at_most_the_limit():
    assert plan_buckets([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert plan_buckets([3, 6, 2], 8) == [[0], [1, 2]]  # 3 + 6 > 8
    assert plan_buckets([20, 1, 1], 8) == [[0], [1, 2]]  # a tensor over the limit is a bucket of its own
    assert plan_buckets([], 8) == []


def test_the_flat_layout_aligns_every_tensor_and_counts_its_bytes():
    entries, size = pack_layout([("a", "bfloat16", (3,)), ("b", "float32", (2, 2)), ("c", "int64", ())], align=256)
    assert entries == [("a", "bfloat16", (3,), 0, 6), ("b", "float32", (2, 2), 256, 16), ("c", "int64", (), 512, 8)]
    assert size == 768


def test_a_bucket_packed_by_the_trainer_reads_back_in_the_engine_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    bucket = [("w", torch.randn(5, 3, generator=gen)), ("h", torch.randn(7, generator=gen).to(torch.bfloat16)),
              ("n", torch.tensor([1, 2, 3], dtype=torch.int64))]
    entries, size = pack_layout(tensor_specs(bucket))
    flat = torch.zeros(size, dtype=torch.uint8)
    _fill(flat, bucket, entries)
    back = _views(flat, [list(e) for e in entries])  # as msgpack hands them to the engine: lists, not tuples
    assert [n for n, _ in back] == ["w", "h", "n"]
    for (_, sent), (_, got) in zip(bucket, back):
        assert got.dtype == sent.dtype and got.shape == sent.shape and torch.equal(got, sent)


def test_buckets_of_tensors_announce_the_layout_they_yield():
    tensors = [(f"p{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each
    buckets = Buckets.of(tensors, bucket_bytes=2048)
    assert [[name for name, _, _ in b] for b in buckets.layout] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert [[name for name, _ in b] for b in buckets] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert buckets.layout[0][0] == ("p0", "float32", (256,))


def test_nccl_group_ranks_follow_each_engines_tensor_parallel_size():
    assert group_ranks([1, 1]) == ([1, 2], 3)
    assert group_ranks([2, 4]) == ([1, 3], 7)  # trainer rank 0, then engine 0's 2 workers, then engine 1's 4
    with pytest.raises(WeightSyncError, match="0 workers"):
        group_ranks([1, 0])


def test_the_store_sends_bfloat16_as_its_bits_and_the_worker_gets_bfloat16_back():
    w = torch.randn(4, 4).to(torch.bfloat16)
    message = {"kind": "arrays", "arrays": {"w": w.view(torch.int16).numpy().copy(), "f": np.ones(3, np.float32)},
               "dtypes": {"w": "bfloat16", "f": "float32"}}
    got = tensors_of(message)
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["w"], w)
    assert got["f"].dtype == torch.float32


def test_a_worker_refuses_weights_it_cannot_read_with_the_fix_named(tmp_path):
    with pytest.raises(ValueError, match="arrays, files, cuda_ipc, nccl"):
        check_weights({"kind": "pickle"})
    with pytest.raises(ValueError, match="trainer.weight_dir must be on a file system that every node shares"):
        check_weights({"kind": "files", "paths": [str(tmp_path / "v3" / "part-0000.safetensors")]})
