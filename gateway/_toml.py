"""A small TOML writer for resolved configs (tomllib only reads)."""

from __future__ import annotations

import json
from typing import Any


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(data: dict[str, Any], prefix: str = "") -> str:
    """Scalars first, then sub-tables, then arrays of tables, as TOML wants."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in data.items():
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        nested = isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values())
        if isinstance(v, dict) and (nested or prefix == ""):
            tables.append((name, v))
        elif _is_table_list(v):
            arrays.append((name, v))
        else:
            lines.append(f"{_key(k)} = {_scalar(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        body = dumps(table, name)
        out += f"\n[{name}]\n{body}"
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n{dumps(item, name)}"
    return out
