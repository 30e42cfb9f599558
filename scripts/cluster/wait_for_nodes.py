#!/usr/bin/env python3
"""Wait until a Ray cluster has N alive nodes (scripts/cluster/slurm.sbatch), or exit 1 naming how many joined.

    python scripts/cluster/wait_for_nodes.py --address HEAD_IP:6379 --nodes 4 --timeout 300
"""
from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    import ray

    deadline, alive = time.monotonic() + args.timeout, 0
    while time.monotonic() < deadline:
        try:
            if not ray.is_initialized():  # the head itself may still be starting
                ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
            alive = sum(bool(n["Alive"]) for n in ray.nodes())
            if alive >= args.nodes:
                print(f"{alive} Ray nodes up at {args.address}", flush=True)
                return 0
        except (ConnectionError, RuntimeError):
            pass
        time.sleep(2.0)
    print(f"only {alive} of {args.nodes} Ray nodes joined {args.address} within {args.timeout:g}s: see the "
          f"job's output for the nodes' `ray start` errors", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
