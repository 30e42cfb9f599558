"""What the two-sided benchmarks share: each side measured in a fresh child process (so that neither inherits
the other's engine, process group, threads or memory), and one JSON result with the command, machine and date.

A script using it re-runs itself with `--only SIDE`; the child prints its result as one `RESULT {json}` line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def run_side(script: str, side: str) -> dict:
    """Run `script` with this process's arguments plus `--only side`; return the child's RESULT."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), *sys.argv[1:], "--only", side],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {side} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(side, json.dumps(result), flush=True)
    wait_for_leftovers()
    return result


LEFTOVERS = ("VLLM::EngineCore", "ray::", "raylet", "gcs_server")  # what a side starts that outlives it a while


def wait_for_leftovers(timeout_s: float = 120.0) -> None:
    """Wait until the processes a side started (its engine core, Ray's workers and daemons, which
    `ray.shutdown()` does not wait for) are gone: on a small machine a dying engine's busy loop would
    otherwise run into the next side's window."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not processes_named(LEFTOVERS):
            return
        time.sleep(0.5)
    print(f"warning: processes of the last side still run after {timeout_s:g} s", flush=True)


def processes_named(names: tuple[str, ...]) -> list:
    """The psutil processes whose command line contains any of `names`."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if any(n in " ".join(p.info["cmdline"] or []) for n in names)]


def report_side(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def write_result(path: str, args, gpu: bool, **results) -> dict:
    """Write {"meta": command, date, machine, arguments; **results} to `path` and print it."""
    out = {"meta": {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
                    "machine": machine(gpu), **{k: v for k, v in vars(args).items() if k not in ("out", "only")}},
           **results}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return out


def machine(gpu: bool) -> str:
    if gpu:
        import torch

        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{os.cpu_count()} CPU cores, no GPU"


class Drainer:
    """A consumer that costs nothing: a thread that takes what has arrived in `buffer`, commits it and sleeps (a
    consumer polling Redis per pushed group would spend the measured side's CPU on the bench's own bookkeeping)."""

    def __init__(self, buffer, groups: int):
        self.buffer, self.groups, self._stop = buffer, groups, threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            batch = self.buffer.pop(self.groups, timeout_s=0.01)
            if batch is None:
                time.sleep(0.25)
            else:
                self.buffer.commit(batch)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
