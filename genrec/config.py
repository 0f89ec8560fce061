"""Typed settings from plain values: YAML text, ``key=value`` overrides and dataclass configs.

One set of rules for every config genrec reads (recipe YAML files, ``--set`` on the command line):

- values are parsed as YAML 1.2 scalars and flow collections, so ``1e-3`` is a float (PyYAML alone
  follows YAML 1.1 and reads it as a string), ``true``/``null``/``[10, 20]`` are what they look like
  and anything else is a plain string;
- every field of a dataclass is checked against its type hint, ``Optional`` fields included, by
  pydantic in strict mode (a well-kept validator, not a hand-written one): an int is accepted where a
  float is expected (and becomes one), nothing else is converted, NaN and infinity are refused;
- unknown keys are an error that suggests the closest valid key.

Errors are :class:`~genrec.errors.ConfigError` naming the key and the value (and the file, when the
caller passes one as ``where``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from typing import Any, Iterable, Mapping, Sequence

from genrec.errors import ConfigError

__all__ = ["yaml_load", "parse_value", "type_name", "check_value", "build_dataclass",
           "did_you_mean", "override_dataclass", "deep_merge"]


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader with YAML 1.2's core schema for scalars (floats such as ``1e-3``; ``true`` /
        ``false`` the only booleans, so ``yes`` / ``off`` stay text; decimal integers, ``010`` being ten,
        not YAML 1.1's octal eight, and ``1:30`` text, not 90) and a repeated key refused (the last one
        silently won)."""

        def flatten_mapping(self, node):  # noqa: ANN001 - PyYAML's signature
            # the mapping's own keys, checked once before PyYAML splices merged keys ("<<: *anchor") into
            # node.value (a merged key overridden on purpose is no repeat; an anchor merged elsewhere first
            # would show its merged keys beside its own otherwise)
            checked = self.__dict__.setdefault("_checked", set())
            if id(node) not in checked:
                checked.add(id(node))
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node)  # the value: 1 and +1, true and True are one key
                    if not isinstance(key, typing.Hashable):
                        continue
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key_node.value!r} appears twice (first on line {seen[key].line + 1})",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark
            super().flatten_mapping(node)

    def construct_int(loader, node):  # noqa: ANN001
        text = loader.construct_scalar(node)
        try:
            sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
            if digits[:2] in ("0x", "0o"):
                return sign * int(digits[2:], 16 if digits[1] == "x" else 8)
            return sign * int(digits, 10)
        except ValueError:  # an explicit "!!int" tag on other text
            raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not an integer", node.start_mark)

    # The resolver table is shared with SafeLoader's class; copy it, leaving out YAML 1.1's bool and
    # int patterns, before adding to it.
    Loader.yaml_implicit_resolvers = {
        k: [(tag, r) for tag, r in v
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}  # (1.1's floats read 1:30.5 as 90.5)
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                 list("-+0123456789"))
    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    float_re = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                               |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                               |\.[0-9_]+(?:[eE][-+][0-9]+)?
                               |[-+]?\.(?:inf|Inf|INF)
                               |\.(?:nan|NaN|NAN))$""", re.X)
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_re, list("-+0123456789."))
    return Loader


_LOADER: type | None = None


def yaml_load(text: str, where: str = "<string>") -> Any:
    """Parse YAML ``text`` safely (no Python objects) with YAML 1.2 floats; syntax errors become a
    :class:`ConfigError` naming ``where`` and the line."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def parse_value(raw: str) -> Any:
    """One ``--set`` value: YAML (``5``, ``1e-3``, ``true``, ``null``, ``[10, 20]``, ``{a: 1}``) or,
    when that fails or gives something else, the text itself (``Item #{item_id}`` whole: YAML would
    read `` #...`` as a comment and keep ``Item``)."""
    if not raw.strip():
        return raw
    try:
        value = yaml_load(raw)
    except ConfigError:
        return raw
    if value is None and raw.strip() not in ("null", "~", "Null", "NULL"):
        return raw
    if "#" in raw and isinstance(value, str) and value != raw.strip() and raw.strip()[:1] not in "\"'":
        return raw  # a comment cut the text (a quoted value's quotes are YAML's, as always)
    return value if isinstance(value, (bool, int, float, str, list, dict)) or value is None else raw


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` (copies), mappings merged key by key at every depth; any other value
    of ``over`` replaces the one below it."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) \
            else copy.deepcopy(v)
    return out


@functools.lru_cache(maxsize=None)
def _adapter(hint: Any):
    """A pydantic validator of ``hint`` in strict mode (no str -> number, no bool -> int, ints
    widened to float) with NaN and infinity refused."""
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(hint, config=ConfigDict(strict=True, allow_inf_nan=False))


def _tuples(value: Any, hint: Any) -> Any:
    """YAML has no tuples: a list given for a tuple-typed setting becomes one."""
    if isinstance(value, list) and any(typing.get_origin(h) is tuple for h in (hint, *typing.get_args(hint))):
        return tuple(value)
    return value


def type_name(hint: Any) -> str:
    """A reader's name for a type hint (``int or null``, ``a list of str``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = typing.get_args(hint)
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _wants_float(hint: Any) -> bool:
    return hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                             and float in typing.get_args(hint) and int not in typing.get_args(hint))


def check_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` validated against ``hint`` by pydantic (strict: ints widened to float where a float
    is wanted, nothing else converted; NaN and infinity refused); a :class:`ConfigError` naming
    ``key`` otherwise. A mapping given for a dataclass-typed setting has its keys checked too."""
    from pydantic import ValidationError

    sub = _dataclass_of(hint)
    if sub is not None and isinstance(value, Mapping):  # a nested config given as a mapping: its keys too
        return check_mapping(key, value, field_hints(sub))
    if sub is not None:  # pydantic validates dataclass instances by their fields; an instance is enough here
        if isinstance(value, sub) or (value is None and type(None) in typing.get_args(hint)):
            return value
        raise ConfigError(f"config key '{key}' expects {type_name(hint)}, got {value!r}")
    try:
        return _adapter(hint).validate_python(copy.deepcopy(_tuples(value, hint)))
    except ValidationError as e:
        if any(err["type"] == "finite_number" for err in e.errors()):
            raise ConfigError(f"config key '{key}' expects a finite number, got {value!r}") from None
        raise ConfigError(f"config key '{key}' expects {type_name(hint)}, got {value!r}") from None


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in ``hint`` (``X`` or ``X | None``), if any."""
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return h
    return None


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid key, or the empty string."""
    close = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def field_hints(cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The settable fields of dataclass ``cls`` and their resolved type hints."""
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in skip}


def check_mapping(prefix: str, values: Mapping[str, Any], hints: Mapping[str, Any]) -> dict[str, Any]:
    """Every key of ``values`` known in ``hints`` and of the right type; returns the checked copy.
    Keys are reported as ``prefix.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{prefix}' must be a mapping of settings, got {values!r}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}.{key}'{did_you_mean(key, hints)}; "
                              f"valid keys of '{prefix}': {', '.join(sorted(hints))}")
        out[key] = check_value(f"{prefix}.{key}", value, hints[key])
    return out


def build_dataclass(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values)`` with every key and type checked (see :func:`check_mapping`); the class's
    own validation errors become :class:`ConfigError` naming the section ``name``."""
    kwargs = check_mapping(name, values, field_hints(cls))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        key = re.match(r"config key '([^']+)' (.*)", str(e), re.DOTALL)  # the class named its key: qualify it
        if key:
            raise ConfigError(f"config key '{name}.{key.group(1)}' {key.group(2)}") from None
        raise ConfigError(f"config section '{name}': {e}") from None


def override_dataclass(config: Any, pairs: Sequence[str], name: str | None = None) -> Any:
    """A copy of dataclass ``config`` with ``key=value`` pairs applied (values as :func:`parse_value`,
    nested dataclass fields as ``key.sub=value``), every key and type checked."""
    name = name or type(config).__name__
    values = dataclasses.asdict(config)
    given: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        path = key.strip().split(".")
        node = given
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: '{p}' is not a group of settings")
        node[path[-1]] = parse_value(raw)
    return _apply(name, config, values, given)


def _apply(name: str, config: Any, current: dict[str, Any], given: Mapping[str, Any]) -> Any:
    hints = field_hints(type(config))
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if key not in hints:
            raise ConfigError(f"unknown setting '{key}' for {name}{did_you_mean(key, hints)}; "
                              f"valid: {', '.join(sorted(hints))}")
        sub = getattr(config, key)
        if dataclasses.is_dataclass(sub) and isinstance(value, Mapping):  # a nested config: a partial update
            changes[key] = _apply(f"{name}.{key}", sub, current[key], value)
            continue
        changes[key] = check_value(key, value, hints[key])
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None
