#!/usr/bin/env python3
"""Weight sync per transport vs a raw transfer of the same bytes, in one run.

transport side: a real TrainerRank (DeepSpeed, ZeRO stage --zero-stages) sends its policy's weights to a real
        RolloutWorker actor (vLLM) that is generating meanwhile (drained by a consumer that costs nothing), through
        each of --transports. One update is timed from `send_weights` until the worker serves the new version
        (for store and disk the worker's loop loads after the send returns; cuda_ipc loads before it returns).
raw side: the same number of bytes moved between two processes with nothing else: `ray.put` + `ray.get` (store),
        a safetensors file written and read (disk), a CUDA IPC handle opened and copied from (cuda_ipc).

    python scripts/bench/weight_sync.py [--gpu] [--model DIR] [--transports store,disk,cuda_ipc] [--zero-stages 2,3]
Writes docs/bench/weight_sync.json (or --out). On the GPU both actors share the one GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from two_sided import Drainer, write_result  # scripts/bench, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def configs(args, zero_stage: int):
    from buffer.api import BufferConfig
    from rollout.config import RolloutConfig
    from trainer.config import TrainerConfig

    gpu = 0.45 if args.gpu else 0.0
    rollout = RolloutConfig(group_size=4, groups_in_flight=16, max_new_tokens=args.max_new_tokens,
                            max_model_len=args.max_model_len, dtype=args.dtype, gpus_per_worker=gpu,
                            gpu_memory_utilization=0.3, enforce_eager=not args.gpu)
    trainer = TrainerConfig(zero_stage=zero_stage, gpus_per_rank=gpu, dtype=args.dtype,
                            weight_bucket_mb=args.bucket_mb)
    return rollout, trainer, BufferConfig(eta=10**6, groups_per_step=16, max_in_flight=64, max_buffered=4096)


def time_updates(trainer, worker, version: int, updates: int) -> tuple[list[float], list[float], int]:
    """(seconds until send_weights returned, seconds until the worker served the version) per update; bytes."""
    import ray

    sends, ends, nbytes = [], [], 0
    for _ in range(updates):
        version += 1
        t0 = time.perf_counter()
        nbytes = ray.get(trainer.send_weights.remote(version))["bytes"]
        sends.append(time.perf_counter() - t0)
        while ray.get(worker.stats.remote())["version"] < version:
            time.sleep(0.002)
        ends.append(time.perf_counter() - t0)
    return sends, ends, nbytes


def transport_side(args, zero_stage: int, server, weight_dir: str, version: int) -> tuple[dict, int]:
    import ray

    from buffer.api import connect, free_port
    from rewards import RewardConfig
    from rollout.api import DataConfig, RolloutActor, TaskConfig
    from trainer.api import TrainerRank

    rollout, trainer_cfg, buf_cfg = configs(args, zero_stage)
    buffer = connect(server.url, f"bench{zero_stage}", buf_cfg)
    buffer.initialize(version=version)
    model = os.path.abspath(args.model)
    worker = ray.remote(RolloutActor).options(num_cpus=1, num_gpus=rollout.gpus_per_worker, max_concurrency=4).remote(
        0, model, rollout, DataConfig(), TaskConfig(), buf_cfg, RewardConfig(), server.url, f"bench{zero_stage}", 0)
    trainer = ray.remote(TrainerRank).options(num_cpus=1, num_gpus=trainer_cfg.gpus_per_rank).remote(
        0, 1, ray.util.get_node_ip_address(), free_port(), model, trainer_cfg, 0, 1.0)
    ray.get([worker.__ray_ready__.remote(), trainer.__ray_ready__.remote()])
    drainer = Drainer(buffer, 16)
    run = worker.run.remote()
    out = {}
    try:
        for name in args.transports.split(","):
            if name == "cuda_ipc" and not args.gpu:
                continue
            ray.get(trainer.set_transport.remote(name, [worker], weight_dir))
            time_updates(trainer, worker, version, 1)  # warm-up: first allocations, first handle mapping
            version += 1
            sends, ends, nbytes = time_updates(trainer, worker, version, args.updates)
            version += args.updates
            out[name] = summary(sends, ends, nbytes)
            print(f"zero{zero_stage} {name}: {out[name]}", flush=True)
    finally:
        ray.get(worker.stop.remote())
        ray.get(run)
        drainer.stop()
        ray.kill(trainer)
        ray.kill(worker)
    return out, version


def summary(sends: list[float], ends: list[float], nbytes: int) -> dict:
    end = statistics.median(ends)
    return {"bytes": nbytes, "updates": len(ends), "send_s_median": round(statistics.median(sends), 4),
            "end_to_end_s_median": round(end, 4), "end_to_end_s": [round(x, 4) for x in ends],
            "s_per_gb": round(end / (nbytes / 1e9), 4)}


class RawPeer:
    """One side of a raw transfer (a Ray actor): holds a buffer, or reads the other side's."""

    def __init__(self, nbytes: int, gpu: bool):
        import torch

        self.buf = torch.ones(nbytes, dtype=torch.uint8)  # store and disk move host bytes
        self.gpu_buf = torch.ones(nbytes, dtype=torch.uint8, device="cuda") if gpu else None

    def ipc_handle(self):
        from torch.multiprocessing.reductions import reduce_tensor

        import torch

        torch.cuda.synchronize()
        return reduce_tensor(self.gpu_buf)[1]

    def copy_from_ipc(self, args) -> float:
        import torch
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        t0 = time.perf_counter()
        src = rebuild_cuda_tensor(*args)
        self.gpu_buf.copy_(src)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def put(self):
        import ray

        return [ray.put(self.buf.numpy())]

    def get(self, refs) -> float:
        import ray
        import torch

        t0 = time.perf_counter()
        self.buf.copy_(torch.from_numpy(ray.get(refs[0])))
        return time.perf_counter() - t0

    def write_file(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file({"buf": self.buf}, path)

    def read_file(self, path: str) -> float:
        from safetensors.torch import load_file

        t0 = time.perf_counter()
        self.buf.copy_(load_file(path)["buf"])
        return time.perf_counter() - t0


def raw_side(args, nbytes: int, weight_dir: str) -> dict:
    """The same bytes between two fresh processes; the time each transfer takes from the sender's first call."""
    import ray

    peer = ray.remote(RawPeer).options(num_cpus=0.5, num_gpus=0.1 if args.gpu else 0)
    a, b = peer.remote(nbytes, args.gpu), peer.remote(nbytes, args.gpu)
    out = {}
    for name in args.transports.split(","):
        times = []
        for _ in range(args.updates + 1):
            t0 = time.perf_counter()
            if name == "store":
                ray.get(b.get.remote(ray.get(a.put.remote())))
            elif name == "disk":
                path = os.path.join(weight_dir, "raw.safetensors")
                ray.get(a.write_file.remote(path))
                ray.get(b.read_file.remote(path))
            elif name == "cuda_ipc" and args.gpu:
                ray.get(b.copy_from_ipc.remote(ray.get(a.ipc_handle.remote())))
            else:
                break
            times.append(time.perf_counter() - t0)
        if times:
            end = statistics.median(times[1:])
            out[name] = {"bytes": nbytes, "end_to_end_s_median": round(end, 4), "s_per_gb": round(end / (nbytes / 1e9), 4)}
            print(f"raw {name}: {out[name]}", flush=True)
    ray.kill(a)
    ray.kill(b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "tiny-model"))
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--transports", default="store,disk,cuda_ipc")
    ap.add_argument("--zero-stages", default="2,3")
    ap.add_argument("--updates", type=int, default=5, help="timed updates per transport (after one warm-up)")
    ap.add_argument("--bucket-mb", type=int, default=1024)
    ap.add_argument("--raw-bytes", type=int, default=0, help="raw side's bytes (default: the transports'); with "
                    "--zero-stages '' only the raw side runs")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "weight_sync.json"))
    args = ap.parse_args()
    if not args.gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray

    from buffer.api import EmbeddedRedis
    from launcher.main import LOCAL_RAY_SYSTEM_CONFIG

    results, version = {}, 0
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="weight-sync-") as weight_dir:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=max(os.cpu_count() or 1, 4),
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        try:
            for stage in (int(s) for s in args.zero_stages.split(",") if s):
                results[f"zero{stage}"], version = transport_side(args, stage, server, weight_dir, version)
                write_result(args.out, args, args.gpu, **results)  # a later failure keeps what was measured
            nbytes = args.raw_bytes or next(iter(next(iter(results.values())).values()))["bytes"]
            results["raw"] = raw_side(args, nbytes, weight_dir)
        finally:
            ray.shutdown()
    write_result(args.out, args, args.gpu, **results)


if __name__ == "__main__":
    main()
