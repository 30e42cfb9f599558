"""One registry helper for every plugin point: losses, advantages, allocation rules, prompt sources, engines, weight
transports and rewards.

A config names a plugin in one of these ways, tried in this order:
1. `package.module:attr` (contains ":"): imported;
2. a registered name (`@LOSSES.register("ppo_clip")`; built-ins register when their module is imported);
3. an installed package's entry point, for registries that name an entry-point group;
4. `package.module.attr` (contains "."): imported, the last part being the attribute.

Every failure raises the registry's error class with a message that names the config key, what was asked for,
what exists, and how to point at one's own code. Nothing here knows what a plugin does.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


class PluginError(ValueError):
    pass


class Registry(Generic[T]):
    def __init__(self, kind: str, config_key: str, *, builtin_modules: tuple[str, ...] = (),
                 entry_point_group: Optional[str] = None, error: type[Exception] = PluginError):
        self.kind, self.config_key = kind, config_key
        self.builtin_modules, self.entry_point_group, self.error = builtin_modules, entry_point_group, error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make the object resolvable as `name`."""
        def wrap(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                owner = getattr(self._entries[name], "__module__", "?")
                raise self.error(f"{self.kind} name {name!r} is already registered to {owner}")
            self._entries[name] = obj
            return obj
        return wrap

    def names(self) -> list[str]:
        """In registration order (built-ins first)."""
        self._load_builtins()
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def resolve(self, spec: str) -> T:
        self._load_builtins()
        if ":" in spec:
            return self._import(spec, *spec.split(":", 1))
        if spec in self._entries:
            return self._entries[spec]
        if self.entry_point_group and self._entry_points(spec):
            return self._load_entry_point(spec)
        if "." in spec:
            module, _, attr = spec.rpartition(".")
            return self._import(spec, module, attr)
        raise self.error(self._unknown(spec))

    def problem(self, spec: str) -> Optional[str]:
        """The message `resolve` would raise, or None: for config validation that collects every problem."""
        try:
            self.resolve(spec)
        except self.error as e:
            if ":" in spec or "." in spec or (self.entry_point_group and self._entry_points(spec)):
                return f"{self.config_key}={spec!r}: {e}"
            names = ", ".join(self.names())
            return f"{self.config_key}={spec!r}: one of {names}, or a dotted path 'package.module:name'"
        return None

    def _load_builtins(self) -> None:
        for module in self.builtin_modules:  # each registers its entries on import
            importlib.import_module(module)

    def _unknown(self, spec: str) -> str:
        msg = f"unknown {self.kind} {spec!r}; registered names: {', '.join(sorted(self._entries)) or 'none'}"
        if self.entry_point_group:
            installed = ", ".join(sorted({ep.name for ep in self._entry_points()})) or "none installed"
            msg += f"; entry points in group {self.entry_point_group!r}: {installed}"
        return msg + "; or give a dotted path 'package.module:name'"

    def _import(self, spec: str, module_name: str, attr: str) -> T:
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - a plugin can fail to import in any way (SyntaxError, ...)
            raise self.error(f"{self.kind} {spec!r}: cannot import module {module_name!r} "
                             f"({type(e).__name__}: {e}); check the path or install the package that provides "
                             f"it") from e
        obj = module
        for part in attr.split("."):  # "mod:Class.method" works too
            obj = getattr(obj, part, None)
            if obj is None:
                raise self.error(f"{self.kind} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        return obj  # type: ignore[return-value]

    def _entry_points(self, name: Optional[str] = None) -> list:
        if name is None:
            return list(importlib.metadata.entry_points(group=self.entry_point_group))
        return list(importlib.metadata.entry_points(group=self.entry_point_group, name=name))

    def _load_entry_point(self, spec: str) -> T:
        matches = self._entry_points(spec)
        if len(matches) > 1:  # two packages claim the name: refuse to pick one silently
            owners = ", ".join(f"{ep.value} ({_dist_name(ep)})" for ep in matches)
            raise self.error(f"{self.kind} {spec!r}: several installed entry points have this name: {owners}; "
                             f"use a dotted path instead")
        ep = matches[0]
        try:
            return ep.load()
        except Exception as e:  # noqa: BLE001 - the plugin's import can fail in any way
            raise self.error(f"{self.kind} {spec!r}: entry point {ep.value!r} of package {_dist_name(ep)} fails "
                             f"to load ({type(e).__name__}: {e})") from e


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"
