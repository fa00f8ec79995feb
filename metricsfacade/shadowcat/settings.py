"""The ``[shadowcat]`` config table, registered in the ``metricsfacade.config_tables`` group."""

from __future__ import annotations

import attrs

from metricsfacade import settings as parse
from metricsfacade.settings import setting

#: MCP methods kept as ``method`` label values; others become "other". A trailing "/*"
#: matches a whole family (``tools/*``: tools/list, tools/call, ...).
MCP_METHODS = (
    "initialize",
    "ping",
    "tools/*",
    "resources/*",
    "prompts/*",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/*",
    "server/discover",
    "subscriptions/listen",
    "notifications/*",
)


@attrs.frozen
class ShadowcatSettings:
    """The ``[shadowcat]`` table: bounds on label values that come from the network."""

    methods: tuple[str, ...] = setting(MCP_METHODS, parse.string_list, parse.comma_list)
    #: distinct rate-limited clients named in ``client``; later ones are "other"
    max_clients: int = setting(100, parse.integer(0), parse.integer_text(0))
