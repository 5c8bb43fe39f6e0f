"""The pieces `edge.config` builds its settings from: `ConfigError`, `Address`, and the validators each
setting names (each raises ConfigError with the setting's variable and what it accepts)."""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

#: Bounds of KAFKA_MAX_RECORD_BYTES. The upper one leaves room for the key and the record overhead
#: under the producer's request limit (aiokafka's max_request_size, 1 MiB, as Kafka's default
#: max.message.bytes); the lower one keeps every error record the edge builds within the bound.
MIN_RECORD_BYTES: Final = 4096
MAX_RECORD_BYTES: Final = 1_000_000


class ConfigError(Exception):
    """A setting has a value the edge cannot run with."""

    def __init__(self, variable: str, accepts: str, value: object = None) -> None:
        self.variable = variable
        self.accepts = accepts
        self.value = value
        shown = "" if value is None else f" (got {str(value)[:80]!r})"
        super().__init__(f"{variable}: expected {accepts}{shown}")


def invalid(attribute: attrs.Attribute[Any], value: object) -> ConfigError:
    return ConfigError(attribute.metadata["env"], attribute.metadata["accepts"], value)


def positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise invalid(attribute, value)


def non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise invalid(attribute, value)


def port_range(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise invalid(attribute, value)


def pattern(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.count("{}") != 1:
        raise invalid(attribute, value)


def topic_name(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    probe = value.replace("{}", "x")
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,249}", probe):
        raise invalid(attribute, value)


def one_of(*choices: str) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise invalid(attribute, value)

    return check


def group_id(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or value.count("{") > 1 or value.replace("{}", "").count("{") or "}" in value.replace("{}", ""):
        raise invalid(attribute, value)


def edge_id(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", value):
        raise invalid(attribute, value)


def session_timeout(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 1 <= value <= 300:
        raise invalid(attribute, value)


def record_bytes(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not MIN_RECORD_BYTES <= value <= MAX_RECORD_BYTES:
        raise invalid(attribute, value)


def fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 1:
        raise invalid(attribute, value)


@attrs.frozen
class Address:
    """A `host:port` pair; `[v6]:port` for IPv6."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text.strip())
        if not match:
            raise ValueError("not host:port")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if port > 65535:
            raise ValueError("port out of range")
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
