"""The ``[proxy]`` config table of ``metricsfacade proxy``, registered in the
``metricsfacade.config_tables`` entry-point group."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from metricsfacade import settings as parse
from metricsfacade.settings import InvalidSetting, setting


def _rates(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise InvalidSetting(
            f"expected a table of method names to requests per second, got {value!r}"
        )
    return {parse.string(method): parse.positive_float(rate) for method, rate in value.items()}


def _rates_text(value: object) -> dict[str, float]:
    pairs = parse.pairs_text(value, "method=rate")
    return {method: parse.positive_float_text(rate) for method, rate in pairs.items()}


@attrs.frozen
class ProxySettings:
    """The ``[proxy]`` table."""

    #: the ``upstream`` label value of the proxied server
    name: str = setting("upstream", parse.string)
    #: a request unanswered this long gets a JSON-RPC error and counts as a timeout
    request_timeout_secs: float = setting(60.0, parse.positive_float, parse.positive_float_text)
    #: longer lines are dropped and answered with an error
    max_line_bytes: int = setting(16 * 1024 * 1024, parse.integer(1024), parse.integer_text(1024))
    #: method -> requests per second (bursts of up to one second's worth)
    rate_limits: dict[str, float] = setting(attrs.Factory(dict), _rates, _rates_text)  # noqa: RUF009
    #: restart the server when it exits, with backoff, guarded by the circuit breaker
    restart: bool = setting(False, parse.boolean, parse.boolean_text)
    restart_backoff_secs: float = setting(0.1, parse.positive_float, parse.positive_float_text)
    #: consecutive failures (crashes, failed restarts) that open the breaker
    breaker_failures: int = setting(3, parse.integer(1), parse.integer_text(1))
    #: how long the breaker stays open before a trial restart (half-open)
    breaker_reset_secs: float = setting(5.0, parse.positive_float, parse.positive_float_text)
