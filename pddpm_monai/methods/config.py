"""Plain-dict round trips of (nested) configuration dataclasses, for self-describing checkpoints.

A checkpoint stores a method's configuration as a JSON-able dict (lists, numbers, strings, nested
dicts) so that ``torch.load(..., weights_only=True)`` can read it and a human can read the JSON.
:func:`config_to_dict` and :func:`config_from_dict` convert both ways; unknown keys and wrong types
become one-line :class:`~pddpm_monai.utils.InputError` s naming where the dict came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from pddpm_monai.utils import InputError

__all__ = ["config_to_dict", "config_from_dict", "apply_overrides"]

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance (possibly nested) as a new JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}.")
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Rebuild a (nested) dataclass from :func:`config_to_dict` output.

    Missing keys take the dataclass defaults (so older checkpoints stay readable when a field is
    added); unknown keys are refused.

    Args:
        cls: the dataclass type.
        data: the plain dict.
        source: where ``data`` came from (a file name), for error messages.

    Raises:
        InputError: for unknown keys or values of the wrong kind.
    """
    if not isinstance(data, Mapping):
        raise InputError(source, f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(source, f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    kwargs = {name: _convert(hints[name], value, f"{source}: {name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"invalid {cls.__name__}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type where the JSON form differs (dataclasses, tuples)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return config_from_dict(hint, value, source=where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _convert(options[0], value, where)
        if isinstance(value, list) and any(get_origin(a) is tuple for a in options):
            return tuple(value)
        return value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a config dict with ``overrides`` applied; dotted keys reach nested dicts.

    ``None`` values in ``overrides`` are skipped (an option the user did not give).

    Example:
        >>> apply_overrides({"t_test": 500, "network": {"model_channels": 128}},
        ...                 {"t_test": 400, "network.model_channels": 32})
        {'t_test': 400, 'network': {'model_channels': 32}}
    """
    out = _plain(dict(data))
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _plain(value)
    return out
