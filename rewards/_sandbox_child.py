"""The sandbox's child process: run untrusted Python test cases under OS limits. Standard library only.

Started by rewards/sandbox.py as `python -I _sandbox_child.py` in a scratch directory with an empty
environment (PATH, LANG, HOME and TMPDIR = the scratch directory) in a new session. It reads one job
(JSON) on stdin and writes one result (JSON) on stdout.

Steps: leave the network namespace (unshare CLONE_NEWNET; or CLONE_NEWUSER|CLONE_NEWNET where
unprivileged user namespaces are allowed; otherwise report why not and go on), then per test case fork a
grandchild that sets RLIMIT_CPU / RLIMIT_AS / RLIMIT_FSIZE / RLIMIT_CORE, points stdin/stdout/stderr at
files of the scratch directory and runs the code. The child kills the case's process group when the
job's wall-clock budget runs out.

Invariant: a case passes only if the grandchild reached the end of its harness and wrote the job's
random nonce on a private pipe; exiting early with status 0 (`os._exit(0)` before the asserts) does not.
The expected outputs never enter this process: the parent compares them.
"""
import builtins
import ctypes
import json
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def isolate_network() -> tuple:
    """Leave the host's network namespace; returns (isolated, how or why not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    errors = []
    uid, gid = os.getuid(), os.getgid()
    for flags, how in ((CLONE_NEWNET, "unshare(CLONE_NEWNET)"),
                       (CLONE_NEWUSER | CLONE_NEWNET, "unshare(CLONE_NEWUSER|CLONE_NEWNET)")):
        if libc.unshare(flags) == 0:
            if flags & CLONE_NEWUSER:
                _map_ids(uid, gid)  # without a mapping, files created here would fail with EOVERFLOW
            return True, how
        errors.append(f"{how}: {os.strerror(ctypes.get_errno())}")
    return False, "; ".join(errors)


def _map_ids(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def run_case(i: int, case: dict, job: dict, status_w: int) -> None:
    """In the forked grandchild: limits, redirections, the code. Never returns."""
    os.setpgid(0, 0)  # its own process group, so the child can kill whatever it starts
    for fd, name, flags in ((0, f"case{i}.in", os.O_RDONLY),
                            (1, f"case{i}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, f"case{i}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(name, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; we want the kill, a clear status
    cpu = max(1, math.ceil(job["cpu_seconds"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["output_bytes"], job["output_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ok = False
    try:
        scope = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(case["source"], "<solution>", "exec"), scope)
        if case.get("test") is not None:
            exec(compile(case["test"], "<test>", "exec"), scope)
        ok = True
    except SystemExit as e:  # a stdin/stdout program may end with exit(0); an assert case may not
        ok = case.get("test") is None and e.code in (None, 0)
        if not ok:
            print(f"SystemExit: {e.code}", file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the code may raise anything; the parent reads stderr
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    if ok:
        os.write(status_w, job["nonce"].encode())
    os._exit(0 if ok else 1)


def wait_case(pid: int, deadline: float) -> tuple:
    """Wait for the grandchild until `deadline`; returns (wait status, killed for time)."""
    killed = False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll
        pidfd = None
    while True:
        if pidfd is not None:
            timeout = None if killed else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([pidfd], [], [], timeout)
            done_pid, status = os.waitpid(pid, os.WNOHANG) if ready else (0, 0)
        else:
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid == 0 and (killed or time.monotonic() < deadline):
                time.sleep(0.002)
                continue
        if done_pid == pid:
            break
        if time.monotonic() >= deadline and not killed:
            _kill_group(pid)
            killed = True
    if pidfd is not None:
        os.close(pidfd)
    _kill_group(pid)  # anything the code left running in the background
    return status, killed


def _read_nonblocking(fd: int) -> bytes:
    """A process the code left behind may hold the pipe's write end: never wait for it."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    isolated, note = isolate_network()
    for i, case in enumerate(job["cases"]):  # inputs are written before any limit applies
        with open(f"case{i}.in", "w") as f:
            f.write(case.get("stdin") or "")
    deadline = time.monotonic() + job["wall_seconds"]
    results = []
    for i, case in enumerate(job["cases"]):
        if time.monotonic() >= deadline:
            results.append({"state": "not_run"})
            continue
        status_r, status_w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(status_r)
            run_case(i, case, job, status_w)
        os.close(status_w)
        status, killed = wait_case(pid, deadline)
        nonce_ok = _read_nonblocking(status_r) == job["nonce"].encode()
        results.append({"state": "killed" if killed else "exited", "nonce_ok": nonce_ok,
                        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
                        "seconds": round(time.monotonic() - t0, 4)})
    sys.stdout.write(json.dumps({"network_isolated": isolated, "network_note": note, "cases": results}))


if __name__ == "__main__":
    main()
