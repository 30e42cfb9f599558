"""The programs that run inside the sandbox's boxes (rewards/box.py). Standard library only.

Started as `python -I -S -c <this file's text> <role>`; the job (JSON) arrives on fd 3. Three roles:
- `io`: run the solution as a program with the case's stdin/stdout (the parent compares the output);
- `solution`: run the solution once, then serve each assert case from a fork of itself (fd 4 in, fd 5 out):
  every case starts from the loaded solution, none sees what another changed;
- `test`: run each case's test statements in a fork of its own; every name of the solution is a `Remote`
  whose calls, attributes, items, comparisons with other objects of the solution and isinstance checks are
  answered by the solution's process with plain values (JSON). Python's semantics carry across: a call's
  in-place changes to the test's list / dict / set arguments come back and are applied to the test's own
  objects, and a function of the test passed to the solution (a key, a callback) runs here when the
  solution calls it. The comparisons of the asserts happen in this box, which the solution's code cannot
  reach (its own PID namespace and memory); a case's exit status is its verdict, which the test box's
  first process (it runs nothing of the solution's) writes on fd 6, held by this box alone.

Invariant: nothing here holds a secret; the `test` box never executes or unpickles anything the solution
sent, it decodes JSON into str/int/float/bool/None/bytes/list/tuple/dict/set and handles.
"""
import builtins
import functools
import importlib
import json
import os
import resource
import signal
import sys
import time
import traceback
import types

NOBODY = 65534
MAX_MESSAGE = 1 << 20  # one answer of the solution box: larger ones fail the case
# standard modules that act when imported (a browser, a GUI, a printout): never imported for the solution
SIDE_EFFECT_MODULES = {"__main__", "antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter"}


def confine(job: dict) -> None:
    """Before any untrusted code: the process limit, then (started by root) become nobody.

    RLIMIT_NPROC is set here, not before bwrap: in the box's own user namespace it counts the box's processes
    only, while set before bwrap made that namespace it would also cap the whole user's. The kernel never
    applies it to root, hence nobody: no capabilities either. A bwrap box must manage the switch (argv[2] ==
    "must"); an unisolated run where nobody is not mapped (inside a user namespace) goes on as it is."""
    resource.setrlimit(resource.RLIMIT_NPROC, (job["processes"], job["processes"]))
    os.environ.pop("PWD", None)  # bwrap's --chdir sets it; the environment is PATH, LANG, HOME and TMPDIR only
    if os.getuid() != 0:
        return
    try:
        os.chown(".", NOBODY, NOBODY)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError:
        if sys.argv[2] == "must":
            raise


def encode(value, handles, tag="$ref"):
    """Plain values as JSON (a namedtuple as its tuple, an IntEnum as its int); a module as its name; an object of
    the solution's (a `Remote` here) as its reference; anything else is kept in `handles` and sent as
    {tag: n}: "$ref" from the solution's process, "$cb" (a function or object of the test's) from the test's."""
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if value == value and abs(value) != float("inf") else {"$float": repr(float(value))}
    if isinstance(value, list):
        return [encode(v, handles, tag) for v in value]
    for kind in (tuple, set, frozenset):
        if isinstance(value, kind):
            return {"$" + kind.__name__: [encode(v, handles, tag) for v in value]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k, handles, tag), encode(v, handles, tag)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, types.ModuleType):
        return {"$module": str(value.__name__)}
    if type(value) is Remote:
        return {"$ref": object.__getattribute__(value, "_ref")}
    handles.append(value)
    return {tag: len(handles) - 1}


def decode(wire, make_ref, make_local=None):
    """JSON back into values; {"$ref": n} by make_ref, {"$cb": n} by make_local (the solution's side only: the
    test never takes an object the solution claims to be the test's)."""
    if isinstance(wire, list):
        return [decode(v, make_ref, make_local) for v in wire]
    if not isinstance(wire, dict):
        return wire
    [(tag, body)] = wire.items()
    if tag == "$ref":
        return make_ref(body)
    if tag == "$cb" and make_local is not None:
        return make_local(body)
    if tag == "$float":
        return float(body)
    if tag == "$bytes":
        return bytes.fromhex(body)
    if tag == "$module":  # the test box's own import of that module: the solution's may be patched
        name = str(body)
        if name.split(".")[0] not in sys.stdlib_module_names or name.split(".")[0] in SIDE_EFFECT_MODULES:
            raise ImportError(f"the test box imports only standard library modules, not {name!r}")
        return importlib.import_module(name)
    if tag == "$dict":
        return {decode(k, make_ref, make_local): decode(v, make_ref, make_local) for k, v in body}
    kinds = {"$tuple": tuple, "$set": set, "$frozenset": frozenset}
    return kinds[tag](decode(v, make_ref, make_local) for v in body)


def run_io(job: dict) -> None:
    code = compile(job["source"], "<solution>", "exec")
    confine(job)
    exec(code, {"__name__": "__main__", "__builtins__": builtins})


# exit codes of a test case's process besides 0 (passed) and 1 (failed): the solution failed to load (MemoryError
# or another error), the solution's process of the case ended (hit its CPU limit, or otherwise), the solution's
# box is gone, the test raised MemoryError
LOAD_ERROR, LOAD_MEMORY, SOLUTION_CPU, SOLUTION_ENDED, SOLUTION_GONE, MEMORY = 3, 4, 5, 6, 7, 8
GONE_AT_LOAD = 9  # also the test box's own exit status: the solution's box died before it served any case


def run_solution(job: dict) -> None:
    """Run the solution once, then serve each test case from a fork of this process: every case starts from the
    state right after the solution ran, and a case cannot leave anything behind for the next."""
    requests, answers = os.fdopen(4, "rb"), os.fdopen(5, "wb")
    sys.stdin = open(os.devnull)
    confine(job)
    scope, load_error = {"__name__": "__main__", "__builtins__": builtins}, None
    try:
        exec(compile(job["source"], "<solution>", "exec"), scope)
    except BaseException as e:  # noqa: BLE001 - the solution may raise anything, even SystemExit
        traceback.print_exc()
        load_error = f"{type(e).__name__}: {e}"
    names = {k: v for k, v in scope.items() if not k.startswith("__")}
    for line in requests:  # between cases only "begin" and stray "end"s (of a case whose process died) come
        if json.loads(line).get("op") != "begin":
            continue
        if load_error is not None:
            _answer(answers, {"load_error": load_error})
            return
        for stream in (answers, sys.stdout, sys.stderr):  # nothing buffered twice
            stream.flush()
        pid = os.fork()
        if pid == 0:
            try:
                handles = []
                _answer(answers, {"names": {k: encode(v, handles) for k, v in names.items()}})
                _serve_until_end(requests, answers, handles)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        _answer(answers, {"ended": _ending(status)})


def _ending(status: int) -> str:
    """How a case's solution process ended: "ok" (told to), "cpu_limit" or "died"."""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):  # soft or hard limit
        return "cpu_limit"
    return "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "died"


def _serve_until_end(requests, answers, handles: list):
    """Answer the test's requests until it sends "end" (or a callback's reply, which ends this level)."""
    for line in requests:
        req = json.loads(line)
        if "reply" in req:
            return req["reply"]
        if req.get("op") == "end":
            os._exit(0)
        _answer(answers, _serve(req, handles, requests, answers))
    os._exit(0)  # the test side is gone


def _serve(req: dict, handles: list, requests, answers) -> dict:
    try:
        target = handles[req["ref"]]

        def callback(n: int) -> Local:
            return Local(functools.partial(_call_back, requests, answers, handles, n))
        args = decode(req.get("args", []), handles.__getitem__, callback)
        op = req["op"]
        if op == "call":
            kwargs = decode(req.get("kwargs", {"$dict": []}), handles.__getitem__, callback)
            value = target(*args, **kwargs)
            # the arguments as the call left them: the test applies in-place changes to its own objects
            return {"value": encode(value, handles), "after": [_mutable(a, handles) for a in args],
                    "after_kwargs": {k: _mutable(a, handles) for k, a in kwargs.items()}}
        if op == "getattr":
            value = getattr(target, args[0])
        elif op == "getitem":
            value = target[args[0]]
        elif op == "list":
            value = list(target)
        elif op == "eq":  # two objects of the solution: theirs to compare
            value = bool(target == args[0])
        elif op == "isinstance":
            value = isinstance(args[0], target)
        else:  # len
            value = len(target)
        return {"value": encode(value, handles)}
    except BaseException as e:  # noqa: BLE001 - passed on to the test, as its exception
        return {"raise": [type(e).__name__, str(e)[:2000]]}


def _mutable(arg, handles: list):
    """A container argument as the call left it (the test applies the change to its own object); None else."""
    return encode(arg, handles) if type(arg) in (list, dict, set) else None


def _call_back(requests, answers, handles: list, ref: int, args: list, kwargs: dict):
    """The solution calls a function the test passed it (a key, a predicate): it runs in the test's process,
    which answers on the request pipe; the test may call the solution meanwhile (served here)."""
    _answer(answers, {"callback": ref, "args": encode(args, handles), "kwargs": encode(kwargs, handles)})
    reply = _serve_until_end(requests, answers, handles)
    return _result(reply, handles.__getitem__,
                   lambda n: Local(functools.partial(_call_back, requests, answers, handles, n)))


class Local:
    """In the solution's process: a function or object of the test's, called over the pipes."""
    __slots__ = ("_call",)

    def __init__(self, call):
        object.__setattr__(self, "_call", call)

    def __call__(self, *args, **kwargs):
        return self._call(list(args), kwargs)


def _answer(out, reply: dict) -> None:
    try:
        data = json.dumps(reply).encode()
    except (TypeError, ValueError) as e:  # e.g. an int too long to print
        data = json.dumps({"raise": [type(e).__name__, str(e)[:2000]]}).encode()
    out.write(data + b"\n")
    out.flush()


def _result(reply, make_ref, make_local):
    """A {"value"} or {"raise"} reply: the value decoded, or the exception raised here."""
    if not isinstance(reply, dict):
        raise TypeError("malformed reply")
    if "raise" in reply:
        name, message = reply["raise"]
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(message)
        raise RuntimeError(f"{name}: {message}")
    return decode(reply["value"], make_ref, make_local)


class SolutionDied(Exception):
    """The solution's process for this case stopped answering (it exited, or hit a limit)."""


class Remote:
    """A value that lives in the solution's box. Comparing it with a plain value or testing its truth here is
    an error: its own `__eq__` / `__bool__` would be the solution's to decide. Two objects of the solution are
    compared by the solution (they are both its own)."""
    __slots__ = ("_ref",)

    def __init__(self, ref: int):
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        return ask("call", self._ref, list(args), kwargs)

    def __getattr__(self, name):
        return ask("getattr", self._ref, [name])

    def __getitem__(self, key):
        return ask("getitem", self._ref, [key])

    def __iter__(self):
        return iter(ask("list", self._ref, []))

    def __len__(self):
        return ask("len", self._ref, [])

    def __instancecheck__(self, obj):
        return ask("isinstance", self._ref, [obj]) is True

    def __eq__(self, other):
        if isinstance(other, Remote):
            return ask("eq", self._ref, [other]) is True
        raise TypeError("the test compared an object of the solution with a plain value: unsupported")

    def __ne__(self, other):
        return not self.__eq__(other)

    def __bool__(self):
        raise TypeError("the test took the truth of an object of the solution (not a plain value): unsupported")

    def __lt__(self, other):
        raise TypeError("the test ordered an object of the solution (not a plain value): unsupported")

    __le__ = __gt__ = __ge__ = __lt__
    __hash__ = None

    def __repr__(self):
        return f"<object #{self._ref} of the solution>"


CHANNEL = {}


def ask(op: str, ref: int, args: list, kwargs=None):
    """One request to the solution's process; callbacks it makes meanwhile run here first."""
    local = CHANNEL["local"]
    req = {"op": op, "ref": ref, "args": encode(args, local, "$cb")}
    if kwargs:
        req["kwargs"] = encode(kwargs, local, "$cb")
    _send(req)
    while True:
        reply = _read_reply()
        if "callback" not in reply:
            break
        _send({"reply": _run_callback(reply, local)})
    if "ended" in reply:
        raise SolutionDied(str(reply["ended"]))
    value = _result(reply, _ref, None)
    if op == "call":  # in-place changes of the arguments, onto the test's own objects
        after, after_kwargs = reply.get("after") or [], reply.get("after_kwargs") or {}
        pairs = list(zip(args, after)) + [(v, after_kwargs.get(k)) for k, v in (kwargs or {}).items()]
        for mine, theirs in pairs:
            if theirs is not None:
                _sync(mine, decode(theirs, _ref, None))
    return value


def _run_callback(req: dict, local: list) -> dict:
    try:
        fn = local[req["callback"]]
        value = fn(*decode(req.get("args", []), _ref, None), **decode(req.get("kwargs", {"$dict": []}), _ref, None))
        return {"value": encode(value, local, "$cb")}
    except BaseException as e:  # noqa: BLE001 - the solution sees the test's exception as its own
        return {"raise": [type(e).__name__, str(e)[:2000]]}


def _sync(mine, theirs) -> None:
    """Make the test's container `mine` equal to `theirs` (what the solution left of its copy), in place and
    recursively, so that references the test holds into it see the change."""
    if isinstance(mine, list) and isinstance(theirs, list):
        for i in range(min(len(mine), len(theirs))):
            if type(mine[i]) in (list, dict, set) and type(mine[i]) is type(theirs[i]):
                _sync(mine[i], theirs[i])
            elif mine[i] is not theirs[i]:
                mine[i] = theirs[i]
        del mine[len(theirs):]
        mine.extend(theirs[len(mine):])
    elif isinstance(mine, dict) and isinstance(theirs, dict):
        for key in [k for k in mine if k not in theirs]:
            del mine[key]
        for key, value in theirs.items():
            if key in mine and type(mine[key]) in (list, dict, set) and type(mine[key]) is type(value):
                _sync(mine[key], value)
            else:
                mine[key] = value
    elif isinstance(mine, set) and isinstance(theirs, set) and mine != theirs:
        mine.clear()
        mine.update(theirs)


def _send(req: dict) -> None:
    CHANNEL["out"].write(json.dumps(req).encode() + b"\n")
    CHANNEL["out"].flush()


def _ref(ref) -> Remote:
    if type(ref) is not int:
        raise TypeError("malformed answer from the solution")
    return Remote(ref)


class SolutionGone(Exception):
    """The solution's box closed its pipe (it exited, or hit a limit outside a case), or sent an oversized
    answer: nothing more can be asked of it."""


def _read_reply() -> dict:
    line = CHANNEL["in"].readline(MAX_MESSAGE + 1)
    if not line.endswith(b"\n"):
        raise SolutionGone("the solution's box ended or sent an oversized answer")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise TypeError("malformed answer from the solution")
    return reply


def run_tests(job: dict) -> None:
    """Run each case's statements in a process of its own, forked from this one (which runs nothing of the
    solution's and decodes only data), and write each verdict on fd 6, which only this box holds:
    {"case": i, "status": passed | error | cpu_limit | memory_limit, "seconds": s}. Ends without a verdict for
    the case when the solution's box is gone (the judge reads that box's exit status)."""
    CHANNEL["out"], CHANNEL["in"] = os.fdopen(4, "wb"), os.fdopen(5, "rb")
    verdicts = os.fdopen(6, "w")
    confine(job)
    for i, test in enumerate(job["tests"]):
        t0 = time.monotonic()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            verdicts.close()
            _run_case(test)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == GONE_AT_LOAD:
            os._exit(GONE_AT_LOAD)  # the judge gives every case left the status of the solution box's end
        if code == SOLUTION_GONE:
            return
        if code in (LOAD_ERROR, LOAD_MEMORY):  # every case would fail the same way
            for j in range(i, len(job["tests"])):
                _verdict(verdicts, j, "memory_limit" if code == LOAD_MEMORY else "error", time.monotonic() - t0)
            return
        try:
            ended = {SOLUTION_CPU: "cpu_limit", SOLUTION_ENDED: "died"}.get(code) or _end_case()
        except (SolutionGone, OSError):
            return
        status = {0: "passed", MEMORY: "memory_limit"}.get(code, "error")
        if -code in (signal.SIGXCPU, signal.SIGKILL) or ended == "cpu_limit":
            status = "cpu_limit"
        _verdict(verdicts, i, status, time.monotonic() - t0)


def _end_case() -> str:
    """Tell the case's solution process to end, and read (past any late answers) how it ended."""
    _send({"op": "end"})
    while True:
        reply = _read_reply()
        if "ended" in reply:
            return str(reply["ended"])


def _verdict(out, case: int, status: str, seconds: float) -> None:
    out.write(json.dumps({"case": case, "status": status, "seconds": seconds}) + "\n")
    out.flush()


def _run_case(test: str) -> None:
    """In a case's own process: the test statements against the solution's names; exits with the verdict."""
    code = 1
    try:
        CHANNEL["local"] = []
        try:
            _send({"op": "begin"})
            first = _read_reply()
        except (SolutionGone, BrokenPipeError):
            code = GONE_AT_LOAD
            return
        if "load_error" in first:
            print(f"the solution failed before the test: {first['load_error']}", file=sys.stderr)
            code = LOAD_MEMORY if str(first["load_error"]).startswith("MemoryError") else LOAD_ERROR
            return
        scope = {"__name__": "__main__", "__builtins__": builtins}
        for name, wire in first["names"].items():
            if not hasattr(builtins, str(name)):  # the test's `len`, `set`, `sorted` stay the real ones
                try:
                    scope[str(name)] = decode(wire, _ref, None)
                except (ImportError, SystemExit):  # a module this box does not have: the name stays unbound
                    pass
        exec(compile(test, "<test>", "exec"), scope)
        code = 0
    except (SolutionGone, BrokenPipeError):
        code = SOLUTION_GONE
    except SolutionDied as e:
        traceback.print_exc()
        code = SOLUTION_CPU if str(e) == "cpu_limit" else SOLUTION_ENDED
    except MemoryError:
        traceback.print_exc()
        code = MEMORY
    except BaseException:  # noqa: BLE001 - a failed test, whatever it raised
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter teardown that a handle could run code in


def main() -> None:
    with os.fdopen(3, "rb") as f:
        job = json.loads(f.read())
    role = sys.argv[1]
    if role == "test":
        run_tests(job)
    elif role == "solution":
        run_solution(job)
    else:
        run_io(job)


if __name__ == "__main__":
    main()
