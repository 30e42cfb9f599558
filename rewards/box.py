"""One isolated process for untrusted code: bubblewrap (`bwrap`) with private namespaces, under limits.

A box is `bwrap ... python -I -S -c <rewards/_sandbox_child.py> <role>` with:
- new PID, IPC, UTS, network (no interface up, not even loopback; abstract Unix sockets are per network
  namespace) and mount namespaces (a user namespace too when not started by root), `--die-with-parent`,
  `--new-session`;
- a file system built from nothing: read-only /usr (and its /lib, /lib64, /bin links), the interpreter's
  own prefix read-only, a fresh /proc of the box's PID namespace, a minimal /dev, and a size-limited tmpfs
  at /work (the scratch directory, also HOME and TMPDIR); the root itself is read-only. No /tmp, /run, /home, repository or venv: host
  Unix sockets (Ray's, Redis's) do not exist in there;
- an environment of PATH, LANG, HOME and TMPDIR only;
- RLIMIT_CPU / RLIMIT_AS / RLIMIT_FSIZE / RLIMIT_NOFILE / RLIMIT_CORE set before bwrap starts (inherited
  by everything in the box); RLIMIT_NPROC set by the program in the box before any untrusted code, which,
  started by root, then switches to nobody (the kernel never applies RLIMIT_NPROC to root).
Killing `proc` (the outer bwrap) kills the box's PID 1 (die-with-parent), and the kernel then kills every
process of the namespace, `setsid()` or not.

Without bwrap (`allow_unisolated`), the same command runs without the namespaces: limits only.
"""
from __future__ import annotations

import fcntl
import functools
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
SCRATCH = "/work"
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; scripts/setup.sh does "
                "it where apt is available) and allow unprivileged user namespaces (`unshare -Ur true` must "
                "work; e.g. sysctl kernel.unprivileged_userns_clone=1 or "
                "kernel.apparmor_restrict_unprivileged_userns=0)")


@dataclass
class Limits:
    cpu_seconds: int
    memory_bytes: int
    output_bytes: int
    processes: int  # RLIMIT_NPROC, set by the program in the box (rewards/_sandbox_child.py confine)
    scratch_bytes: int


def interpreter() -> tuple[str, str]:
    """(real interpreter binary, its prefix): the venv is not needed, only the standard library."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def program(role: str, isolated: bool) -> list[str]:
    return [interpreter()[0], "-I", "-S", "-c", _child_source(), role, "must" if isolated else "try"]


def bwrap_args(scratch_bytes: int) -> list[str]:
    """bwrap and its options up to `--`; the program to run follows."""
    _, prefix = interpreter()
    cmd = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    if os.geteuid() != 0:  # root makes the namespaces itself and then becomes nobody (see the module doc)
        cmd.insert(1, "--unshare-user")
    for link in ("lib", "lib64", "bin"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    if not prefix.startswith("/usr/"):  # e.g. pyenv's under /root: its parents must be traversable by nobody
        parents = [p for p in _ancestors(prefix) if p not in ("/", "/usr")]
        cmd += [arg for p in parents for arg in ("--perms", "0755", "--dir", p)] + ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(scratch_bytes),
            "--tmpfs", SCRATCH, "--remount-ro", "/", "--chdir", SCRATCH, "--clearenv"]
    for key, value in box_env().items():
        cmd += ["--setenv", key, value]
    return cmd + ["--"]


def _ancestors(path: str) -> list[str]:
    """/a/b/c -> ["/", "/a", "/a/b"], outermost first."""
    out, head = [], os.path.dirname(path)
    while head not in out:
        out.insert(0, head)
        head = os.path.dirname(head)
    return out


def box_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": SCRATCH, "TMPDIR": SCRATCH}


@functools.cache
def _child_source() -> str:
    with open(CHILD) as f:
        return f.read()


def _set_limits(limits: Limits) -> None:
    """In the forked process, before bwrap: every process of the box inherits these."""
    cpu = max(1, limits.cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.scratch_bytes, limits.scratch_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def start(role: str, limits: Limits, isolated: bool, scratch: str, fds: dict[int, int]) -> subprocess.Popen:
    """Start one box; `fds` maps the box's descriptor numbers (3, 4, 5) to ours. stdin/out/err are pipes.

    `scratch` is the working directory when not isolated (a bwrap box has its own tmpfs)."""
    if isolated:
        cmd, env, cwd = bwrap_args(limits.scratch_bytes) + program(role, True), {}, "/"
    else:
        cmd, env, cwd = program(role, False), dict(box_env(), HOME=scratch, TMPDIR=scratch), scratch

    def prepare() -> None:  # runs in the child between fork and exec: descriptors, then limits
        high = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 100) for target, source in fds.items()}
        for target, source in high.items():  # via high numbers: a source may itself be 3, 4 or 5
            os.dup2(source, target)
            os.close(source)
        _set_limits(limits)

    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, pass_fds=sorted(fds), preexec_fn=prepare,
                            start_new_session=True)


@functools.cache  # the answer does not change while the process lives
def probe() -> tuple[bool, str]:
    """Whether a bwrap box can start here: (available, how, or what is missing and how to install it)."""
    if shutil.which("bwrap") is None:
        return False, f"`bwrap` is not on PATH; {INSTALL_HINT}"
    # the same namespaces and mounts, the interpreter as the box's user, an extension module from its prefix
    become = "os.setgroups([]); os.setgid(65534); os.setuid(65534); " if os.geteuid() == 0 else ""
    cmd = bwrap_args(1 << 20) + [interpreter()[0], "-I", "-S", "-c", f"import os; {become}import math"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap failed to start ({e}); {INSTALL_HINT}"
    if proc.returncode != 0:
        return False, f"bwrap cannot create its namespaces here ({proc.stderr.strip()[-300:]}); {INSTALL_HINT}"
    return True, "bubblewrap: new PID, mount, network, IPC and UTS namespaces" + (
        "" if os.geteuid() == 0 else ", user namespace")
