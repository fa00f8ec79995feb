"""Settings fields and the parsers behind them, for ``MetricsConfig`` and every config table.

A setting is an attrs field that carries two parsers: one for TOML and dict values, one for
the text of a ``METRICSFACADE_*`` environment variable. A parser raises :class:`InvalidSetting`
with what it expected; the loader adds the key's dotted name and where the value came from.
Backends and extensions declare their tables with the same fields (see
``metricsfacade.backends.statsd.StatsdSettings``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from metricsfacade.errors import DeclarationError
from metricsfacade.spec import LABEL_NAME_RE, validate_buckets

Parser = Callable[[object], Any]

#: The longest interval or timeout accepted (11.6 days): threads cannot wait for longer.
MAX_SECONDS = 1_000_000.0
PREFIX_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*(\.[a-zA-Z_][a-zA-Z0-9_]*)*\Z")


class InvalidSetting(ValueError):
    """A value failed to parse, or a table's settings disagree; the loader adds where."""


def setting(default: Any, parse: Parser, env: Parser | None = None) -> Any:
    """An attrs field parsed by ``parse`` from TOML/dict values and by ``env`` (default:
    ``parse``) from an environment variable's text."""
    return attrs.field(default=default, metadata={"parse": parse, "env": env or parse})


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidSetting(f"expected true or false, got {value!r}")


def boolean_text(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidSetting(f"expected true or false, got {value!r}")


def _bounded_int(value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSetting(f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidSetting(f"expected an integer {bounds}, got {value!r}")
    return value


def _int_from_text(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidSetting(f"expected an integer, got {value!r}") from None


def integer(low: int, high: int | None = None) -> Parser:
    return lambda value: _bounded_int(value, low, high)


def integer_text(low: int, high: int | None = None) -> Parser:
    return lambda value: _bounded_int(_int_from_text(value), low, high)


def optional_integer(low: int, high: int) -> Parser:
    return lambda value: None if value is None else _bounded_int(value, low, high)


def port(value: object) -> int | None:
    """A TCP port; 0 picks a free one; None (or "off" in TOML and env) serves no endpoint."""
    if value is None or value == "off":
        return None
    return _bounded_int(value, 0, 65535)


def port_text(value: object) -> int | None:
    return None if str(value).strip() == "off" else port(_int_from_text(value))


def positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSetting(f"expected a number, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise InvalidSetting(f"expected a positive number up to {MAX_SECONDS:g}, got {value!r}")
    return float(value)


def positive_float_text(value: object) -> float:
    try:
        return positive_float(float(str(value)))
    except ValueError:
        raise InvalidSetting(f"expected a number, got {value!r}") from None


def sample_rate(value: object) -> float:
    rate = positive_float(value)
    if rate > 1:
        raise InvalidSetting(f"expected a number in (0, 1], got {value!r}")
    return rate


def sample_rate_text(value: object) -> float:
    return sample_rate(positive_float_text(value))


def string(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidSetting(f"expected a string, got {value!r}")
    return value


def optional_string(value: object) -> str | None:
    return None if value is None else string(value)


def path(value: object) -> str | None:
    """A file path, or None; an empty one is refused (it would silently mean "unset")."""
    text = optional_string(value)
    if text is not None and not text:
        raise InvalidSetting("expected a file path, got an empty string")
    return text


def host(value: object) -> str:
    """A host name or address a socket can be given (a DNS label is at most 63 bytes)."""
    text = string(value)
    try:
        encoded = text.encode("idna")
    except UnicodeError as exc:
        raise InvalidSetting(f"expected a host name or address, got {text!r} ({exc})") from None
    if not encoded:
        raise InvalidSetting("expected a host name or address, got an empty string")
    return text


def optional_host(value: object) -> str | None:
    return None if value is None else host(value)


def choice(*allowed: str) -> Parser:
    def parse(value: object) -> str:
        text = string(value)
        if text not in allowed:
            options = ", ".join(repr(option) for option in allowed)
            raise InvalidSetting(f"expected one of {options}, got {value!r}")
        return text

    return parse


def prefix(value: object) -> str:
    """A dotted prefix put before metric names, e.g. "myapp.prod"; "" for none."""
    text = string(value)
    if text and not PREFIX_RE.match(text):
        raise InvalidSetting(f"expected dot-separated identifiers like 'app.prod', got {value!r}")
    return text


def string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidSetting(f"expected a list of strings, got {value!r}")
    return tuple(string(item) for item in value)


def comma_list(value: object) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def buckets(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidSetting(f"expected a list of numbers, got {value!r}")
    try:
        return validate_buckets("histogram_buckets", value)
    except DeclarationError as exc:
        raise InvalidSetting(str(exc).replace("metric 'histogram_buckets': ", "")) from None


def buckets_text(value: object) -> tuple[float, ...] | None:
    try:
        return buckets([float(part) for part in comma_list(value)])
    except ValueError:
        raise InvalidSetting(f"expected comma-separated numbers, got {value!r}") from None


def labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidSetting(f"expected a table of label names to string values, got {value!r}")
    parsed: dict[str, str] = {}
    for name, label_value in value.items():
        if not isinstance(name, str) or not LABEL_NAME_RE.match(name) or name.startswith("__"):
            raise InvalidSetting(f"invalid label name {name!r}")
        parsed[name] = string(label_value)
    return parsed


def pairs_text(value: object, what: str) -> dict[str, str]:
    """``a=1,b=2`` as a dict; ``what`` names the pairs in the error ("name=value")."""
    pairs = {}
    for part in comma_list(value):
        key, sep, item = part.partition("=")
        if not sep:
            raise InvalidSetting(f"expected {what} pairs separated by commas, got {value!r}")
        pairs[key.strip()] = item.strip()
    return pairs


def labels_text(value: object) -> dict[str, str]:
    return labels(pairs_text(value, "name=value"))


def common_labels(value: object) -> dict[str, str]:
    """Labels on every series: never ``le``, which a histogram's buckets carry."""
    parsed = labels(value)
    if "le" in parsed:
        raise InvalidSetting("'le' is reserved for histogram bucket bounds")
    return parsed


def common_labels_text(value: object) -> dict[str, str]:
    return common_labels(pairs_text(value, "name=value"))


def file_only(value: object) -> Any:
    """The env parser of settings that only a config file or dict can give."""
    raise InvalidSetting("cannot be set from the environment; use the config file")
