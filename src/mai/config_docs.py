"""`mai config show --explain`: every key of a resolved config with its value, type, bounds, default and
description, read from the config models' fields (so the documentation cannot drift from the code)."""

from typing import Any, Literal, get_args, get_origin

import tomli_w
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mai.config import RunConfig


def explain_config(config: RunConfig) -> str:
    """Every key of `config`: its value, type, bounds and default, and its description (`mai config show --explain`)."""
    values = config.model_dump()
    lines = []
    for name, field in RunConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            lines += ["", f"[{name}]  {(field.description or '').strip().splitlines()[0]}"]
            lines += [_explain_key(key, sub, values[name][key]) for key, sub in section.model_fields.items()]
        else:
            lines.append(_explain_key(name, field, values[name]))
    return "\n".join(lines).lstrip("\n") + "\n"


def _explain_key(key: str, field: FieldInfo, value: Any) -> str:
    facts = [_type_name(field.annotation)]
    bounds = {Gt: (">", "gt"), Ge: ("≥", "ge"), Lt: ("<", "lt"), Le: ("≤", "le")}
    for m in field.metadata:
        if type(m) in bounds:
            symbol, attribute = bounds[type(m)]
            facts.append(f"{symbol} {getattr(m, attribute)}")
    default = _plain(field.get_default(call_default_factory=True))
    value = _plain(value)
    if default != value:
        facts.append(f"default {_toml_literal(default)}")
    description = f"\n      {field.description}" if field.description else ""
    return f"  {key} = {_toml_literal(value)}    ({', '.join(facts)}){description}"


def _plain(value: Any) -> Any:
    """A value as TOML holds it: models as tables, keys set to None (derived) left out."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _toml_literal(value: Any) -> str:
    """A value written on one line, as TOML would write it."""
    if value is None:
        return "(derived)"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, get_args(annotation)))
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    return text.replace("mai.config.", "").replace("NoneType", "None")
