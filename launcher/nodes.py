"""Every node runs the driver's code: checked at start-up, before any part is placed.

A task pinned to each alive node imports this module (a node without the project fails here, not later inside an
engine's constructor) and reports a fingerprint: the installed versions of slipstream and of the packages whose
versions must agree across processes, and a hash of the project's source. A difference is an error naming the node,
what differs and the fix.
"""
from __future__ import annotations

import hashlib
import os

from launcher.config import ConfigError

PACKAGES = ("slipstream", "ray", "torch", "deepspeed", "transformers", "vllm", "redis", "msgpack")
SOURCE_PACKAGES = ("buffer", "rollout", "trainer", "rewards", "launcher", "plugins")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NodeMismatch(ConfigError):
    """A ConfigError for the command line: its message names the node, the problem and the fix."""


def fingerprint() -> dict[str, str]:
    """This process's package versions ('missing' if not installed) and the hash of the project's .py files."""
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    digest = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, pkg))):
            dirs.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, ROOT).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    out["source"] = digest.hexdigest()[:16]
    return out


def differences(driver: dict[str, str], node: dict[str, str]) -> list[str]:
    return [f"{k} {node.get(k, 'missing')} (driver: {v})" for k, v in driver.items() if node.get(k) != v]


def mismatch_message(address: str, diffs: list[str]) -> str:
    return (f"node {address} runs other code than the driver: {', '.join(diffs)}. Install the same checkout and "
            f"environment on every node (scripts/setup.sh), or submit the run with the checkout as the job's working "
            f"directory (scripts/cluster/submit.sh, docs/cluster.md)")


def check_nodes(timeout_s: float) -> None:
    """NodeMismatch naming the first node that cannot import the project or whose fingerprint differs."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    own = fingerprint()
    probe = ray.remote(num_cpus=0)(fingerprint)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    for n, ref in zip(nodes, refs):
        address = n["NodeManagerAddress"]
        try:
            theirs = ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            raise NodeMismatch(f"node {address} did not answer the start-up check within {timeout_s:g}s") from None
        except RayError as e:  # typically: No module named 'launcher'
            raise NodeMismatch(
                f"node {address} cannot import Slipstream ({str(e).strip().splitlines()[-1]}): install the project on "
                f"every node (scripts/setup.sh) or submit with the checkout as the job's working directory "
                f"(scripts/cluster/submit.sh)") from e
        diffs = differences(own, theirs)
        if diffs:
            raise NodeMismatch(mismatch_message(address, diffs))
