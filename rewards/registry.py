"""One explicit registry, name -> reward function, plus dotted-path and entry-point loading.

A spec names a reward in one of three ways, tried in this order:
1. `module.path:function`  (contains ":")  -> imported;
2. a registered name (`@register("math")`, built-ins included);
3. the name of an entry point in the `slipstream.rewards` group of an installed package, e.g. in the
   plugin's pyproject.toml: `[project.entry-points."slipstream.rewards"] my_reward = "my_pkg.mod:fn"`.

Traits are plain attributes on the function, so a third-party package can set them without importing
Slipstream: `batched = True` (takes lists), `cpu_heavy = True` (run in the process pool), `inline = True`
(returns in microseconds and cannot hang, e.g. a string comparison: called in the scorer's own thread, unwatched),
`check_kwargs = f` (f(kwargs) raises ValueError on bad config kwargs, called at start-up).

Invariant: `resolve_reward` fails at start-up (before any engine exists) with a RewardError that names the
problem and lists the registered names; it never returns something that is not callable.
"""
from __future__ import annotations

import importlib.metadata
import inspect
from typing import Callable, Optional

from plugins import Registry
from rewards.schema import RewardError

RewardFn = Callable[..., object]
ENTRY_POINT_GROUP = "slipstream.rewards"
BUILTIN_MODULES = ("rewards.builtin", "rewards.math_reward", "rewards.code_tests", "rewards.reasoning_gym_reward")

REWARDS: Registry[RewardFn] = Registry("reward", "reward.rewards[].name", builtin_modules=BUILTIN_MODULES,
                                       entry_point_group=ENTRY_POINT_GROUP, error=RewardError)


def register(name: str, *, batched: bool = False, cpu_heavy: bool = False, inline: bool = False,
             check_kwargs: Optional[Callable[[dict], None]] = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` resolvable as `name`. The flags become attributes of `fn` (see module doc)."""
    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS.register(name)(fn)
        if batched:
            fn.batched = True  # type: ignore[attr-defined]
        if cpu_heavy:
            fn.cpu_heavy = True  # type: ignore[attr-defined]
        if inline:
            fn.inline = True  # type: ignore[attr-defined]
        if check_kwargs is not None:
            fn.check_kwargs = check_kwargs  # type: ignore[attr-defined]
        return fn
    return wrap


def registered_names() -> list[str]:
    return sorted(REWARDS.names())


def entry_point_names() -> list[str]:
    """Names of the rewards that installed packages offer in the `slipstream.rewards` group."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def resolve_reward(spec: str) -> RewardFn:
    """`spec`: a dotted path (`my_pkg.scoring:reward`), a registered name (`exact_answer`) or an entry point."""
    fn = REWARDS.resolve(spec)
    _check_signature(spec, fn)
    return fn


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


def is_inline(fn: object) -> bool:
    return getattr(fn, "inline", False) is True


def is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def accepts_keyword(fn: object, name: str) -> bool:
    """Whether `fn` declares a parameter `name` explicitly (not merely through **fields)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def required_fields(fn: object, given: dict) -> list[str]:
    """The data-set fields `fn` cannot run without: keyword parameters with no default that the config's kwargs
    do not supply (prompt and completion come from the engine)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty and p.name not in given]
