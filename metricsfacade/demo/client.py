"""The demo's MCP client: realistic traffic over a pipe pair, one request at a time."""

from __future__ import annotations

import itertools
import json
import random
from time import perf_counter
from typing import IO, Any

import attrs


@attrs.define
class Outcome:
    """What the client saw of one request."""

    method: str
    seconds: float
    error_code: int | None


class DemoClient:
    def __init__(self, to_proxy: IO[bytes], from_proxy: IO[bytes], seed: int = 7) -> None:
        self._out = to_proxy
        self._in = from_proxy
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)

    def request(self, method: str, params: dict[str, Any] | None = None) -> Outcome:
        """Send a request and wait for its response, answering server requests meanwhile."""
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        started = perf_counter()
        self._send(message)
        while True:
            line = self._in.readline()
            if not line:
                raise EOFError("the proxy closed its output")
            reply = json.loads(line)
            if "method" in reply and "id" in reply:  # the server asks us (sampling)
                self._send(
                    {
                        "jsonrpc": "2.0",
                        "id": reply["id"],
                        "result": {
                            "role": "assistant",
                            "model": "demo-model",
                            "content": {"type": "text", "text": "42"},
                        },
                    }
                )
                continue
            if reply.get("id") == request_id:
                error = reply.get("error")
                return Outcome(method, perf_counter() - started, error and error.get("code"))

    def notify(self, method: str) -> None:
        self._send({"jsonrpc": "2.0", "method": method})

    def initialize(self) -> Outcome:
        outcome = self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {"sampling": {}},
                "clientInfo": {"name": "metricsfacade-demo-client", "version": "1.0"},
            },
        )
        self.notify("notifications/initialized")
        return outcome

    def typical(self) -> Outcome:
        """One request drawn from a realistic mix, with a few errors."""
        roll = self._rng.random()
        if roll < 0.35:
            return self.request("tools/call", {"name": "echo", "arguments": {"text": "hello"}})
        if roll < 0.50:
            a, b = self._rng.randint(0, 99), self._rng.randint(0, 99)
            return self.request("tools/call", {"name": "add", "arguments": {"a": a, "b": b}})
        if roll < 0.55:
            return self.request("tools/call", {"name": "fail"})
        if roll < 0.60:
            return self.request("tools/call", {"name": "slow", "arguments": {"seconds": 0.02}})
        if roll < 0.63:
            return self.request("tools/call", {"name": "ask", "arguments": {"question": "?"}})
        if roll < 0.73:
            return self.request("tools/list")
        if roll < 0.81:
            return self.request("resources/read", {"uri": "demo://readme"})
        if roll < 0.86:
            return self.request("prompts/get", {"name": "greet", "arguments": {"who": "you"}})
        if roll < 0.88:
            return self.request("no/such_method")
        return self.request("ping")

    def crash_server(self) -> Outcome:
        return self.request("tools/call", {"name": "crash"})

    def _send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message).encode() + b"\n")
        self._out.flush()
