"""One explicit registry, name -> reward function, plus dotted-path loading.

Invariant: `resolve_reward` fails at start-up (before any engine exists) with a message that names the
problem and lists the registered names; it never returns something that is not callable.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

RewardFn = Callable[..., float]


class RewardError(ValueError):
    pass


_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise RewardError(f"reward name {name!r} is already registered to {_REGISTRY[name].__module__}")
        _REGISTRY[name] = fn
        return fn
    return wrap


def registered_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    import rewards.builtin  # noqa: F401  (registers on import)


def resolve_reward(spec: str) -> RewardFn:
    """`spec` is a registered name (`exact_answer`) or a dotted path (`my_pkg.scoring:reward`)."""
    _load_builtins()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - a plugin can fail to import in any way (SyntaxError, ...)
            raise RewardError(f"reward {spec!r}: cannot import module {module_name!r} "
                              f"({type(e).__name__}: {e}); check the path or install the package that "
                              f"provides it") from e
        fn = getattr(module, attr, None)
        if fn is None:
            raise RewardError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    elif spec in _REGISTRY:
        fn = _REGISTRY[spec]
    else:
        raise RewardError(f"unknown reward {spec!r}; registered names: {', '.join(registered_names())}; "
                          f"or give a dotted path 'package.module:function'")
    _check_signature(spec, fn)
    return fn


def _check_signature(spec: str, fn: object) -> None:
    if not callable(fn):
        raise RewardError(f"reward {spec!r} is not callable")
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 2 and not takes_varargs:
        raise RewardError(f"reward {spec!r} must accept (prompt, completion, **fields); "
                          f"its signature is {inspect.signature(fn)}")
