"""Reward throughput (samples/s) of each built-in, and the cost of the safety wrapper vs a direct call.

For each built-in: "direct" calls the function in a loop in this process (no time limit, no checks);
"scorer" goes through `build_scorer(...).score_groups` as the rollout worker does (groups of 8, many
groups per call; the pool's 2 processes for math and python_tests, started and warmed up beforehand).
The overhead rows time the cheapest reward (exact_answer) through each layer: `invoke` (exception and
value checks only), the scorer in a watched thread, and the scorer with the reward sent to the pool.
Each figure is the median of --repeats runs. Writes JSON (default docs/bench/rewards.json).

    .venv/bin/python scripts/bench/bench_rewards.py [--out docs/bench/rewards.json] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

GROUP_SIZE = 8


def exact_samples(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        guess = a + b + rng.choice([0, 0, 1, -1])
        out.append((f"{a}+{b}=", rng.choice(["", "0", " "]) + str(guess), {"answer": str(a + b)}))
    return out


def format_samples(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    shapes = ["<think>{t}</think>\n<answer>{a}</answer>", "<think>{t}\n<answer>{a}</answer>", "{t} so {a}",
              "<answer>{a}</answer><think>{t}</think>"]
    return [("q", rng.choice(shapes).format(t="let me think " * rng.randint(1, 40), a=rng.randint(0, 999)), {})
            for _ in range(n)]


def length_samples(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    return [("q", "x", {"response_tokens": rng.randint(0, 5000)}) for _ in range(n)]


def math_samples(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for _ in range(n):  # distinct numbers: math-verify caches parses of identical strings
        a, b = rng.randint(1, 999), rng.randint(2, 999)
        form = rng.choice(["So the answer is \\boxed{{\\frac{{{a}}}{{{b}}}}}.", "The answer is ${a}/{b}$",
                           "\\boxed{{{a} / {b} + 0}}", "Hence $\\boxed{{\\dfrac{{{a}}}{{{b}}}}}$",
                           "I am not sure, maybe {a}."])
        out.append(("q", form.format(a=a, b=b + rng.choice([0, 0, 1])), {"answer": f"\\frac{{{a}}}{{{b}}}"}))
    return out


def code_samples(n: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    out = []
    for _ in range(n):
        k = rng.randint(1, 9)
        body = rng.choice(["return a + b", "return a - b", f"return a + b + {k} - {k}"])
        completion = f"Here you go:\n```python\ndef add(a, b):\n    {body}\n```"
        out.append(("write add", completion, {"tests": [f"assert add({k}, 2) == {k + 2}", "assert add(0, 0) == 0",
                                                        "assert add(-1, 1) == 0"]}))
    return out


BUILTINS = [  # name, kwargs, sample maker, samples per run
    ("exact_answer", {}, exact_samples, 20_000),
    ("format", {"required_tags": ["think", "answer"]}, format_samples, 20_000),
    ("length_penalty", {"max_len": 4096, "buffer": 512}, length_samples, 20_000),
    ("math", {}, math_samples, 400),
    ("python_tests", {}, code_samples, 48),
]


def median_rate(run, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def as_groups(samples: list[tuple[str, str, dict]]) -> list[tuple]:
    groups = []
    for i in range(0, len(samples), GROUP_SIZE):
        chunk = samples[i:i + GROUP_SIZE]
        sample_fields = [{k: v for k, v in f.items() if k == "response_tokens"} for _, _, f in chunk]
        fields = {k: v for k, v in chunk[0][2].items() if k != "response_tokens"}
        groups.append((chunk[0][0], [c for _, c, _ in chunk], fields, sample_fields))
    return groups


def bench_builtin(name: str, kwargs: dict, make, n: int, repeats: int) -> dict:
    from rewards import RewardConfig, RewardSpec, build_scorer, resolve_reward

    rng = random.Random(0)
    fn = resolve_reward(name)
    # Each sample's own fields: math/python_tests share one gold answer per group in the scorer run below,
    # so the direct run uses the same grouping to compare like with like.
    samples = make(n, rng)
    groups = as_groups(samples)
    flat = [(g[0], c, {**g[2], **g[3][j]}) for g in groups for j, c in enumerate(g[1])]
    direct = median_rate(lambda: [fn(p, c, **f, **kwargs) for p, c, f in flat], len(flat), repeats)
    timeout_s = 30.0 if name == "python_tests" else 10.0
    row = {"reward": name, "samples": len(flat), "direct_samples_per_s": round(direct, 1)}
    # A pool of 1 compares like with like (one core each); a pool of 2 is what the default config runs.
    for workers in (1, 2):
        cfg = RewardConfig(rewards=[RewardSpec(name, kwargs=kwargs, timeout_s=timeout_s)], pool_workers=workers)
        with build_scorer(cfg) as scorer:
            in_pool = scorer.rewards[0].in_pool
            if not in_pool and workers == 2:
                break  # a thread reward does not use the pool
            scorer.warm_up()
            scorer.score_groups(groups[:4])  # first calls import lazily (math-verify's grammar, ...)
            rate = median_rate(lambda: scorer.score_groups(groups), len(flat), repeats)
            key = f"scorer_pool{workers}_samples_per_s" if in_pool else "scorer_thread_samples_per_s"
            row[key] = round(rate, 1)
            row["failed_samples"] = row.get("failed_samples", 0) + scorer.counters()["failed_samples"]
    return row


def bench_overhead(repeats: int) -> dict:
    from rewards import RewardConfig, RewardSpec, build_scorer
    from rewards.builtin import exact_answer
    from rewards.calls import invoke

    samples = exact_samples(20_000, random.Random(1))
    groups = as_groups(samples)
    flat = [(g[0], c, g[2]) for g in groups for c in g[1]]
    n = len(flat)
    direct = median_rate(lambda: [exact_answer(p, c, **f) for p, c, f in flat], n, repeats)
    checked = median_rate(lambda: [invoke(exact_answer, False, s, 1) for s in flat], n, repeats)
    per_call_rates = {}
    for groups_per_call in (1, 16, 64):
        calls = [groups[i:i + groups_per_call] for i in range(0, len(groups), groups_per_call)]
        with build_scorer() as scorer:
            per_call_rates[groups_per_call] = median_rate(lambda: [scorer.score_groups(c) for c in calls], n, repeats)
    cfg = RewardConfig(rewards=[RewardSpec("exact_answer", run_in="process")], pool_workers=2)
    pool_groups = groups[:128 * 8]
    with build_scorer(cfg) as scorer:
        scorer.warm_up()
        pooled = median_rate(lambda: [scorer.score_groups(pool_groups[i:i + 64])
                                      for i in range(0, len(pool_groups), 64)], len(pool_groups) * GROUP_SIZE,
                             repeats)

    def us(rate: float) -> float:
        return round(1e6 / rate, 2)

    return {"reward": "exact_answer", "samples": n,
            "direct_us_per_sample": us(direct),
            "invoke_us_per_sample": us(checked),
            "scorer_thread_us_per_sample": {f"{k}_groups_per_call": us(v) for k, v in per_call_rates.items()},
            "scorer_pool_us_per_sample_64_groups_per_call": us(pooled),
            "wrapper_overhead_us_per_sample_64_groups_per_call": round(us(per_call_rates[64]) - us(direct), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "rewards.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from rewards.box import probe as probe_isolation

    load_before = os.getloadavg()  # the machine may be shared: record how busy it was
    results = []
    for name, kwargs, make, n in BUILTINS:
        results.append(bench_builtin(name, kwargs, make, n, args.repeats))
        print(json.dumps(results[-1]), flush=True)
    overhead = bench_overhead(args.repeats)
    print(json.dumps(overhead), flush=True)
    report = {
        "command": " ".join([".venv/bin/python scripts/bench/bench_rewards.py"] + sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "sandbox_isolation": probe_isolation()[1],
                    "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "group_size": GROUP_SIZE, "repeats": args.repeats, "builtins": results, "wrapper_overhead": overhead,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
