"""Finding backends and config tables: by entry point, or by a dotted class path.

Backends register in the ``metricsfacade.backends`` entry-point group (the built-ins too, in
this distribution's metadata); the config names them (``backends = ["statsd"]``) or gives a
class path (``"mypackage.sinks:MyBackend"``). A backend's table (``[statsd]``) is its
``Settings`` class. Extensions that are not backends (the proxy, the Shadowcat catalog)
register their tables in ``metricsfacade.config_tables``. Nothing is imported until named.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from metricsfacade.errors import ConfigError

if TYPE_CHECKING:
    from metricsfacade.backends.base import Backend

BACKENDS_GROUP = "metricsfacade.backends"
TABLES_GROUP = "metricsfacade.config_tables"


@functools.cache
def _registered(group: str) -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=group)}


def backend_names() -> list[str]:
    """The backends registered by name."""
    return sorted(_registered(BACKENDS_GROUP))


def is_class_path(reference: str) -> bool:
    return ":" in reference or "." in reference


def backend_class(reference: str) -> type[Backend]:
    """The backend class a config names: a registered name or ``module:Class``/``module.Class``."""
    from metricsfacade.backends.base import Backend  # noqa: PLC0415 (base imports the config)

    entry = _registered(BACKENDS_GROUP).get(reference)
    if entry is not None:
        found = entry.load()
    elif is_class_path(reference):
        found = _load_class_path(reference)
    else:
        raise ConfigError(
            f"backends: unknown backend {reference!r} "
            f"(available: {', '.join(backend_names())}, or a class path such as "
            f"'mypackage.sinks:MyBackend')"
        )
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise ConfigError(f"backends: {reference!r} is not a metricsfacade Backend class")
    return found


def _load_class_path(reference: str) -> Any:
    module_name, sep, attribute = reference.partition(":")
    if not sep:
        module_name, _, attribute = reference.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"backends: cannot load {reference!r}: {exc}") from None


def table_names(backends: tuple[str, ...] = ()) -> list[str]:
    """Names of the tables a config may have: every registered backend and extension, and
    the backends given by class path in ``backends``."""
    names = set(_registered(TABLES_GROUP))
    for reference in (*_registered(BACKENDS_GROUP), *filter(is_class_path, backends)):
        try:
            backend = backend_class(reference)
        except Exception:  # a broken plugin must not hide the message being built
            continue
        if backend.Settings is not None:
            names.add(backend.name)
    return sorted(names)


def table_class(name: str, backends: tuple[str, ...] = ()) -> type[Any] | None:
    """The attrs class that parses the ``[name]`` table, or None if no such table exists."""
    extension = _registered(TABLES_GROUP).get(name)
    if extension is not None:
        loaded: type[Any] = extension.load()
        return loaded
    references = [reference for reference in backends if is_class_path(reference)]
    if name in _registered(BACKENDS_GROUP):
        references.append(name)  # never a class path made of a config key
    for reference in references:
        try:
            backend = backend_class(reference)
        except ConfigError:
            continue
        if backend.name == name:
            return backend.Settings
    return None
