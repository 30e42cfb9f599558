"""The escape suite: each attack that generated code could try on `python_tests`, run in the real box.

Every attack is written so that it would *pass* its case if it worked (it prints or returns what it
reached), and each test asserts that the case fails and that the host shows no trace of it. Where the
same code can run directly on the host, `on_host` runs it there first: the attack works unboxed, so
these tests would fail against a sandbox that did not stop it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from rewards import SandboxConfig
from rewards.box import probe
from rewards.code_tests import python_tests
from rewards.sandbox import Case, run_cases

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not probe()[0], reason=f"no bubblewrap box here: {probe()[1]}")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = SandboxConfig(cpu_seconds=2.0, wall_seconds=8.0, memory_mb=256, output_bytes=100_000)


def on_host(source: str, stdin: str = "") -> str:
    """The attack's stdout when run by a plain interpreter on the host (the control)."""
    proc = subprocess.run([sys.executable, "-I", "-c", source], input=stdin, capture_output=True, text=True,
                          timeout=60)
    return proc.stdout.strip()


def boxed(source: str, expected: str) -> str:
    [result] = run_cases([Case(source, expected_stdout=expected)], LIMITS).cases
    return result.status


def host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


READ_ANCESTOR_ENVIRON = textwrap.dedent('''
    import os
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            data = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        for var in data.split(b"\\0"):
            if var.startswith(b"SLIPSTREAM_ESCAPE_SECRET="):
                found.add(var.split(b"=", 1)[1].decode())
    print(" ".join(sorted(found)))
''')


ANCESTOR = textwrap.dedent('''
    import json, os, subprocess, sys
    from rewards import SandboxConfig
    from rewards.sandbox import Case, run_cases
    attack, secret = sys.argv[1], os.environ["SLIPSTREAM_ESCAPE_SECRET"]
    # the control: a child with an empty environment, as a scrubbing sandbox would start it
    control = subprocess.run([sys.executable, "-I", "-c", attack], env={}, capture_output=True, text=True)
    [boxed] = run_cases([Case(attack, expected_stdout=secret)], SandboxConfig(wall_seconds=8.0)).cases
    print(json.dumps([control.stdout.strip(), boxed.status]))
''')


def test_an_ancestors_environment_cannot_be_read():
    """The secret is in the environment this process was started with (what /proc/<pid>/environ shows): the
    sandbox's ancestor, as the rollout worker is in a run."""
    secret = f"sk-{uuid.uuid4().hex}"
    proc = subprocess.run([sys.executable, "-c", ANCESTOR, READ_ANCESTOR_ENVIRON], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, SLIPSTREAM_ESCAPE_SECRET=secret))
    assert proc.returncode == 0, proc.stderr
    control, boxed_status = json.loads(proc.stdout)
    assert control == secret  # an unboxed child with a scrubbed environment still reads it from its parent
    assert boxed_status == "wrong_answer"


FORGE_THE_VERDICT = textwrap.dedent('''
    import os, sys

    def forge():
        # walk every frame above this code: take anything that looks like the harness's secret and every
        # descriptor number it keeps, write the secret on each, and leave with status 0 before the test runs
        frame, secrets, fds = sys._getframe(1), [], set(range(3, 64))
        while frame is not None:
            for name, value in list(frame.f_locals.items()):
                items = list(value.items()) if isinstance(value, dict) else [(name, value)]
                for key, v in items:
                    if isinstance(key, str) and any(w in key for w in ("nonce", "secret", "token", "verdict")):
                        secrets.append(str(v))
                    elif isinstance(v, int) and not isinstance(v, bool) and 2 < v < 1024:
                        fds.add(v)
            frame = frame.f_back
        for fd in sorted(fds):
            try:
                os.write(fd, (secrets[0] if secrets else "passed").encode())
            except OSError:
                pass
        os._exit(0)

    forge()
''')


def test_a_frame_walk_cannot_forge_a_pass():
    """The verdict of an assert case is the exit status of the test box; the code's process holds no secret
    and cannot reach that box, so `assert False` fails whatever the code writes or wherever it exits."""
    result = python_tests("q", f"```python\n{FORGE_THE_VERDICT}\n```", tests=["assert False"], sandbox=LIMITS)
    assert result.score == 0.0 and result.info["passed"] == 0
    exit_in_a_call = "import os\ndef add(a, b):\n    os._exit(0)\n"
    result = python_tests("q", exit_in_a_call, tests=["assert add(1, 2) == 3", "add(1, 2)\nassert False"],
                          sandbox=LIMITS)
    assert result.score == 0.0


FORGE_THE_PROTOCOL = textwrap.dedent('''
    import os
    # every message the test box's processes read, forged: a case "ended", names, answers, a callback into the
    # test, a handle that claims to be one of the test's own objects; at load and again inside a call
    FORGED = (b'{"ended": "ok"}\\n{"names": {}}\\n{"value": true}\\n{"value": {"$cb": 0}}\\n'
              b'{"callback": 0, "args": [], "kwargs": {"$dict": []}}\\n{"load_error": "x"}\\n') * 20

    def spray():
        for fd in range(3, 64):
            try:
                os.write(fd, FORGED)
            except OSError:
                pass

    spray()

    def mutate(xs):
        spray()
        xs.append(1)
''')


def test_forged_protocol_messages_cannot_pass_a_case():
    """The solution's process writes every kind of message the test box reads, on every descriptor, before
    and during the test: what it forges can only answer for the solution (as a return value would), never
    make a failing statement pass."""
    tests = ["assert False", "xs = []\nmutate(xs)\nassert xs == [2]", "mutate([])\nassert 1 == 2"]
    result = python_tests("q", FORGE_THE_PROTOCOL, tests=tests, sandbox=LIMITS)
    assert result.score == 0.0 and result.info["passed"] == 0, result.info


def test_objects_of_the_solution_cannot_decide_a_comparison():
    """An object whose __eq__ always says True stays in the solution's box: comparing it is an error."""
    liar = "class Always:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Always()\n"
    result = python_tests("q", liar, tests=["assert add(1, 2) == 3", "assert add(1, 2)"], sandbox=LIMITS)
    assert result.score == 0.0


def test_patched_modules_and_shadowed_builtins_of_the_solution_do_not_reach_the_test():
    """The test's `math` is the test box's own import, its `set` the real builtin: patching them in the
    solution's process changes nothing the asserts use."""
    patched = "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 1.0\n"
    shadowed = "def set(*args):\n    return {1, 2}\n\ndef f(x):\n    return [9]\n"
    assert python_tests("q", patched, tests=["assert math.isclose(area(2), 12.566, rel_tol=1e-3)"],
                        sandbox=LIMITS).score == 0.0
    assert python_tests("q", shadowed, tests=["assert set(f(1)) == {1, 2}"], sandbox=LIMITS).score == 0.0


def test_a_fork_bomb_hits_the_process_limit():
    marker = f"forkbomb-{uuid.uuid4().hex[:8]}"
    bomb = textwrap.dedent(f'''
        import os, time
        started = 0
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid == 0:
                os.execv("/bin/sleep", ["/bin/sleep", "30", "{marker}"])
            started += 1
        print(started)
    ''')
    status = boxed(bomb, expected="500")
    assert status == "wrong_answer"  # some forks were refused: RLIMIT_NPROC
    time.sleep(0.5)
    assert host_processes_with(marker) == []  # and the ones that started died with the box


def test_setsid_does_not_escape_the_kill():
    marker = f"setsid-{uuid.uuid4().hex[:8]}"
    code = textwrap.dedent(f'''
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["/bin/sleep", "60", "{marker}"])
            os._exit(0)
        time.sleep(60)
    ''')
    t0 = time.monotonic()
    [result] = run_cases([Case(code)], SandboxConfig(wall_seconds=2.0)).cases
    assert result.status == "wall_timeout" and time.monotonic() - t0 < 6
    time.sleep(0.5)
    assert host_processes_with(marker) == []


def _connect_code(targets: list) -> str:
    return textwrap.dedent(f'''
        import socket
        reached = []
        for family, address in {targets!r}:
            s = socket.socket(getattr(socket, family), socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect(address if family == "AF_UNIX" else tuple(address))
                reached.append(str(address))
            except OSError:
                pass
            finally:
                s.close()
        print(len(reached))
    ''')


def _host_ip() -> str:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


@pytest.fixture
def redis_on_a_unix_socket(tmp_path):
    """A real Redis (the embedded valkey binary) listening on a Unix socket and on TCP loopback."""
    from buffer.server import find_server_binary, free_port

    path, port = str(tmp_path / "redis.sock"), free_port()
    proc = subprocess.Popen([find_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--unixsocket",
                             path, "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield path, port
    proc.kill()
    proc.wait()


def test_host_sockets_and_the_network_are_out_of_reach(redis_on_a_unix_socket):
    import ray

    redis_path, redis_port = redis_on_a_unix_socket
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # our own cluster
    try:
        session = ray.get_runtime_context().gcs_address  # host:port of Ray's GCS (TCP)
        sockets_dir = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "sockets")
        ray_sockets = [os.path.join(sockets_dir, n) for n in os.listdir(sockets_dir)]
        abstract = socket.socket(socket.AF_UNIX)
        abstract.bind(f"\0slipstream-escape-{uuid.uuid4().hex}")
        abstract.listen()
        gcs_host, gcs_port = session.rsplit(":", 1)
        targets = ([("AF_UNIX", p) for p in ray_sockets + [redis_path, abstract.getsockname()]]
                   + [("AF_INET", ["127.0.0.1", redis_port]), ("AF_INET", [gcs_host, int(gcs_port)])])
        code = _connect_code(targets)
        assert ray_sockets and on_host(code) == str(len(targets))  # every one is reachable from the host
        assert boxed(code, expected=str(len(targets))) == "wrong_answer"
        [result] = run_cases([Case(code, expected_stdout="0")], LIMITS).cases
        assert result.status == "passed"  # none reached from the box
    finally:
        ray.shutdown()


def test_outbound_network_fails():
    server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]
    code = _connect_code([("AF_INET", ["127.0.0.1", port]), ("AF_INET", [_host_ip(), port])])
    try:
        assert on_host(code) == "2"
        [result] = run_cases([Case(code, expected_stdout="2")], LIMITS).cases
        assert result.status == "wrong_answer"
        probe_code = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"
        [result] = run_cases([Case(probe_code)], LIMITS).cases
        assert result.status == "error" and "Network is unreachable" in result.stderr_tail
    finally:
        server.close()


def test_nothing_outside_the_scratch_directory_can_be_written(tmp_path):
    """The repository, the venv (whose code the reward pool imports), /tmp and the interpreter itself."""
    name = f".escape-{uuid.uuid4().hex[:8]}"
    targets = [os.path.join(ROOT, name), os.path.join(ROOT, "rewards", name), os.path.join(sys.prefix, name),
               os.path.join(os.path.realpath(sys.base_prefix), name), str(tmp_path / name), f"/tmp/{name}",
               f"/{name}"]
    code = textwrap.dedent(f'''
        import os
        written = 0
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("pwned")
                written += 1
            except OSError:
                pass
        print(written)
    ''')
    host_targets = targets[:3] + targets[4:5]  # the control writes only where it can clean up again
    control = code.replace(repr(targets), repr(host_targets))
    try:
        assert on_host(control) == str(len(host_targets))
    finally:
        for path in host_targets:
            if os.path.exists(path):
                os.remove(path)
    assert boxed(code, expected=str(len(targets))) == "wrong_answer"
    assert [p for p in targets if os.path.exists(p)] == []


def test_no_directory_the_reward_pool_imports_from_is_writable():
    """rewards/pool.py starts its workers with this process's sys.path (PYTHONPATH) and working directory."""
    dirs = sorted({os.path.abspath(p) for p in sys.path if os.path.isdir(p or ".")} | {os.getcwd()})
    name = f"escape_{uuid.uuid4().hex[:8]}.py"
    code = textwrap.dedent(f'''
        written = 0
        for d in {dirs!r}:
            try:
                with open(d + "/{name}", "w") as f:
                    f.write("raise SystemExit('imported code written by the sandbox')")
                written += 1
            except OSError:
                pass
        print(written)
    ''')
    assert boxed(code, expected=str(len(dirs))) == "wrong_answer"
    assert [d for d in dirs if os.path.exists(os.path.join(d, name))] == []
