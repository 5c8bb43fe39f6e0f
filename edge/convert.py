"""The one cattrs converter of the edge.

`make_converter()` is strict: it is what the Kafka JSON contract is parsed with, so a command whose
`quantity` is the string "3" or whose `catalog_uuids` is a bare string (or an object) is rejected with a
precise path instead of being coerced. `make_env_converter()` adds on top of it the few string hooks that environment
variables need (every value there is text).
"""

from __future__ import annotations

import datetime
from typing import Any

import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, is_sequence, list_structure_factory
from cattrs.preconf.json import make_converter as _make_json_converter


def _strict_str(value: Any, _type: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _type: type) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _iso_datetime(value: Any, _type: type) -> datetime.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}")
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        # A timestamp without an offset is read as UTC: that is what every producer we know means.
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _json_array_hook(type_: Any, converter: cattrs.Converter) -> Any:
    """Sequences come only from JSON arrays: cattrs alone would turn "abc" into ["a", "b", "c"]."""
    origin = getattr(type_, "__origin__", type_)
    if origin is tuple:
        inner = homogenous_tuple_structure_factory(type_, converter)
    else:
        inner = list_structure_factory(type_, converter)

    def structure(value: Any, target: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected an array, got {type(value).__name__}")
        return inner(value, target)

    return structure


def _unstructure_datetime(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def make_converter() -> cattrs.Converter:
    """Strict converter for JSON values (Kafka records) and attrs classes."""
    converter = _make_json_converter(forbid_extra_keys=False, detailed_validation=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(datetime.datetime, _iso_datetime)
    converter.register_structure_hook_factory(is_sequence, _json_array_hook)
    converter.register_unstructure_hook(datetime.datetime, _unstructure_datetime)
    return converter


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env_int(value: Any, _type: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(str(value).strip(), 10)


def _env_float(value: Any, _type: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(str(value).strip())


def _env_bool(value: Any, _type: type) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def make_env_converter() -> cattrs.Converter:
    """The strict converter plus string parsing for environment variables."""
    converter = make_converter().copy()
    converter.register_structure_hook(int, _env_int)
    converter.register_structure_hook(float, _env_float)
    converter.register_structure_hook(bool, _env_bool)
    return converter


def timestamp(now: datetime.datetime) -> str:
    """ISO-8601 UTC with a `Z`, millisecond precision: the form every record's `timestamp` takes."""
    return now.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
