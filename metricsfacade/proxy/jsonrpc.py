"""Just enough JSON-RPC 2.0 to correlate MCP messages and to answer for the server."""

from __future__ import annotations

import json
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
    """The messages of one line (a batch gives several), or None when it is not JSON."""
    try:
        payload = loads(line)
    except ValueError:
        return None
    if isinstance(payload, list):
        return [_classify(item) for item in payload]
    return [_classify(payload)]


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


class _JsonId(str):
    """An id that is not a string or an integer, kept as its JSON text."""


def _key(message_id: object) -> Any:
    """Ids as dict keys. Strings and integers as they are (1 and "1" stay distinct);
    anything else (null, a float, an object) by its JSON text, marked as such."""
    if message_id.__class__ is str or message_id.__class__ is int:
        return message_id
    return _JsonId(json.dumps(message_id, sort_keys=True))


#: The key of a null id (the id of an answer to a message that could not be parsed).
NULL_ID = _JsonId("null")


def wire_id(key: Any) -> Any:
    """The id as it appears on the wire, from a key made by ``_key``."""
    return json.loads(key) if isinstance(key, _JsonId) else key


def batch_error_response(keys: list[Any], code: int, message: str) -> bytes:
    """One line answering each request of a batch with the same error."""
    responses = [
        {"jsonrpc": "2.0", "id": wire_id(key), "error": {"code": code, "message": message}}
        for key in keys
    ]
    return json.dumps(responses, separators=(",", ":")).encode() + b"\n"


def error_response(key: Any, code: int, message: str) -> bytes:
    """A JSON-RPC error response line for the request with this id key (None: id null)."""
    response = {
        "jsonrpc": "2.0",
        "id": None if key is None else wire_id(key),
        "error": {"code": code, "message": message},
    }
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"
