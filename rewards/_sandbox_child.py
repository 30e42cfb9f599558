"""The programs that run inside the sandbox's boxes (rewards/box.py). Standard library only.

Started as `python -I -S -c <this file's text> <role>`; the job (JSON) arrives on fd 3. Three roles:
- `io`: run the solution as a program with the case's stdin/stdout (the parent compares the output);
- `solution`: run the solution, then serve the `test` role's requests (fd 4 in, fd 5 out) on its names;
- `test`: run the dataset's test statements; every name of the solution is a `Remote` whose calls,
  attributes and items are answered by the `solution` box with plain values (JSON), so the comparisons
  of the asserts happen in this process, which the solution's code cannot reach (another box: its own
  PID namespace and memory). Its exit status alone is the verdict: 0 when every statement ran.

Invariant: nothing here holds a secret; the `test` process never executes or unpickles anything the
solution sent, it decodes JSON into str/int/float/bool/None/bytes/list/tuple/dict/set and handles.
"""
import builtins
import json
import importlib
import os
import resource
import sys
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


def encode(value, handles):
    """Plain values as JSON (a namedtuple as its tuple, an IntEnum as its int); a module as its name; anything
    else is kept in `handles` and sent as {"$ref": n}. Whatever the solution box sends is only data here."""
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if value == value and abs(value) != float("inf") else {"$float": repr(float(value))}
    if isinstance(value, list):
        return [encode(v, handles) for v in value]
    for kind in (tuple, set, frozenset):
        if isinstance(value, kind):
            return {"$" + kind.__name__: [encode(v, handles) for v in value]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k, handles), encode(v, handles)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, types.ModuleType):
        return {"$module": str(value.__name__)}
    if handles is None:
        raise TypeError(f"cannot send a {type(value).__name__} to the solution; only plain values")
    handles.append(value)
    return {"$ref": len(handles) - 1}


def decode(wire, make_ref):
    if isinstance(wire, list):
        return [decode(v, make_ref) for v in wire]
    if not isinstance(wire, dict):
        return wire
    [(tag, body)] = wire.items()
    if tag == "$ref":
        return make_ref(body)
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
        return {decode(k, make_ref): decode(v, make_ref) for k, v in body}
    kinds = {"$tuple": tuple, "$set": set, "$frozenset": frozenset}
    return kinds[tag](decode(v, make_ref) for v in body)


def run_io(job: dict) -> None:
    code = compile(job["source"], "<solution>", "exec")
    confine(job)
    exec(code, {"__name__": "__main__", "__builtins__": builtins})


def run_solution(job: dict) -> None:
    requests, answers = os.fdopen(4, "rb"), os.fdopen(5, "wb")
    sys.stdin = open(os.devnull)
    confine(job)
    scope, handles = {"__name__": "__main__", "__builtins__": builtins}, []
    try:
        exec(compile(job["source"], "<solution>", "exec"), scope)
        names = {k: v for k, v in scope.items() if not k.startswith("__")}
        reply = {"names": {k: encode(v, handles) for k, v in names.items()}}
    except BaseException as e:  # noqa: BLE001 - the solution may raise anything, even SystemExit
        traceback.print_exc()
        reply = {"load_error": f"{type(e).__name__}: {e}"}
    _answer(answers, reply)
    for line in requests:
        _answer(answers, _serve(json.loads(line), handles))


def _serve(req: dict, handles: list) -> dict:
    try:
        target = handles[req["ref"]]
        args = decode(req.get("args", []), handles.__getitem__)
        if req["op"] == "call":
            value = target(*args, **decode(req.get("kwargs", {"$dict": []}), handles.__getitem__))
        elif req["op"] == "getattr":
            value = getattr(target, args[0])
        elif req["op"] == "getitem":
            value = target[args[0]]
        elif req["op"] == "list":
            value = list(target)
        else:  # len
            value = len(target)
        return {"value": encode(value, handles)}
    except BaseException as e:  # noqa: BLE001 - passed on to the test, as its exception
        return {"raise": [type(e).__name__, str(e)[:2000]]}


def _answer(out, reply: dict) -> None:
    try:
        data = json.dumps(reply).encode()
    except (TypeError, ValueError) as e:  # e.g. an int too long to print
        data = json.dumps({"raise": [type(e).__name__, str(e)[:2000]]}).encode()
    out.write(data + b"\n")
    out.flush()


class SolutionDied(Exception):
    """The solution's box stopped answering (it exited, or hit a limit)."""


class Remote:
    """A value that lives in the solution's box. Comparing or testing it here is an error: its own
    `__eq__` would be the solution's to decide."""
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

    def __eq__(self, other):
        raise TypeError("the test compared an object of the solution (not a plain value): unsupported")

    def __bool__(self):
        raise TypeError("the test took the truth of an object of the solution (not a plain value): unsupported")

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__
    __hash__ = None

    def __repr__(self):
        return f"<object #{self._ref} of the solution>"


CHANNEL = {}


def ask(op: str, ref: int, args: list, kwargs=None):
    req = {"op": op, "ref": ref, "args": encode(args, None)}
    if kwargs:
        req["kwargs"] = encode(kwargs, None)
    CHANNEL["out"].write(json.dumps(req).encode() + b"\n")
    CHANNEL["out"].flush()
    reply = _read_reply()
    if "raise" in reply:
        name, message = reply["raise"]
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(message)
        raise RuntimeError(f"{name}: {message}")
    return decode(reply["value"], _ref)


def _ref(ref) -> Remote:
    if type(ref) is not int:
        raise TypeError("malformed answer from the solution")
    return Remote(ref)


def _read_reply() -> dict:
    line = CHANNEL["in"].readline(MAX_MESSAGE + 1)
    if not line.endswith(b"\n"):
        raise SolutionDied("the solution's process ended or sent an oversized answer")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise TypeError("malformed answer from the solution")
    return reply


def run_test(job: dict) -> None:
    CHANNEL["out"], CHANNEL["in"] = os.fdopen(4, "wb"), os.fdopen(5, "rb")
    confine(job)
    scope = {"__name__": "__main__", "__builtins__": builtins}
    first = _read_reply()
    if "load_error" in first:
        sys.exit(f"the solution failed before the test: {first['load_error']}")
    for name, wire in first["names"].items():
        if not hasattr(builtins, str(name)):  # the test's `len`, `set`, `sorted` stay the real ones
            try:
                scope[str(name)] = decode(wire, _ref)
            except (ImportError, SystemExit):  # a module this box does not have: the name stays unbound
                pass
    exec(compile(job["test"], "<test>", "exec"), scope)
    sys.stdout.flush()
    os._exit(0)  # the verdict; no interpreter teardown that a handle could run code in


def main() -> None:
    with os.fdopen(3, "rb") as f:
        job = json.loads(f.read())
    role = sys.argv[1]
    if role == "test":
        try:
            run_test(job)
        except BaseException:  # noqa: BLE001 - a failed test, whatever it raised
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    elif role == "solution":
        run_solution(job)
    else:
        run_io(job)


if __name__ == "__main__":
    main()
