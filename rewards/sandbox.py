"""Run untrusted Python (a model's completion) against test cases, each case in isolated boxes.

rewards/box.py makes the boxes; rewards/_sandbox_child.py runs in them:
- stdin/stdout case: one `io` box per case runs the program; this process compares its stdout (read from
  the box's pipe, at most `output_bytes`) with the expected output, which never enters any box;
- assert cases (all of one completion's): a `solution` box runs the code once and serves each case from a
  fork of itself; a separate `test` box runs each case's statements in a fork of its own, seeing the
  solution's names as handles and getting plain values back, so its asserts compare values in a process
  the code cannot reach. The verdicts come on a pipe only the test box holds. If the boxes end inside a
  case (a limit, the code exiting), that case gets their status and the rest a fresh pair.
No secret is involved anywhere, so there is none to steal.

Where bubblewrap cannot run, `run_cases` refuses (RewardError naming what is missing and how to install
it) unless `SandboxConfig.allow_unisolated` is true; then the same processes run with limits only.

Invariant: `run_cases` returns one CaseResult per case and never raises for anything the code does.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

from rewards import box
from rewards._sandbox_child import GONE_AT_LOAD  # the test box's exit status: the code ended its box at load
from rewards.config import SandboxConfig
from rewards.schema import RewardError

log = logging.getLogger("slipstream.rewards")

STARTUP_ALLOWANCE_S = 5.0  # kept for the config check: a reward's limit must cover wall_seconds + this
MAX_PROCESSES = 32  # RLIMIT_NPROC of a box
CPU_SIGNALS = (signal.SIGXCPU, signal.SIGKILL)  # soft CPU limit, or the hard one (soft + 1 s)
EXIT_GRACE_S = 0.5  # a box whose case is over may take this long to exit by itself before it is killed


@dataclass
class Case:
    source: str  # the program
    stdin: str = ""
    expected_stdout: Optional[str] = None  # compared line by line, trailing whitespace ignored
    test: Optional[str] = None  # statements run against the program's names (e.g. asserts)


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
    isolated: bool
    isolation: str  # how the code was isolated, or why it could not be


def run_cases(cases: list[Case], limits: Optional[SandboxConfig] = None) -> SandboxRun:
    limits = limits or SandboxConfig()
    isolated, note = require_isolation(limits)
    box_limits = box.Limits(max(1, int(limits.cpu_seconds + 0.999)), limits.memory_mb << 20,
                            limits.output_bytes, MAX_PROCESSES, max(limits.output_bytes, 16 << 20))
    deadline = time.monotonic() + limits.wall_seconds
    results: list[Optional[CaseResult]] = [None] * len(cases)
    with tempfile.TemporaryDirectory(prefix="slipstream-sandbox-", ignore_cleanup_errors=True) as scratch:
        by_source: dict[str, list[int]] = {}  # assert cases of the same code share boxes (python_tests: all)
        for i, c in enumerate(cases):
            if c.test is not None:
                by_source.setdefault(c.source, []).append(i)
        for tests in by_source.values():
            for i, result in zip(tests, _run_tests([cases[i] for i in tests], box_limits, isolated, scratch,
                                                   deadline)):
                results[i] = result
        for i, case in enumerate(cases):
            if case.test is None:
                results[i] = (CaseResult("not_run") if time.monotonic() >= deadline
                              else _run_io(case, box_limits, isolated, scratch, deadline))
    return SandboxRun(results, isolated, note)


def require_isolation(limits: SandboxConfig) -> tuple[bool, str]:
    """(isolated, note); RewardError when bubblewrap cannot run and unisolated runs are not allowed."""
    available, note = box.probe()
    if available:
        return True, note
    if not limits.allow_unisolated:
        raise RewardError(f"python_tests refuses to run generated code without isolation: {note}; or set "
                          f"reward.sandbox.allow_unisolated=true to run it with resource limits only (NOT "
                          f"isolated: it can read files, reach the network and local sockets)")
    _warn_unisolated(note)
    return False, note


@functools.cache  # once per process and reason
def _warn_unisolated(note: str) -> None:
    log.warning("sandbox: generated code runs WITHOUT isolation (reward.sandbox.allow_unisolated=true): %s",
                note)


def _run_io(case: Case, limits: box.Limits, isolated: bool, scratch: str, deadline: float) -> CaseResult:
    t0 = time.monotonic()
    job_r, job_w = os.pipe()
    try:
        b = _start("io", limits, isolated, scratch, {3: job_r})
    except BaseException:
        os.close(job_w)
        raise
    finally:
        os.close(job_r)
    _feed(open(job_w, "wb"), json.dumps({"source": case.source, "processes": limits.processes}).encode())
    _feed(b.proc.stdin, case.stdin.encode())
    why = _collect([b], b, deadline, limits.output_bytes)
    seconds, tail = time.monotonic() - t0, _tail(b.err)
    if why is not None:
        return CaseResult(why, seconds, tail)
    if b.proc.returncode != 0:
        return CaseResult(_failure([b]), seconds, tail)
    if case.expected_stdout is not None and _lines(b.out.decode(errors="replace")) != _lines(case.expected_stdout):
        return CaseResult("wrong_answer", seconds, tail)
    return CaseResult("passed", seconds, tail)


def _run_tests(cases: list[Case], limits: box.Limits, isolated: bool, scratch: str,
               deadline: float) -> list[CaseResult]:
    """The assert cases of one completion (one source), in one pair of boxes while they last."""
    results: list[CaseResult] = []
    while len(results) < len(cases):
        if time.monotonic() >= deadline:
            results.append(CaseResult("not_run"))
            continue
        done, lost, at_load = _test_round(cases[len(results):], limits, isolated, scratch, deadline)
        results += done
        if lost is not None:  # the boxes ended inside a case: it gets their status, the rest a fresh pair
            results.append(lost)
        if at_load:  # the code itself ends its box (exits, loops, ...) before serving a case: so would every pair
            results += [CaseResult(lost.status, 0.0, lost.stderr_tail)] * (len(cases) - len(results))
    return results


def _test_round(cases: list[Case], limits: box.Limits, isolated: bool, scratch: str,
                deadline: float) -> tuple[list[CaseResult], Optional[CaseResult], bool]:
    """Start a `solution` box (the code, run once; each case served by a fork of it) and a `test` box (each
    case's statements in a fork of its own, judged there: it sees the solution's objects as handles and gets
    plain values back). The verdicts come from the test box's fd 6, which nothing of the solution's can reach.
    Returns the results of the cases judged, the result of the one the boxes ended in (or None), and whether the
    solution's box ended before it served any case (the test box then exits with GONE_AT_LOAD)."""
    t0 = time.monotonic()
    pipes = {name: os.pipe() for name in ("requests", "answers", "sol_job", "test_job", "verdicts")}
    (req_r, req_w), (ans_r, ans_w) = pipes["requests"], pipes["answers"]
    solution = None
    try:
        solution = _start("solution", limits, isolated, scratch, {3: pipes["sol_job"][0], 4: req_r, 5: ans_w})
        test = _start("test", limits, isolated, scratch,
                      {3: pipes["test_job"][0], 4: req_w, 5: ans_r, 6: pipes["verdicts"][1]})
    except BaseException:
        if solution is not None:
            _kill([solution])
        for fd in (pipes["sol_job"][1], pipes["test_job"][1], pipes["verdicts"][0]):
            os.close(fd)
        raise
    finally:
        for fd in (req_r, req_w, ans_r, ans_w, pipes["sol_job"][0], pipes["test_job"][0], pipes["verdicts"][1]):
            os.close(fd)
    _feed(open(pipes["sol_job"][1], "wb"), json.dumps({"source": cases[0].source,
                                                       "processes": limits.processes}).encode())
    _feed(open(pipes["test_job"][1], "wb"), json.dumps({"tests": [c.test for c in cases],
                                                        "processes": limits.processes}).encode())
    verdicts = _Verdicts(pipes["verdicts"][0], len(cases))
    why = _collect([solution, test], test, deadline, limits.output_bytes, verdicts)
    tail = (_tail(test.err) + "\n" + _tail(solution.err)).strip()
    done = [CaseResult(v["status"], v["seconds"], tail) for v in verdicts.items]
    if len(done) == len(cases):
        return done, None, False
    seconds = time.monotonic() - t0 - sum(r.seconds for r in done)
    at_load = why is None and not test.killed and test.proc.returncode == GONE_AT_LOAD
    return done, CaseResult(why or _failure([solution, test]), seconds, tail), at_load


class _Verdicts:
    """The test box's verdict lines, read from its fd 6 as they come; `complete` once all have come."""
    STATUSES = {"passed", "error", "cpu_limit", "memory_limit"}

    def __init__(self, fd: int, expected: int):
        self.file, self.expected, self.items, self._partial = os.fdopen(fd, "rb", buffering=0), expected, [], b""

    def read(self) -> bool:
        """Take what has arrived; False at the end of the stream."""
        data = os.read(self.file.fileno(), 65536)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            v = json.loads(line)
            if v.get("case") != len(self.items) or v.get("status") not in self.STATUSES:
                raise RewardError(f"the sandbox's test box sent a malformed verdict: {line[:200]!r}")
            self.items.append({"status": v["status"], "seconds": float(v["seconds"])})
        return bool(data)

    @property
    def complete(self) -> bool:
        return len(self.items) >= self.expected


@dataclass
class _Box:
    proc: subprocess.Popen
    out: bytearray
    err: bytearray
    killed: bool = False  # by us (time, output, or the case was over): its exit status says nothing


def _start(role: str, limits: box.Limits, isolated: bool, scratch: str, fds: dict[int, int]) -> _Box:
    proc = box.start(role, limits, isolated, scratch, fds)
    if role != "io":
        proc.stdin.close()
    return _Box(proc, bytearray(), bytearray())


def _feed(target, data: bytes) -> None:
    """Write in a thread: a box that does not read must not block us (the deadline still applies)."""
    def write() -> None:
        try:
            with target:
                target.write(data)
        except OSError:  # the box exited or closed its end: nothing to deliver
            pass
    threading.Thread(target=write, daemon=True, name="sandbox-feed").start()


def _collect(boxes: list[_Box], judged: _Box, deadline: float, output_bytes: int,
             verdicts: Optional[_Verdicts] = None) -> Optional[str]:
    """Read the boxes' stdout/stderr (and `verdicts`) until `judged` has ended or every verdict has come; None,
    or the status of a box killed by us.

    A box whose pipes have closed is exiting: it is waited for (briefly) so that its own exit status, a CPU
    limit say, is read rather than our kill's. When `judged` has ended, the others get the same grace (a
    solution box exits when the test box's requests end), then whatever still runs is killed."""
    sel = selectors.DefaultSelector()
    for b in boxes:
        sel.register(b.proc.stdout, selectors.EVENT_READ, (b, b.out))
        sel.register(b.proc.stderr, selectors.EVENT_READ, (b, b.err))
    if verdicts is not None:
        sel.register(verdicts.file, selectors.EVENT_READ, (None, None))
    why, open_pipes = None, {id(b): 2 for b in boxes}
    try:
        while open_pipes[id(judged)] and why is None and not (verdicts and verdicts.complete):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                why = "wall_timeout"
                break
            for key, _ in sel.select(timeout):
                owner, buf = key.data
                if owner is None:
                    if not verdicts.read():
                        sel.unregister(key.fileobj)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_pipes[id(owner)] -= 1
                elif len(buf) + len(data) > output_bytes:
                    why = "output_limit"
                else:
                    buf.extend(data)
        if why is None and not (verdicts and verdicts.complete):
            for b in [judged] + [b for b in boxes if b is not judged]:
                _wait(b, min(deadline, time.monotonic() + EXIT_GRACE_S))
    finally:
        sel.close()
        _kill(boxes)
        for b in boxes:
            b.proc.stdout.close()
            b.proc.stderr.close()
        if verdicts is not None:  # what the test box wrote before it ended (or was killed)
            os.set_blocking(verdicts.file.fileno(), False)
            with contextlib.suppress(BlockingIOError):
                while not verdicts.complete and verdicts.read():
                    pass
            verdicts.file.close()
    return why


def _wait(b: _Box, until: float) -> None:
    try:
        b.proc.wait(timeout=max(0.0, until - time.monotonic()))
    except subprocess.TimeoutExpired:  # still running: the kill follows
        pass


def _kill(boxes: list[_Box]) -> None:
    """SIGKILL the outer bwrap: its PID 1 dies with it, and with PID 1 every process of the box."""
    for b in boxes:
        if b.proc.poll() is None:
            b.killed = True
            try:
                os.killpg(b.proc.pid, signal.SIGKILL)  # unisolated: the rest of its session, too
            except (ProcessLookupError, PermissionError):
                b.proc.kill()
            b.proc.wait()


def _failure(boxes: list[_Box]) -> str:
    for b in boxes:
        if b.err.startswith(b"bwrap: "):  # the box itself did not start: ours to fix, not the code's failure
            raise RewardError(f"the sandbox could not start a box: {b.err[:500].decode(errors='replace')}")
    for b in boxes:
        code = b.proc.returncode
        sig = -code if code < 0 else code - 128 if code > 128 else 0
        if not b.killed and sig in CPU_SIGNALS:
            return "cpu_limit"
    if any(b"MemoryError" in b.err for b in boxes):
        return "memory_limit"
    return "error"


def _tail(err: bytearray) -> str:
    return err[-500:].decode(errors="replace")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def check_isolation(limits: SandboxConfig) -> None:
    """At start-up: refuse now (RewardError) rather than at the first completion; log how it isolates."""
    isolated, note = require_isolation(limits)
    if isolated:
        log.info("sandbox: generated code runs in %s", note)
