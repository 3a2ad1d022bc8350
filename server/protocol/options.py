"""Declarative per-pipeline option schemas and their validation (pure, no I/O).

Stages declare a :class:`PipelineSchema`; the protocol core validates ``start`` and ``update``
options against the schemas it is given, fills defaults, and raises typed errors on unknown
fields and bad values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, ProtocolError


@dataclass(frozen=True)
class Option:
    """One option: ``kind`` is ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``.

    ``min``/``max`` bound numbers (inclusive); ``choices`` restricts values (for a ``dict``: its keys);
    ``updatable`` says whether ``update`` may change it mid-stream. A ``dict`` option maps keys to
    option maps validated against ``fields`` (e.g. per-head overrides of a pipeline's options).
    An option whose default is ``None`` (meaning "decided elsewhere", e.g. by the model) also accepts
    ``None`` (JSON null), which restores that default.
    """

    name: str
    kind: type
    default: Any
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    updatable: bool = True
    fields: tuple["Option", ...] | None = None

    def coerce(self, pipeline: str, value: Any) -> Any:
        where = f"{pipeline}.{self.name}"
        if value is None and self.default is None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be a boolean, got {value!r}")
        elif self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be an integer, got {value!r}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be a number, got {value!r}")
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be finite")
        elif self.kind is str:
            if not isinstance(value, str):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be a string, got {value!r}")
        elif self.kind is dict:
            if not isinstance(value, dict):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be a map")
            out = {}
            for key, sub in value.items():
                if self.choices is not None and key not in self.choices:
                    raise ProtocolError(ErrorCode.BAD_VALUE, f"{where}: {key!r} is not one of {list(self.choices)}")
                out[key] = validate_options(PipelineSchema(f"{where}.{key}", self.fields or ()), sub)
            return out
        elif self.kind is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where} must be a list of strings")
            value = list(value)
        if self.min is not None and value < self.min:
            raise ProtocolError(ErrorCode.BAD_VALUE, f"{where}={value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ProtocolError(ErrorCode.BAD_VALUE, f"{where}={value!r} is above the maximum {self.max}")
        if self.choices is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in self.choices]
            if bad:
                raise ProtocolError(ErrorCode.BAD_VALUE, f"{where}: {bad[0]!r} is not one of {list(self.choices)}")
        return value

    def describe(self) -> dict:
        d: dict[str, Any] = {"type": self.kind.__name__, "default": self.default, "doc": self.doc,
                             "updatable": self.updatable}
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.fields is not None:
            d["fields"] = {f.name: f.describe() for f in self.fields}
        return d


@dataclass(frozen=True)
class PipelineSchema:
    """The options a pipeline accepts. ``requires`` names pipelines it needs (added automatically)."""

    name: str
    options: tuple[Option, ...] = ()
    doc: str = ""
    requires: tuple[str, ...] = ()
    by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {o.name: o for o in self.options})

    def defaults(self) -> dict:
        return {o.name: (type(o.default)(o.default) if isinstance(o.default, (list, dict)) else o.default)
                for o in self.options}

    def describe(self) -> dict:
        return {"doc": self.doc, "requires": list(self.requires),
                "options": {o.name: o.describe() for o in self.options}}


def validate_options(schema: PipelineSchema, given: Any, *, update: bool = False) -> dict:
    """Validate ``given`` (a map) against ``schema``; return only the given options, coerced.

    Raises ``unknown_field`` for an option the schema lacks, ``bad_value`` otherwise.
    """
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ProtocolError(ErrorCode.BAD_VALUE, f"options for {schema.name!r} must be a map")
    out = {}
    for key, value in given.items():
        opt = schema.by_name.get(key)
        if opt is None:
            known = ", ".join(sorted(schema.by_name)) or "none"
            raise ProtocolError(ErrorCode.UNKNOWN_FIELD, f"unknown option {schema.name}.{key} (known: {known})")
        if update and not opt.updatable:
            raise ProtocolError(ErrorCode.BAD_VALUE, f"{schema.name}.{key} cannot be changed mid-stream")
        out[key] = opt.coerce(schema.name, value)
    return out


def merge_options(schema: PipelineSchema, given: Any) -> dict:
    """Defaults of ``schema`` overlaid with the validated ``given`` options."""
    merged = schema.defaults()
    merged.update(validate_options(schema, given))
    return merged
