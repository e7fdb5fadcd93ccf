"""Write the kit's config TOML (tomllib only reads): tables of scalars and arrays, enough for tpskit."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from pathlib import PurePath


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    if isinstance(v, str | PurePath):
        return json.dumps(str(v), ensure_ascii=False)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps(data: dict, *, header: str = "") -> str:
    """TOML text for *data*; ``None`` values are left out (= the default)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(prefix: list[str], d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in subs.items():
            table([*prefix, k], v)

    table([], data)
    return "\n".join(lines) + "\n"
