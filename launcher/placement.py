"""Where the job's parts run on a Ray cluster: placement groups, a fit check before anything waits, rank 0's address.

- one placement group per rollout engine, of one bundle (its CPUs, its GPUs: tensor_parallel_size whole GPUs, and
  rollout.resources): a bundle lives on one node, so an engine's tensor-parallel GPUs are packed on one node, and
  each engine may sit on any node;
- one placement group for the trainer ranks, a bundle per rank, PACK: ranks share a node where they fit, and spread
  over nodes where they do not; rank r runs in bundle r;
- rank 0's address and a free port come from a task in bundle 0, so on rank 0's node (the driver's node may hold no
  rank at all);
- before a group is asked for, the bundles are fitted onto the alive nodes' totals: a run that asks for more than
  the cluster has fails at once naming what it wanted and what it found, and a group that does not come up within
  run.placement_timeout_s (resources held by another job) fails the same way instead of waiting forever.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from launcher.config import ConfigError, SlipstreamConfig


class ClusterTooSmall(ConfigError):
    """The run asks for more than the Ray cluster has (or has free within run.placement_timeout_s)."""


@dataclass
class Bundle:
    name: str  # "rollout worker 0", "trainer rank 1"
    resources: dict[str, float]


def worker_bundle(cfg: SlipstreamConfig) -> dict[str, float]:
    r = cfg.rollout
    return _nonzero({"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker, **r.resources})


def rank_bundle(cfg: SlipstreamConfig) -> dict[str, float]:
    t = cfg.trainer
    return _nonzero({"CPU": t.cpus_per_rank, "GPU": t.gpus_per_rank, **t.resources})


def _nonzero(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if v}


def problems(cfg: SlipstreamConfig) -> list[str]:
    """Config checks of the placement (empty bundles, tensor parallelism on a fraction of the GPUs)."""
    r, out = cfg.rollout, []
    for name, bundle, keys in (("rollout", worker_bundle(cfg), "rollout.cpus_per_worker / rollout.gpus_per_worker"),
                               ("trainer", rank_bundle(cfg), "trainer.cpus_per_rank / trainer.gpus_per_rank")):
        if not bundle:
            out.append(f"{keys} are 0 and {name}.resources is empty: Ray cannot place a part that asks for "
                       f"nothing; give it CPUs (e.g. 1)")
        if any(v < 0 for v in bundle.values()):
            out.append(f"{name}: negative resources {bundle}")
    if r.tensor_parallel_size > 1 and r.gpus_per_worker != r.tensor_parallel_size:
        out.append(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs rollout.gpus_per_worker="
                   f"{r.tensor_parallel_size} (one whole GPU per shard, all on the engine's node), not "
                   f"{r.gpus_per_worker}")
    if cfg.run.placement_timeout_s <= 0:
        out.append(f"run.placement_timeout_s={cfg.run.placement_timeout_s}: must be > 0 (seconds)")
    return out


def wanted_bundles(cfg: SlipstreamConfig) -> list[Bundle]:
    return [Bundle(f"rollout worker {i}", worker_bundle(cfg)) for i in range(cfg.rollout.num_workers)] + \
        [Bundle(f"trainer rank {r}", rank_bundle(cfg)) for r in range(cfg.trainer.num_ranks)]


def alive_nodes() -> list[tuple[str, dict[str, float]]]:
    """(address, total resources) of every alive node, the scheduler's own bookkeeping keys left out."""
    import ray

    out = []
    for n in ray.nodes():
        if n.get("Alive"):
            res = {k: v for k, v in n["Resources"].items()
                   if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
            out.append((n["NodeManagerAddress"], res))
    return out


def fit(bundles: list[Bundle], nodes: list[tuple[str, dict[str, float]]]) -> list[Bundle]:
    """First-fit decreasing of the bundles onto the nodes' totals; returns the bundles that fit nowhere."""
    free = [dict(res) for _, res in nodes]
    left = []
    for b in sorted(bundles, key=lambda b: (-b.resources.get("GPU", 0), -sum(b.resources.values()))):
        for res in free:
            if all(res.get(k, 0.0) + 1e-9 >= v for k, v in b.resources.items()):
                for k, v in b.resources.items():
                    res[k] -= v
                break
        else:
            left.append(b)
    return left


def describe(cfg: SlipstreamConfig, nodes: list[tuple[str, dict[str, float]]]) -> str:
    """'wanted ... ; found ...': the two sides of a placement error."""
    wanted = (f"{cfg.rollout.num_workers} rollout worker(s) x {worker_bundle(cfg)} and {cfg.trainer.num_ranks} "
              f"trainer rank(s) x {rank_bundle(cfg)}")
    found = "; ".join(f"{addr} {_fmt(res)}" for addr, res in nodes) or "no alive node"
    return f"wanted {wanted}; found {len(nodes)} node(s): {found}"


def _fmt(res: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def check_fits(cfg: SlipstreamConfig) -> None:
    """ClusterTooSmall, naming the wanted and found resources, if the parts cannot all be placed at once."""
    nodes = alive_nodes()
    left = fit(wanted_bundles(cfg), nodes)
    if left:
        raise ClusterTooSmall(
            f"the run asks for more than the Ray cluster has: {', '.join(b.name for b in left)} fit on no node. "
            f"{describe(cfg, nodes)}. Lower rollout.num_workers / trainer.num_ranks or their cpus_/gpus_per_* and "
            f"*.resources, or add nodes with these resources")


def placement_group(cfg: SlipstreamConfig, bundles: list[dict], strategy: str, what: str):
    """A ready placement group, or ClusterTooSmall after run.placement_timeout_s (removed again then)."""
    import ray
    from ray.exceptions import GetTimeoutError

    pg = ray.util.placement_group(bundles, strategy=strategy)
    try:
        ray.get(pg.ready(), timeout=cfg.run.placement_timeout_s)
    except GetTimeoutError:
        ray.util.remove_placement_group(pg)
        raise ClusterTooSmall(
            f"the {what} ({len(bundles)} x {bundles[0]}) could not be placed within run.placement_timeout_s="
            f"{cfg.run.placement_timeout_s}s: {describe(cfg, alive_nodes())}; free now: "
            f"{_fmt(ray.available_resources())} (another job may hold the rest)") from None
    return pg


def remove(pg) -> None:
    import ray

    with contextlib.suppress(Exception):  # gone with its job already
        ray.util.remove_placement_group(pg)


def nodes_of(pg) -> list[str]:
    """The node id that holds each bundle of a ready group, in bundle order."""
    import ray

    table = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    return [table[i] for i in sorted(table)]


def write_record(run_dir: str, worker_groups: list, trainer_group) -> None:
    """<run dir>/placement.json: the node of every rollout worker and trainer rank (what ran where)."""
    import json
    import os

    record = {"rollout_workers": [nodes_of(pg)[0] for pg in worker_groups], "trainer_ranks": nodes_of(trainer_group)}
    with open(os.path.join(run_dir, "placement.json"), "w") as f:
        json.dump(record, f, indent=1)


def in_bundle(pg, index: int):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def rank0_address(pg, timeout_s: float) -> tuple[str, int]:
    """The address and a free port of the node that holds bundle 0 (rank 0's), asked on that node."""
    import ray

    probe = ray.remote(num_cpus=0)(_node_address).options(scheduling_strategy=in_bundle(pg, 0))
    return ray.get(probe.remote(), timeout=timeout_s)


def _node_address() -> tuple[str, int]:
    import socket

    import ray

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))  # every interface, as rank 0's TCP store binds
        return ray.util.get_node_ip_address(), s.getsockname()[1]
