"""A small MCP server over stdio, bundled for the demo, the benchmark and the tests.

Tools: ``echo``, ``add``, ``fail`` (a JSON-RPC error), ``slow`` (sleeps ``seconds``),
``crash`` (exits at once), ``ask`` (asks the client for a sampling/createMessage first).
Also resources, prompts, completion, logging/setLevel and ping. Standard library only.

    python -m metricsfacade.demo.server
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Any

PROTOCOL_VERSION = "2025-06-18"
TOOLS = [
    {"name": "echo", "description": "Echo the text back", "inputSchema": {"type": "object"}},
    {"name": "add", "description": "Add a and b", "inputSchema": {"type": "object"}},
    {"name": "fail", "description": "Always fails", "inputSchema": {"type": "object"}},
    {"name": "slow", "description": "Sleep for `seconds`", "inputSchema": {"type": "object"}},
    {"name": "crash", "description": "Exit the server", "inputSchema": {"type": "object"}},
    {"name": "ask", "description": "Ask the client's model", "inputSchema": {"type": "object"}},
]
RESOURCES = [{"uri": "demo://readme", "name": "readme", "mimeType": "text/plain"}]
PROMPTS = [{"name": "greet", "description": "Say hello", "arguments": [{"name": "who"}]}]


class DemoServer:
    def __init__(self) -> None:
        self._asks: dict[str, Any] = {}  # our sampling request id -> the tools/call id
        self._ids = itertools.count(1)

    def serve(self, stdin: Any = None, stdout: Any = None) -> None:
        stdin = stdin or sys.stdin.buffer
        self._out = stdout or sys.stdout.buffer
        for line in stdin:
            try:
                message = json.loads(line)
            except ValueError:
                self._send(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "parse error"},
                    }
                )
                continue
            for item in message if isinstance(message, list) else [message]:
                self._handle(item)

    def _send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self._out.flush()

    def _result(self, request_id: Any, result: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _error(self, request_id: Any, code: int, text: str) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": text}})

    def _handle(self, message: dict[str, Any]) -> None:
        if "method" not in message:  # a response to one of our requests
            call_id = self._asks.pop(str(message.get("id")), None)
            if call_id is not None:
                text = message.get("result", {}).get("content", {}).get("text", "")
                self._result(call_id, {"content": [{"type": "text", "text": f"model: {text}"}]})
            return
        if "id" not in message:
            return  # a notification
        request_id, method = message["id"], message["method"]
        params = message.get("params") or {}
        handler = getattr(self, "on_" + method.replace("/", "_"), None)
        if handler is None:
            self._error(request_id, -32601, f"method not found: {method}")
        else:
            handler(request_id, params)

    def on_initialize(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(
            request_id,
            {
                "protocolVersion": params.get("protocolVersion", PROTOCOL_VERSION),
                "capabilities": {"tools": {}, "resources": {}, "prompts": {}, "logging": {}},
                "serverInfo": {"name": "metricsfacade-demo", "version": "1.0"},
            },
        )

    def on_ping(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {})

    def on_tools_list(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {"tools": TOOLS})

    def on_tools_call(self, request_id: Any, params: dict[str, Any]) -> None:
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "echo":
            self._text(request_id, str(args.get("text", "")))
        elif name == "add":
            self._text(request_id, str(args.get("a", 0) + args.get("b", 0)))
        elif name == "slow":
            time.sleep(float(args.get("seconds", 0.05)))
            self._text(request_id, "done")
        elif name == "crash":
            os._exit(3)
        elif name == "ask":
            ask_id = f"srv-{next(self._ids)}"
            self._asks[ask_id] = request_id
            self._send(
                {
                    "jsonrpc": "2.0",
                    "id": ask_id,
                    "method": "sampling/createMessage",
                    "params": {
                        "messages": [
                            {
                                "role": "user",
                                "content": {"type": "text", "text": str(args.get("question", "?"))},
                            }
                        ],
                        "maxTokens": 20,
                    },
                }
            )
        else:
            self._error(request_id, -32603, f"tool {name!r} failed")

    def _text(self, request_id: Any, text: str) -> None:
        self._result(request_id, {"content": [{"type": "text", "text": text}]})

    def on_resources_list(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {"resources": RESOURCES})

    def on_resources_read(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(
            request_id,
            {
                "contents": [
                    {
                        "uri": params.get("uri"),
                        "mimeType": "text/plain",
                        "text": "metricsfacade demo",
                    }
                ]
            },
        )

    def on_prompts_list(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {"prompts": PROMPTS})

    def on_prompts_get(self, request_id: Any, params: dict[str, Any]) -> None:
        who = (params.get("arguments") or {}).get("who", "world")
        self._result(
            request_id,
            {"messages": [{"role": "user", "content": {"type": "text", "text": f"Hello, {who}"}}]},
        )

    def on_completion_complete(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {"completion": {"values": ["world"], "hasMore": False}})

    def on_logging_setLevel(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(request_id, {})


def main() -> None:
    DemoServer().serve()


if __name__ == "__main__":
    main()
