"""The method allow-list against the installed MCP SDK: a method the SDK knows must keep its
name in the ``method`` label, so that an SDK upgrade that brings new methods fails here."""

from __future__ import annotations

import inspect
import typing

from support import require_module

import metricsfacade as mf
from metricsfacade.shadowcat import ShadowcatMetrics

require_module("mcp")
require_module("pydantic")
import mcp.types  # noqa: E402
from pydantic import BaseModel  # noqa: E402


def sdk_methods() -> set[str]:
    """Every method name of the installed MCP SDK: the ``method: Literal[...]`` fields of
    its request and notification classes."""
    methods: set[str] = set()
    for _, cls in inspect.getmembers(mcp.types, inspect.isclass):
        field = cls.model_fields.get("method") if issubclass(cls, BaseModel) else None
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            methods.update(typing.get_args(field.annotation))
    return methods


def test_the_method_allow_list_keeps_every_method_the_mcp_sdk_knows() -> None:
    """Fails as soon as an SDK upgrade brings a method the default allow-list would count as
    "other" (MCP 2025-11-25's tasks were)."""
    methods = sdk_methods()
    assert {"tools/call", "tasks/get", "tasks/result", "notifications/tasks/status"} <= methods
    facade = mf.Metrics({"port": None, "backends": ["memory"]}, environ={})
    try:
        label = ShadowcatMetrics(facade).method_label
        assert {method: label(method) for method in methods} == {m: m for m in methods}
    finally:
        facade.close()
