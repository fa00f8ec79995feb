"""``metricsfacade proxy``: an MCP stdio forward proxy that records the shadowcat_* catalog."""

from metricsfacade.proxy.core import StdioProxy
from metricsfacade.proxy.runner import run_proxy

__all__ = ["StdioProxy", "run_proxy"]
