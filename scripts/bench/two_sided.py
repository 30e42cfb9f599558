"""What the two-sided benchmarks share: each side measured in a fresh child process (so that neither inherits
the other's engine, process group, threads or memory), and one JSON result with the command, machine and date.

A script using it re-runs itself with `--only SIDE`; the child prints its result as one `RESULT {json}` line.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time


def run_side(script: str, side: str) -> dict:
    """Run `script` with this process's arguments plus `--only side`; return the child's RESULT."""
    proc = subprocess.run(side_command(script, side), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {side} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(side, json.dumps(result), flush=True)
    wait_for_leftovers()
    return result


def side_command(script: str, side: str, *extra: str) -> list[str]:
    """`script` run again with this process's arguments, for one side."""
    return [sys.executable, os.path.abspath(script), *sys.argv[1:], "--only", side, *extra]


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


# -- both sides up at once, let through in turn ---------------------------------------------------------------
# On a shared VM the load drifts by more than the difference being measured from one minute to the next, so two
# sides measured one after the other (a minute or more apart, with an engine start between) differ by the drift.
# Interleaved, both sides are started once and held; the driver lets one through for a short window, holds it
# again until it is idle, and lets the other through: adjacent windows see the same machine. A held side costs
# what a real one costs when it has nothing to do (it is measured: `held_cpu_cores`).

class SideProcess:
    """A child running `script --only side --serve`: it prints READY once started (and held), then answers each
    `go RAMP SECONDS` line on its stdin with one RESULT line for that window, and `quit` with a last RESULT."""

    def __init__(self, script: str, side: str, start_timeout_s: float = 600.0):
        self.side, self._lines = side, queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(side_command(script, side, "--serve"), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self._start_timeout_s = start_timeout_s

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # the child is gone

    def wait_ready(self) -> None:
        self._expect("READY", self._start_timeout_s)

    def go(self, ramp_s: float, seconds: float) -> dict:
        return self._ask(f"go {ramp_s} {seconds}", ramp_s + seconds + 300)

    def quit(self) -> dict:
        result = self._ask("quit", 300)
        self.proc.wait(timeout=120)
        return result

    def _ask(self, command: str, timeout_s: float) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self._expect("RESULT ", timeout_s)[len("RESULT "):])

    def _expect(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                self._stderr.seek(0)
                raise RuntimeError(f"the {self.side} side gave no {prefix.strip()} line (exit {self.proc.poll()}):\n"
                                   f"{self._stderr.read()[-4000:]}")
            if line.startswith(prefix):
                return line


def serve(side) -> None:
    """The child's end of SideProcess, for a side with window(ramp_s, seconds) -> dict and close() -> dict."""
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "go":
            report_side(side.window(float(cmd[1]), float(cmd[2])))
        elif cmd and cmd[0] == "quit":
            break
    report_side(side.close())


def interleave(script: str, sides: tuple[str, str], rounds: int, warmup_s: float, ramp_s: float,
               seconds: float) -> tuple[list[dict], dict]:
    """Start both sides, give each one warm-up window, then `rounds` pairs of adjacent windows (their order
    alternating: A B, B A, ... so that a steady drift favours neither); returns [{side: window result}] per round,
    and {side: its last RESULT}."""
    procs = {}
    try:
        for s in sides:  # one after the other: two GPU engines sizing their memory at once could misjudge it
            procs[s] = SideProcess(script, s)
            procs[s].wait_ready()
        for p in procs.values():
            p.go(warmup_s, seconds)
        out = []
        for i in range(rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            out.append({s: procs[s].go(ramp_s, seconds) for s in order})
            print(json.dumps({s: out[-1][s].get("tokens_per_s") for s in sides}), flush=True)
        closed = {s: p.quit() for s, p in procs.items()}
    finally:
        for p in procs.values():
            if p.proc.poll() is None:
                p.proc.kill()
        wait_for_leftovers()
    return out, closed


class CpuMeter:
    """CPU cores (user + system seconds per wall second) that named groups of processes use between two reads, and
    the cores' worth of their threads that were ready to run but waited for a CPU (Linux's schedstat): on a small
    machine, what the other processes cost a side shows there."""

    def __init__(self, groups):
        self.groups = groups  # () -> {name: [psutil.Process]}: asked afresh each read (children come and go)
        self._last = None

    def read(self) -> dict:
        """{"seconds": the interval, name: cores, "waiting": {name: cores}} since the previous read (the first read
        starts the count and returns {}); a process that exited meanwhile counts nothing of the interval, one that
        started all its time."""
        now, cpu, waited = time.perf_counter(), {}, {}
        for name, procs in self.groups().items():
            cpu[name], waited[name] = {}, {}
            for p in procs:
                try:
                    cpu[name][p.pid], waited[name][p.pid] = sum(p.cpu_times()[:2]), run_queue_seconds(p.pid)
                except Exception:  # noqa: BLE001 - exited
                    pass
        last, self._last = self._last, (now, cpu, waited)
        if last is None:
            return {}
        seconds = now - last[0]

        def per_second(now_by: dict, last_by: dict) -> dict:
            return {name: round(sum(t - last_by.get(name, {}).get(pid, 0.0) for pid, t in by_pid.items()) / seconds, 3)
                    for name, by_pid in now_by.items()}

        return {"seconds": round(seconds, 2), **per_second(cpu, last[1]), "waiting": per_second(waited, last[2])}


def run_queue_seconds(pid: int) -> float:
    """Seconds the threads of `pid` have spent ready to run but waiting for a CPU (0 where Linux does not say)."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return total


def held_cores(cpu: dict) -> dict | None:
    """A side's CPU while held, if it was held long enough to say (windows of the other side between)."""
    return cpu if cpu.get("seconds", 0.0) >= 1.0 else None
