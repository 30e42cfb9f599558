"""docs/config.md, generated from the typed config: every key with its type, default and the comment beside it.

    python scripts/config_reference.py        # rewrites docs/config.md; tests/unit/launcher fails when it is stale
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from launcher.config import SlipstreamConfig

HEADER = """# Configuration reference

Generated from the typed config (`launcher/config.py` and each section's `config.py`) by
`python scripts/config_reference.py`; a test fails when this file is out of date. Every key can be set on the
command line (`slipstream trainer.lr=1e-5`) or in a preset under `configs/experiment/`; a key not listed here is
an error.
"""


def _comments(cls) -> dict[str, str]:
    """field name -> its comment: the text after `#` on its line, else the comment lines right above it."""
    lines, out, above = inspect.getsource(cls).splitlines(), {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"\s+(\w+)\s*:", line)
        if m and not stripped.startswith(("def ", "@", '"""')):
            comment = line.split("  # ", 1)[1].strip() if "  # " in line else " ".join(above)
            out.setdefault(m.group(1), comment)
        above = []
    return out


def _type_name(tp) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _rows(cls, prefix: str, instance=None) -> list[str]:
    """One row per key; `instance` gives the defaults where a section's own default differs from its class's."""
    hints, comments, rows = typing.get_type_hints(cls), _comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{prefix}{f.name}.", _default(f) if instance is None else getattr(instance, f.name))
            continue
        args = typing.get_args(tp)
        if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):  # a list of sections
            rows.append(f"| `{prefix}{f.name}` | list | `[]` | {comments.get(f.name, '')}; each item has: |")
            rows += _rows(args[0], f"{prefix}{f.name}[].")
            continue
        default = _default(f) if instance is None else getattr(instance, f.name)
        shown = "" if default in ("", None) else f"`{default!r}`" if isinstance(default, str) else f"`{default}`"
        meaning = comments.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_type_name(tp)} | {shown} | {meaning} |")
    return rows


def render() -> str:
    out = [HEADER]
    hints = typing.get_type_hints(SlipstreamConfig)
    for f in dataclasses.fields(SlipstreamConfig):
        section = hints[f.name]
        doc = (section.__doc__ or "").strip().splitlines()[0] if section.__doc__ and not section.__doc__.startswith(
            section.__name__ + "(") else ""
        out += [f"## `{f.name}`", "", *( [doc, ""] if doc else []), "| key | type | default | meaning |",
                "| --- | --- | --- | --- |", *_rows(section, f"{f.name}."), ""]
    return "\n".join(out)
