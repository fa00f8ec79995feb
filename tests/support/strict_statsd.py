"""A strict parser of StatsD and DogStatsD lines, for tests to check what goes on the wire.

Grammar accepted (one line; a datagram is lines joined by ``\\n``, with no empty line and so
no trailing newline)::

    line  = name ":" value { ":" value } "|" type [ "|@" rate ] [ "|#" tag { "," tag } ]
            [ "|c:" container-id ] [ "|e:" external-data ]
    type  = "c" | "g" | "ms" | "s" | "h" | "d"
    value = [ "+" | "-" ] digits [ "." digits ] [ exponent ]      (a finite decimal float)
    rate  = a float in (0, 1], unsigned
    tag   = key ":" value                                        (key non-empty)

Several values in one line are DogStatsD protocol 1.1 (not for sets or signed gauge deltas);
the container ID and external data fields are DogStatsD's origin detection (protocol 1.2+).

Rejected: an empty name, a name containing ``| : # @``, whitespace or a control character; a
value Python's ``float`` would take but a StatsD daemon would not (``nan``, ``inf``, ``1_0``,
`` 1``, ``0x1``); a ``+`` on anything but a gauge; an unknown type; a rate outside (0, 1]; an
empty tag list, an empty tag, a tag without ``:`` or with an empty key, a tag containing
``| , #`` or a control character; sections out of order, repeated or unknown (trailing
garbage); empty lines; bytes that are not UTF-8. "Control character" means Unicode categories
Cc, Cs, Zl and Zp (``\\n``, ``\\r``, NUL, ESC, U+0085, U+2028, ...): anything a reader might
take as the end of a line.

API: :func:`parse_line` (str -> :class:`Line`), :func:`parse_datagram` (bytes or str -> list
of :class:`Line`), :func:`format_line` (the inverse, for round trips); errors raise
:class:`MalformedLine`. Standard library only.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import NamedTuple

TYPES = frozenset({"c", "g", "ms", "s", "h", "d"})
_NAME_FORBIDDEN = frozenset("|:#@")
_TAG_FORBIDDEN = frozenset("|,#")
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_VALUE_RE = re.compile(rf"([+-]?){_NUMBER}\Z", re.ASCII)
_RATE_RE = re.compile(rf"{_NUMBER}\Z", re.ASCII)


class MalformedLine(ValueError):
    """A line (or datagram) that a strict StatsD/DogStatsD reader must refuse."""


class Line(NamedTuple):
    name: str
    value: float
    type: str
    #: the ``|@rate`` section, or None when absent (meaning 1)
    rate: float | None = None
    #: ``|#k:v,...`` in wire order, as (key, value) pairs
    tags: tuple[tuple[str, str], ...] = ()
    #: the value had an explicit sign: a gauge delta in plain StatsD (``+3``, ``-3``)
    signed: bool = False
    #: the values after the first in a multi-value line
    more: tuple[float, ...] = ()
    #: DogStatsD origin detection: ``|c:`` container ID and ``|e:`` external data
    container: str | None = None
    external: str | None = None

    @property
    def all_values(self) -> tuple[float, ...]:
        return (self.value, *self.more)

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.tags)

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)


def is_control(char: str) -> bool:
    """True for characters that must never appear in a name or a tag (see module doc)."""
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def parse_datagram(data: bytes | str) -> list[Line]:
    """Every line of one datagram; raise MalformedLine if any line (or the framing) is bad."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedLine(f"not UTF-8: {exc}") from None
    else:
        text = data
    return [parse_line(line) for line in text.split("\n")]


def parse_line(line: str) -> Line:
    """One line, without its newline."""
    if not line:
        raise MalformedLine("empty line")
    name, colon, rest = line.partition(":")
    if not colon:
        raise MalformedLine(f"no ':' after the name in {line!r}")
    _check_name(name, line)
    sections = rest.split("|")
    if len(sections) < 2:
        raise MalformedLine(f"no '|type' in {line!r}")
    values_text, metric_type, *extra = sections
    if metric_type not in TYPES:
        raise MalformedLine(f"unknown type {metric_type!r} in {line!r}")
    parsed = [_parse_value(text, metric_type, line) for text in values_text.split(":")]
    deltas = metric_type == "g" and any(signed for _, signed in parsed)
    if len(parsed) > 1 and (metric_type == "s" or deltas):
        raise MalformedLine(f"several values in a set or a gauge delta line: {line!r}")
    value, signed = parsed[0]
    rate: float | None = None
    tags: tuple[tuple[str, str], ...] = ()
    fields: dict[str, str] = {}
    order = ["@", "#", "c:", "e:"]
    for section in extra:
        kind = next((prefix for prefix in order if section.startswith(prefix)), None)
        if kind is None:
            raise MalformedLine(f"unexpected section {section!r} in {line!r}")
        order = order[order.index(kind) + 1 :]  # each at most once, in this order
        if kind == "@":
            rate = _parse_rate(section[1:], line)
        elif kind == "#":
            tags = _parse_tags(section[1:], line)
        else:
            fields[kind] = _parse_field(section[2:], line)
    return Line(
        name,
        value,
        metric_type,
        rate,
        tags,
        signed,
        tuple(number for number, _ in parsed[1:]),
        fields.get("c:"),
        fields.get("e:"),
    )


def _parse_field(text: str, line: str) -> str:
    if not text or any(char in _TAG_FORBIDDEN or is_control(char) for char in text):
        raise MalformedLine(f"bad origin field {text!r} in {line!r}")
    return text


def format_line(line: Line) -> str:
    """The wire form of a Line (``repr`` of the value, so parsing it gives the same Line)."""
    value = repr(float(line.value))
    if line.signed and not value.startswith("-"):
        value = "+" + value
    values = ":".join([value, *(repr(float(more)) for more in line.more)])
    text = f"{line.name}:{values}|{line.type}"
    if line.rate is not None:
        text += f"|@{line.rate!r}"
    if line.tags:
        text += "|#" + ",".join(f"{key}:{tag}" for key, tag in line.tags)
    if line.container is not None:
        text += f"|c:{line.container}"
    if line.external is not None:
        text += f"|e:{line.external}"
    return text


def _check_name(name: str, line: str) -> None:
    if not name:
        raise MalformedLine(f"empty name in {line!r}")
    for char in name:
        if char in _NAME_FORBIDDEN or char.isspace() or is_control(char):
            raise MalformedLine(f"character {char!r} in the name {name!r}")


def _parse_value(text: str, metric_type: str, line: str) -> tuple[float, bool]:
    match = _VALUE_RE.match(text)
    if match is None:
        raise MalformedLine(f"bad value {text!r} in {line!r}")
    sign = match.group(1)
    if sign == "+" and metric_type != "g":
        raise MalformedLine(f"'+' is only meaningful on a gauge, in {line!r}")
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise MalformedLine(f"value {text!r} is not finite in {line!r}")
    return value, bool(sign)


def _parse_rate(text: str, line: str) -> float:
    if _RATE_RE.match(text) is None:
        raise MalformedLine(f"bad sample rate {text!r} in {line!r}")
    rate = float(text)
    if not 0 < rate <= 1:
        raise MalformedLine(f"sample rate {text!r} outside (0, 1] in {line!r}")
    return rate


def _parse_tags(text: str, line: str) -> tuple[tuple[str, str], ...]:
    if not text:
        raise MalformedLine(f"empty tag list in {line!r}")
    tags = []
    for tag in text.split(","):
        key, colon, value = tag.partition(":")
        if not colon:
            raise MalformedLine(f"tag {tag!r} is not key:value in {line!r}")
        if not key:
            raise MalformedLine(f"tag {tag!r} has no key in {line!r}")
        for char in tag:
            if char in _TAG_FORBIDDEN or is_control(char):
                raise MalformedLine(f"character {char!r} in the tag {tag!r}")
        tags.append((key, value))
    return tuple(tags)
