#!/usr/bin/env python3
"""The engine-side record of finished requests (rollout/vllm_extension.py) at its cap: forgetting the oldest with a
plain dict's `pop(next(iter(d)))` (before) vs `_remember` (OrderedDict.popitem), per finished request, in one run.
The record runs inside the engine core's request removal, once per finished sequence (~2,000 a second on the 2-core
CPU bench), and fills up when no weight update clears it.

    python scripts/bench/fifo_eviction.py [--requests 200000]
Writes docs/bench/fifo_eviction.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict

from two_sided import write_result  # scripts/bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from rollout.vllm_extension import _FinishedTracking, _remember  # noqa: E402


def dict_pop_front(record: dict, key: str, value) -> None:
    """What the record did before: a dict used as a FIFO."""
    record[key] = value
    if len(record) > _FinishedTracking.CAP:
        record.pop(next(iter(record)))


def us_per_request(remember, record, requests: int) -> float:
    for i in range(_FinishedTracking.CAP):  # at the cap, as after ~50 s of generation without a weight update
        record[f"{i}_g"] = 3
    t0 = time.perf_counter()
    for i in range(_FinishedTracking.CAP, _FinishedTracking.CAP + requests):
        remember(record, f"{i}_g", 3)
    return 1e6 * (time.perf_counter() - t0) / requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000, help="finished requests recorded past the cap")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "fifo_eviction.json"))
    args = ap.parse_args()
    before = us_per_request(dict_pop_front, {}, args.requests)
    now = us_per_request(_remember, OrderedDict(), args.requests)
    write_result(args.out, args, False, cap=_FinishedTracking.CAP, dict_pop_front_us=round(before, 2),
                 ordered_dict_us=round(now, 2), speedup=round(before / now, 1))


if __name__ == "__main__":
    main()
