"""One explicit registry, name -> reward function, plus dotted-path and entry-point loading.

A spec names a reward in one of three ways, tried in this order:
1. `module.path:function`  (contains ":")  -> imported;
2. a registered name (`@register("math")`, built-ins included);
3. the name of an entry point in the `slipstream.rewards` group of an installed package, e.g. in the
   plugin's pyproject.toml: `[project.entry-points."slipstream.rewards"] my_reward = "my_pkg.mod:fn"`.

Traits are plain attributes on the function, so a third-party package can set them without importing
Slipstream: `batched = True` (takes lists), `cpu_heavy = True` (run in the process pool),
`check_kwargs = f` (f(kwargs) raises ValueError on bad config kwargs, called at start-up).

Invariant: `resolve_reward` fails at start-up (before any engine exists) with a RewardError that names the
problem and lists the registered names; it never returns something that is not callable.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Callable, Optional

from rewards.schema import RewardError

RewardFn = Callable[..., object]
ENTRY_POINT_GROUP = "slipstream.rewards"
BUILTIN_MODULES = ("rewards.builtin", "rewards.math_reward", "rewards.code_tests")

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str, *, batched: bool = False, cpu_heavy: bool = False,
             check_kwargs: Optional[Callable[[dict], None]] = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` resolvable as `name`. The flags become attributes of `fn` (see module doc)."""
    def wrap(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise RewardError(f"reward name {name!r} is already registered to {_REGISTRY[name].__module__}")
        if batched:
            fn.batched = True  # type: ignore[attr-defined]
        if cpu_heavy:
            fn.cpu_heavy = True  # type: ignore[attr-defined]
        if check_kwargs is not None:
            fn.check_kwargs = check_kwargs  # type: ignore[attr-defined]
        _REGISTRY[name] = fn
        return fn
    return wrap


def registered_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def entry_point_names() -> list[str]:
    """Names of the rewards that installed packages offer in the `slipstream.rewards` group."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:  # each registers its rewards on import; heavy imports wait for a call
        importlib.import_module(module)


def resolve_reward(spec: str) -> RewardFn:
    """`spec`: a dotted path (`my_pkg.scoring:reward`), a registered name (`exact_answer`) or an entry point."""
    _load_builtins()
    if ":" in spec:
        fn = _load_dotted_path(spec)
    elif spec in _REGISTRY:
        fn = _REGISTRY[spec]
    else:
        fn = _load_entry_point(spec)
    _check_signature(spec, fn)
    return fn


def _load_dotted_path(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a plugin can fail to import in any way (SyntaxError, ...)
        raise RewardError(f"reward {spec!r}: cannot import module {module_name!r} "
                          f"({type(e).__name__}: {e}); check the path or install the package that "
                          f"provides it") from e
    fn = module
    for part in attr.split("."):  # "mod:Class.method" works too
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return fn


def _load_entry_point(spec: str) -> object:
    matches = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=spec))
    if not matches:
        installed = ", ".join(entry_point_names()) or "none installed"
        raise RewardError(f"unknown reward {spec!r}; registered names: {', '.join(registered_names())}; "
                          f"entry points in group {ENTRY_POINT_GROUP!r}: {installed}; "
                          f"or give a dotted path 'package.module:function'")
    if len(matches) > 1:  # two packages claim the name: refuse to pick one silently
        owners = ", ".join(f"{ep.value} ({_dist_name(ep)})" for ep in matches)
        raise RewardError(f"reward {spec!r}: several installed entry points have this name: {owners}; "
                          f"use a dotted path instead")
    ep = matches[0]
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - the plugin's import can fail in any way
        raise RewardError(f"reward {spec!r}: entry point {ep.value!r} of package {_dist_name(ep)} fails to "
                          f"load ({type(e).__name__}: {e})") from e


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _check_signature(spec: str, fn: object) -> None:
    if not callable(fn):
        raise RewardError(f"reward {spec!r} is not callable")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no introspectable signature: let them be
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    form = "(prompts, completions, **fields)" if is_batched(fn) else "(prompt, completion, **fields)"
    if len(positional) < 2 and not takes_varargs:
        raise RewardError(f"reward {spec!r} must accept {form}; its signature is {inspect.signature(fn)}")


def is_batched(fn: object) -> bool:
    return getattr(fn, "batched", False) is True  # `is True`: an unrelated truthy attribute is no mark


def is_cpu_heavy(fn: object) -> bool:
    return getattr(fn, "cpu_heavy", False) is True


def is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def accepts_keyword(fn: object, name: str) -> bool:
    """Whether `fn` declares a parameter `name` explicitly (not merely through **fields)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
