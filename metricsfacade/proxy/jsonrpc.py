"""Just enough JSON-RPC 2.0 to correlate MCP messages and to answer for the server."""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

try:  # several times faster than json on the proxy's hot path; optional
    from orjson import loads
except ModuleNotFoundError:  # pragma: no cover - exercised without the extra only
    from json import loads  # type: ignore[assignment]

#: JSON-RPC error codes the proxy answers with.
INVALID_REQUEST = -32600
UPSTREAM_UNAVAILABLE = -32000
UPSTREAM_TIMEOUT = -32001
RATE_LIMITED = -32002


class Message(NamedTuple):
    """One JSON-RPC message. ``kind``: "request", "notification", "response", or "invalid"."""

    kind: str
    id: Any = None
    method: str | None = None
    is_error: bool = False
    #: for notifications/cancelled: the id (as a key) of the request it cancels
    cancels: Any = None


INVALID = Message("invalid")


def parse_line(line: bytes) -> list[Message] | None:
    """The messages of one line (a batch gives several), or None when it is not JSON.

    Ids keep their exact JSON value: an id that orjson reads as a float (a real fraction,
    or an integer beyond 64 bits) has the line read again by the standard library, which
    keeps integers exact."""
    try:
        payload = loads(line)
    except ValueError:
        return None
    try:
        if isinstance(payload, list):
            return [_classify(item) for item in payload]
        return [_classify(payload)]
    except _Inexact:
        payload = _exact_loads(line)
        if isinstance(payload, list):
            return [_classify(item) for item in payload]
        return [_classify(payload)]


class _Inexact(Exception):
    """An id was read as a float by orjson: its exact value needs the slow parser."""


def _exact_loads(line: bytes | str) -> Any:
    return json.loads(line, parse_float=decimal.Decimal)


def _classify(item: object) -> Message:
    if not isinstance(item, dict):
        return INVALID
    method = item.get("method")
    if method.__class__ is str:
        if "id" in item:
            return Message("request", _key(item["id"]), method)
        if method == "notifications/cancelled":
            params = item.get("params")
            if isinstance(params, dict) and "requestId" in params:
                return Message("notification", None, method, cancels=_key(params["requestId"]))
        return Message("notification", None, method)
    if "id" in item and ("result" in item or "error" in item):
        return Message("response", _key(item["id"]), None, "error" in item)
    return INVALID


def head_message(head: bytes) -> Message:
    """What the first bytes of a line too long to parse say: a request with its id and
    method when both are among the top-level members before the cut, else an "invalid"
    message with the method if it was seen. A response's id is never taken for a
    request's: an answer to it would reach the client as the answer to its own request."""
    members: dict[str, Any] = {}
    for key, value in _leading_members(head.decode("utf-8", "replace")):
        members.setdefault(key, value)
    method = members.get("method")
    method = method if isinstance(method, str) else None
    if method is not None and "id" in members:
        return Message("request", _key(members["id"]), method)
    return Message("invalid", None, method)


_BLANKS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _leading_members(text: str) -> Iterator[tuple[str, Any]]:
    """The top-level members of the JSON object ``text`` starts with, in order, up to the
    first one that is cut off (a value must be followed by "," or "}": a number at the
    cut may be missing digits)."""
    at = _BLANKS.match(text).end()  # type: ignore[union-attr]  # always matches
    if not text.startswith("{", at):
        return
    at += 1
    while True:
        try:
            key, at = _DECODER.raw_decode(text, _skip(text, at))
            at = _skip(text, at)
            if not isinstance(key, str) or not text.startswith(":", at):
                return
            value, at = _DECODER.raw_decode(text, _skip(text, at + 1))
        except ValueError:
            return
        at = _skip(text, at)
        if not text.startswith((",", "}"), at):
            return
        yield key, value
        at += 1


def _skip(text: str, at: int) -> int:
    return _BLANKS.match(text, at).end()  # type: ignore[union-attr]  # always matches


class JsonId:
    """An id that is not a string or an integer (null, a fraction, true, an object), kept
    as its JSON text. Never equal to a string or an integer id: ``1``, ``1.0`` and ``"1"``
    are three ids."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return other.__class__ is JsonId and other.text == self.text

    def __hash__(self) -> int:
        return hash((JsonId, self.text))

    def __repr__(self) -> str:
        return f"JsonId({self.text!r})"


def _key(message_id: object) -> Any:
    """Ids as dict keys, by their exact JSON value. Strings and integers as they are (1 and
    "1" stay distinct; integers of any size stay exact); anything else by its JSON text,
    as a ``JsonId`` (a fraction by its shortest exact spelling: 1.0 and 1.00 are one id)."""
    cls = message_id.__class__
    if cls is str or cls is int:
        return message_id
    if cls is float:
        raise _Inexact  # orjson: maybe an integer too big for it; read exactly instead
    if cls is decimal.Decimal:
        return JsonId(_number_text(message_id))  # type: ignore[arg-type]
    return JsonId(json.dumps(message_id, sort_keys=True, default=_number_text))


def _number_text(number: decimal.Decimal) -> str:
    """A JSON fraction's canonical text: Python's float spelling when it is exact, else
    the decimal's own (beyond a float's range)."""
    as_float = float(number)
    if math.isfinite(as_float) and decimal.Decimal(repr(as_float)) == number:
        return repr(as_float)
    return str(number.normalize())


#: The key of a null id (the id of an answer to a message that could not be parsed).
NULL_ID = JsonId("null")


def id_text(key: Any) -> str:
    """The id's JSON text, from a key made by ``_key``."""
    if key.__class__ is JsonId:
        return key.text
    return json.dumps(key)


def wire_id(key: Any) -> Any:
    """The id as a Python value (big numbers as they are spelled: exact)."""
    if key.__class__ is JsonId:
        return _exact_loads(key.text)
    return key


def error_object(key: Any, code: int, message: str) -> str:
    """A JSON-RPC error response (text) for the request with this id key (None: null)."""
    error = json.dumps({"code": code, "message": message}, separators=(",", ":"))
    return f'{{"jsonrpc":"2.0","id":{"null" if key is None else id_text(key)},"error":{error}}}'


def batch_error_response(keys: list[Any], code: int, message: str) -> bytes:
    """One line answering each request of a batch with the same error."""
    return join_batch([error_object(key, code, message) for key in keys])


def error_response(key: Any, code: int, message: str) -> bytes:
    """A JSON-RPC error response line for the request with this id key (None: id null)."""
    return error_object(key, code, message).encode() + b"\n"


# -- editing lines without touching the rest of their bytes (rare paths) -----------------------


def split_batch(line: bytes) -> list[str] | None:
    """The members of a batch line, each as its exact JSON text; None if the line is not a
    JSON array (or not UTF-8)."""
    try:
        text = line.decode()
        at = _skip(text, 0)
        if not text.startswith("[", at):
            return None
        members: list[str] = []
        at = _skip(text, at + 1)
        if text.startswith("]", at):
            return members
        while True:
            _, end = _DECODER.raw_decode(text, at)
            members.append(text[at:end])
            at = _skip(text, end)
            if text.startswith("]", at):
                return members
            if not text.startswith(",", at):
                return None
            at = _skip(text, at + 1)
    except (UnicodeDecodeError, ValueError):
        return None


def join_batch(members: list[str]) -> bytes:
    return ("[" + ",".join(members) + "]\n").encode()


def replace_id(member: str, new_id: str, name: str = "id") -> str | None:
    """The JSON object ``member`` with its top-level ``id`` (or ``name``) value replaced by
    the JSON text ``new_id``, every other byte as it was; None if it has none (or is not
    an object)."""
    span = None
    for key, start, end in member_spans(member):
        if key == name:
            span = (start, end)  # the last one wins, as when parsed
    if span is None:
        return None
    return member[: span[0]] + new_id + member[span[1] :]


def member_spans(text: str) -> Iterator[tuple[str, int, int]]:
    """The top-level members of a JSON object: (name, start of value, end of value)."""
    at = _skip(text, 0)
    if not text.startswith("{", at):
        return
    at = _skip(text, at + 1)
    if text.startswith("}", at):
        return
    while True:
        try:
            key, at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            if not isinstance(key, str) or not text.startswith(":", at):
                return
            start = _skip(text, at + 1)
            _, end = _DECODER.raw_decode(text, start)
        except ValueError:
            return
        yield key, start, end
        at = _skip(text, end)
        if not text.startswith(",", at):
            return
        at = _skip(text, at + 1)
