"""``MetricsConfig`` and its loading from a dict, a TOML file and ``METRICSFACADE_*`` variables.

Every setting is parsed by one small function that knows its type (``metricsfacade.settings``),
so a wrong value or an unknown key fails with the key's dotted name and where it came from (a
file, a dict, or an environment variable). Environment variables override the source.

The core settings live here. Tables (``[statsd]``, ``[proxy]``...) belong to backends and
extensions, found through ``metricsfacade.plugins``: the core knows none of them.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import attrs

from metricsfacade import plugins
from metricsfacade import settings as parse
from metricsfacade.errors import ConfigError, DeclarationError
from metricsfacade.settings import InvalidSetting, setting
from metricsfacade.spec import DEFAULT_BUCKETS, Kind, make_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "METRICSFACADE_"


@attrs.frozen
class CustomMetric:
    """One ``[[custom_metrics]]`` entry: a metric declared by configuration."""

    name: str
    help: str
    kind: str  # "counter", "gauge", "histogram" or "timer"
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


def _custom_metrics(value: object) -> tuple[CustomMetric, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidSetting(f"expected a list of tables, got {value!r}")
    metrics = []
    for index, entry in enumerate(value):
        where = f"[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidSetting(f"{where}: expected a table, got {entry!r}")
        unknown = sorted(set(entry) - {"name", "help", "kind", "labels", "buckets"})
        if unknown:
            raise InvalidSetting(f"{where}: unknown key {unknown[0]!r}")
        try:
            kind = Kind(entry.get("kind", "histogram"))
        except ValueError:
            raise InvalidSetting(
                f"{where}.kind: expected counter, gauge, histogram or timer, "
                f"got {entry.get('kind')!r}"
            ) from None
        name = entry.get("name")
        help_text = entry.get("help", f"Custom metric: {name}")
        try:
            spec = make_spec(
                name,  # type: ignore[arg-type]
                help_text,
                kind,
                entry.get("labels"),
                entry.get("buckets"),
            )
        except DeclarationError as exc:
            raise InvalidSetting(f"{where}: {exc}") from None
        metrics.append(
            CustomMetric(spec.name, spec.help, kind.value, spec.label_names, spec.buckets)
        )
    return tuple(metrics)


@attrs.frozen
class MetricsConfig:
    """All settings, with their defaults. Build with :func:`load_config` for validation."""

    enabled: bool = setting(True, parse.boolean, parse.boolean_text)
    port: int | None = setting(9090, parse.port, parse.port_text)
    bind: str = setting("127.0.0.1", parse.host)
    path: str = setting("/metrics", parse.string)
    collection_interval_secs: float = setting(10.0, parse.positive_float, parse.positive_float_text)
    histogram_buckets: tuple[float, ...] | None = setting(None, parse.buckets, parse.buckets_text)
    cardinality_limit: int = setting(10_000, parse.integer(1), parse.integer_text(1))
    #: backend names (entry points) or class paths such as "mypackage.sinks:MyBackend"
    backends: tuple[str, ...] = setting(("prometheus",), parse.string_list, parse.comma_list)
    common_labels: dict[str, str] = setting(  # noqa: RUF009
        attrs.Factory(dict), parse.common_labels, parse.common_labels_text
    )
    strict: bool = setting(False, parse.boolean, parse.boolean_text)
    handle_sigterm: bool = setting(True, parse.boolean, parse.boolean_text)
    readiness_timeout_secs: float = setting(2.0, parse.positive_float, parse.positive_float_text)
    #: histogram observations kept per series between two push flushes; past it, a uniform
    #: sample of this size is sent with |@rate so the agent still counts every observation
    max_samples_per_flush: int = setting(
        1000, parse.integer(1, 1_000_000), parse.integer_text(1, 1_000_000)
    )
    tls_cert: str | None = setting(None, parse.path)
    tls_key: str | None = setting(None, parse.path)
    auth_username: str | None = setting(None, parse.optional_string)
    auth_password: str | None = setting(None, parse.optional_string)
    custom_metrics: tuple[CustomMetric, ...] = setting((), _custom_metrics, parse.file_only)
    #: the parsed tables, by name (``[statsd]`` -> "statsd"); see :meth:`table`
    tables: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def default_buckets(self) -> tuple[float, ...]:
        return self.histogram_buckets or DEFAULT_BUCKETS

    def table(self, name: str) -> Any:
        """The settings of the ``[name]`` table: as given, or its defaults."""
        given = self.tables.get(name)
        if given is not None:
            return given
        settings_type = plugins.table_class(name, self.backends)
        if settings_type is None:
            raise ConfigError(f"no config table [{name}] is registered")
        return settings_type()


ConfigSource = Union[MetricsConfig, Mapping[str, Any], str, "os.PathLike[str]", None]
_CORE = tuple(field.name for field in attrs.fields(MetricsConfig) if field.name != "tables")


def load_config(
    source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
) -> MetricsConfig:
    """Build a validated config from a dict, a MetricsConfig, a TOML path or nothing (defaults).

    ``METRICSFACADE_*`` variables from ``environ`` (default: ``os.environ``) override the
    source; pass ``environ={}`` to ignore the environment.
    """
    environ = os.environ if environ is None else environ
    if isinstance(source, MetricsConfig):
        values, origin, prefix = _as_values(source), "MetricsConfig", ""
    elif isinstance(source, Mapping):
        values, origin, prefix = dict(source), "config dict", ""
    elif source is None:
        values, origin, prefix = {}, "defaults", ""
    else:
        values, origin, prefix = _read_toml(Path(source))
    built = _build_config(values, origin, prefix)
    if isinstance(source, MetricsConfig):  # its tables are parsed settings already
        built = attrs.evolve(built, tables=source.tables)
    config = _apply_env(built, environ)
    try:
        _check_consistency(config)
    except ConfigError as exc:  # name where the settings came from, as every error does
        if config != built:
            origin = f"{origin} with the METRICSFACADE_* environment variables"
        raise ConfigError(f"{origin}: {prefix}{exc}") from None
    return config


def _as_values(config: MetricsConfig) -> dict[str, Any]:
    values = {name: getattr(config, name) for name in _CORE}
    values["custom_metrics"] = [attrs.asdict(custom) for custom in config.custom_metrics]
    return values


def _read_toml(path: Path) -> tuple[dict[str, Any], str, str]:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the reader forever
            raise ConfigError(f"{path}: cannot read config: not a regular file")
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: not UTF-8 text ({exc})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    table = document.get("metrics")
    if isinstance(table, dict):
        return table, str(path), "metrics."
    return document, str(path), ""


def _build_config(values: Mapping[str, Any], origin: str, prefix: str) -> MetricsConfig:
    """The core settings first: ``backends`` may name the classes of further tables."""
    core: MetricsConfig = _build(
        MetricsConfig, {k: v for k, v in values.items() if k in _CORE}, origin, prefix
    )
    tables: dict[str, Any] = {}
    for key, raw in values.items():
        if key in _CORE:
            continue
        settings_type = plugins.table_class(key, core.backends)
        if settings_type is None:
            known = ", ".join(sorted({*_CORE, *plugins.table_names(core.backends)}))
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (known keys: {known})")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{origin}: {prefix}{key}: expected a table, got {raw!r}")
        tables[key] = _build(settings_type, raw, origin, f"{prefix}{key}.")
    return attrs.evolve(core, tables=tables)


def _build(cls: type[Any], values: Mapping[str, Any], origin: str, prefix: str) -> Any:
    fields = {field.name: field for field in attrs.fields(cls) if "parse" in field.metadata}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (known keys: {known})")
        try:
            kwargs[key] = field.metadata["parse"](raw)
        except InvalidSetting as exc:
            raise ConfigError(f"{origin}: {prefix}{key}: {exc}") from None
    try:
        return cls(**kwargs)
    except InvalidSetting as exc:  # a rule across the table's settings
        raise ConfigError(f"{origin}: {prefix}{exc}") from None


def _apply_env(config: MetricsConfig, environ: Mapping[str, str]) -> MetricsConfig:
    """Settings named METRICSFACADE_<KEY>, and METRICSFACADE_<TABLE>__<KEY> for tables."""
    core: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        table, sep, key = variable[len(ENV_PREFIX) :].lower().partition("__")
        if not sep:
            table, key = "", table
        settings_type = plugins.table_class(table, config.backends) if sep else MetricsConfig
        field = _env_field(settings_type, key) if settings_type is not None else None
        if field is None:
            raise ConfigError(
                f"unknown environment variable {variable} (see docs/configuration.md)"
            )
        try:
            value = field.metadata["env"](environ[variable])
        except InvalidSetting as exc:
            raise ConfigError(f"environment variable {variable}: {exc}") from None
        (tables.setdefault(table, {}) if sep else core)[key] = value
    if not core and not tables:
        return config
    merged = dict(config.tables)
    for name, overrides in tables.items():
        try:
            merged[name] = attrs.evolve(config.table(name), **overrides)
        except InvalidSetting as exc:
            raise ConfigError(f"the METRICSFACADE_{name.upper()}__* variables: {exc}") from None
    return attrs.evolve(config, **core, tables=merged)


def _env_field(settings_type: type[Any], key: str) -> Any:
    for field in attrs.fields(settings_type):
        if field.name == key and "env" in field.metadata:
            return field
    return None


def _check_consistency(config: MetricsConfig) -> None:
    """Rules that involve more than one setting."""
    names = [plugins.backend_class(reference).name for reference in config.backends]
    if len(set(names)) != len(names):
        raise ConfigError(f"backends: a backend is listed twice in {list(config.backends)}")
    if not config.path.startswith("/") or config.path in ("/health", "/ready"):
        raise ConfigError(
            f"path: expected a URL path starting with '/' other than /health and /ready, "
            f"got {config.path!r}"
        )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key: set both to serve HTTPS, or neither")
    if (config.auth_username is None) != (config.auth_password is None):
        raise ConfigError("auth_username and auth_password: set both for basic auth, or neither")
