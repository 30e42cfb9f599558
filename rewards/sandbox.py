"""Run untrusted Python (a model's completion) against test cases in a separate, limited process.

`run_cases` starts rewards/_sandbox_child.py (`python -I`, so no PYTHON* variables or user site) in a
fresh scratch directory, in a new session, with an environment built from nothing but PATH and LANG
(HOME and TMPDIR point at the scratch directory): API keys and tokens of the trainer never reach it.
The child leaves the network namespace where the OS allows it and runs each case in its own forked
process under RLIMIT_CPU, RLIMIT_AS and RLIMIT_FSIZE (see that module). When the network cannot be
isolated, the code still runs and a warning is logged once per process; set
`SandboxConfig.require_network_isolation` to refuse instead (checked at start-up by `check_isolation`).

Limits, honestly: this is a guard against accidents (infinite loops, huge outputs, memory blow-ups,
stray network calls, reading the trainer's secrets from the environment), not a security boundary
against a determined adversary: the code runs as the same user and sees the file system.

Invariant: `run_cases` returns one CaseResult per case and never raises for anything the code does.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

from rewards.config import SandboxConfig
from rewards.schema import RewardError

log = logging.getLogger("slipstream.rewards")

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
STARTUP_ALLOWANCE_S = 5.0  # the child's own interpreter start-up, on top of the cases' wall budget


@dataclass
class Case:
    source: str  # the program
    stdin: str = ""
    expected_stdout: Optional[str] = None  # compared line by line, trailing whitespace ignored
    test: Optional[str] = None  # code run after `source` in the same namespace (e.g. asserts)


@dataclass
class CaseResult:
    # passed | wrong_answer | error | cpu_limit | memory_limit | output_limit | wall_timeout | not_run
    status: str
    seconds: float = 0.0
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SandboxRun:
    cases: list[CaseResult]
    network_isolated: bool
    network_note: str  # how it was isolated, or why it could not be


def run_cases(cases: list[Case], limits: Optional[SandboxConfig] = None) -> SandboxRun:
    limits = limits or SandboxConfig()
    job = {"cases": [{"source": c.source, "stdin": c.stdin, "test": c.test} for c in cases],
           "cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_mb << 20,
           "output_bytes": limits.output_bytes, "wall_seconds": limits.wall_seconds,
           "nonce": os.urandom(16).hex()}
    with tempfile.TemporaryDirectory(prefix="slipstream-sandbox-", ignore_cleanup_errors=True) as scratch:
        report = _run_child(job, scratch, limits.wall_seconds + STARTUP_ALLOWANCE_S)
        if report is None:
            return SandboxRun([CaseResult("wall_timeout") for _ in cases], False, "sandbox child killed")
        results = [_judge(i, case, raw, scratch, limits.output_bytes)
                   for i, (case, raw) in enumerate(zip(cases, report["cases"]))]
    if not report["network_isolated"]:
        _warn_not_isolated(report["network_note"])
    return SandboxRun(results, report["network_isolated"], report["network_note"])


def _run_child(job: dict, scratch: str, timeout_s: float) -> Optional[dict]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch}
    proc = subprocess.Popen([sys.executable, "-I", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=scratch, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        proc.communicate()
        return None
    if proc.returncode != 0:  # the harness itself failed: a bug here, or the OS refused a fork
        raise RuntimeError(f"sandbox child failed (status {proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out)


def _judge(i: int, case: Case, raw: dict, scratch: str, output_bytes: int) -> CaseResult:
    if raw["state"] == "not_run":
        return CaseResult("not_run")
    stdout = _read(os.path.join(scratch, f"case{i}.out"), output_bytes)
    stderr = _read(os.path.join(scratch, f"case{i}.err"), output_bytes)
    tail, seconds = stderr[-500:], raw["seconds"]
    if raw["state"] == "killed":
        return CaseResult("wall_timeout", seconds, tail)
    # SIGKILL that the child did not send: the hard CPU limit (soft + 1 s) of a process ignoring SIGXCPU.
    if raw["signal"] in (signal.SIGXCPU, signal.SIGKILL):
        return CaseResult("cpu_limit", seconds, tail)
    if raw["signal"] == signal.SIGXFSZ:
        return CaseResult("output_limit", seconds, tail)
    if not raw["nonce_ok"]:
        status = "memory_limit" if "MemoryError" in stderr else "error"
        return CaseResult(status, seconds, tail)
    if case.expected_stdout is not None and _lines(stdout) != _lines(case.expected_stdout):
        return CaseResult("wrong_answer", seconds, tail)
    return CaseResult("passed", seconds, tail)


def _read(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode(errors="replace")
    except OSError:
        return ""


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _kill_session(sid: int) -> None:
    """Kill every process of the sandbox's session, the cases' own process groups included."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # fields after the command name: state, ppid, pgrp, session
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


@functools.cache  # once per process and reason: it applies to every later run as well
def _warn_not_isolated(note: str) -> None:
    log.warning("sandbox: generated code runs WITHOUT network isolation: the OS refused a new network "
                "namespace (%s). Allow unprivileged user namespaces or run as root to isolate it; set "
                "reward.sandbox.require_network_isolation=true to refuse instead", note)


def probe_network_isolation() -> tuple[bool, str]:
    """Whether the sandbox can isolate the network here: (isolated, how or why not). Starts one process."""
    with tempfile.TemporaryDirectory(prefix="slipstream-sandbox-") as scratch:
        job = {"cases": [], "cpu_seconds": 1, "memory_bytes": 1 << 30, "output_bytes": 1 << 10,
               "wall_seconds": 1, "nonce": "probe"}
        report = _run_child(job, scratch, 30.0)
    if report is None:
        return False, "probe timed out"
    return report["network_isolated"], report["network_note"]


def check_isolation(limits: SandboxConfig) -> None:
    """At start-up: warn now rather than at the first completion, or refuse if isolation is required."""
    isolated, note = probe_network_isolation()
    if isolated:
        log.info("sandbox: network isolated with %s", note)
        return
    if limits.require_network_isolation:
        raise RewardError(f"reward.sandbox.require_network_isolation is true but this machine cannot isolate "
                          f"the network ({note}); allow unprivileged user namespaces, run as root, or set it "
                          f"to false")
    _warn_not_isolated(note)
