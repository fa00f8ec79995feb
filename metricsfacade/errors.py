"""Exceptions raised by metricsfacade.

Errors are raised at declaration and configuration time only. At record time problems are
counted and dropped, unless ``strict = true`` asks for :class:`RecordError` instead.
"""

from __future__ import annotations


class MetricsError(Exception):
    """Base class of every error metricsfacade raises."""


class ConfigError(MetricsError, ValueError):
    """The configuration is invalid; the message names the key and where it came from."""


class DeclarationError(MetricsError, ValueError):
    """A metric declaration is invalid (name, labels, buckets) or conflicts with another."""


class RecordError(MetricsError, ValueError):
    """A recording was rejected. Raised only in strict mode; otherwise counted and dropped."""


class EndpointError(MetricsError, OSError):
    """The HTTP endpoint could not start (for example, its port is busy)."""


class MissingExtraError(MetricsError, ImportError):
    """A backend needs an optional dependency that is not installed."""

    def __init__(self, backend: str, module: str, extra: str) -> None:
        super().__init__(
            f"the {backend!r} backend needs the {module!r} package: "
            f"pip install 'metricsfacade[{extra}]'"
        )
        self.backend = backend
        self.module = module
        self.extra = extra
