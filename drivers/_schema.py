"""Typed config schemas: frozen keyword-only dataclasses walked by one validator.

A schema is a ``@dataclass(frozen=True, kw_only=True)`` whose fields are annotated with
``str``, ``int``, ``float``, ``bool``, :class:`Duration`, :class:`ByteSize`, ``Literal[...]``,
``X | None``, ``list[X]``, ``dict[str, X]`` or another schema. :func:`load` walks a TOML
table against it and collects every problem before raising one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

__all__ = [
    "ByteSize",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "dump",
    "load",
    "option",
]

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024,
    "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3,
}


class Duration(float):
    """Seconds, written in config as a string with a unit: ``"250ms"``, ``"5s"``, ``"2h"``."""

    expected: ClassVar[str] = 'a duration such as "250ms", "5s", "10m", "1h"'

    @classmethod
    def parse(cls, text: str) -> Duration:
        m = _DURATION_RE.match(text)
        if m is None:
            raise ValueError(text)
        return cls(float(m.group(1)) * _DURATION_UNITS[m.group(2)])

    def __str__(self) -> str:
        ms = round(self * 1000)
        for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms and ms % factor == 0:
                return f"{ms // factor}{unit}"
        return f"{ms}ms"


class ByteSize(int):
    """Bytes, written as an integer or a string with a unit: ``"64MiB"``, ``"500kB"``."""

    expected: ClassVar[str] = 'a size such as 1048576, "512KiB", "64MiB", "1GB"'

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        m = _SIZE_RE.match(text)
        if m is None:
            raise ValueError(text)
        return cls(int(float(m.group(1)) * _SIZE_UNITS[m.group(2)]))


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    message: str


class ConfigError(Exception):
    """Every problem found in one config file, sorted by key path."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = sorted(issues, key=lambda i: _path_key(i.path))
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.file}: {i.path}: {i.message}" if i.path else f"{self.file}: {i.message}"
                for i in self.issues]


def _path_key(path: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t)
            for t in re.split(r"[.\[\]]+", path) if t]


def option(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    secret: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    pattern: str | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A schema field with metadata: ``doc``, ``secret`` (masked by ``dump``), bounds, regex."""
    meta = {"doc": doc, "secret": secret, "minimum": minimum, "maximum": maximum,
            "pattern": pattern}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def _describe(tp: Any) -> str:  # noqa: C901 - one branch per supported annotation
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if isinstance(tp, type) and hasattr(tp, "expected"):
        return str(tp.expected)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(type(value), "a table" if isinstance(value, Mapping) else "a value")


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Walker:
    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

    def expected(self, path: str, tp: Any, value: Any,
                 meta: Mapping[str, Any] | None = None) -> None:
        found = _found(value)
        if meta and meta.get("secret"):
            found = f"{_kind(value)} (secret, not shown)"
        self.fail(path, f"expected {_describe(tp)}; got {found}")

    def value(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:  # noqa: C901, PLR0912
        origin = get_origin(tp)
        if tp is Any:
            return value
        if origin in (types.UnionType, typing.Union):
            args = [a for a in get_args(tp) if a is not type(None)]
            if value is None:
                return None
            if len(args) == 1:
                return self.value(args[0], value, path, meta)
            for arg in args:
                probe = _Walker()
                result = probe.value(arg, value, path, meta)
                if not probe.issues:
                    return result
            self.expected(path, tp, value, meta)
            return None
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
                self.fail(path, f"expected one of {', '.join(map(str, choices))}; "
                                f"got {_found(value)}")
            return value
        if origin is list:
            if not isinstance(value, list):
                self.expected(path, tp, value, meta)
                return []
            (item,) = get_args(tp)
            return [self.value(item, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, Mapping):
                self.expected(path, tp, value, meta)
                return {}
            _, item = get_args(tp)
            return {k: self.value(item, v, f"{path}.{k}", meta) for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                self.expected(path, tp, value, meta)
                return None
            return self.table(typing.cast("type[Any]", tp), value, path)
        if isinstance(tp, type) and issubclass(tp, (Duration, ByteSize)):
            return self.parsed(tp, value, path, meta)
        return self.scalar(tp, value, path, meta)

    def parsed(self, tp: type[Duration | ByteSize], value: Any, path: str,
               meta: Mapping[str, Any]) -> Any:
        if tp is ByteSize and isinstance(value, int) and not isinstance(value, bool):
            return self.bounded(ByteSize(value), path, meta)
        if not isinstance(value, str):
            self.expected(path, tp, value, meta)
            return None
        try:
            return self.bounded(tp.parse(value), path, meta)
        except ValueError:
            self.expected(path, tp, value, meta)
            return None

    def scalar(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        ok = (
            (tp is bool and isinstance(value, bool))
            or (tp is int and isinstance(value, int) and not isinstance(value, bool))
            or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (tp is str and isinstance(value, str))
        )
        if not ok:
            self.expected(path, tp, value, meta)
            return None
        if tp is float:
            value = float(value)
        if tp is str and "\x00" in value:
            # No path, host, topic or name may hold NUL (MQTT 5 §1.5.4; paths end at NUL).
            self.fail(path, "expected a string without NUL characters; got one with \\x00")
            return value
        if tp is str and meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            shown = "a string (secret, not shown)" if meta.get("secret") else _found(value)
            self.fail(path, f"expected a string matching {meta['pattern']}; got {shown}")
        return self.bounded(value, path, meta)

    def bounded(self, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = str(value) if isinstance(value, (Duration, ByteSize)) else repr(value)
            if lo is not None and value < lo:
                self.fail(path, f"expected at least {_fmt_bound(value, lo)}; got {shown}")
            if hi is not None and value > hi:
                self.fail(path, f"expected at most {_fmt_bound(value, hi)}; got {shown}")
        return value

    def table(self, cls: type[T], data: Mapping[str, Any], path: str) -> T | None:
        hints, fields = _shape(cls)  # type: ignore[arg-type]  # classes hash by identity
        kwargs: dict[str, Any] = {}
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.fail(_join(path, key), f"unknown key{hint}")
        before = len(self.issues)
        for name, f in fields.items():
            sub = _join(path, name)
            if name in data:
                kwargs[name] = self.value(hints[name], data[name], sub, f.metadata)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(sub, f"missing required key; expected {_describe(hints[name])}")
        if len(self.issues) != before:
            return None
        try:
            obj = cls(**kwargs)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        check = getattr(obj, "validate", None)
        if callable(check):
            for sub, message in check():
                self.fail(_join(path, sub) if sub else path, message)
        return obj


def _fmt_bound(value: Any, bound: float) -> str:
    if isinstance(value, Duration):
        return str(Duration(bound))
    if isinstance(value, ByteSize):
        return str(int(bound))
    return repr(bound)


@functools.cache
def _shape(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A schema's resolved type hints and init fields: resolving the hints evaluates every
    annotation, and a config of thousands of tables (register maps) asked for them per table."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    return hints, fields


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def load(cls: type[T], data: Mapping[str, Any], *, file: str, path: str = "") -> T:
    """Build ``cls`` from ``data``; raise :class:`ConfigError` listing every problem.

    A schema may define ``validate(self) -> list[tuple[str, str]]`` for cross-field rules;
    each ``(relative key path, message)`` becomes an issue.
    """
    walker = _Walker()
    result = walker.table(cls, data, path)
    if walker.issues or result is None:
        raise ConfigError(file, walker.issues)
    return result


def dump(obj: Any, *, mask: bool = True) -> Any:
    """The resolved config as plain TOML-shaped data, with secret fields masked."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            if mask and f.metadata.get("secret"):
                out[f.name] = "********"
            else:
                out[f.name] = dump(value, mask=mask)
        return out
    if isinstance(obj, list):
        return [dump(v, mask=mask) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v, mask=mask) for k, v in obj.items()}
    if isinstance(obj, Duration):
        return str(obj)
    if isinstance(obj, ByteSize):
        return int(obj)
    return obj
