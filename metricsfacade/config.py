"""``MetricsConfig`` and its loading from a dict, a TOML file and ``METRICSFACADE_*`` variables.

Every setting is parsed by one small function that knows its type, so a wrong value or an
unknown key fails with the key's dotted name and where it came from (a file, a dict, or an
environment variable). Environment variables override whatever the source said.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import attrs

from metricsfacade.errors import ConfigError, DeclarationError
from metricsfacade.spec import DEFAULT_BUCKETS, LABEL_NAME_RE, Kind, make_spec, validate_buckets

PREFIX_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*(\.[a-zA-Z_][a-zA-Z0-9_]*)*\Z")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "METRICSFACADE_"
#: Backends metricsfacade knows; each one's library is imported only when it is configured.
KNOWN_BACKENDS = ("prometheus", "statsd", "datadog", "memory")


class _Invalid(ValueError):
    """A value failed to parse; the loader adds the key and the origin."""


Parser = Callable[[object], Any]


def _setting(default: Any, parse: Parser, env: Parser | None = None) -> Any:
    """An attrs field that knows how to parse itself from TOML/dict values and from env text."""
    return attrs.field(default=default, metadata={"parse": parse, "env": env or parse})


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"expected true or false, got {value!r}")


def _bool_env(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _Invalid(f"expected true or false, got {value!r}")


def _int(value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise _Invalid(f"expected an integer {bounds}, got {value!r}")
    return value


def _int_text(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise _Invalid(f"expected an integer, got {value!r}") from None


def _port(value: object) -> int | None:
    """A TCP port; 0 picks a free one; None (or "off" in TOML and env) serves no endpoint."""
    if value is None or value == "off":
        return None
    return _int(value, 0, 65535)


def _port_env(value: object) -> int | None:
    return None if str(value).strip() == "off" else _port(_int_text(value))


#: The longest interval or timeout accepted (11.6 days): threads cannot wait for longer.
MAX_SECONDS = 1_000_000.0


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"expected a number, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise _Invalid(f"expected a positive number up to {MAX_SECONDS:g}, got {value!r}")
    return float(value)


def _positive_float_env(value: object) -> float:
    try:
        return _positive_float(float(str(value)))
    except ValueError:
        raise _Invalid(f"expected a number, got {value!r}") from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {value!r}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _path(value: object) -> str | None:
    """A file path, or None; an empty one is refused (it would silently mean "unset")."""
    text = _optional_str(value)
    if text is not None and not text:
        raise _Invalid("expected a file path, got an empty string")
    return text


def _host(value: object) -> str:
    """A host name or address a socket can be given (a DNS label is at most 63 bytes)."""
    text = _str(value)
    try:
        encoded = text.encode("idna")
    except UnicodeError as exc:
        raise _Invalid(f"expected a host name or address, got {text!r} ({exc})") from None
    if not encoded:
        raise _Invalid("expected a host name or address, got an empty string")
    return text


def _optional_host(value: object) -> str | None:
    return None if value is None else _host(value)


def _str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list of strings, got {value!r}")
    return tuple(_str(item) for item in value)


def _comma_list(value: object) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _buckets(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list of numbers, got {value!r}")
    try:
        return validate_buckets("histogram_buckets", value)
    except DeclarationError as exc:
        raise _Invalid(str(exc).replace("metric 'histogram_buckets': ", "")) from None


def _buckets_env(value: object) -> tuple[float, ...] | None:
    try:
        return _buckets([float(part) for part in _comma_list(value)])
    except ValueError:
        raise _Invalid(f"expected comma-separated numbers, got {value!r}") from None


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a table of label names to string values, got {value!r}")
    labels: dict[str, str] = {}
    for name, label_value in value.items():
        if not isinstance(name, str) or not LABEL_NAME_RE.match(name) or name.startswith("__"):
            raise _Invalid(f"invalid label name {name!r}")
        labels[name] = _str(label_value)
    return labels


def _labels_env(value: object) -> dict[str, str]:
    pairs = {}
    for part in _comma_list(value):
        name, sep, label_value = part.partition("=")
        if not sep:
            raise _Invalid(f"expected name=value pairs separated by commas, got {value!r}")
        pairs[name.strip()] = label_value.strip()
    return _labels(pairs)


def _registry(value: object) -> str:
    text = _str(value)
    if text not in ("own", "global"):
        raise _Invalid(f"expected 'own' or 'global', got {value!r}")
    return text


def _choice(*allowed: str) -> Parser:
    def parse(value: object) -> str:
        text = _str(value)
        if text not in allowed:
            options = ", ".join(repr(option) for option in allowed)
            raise _Invalid(f"expected one of {options}, got {value!r}")
        return text

    return parse


def _optional_int(low: int, high: int) -> Parser:
    return lambda value: None if value is None else _int(value, low, high)


def _optional_int_env(low: int, high: int) -> Parser:
    return lambda value: _int(_int_text(value), low, high)


def _sample_rate(value: object) -> float:
    rate = _positive_float(value)
    if rate > 1:
        raise _Invalid(f"expected a number in (0, 1], got {value!r}")
    return rate


def _sample_rate_env(value: object) -> float:
    return _sample_rate(_positive_float_env(value))


def _prefix(value: object) -> str:
    text = _str(value)
    if text and not PREFIX_RE.match(text):
        raise _Invalid(f"expected dot-separated identifiers like 'app.prod', got {value!r}")
    return text


@attrs.frozen
class StatsdSettings:
    """The ``[statsd]`` table."""

    host: str = _setting("127.0.0.1", _host)
    port: int = _setting(8125, lambda v: _int(v, 1, 65535), lambda v: _int(_int_text(v), 1, 65535))
    #: "udp", "tcp", or "unix" (a Unix stream socket at ``socket_path``)
    protocol: str = _setting("udp", _choice("udp", "tcp", "unix"))
    socket_path: str | None = _setting(None, _optional_str)
    #: dotted prefix put before every name, e.g. "myapp.prod"
    prefix: str = _setting("", _prefix)
    #: "dogstatsd": labels as |#k:v tags; "none": label values folded into the dotted name
    tag_format: str = _setting("dogstatsd", _choice("dogstatsd", "none"))
    #: line type of histograms and timers; the Etsy daemon treats h and d as counters
    histogram_type: str = _setting("ms", _choice("ms", "h", "d"))
    #: fraction of counter increments sent, with |@rate so the agent scales them back
    sample_rate: float = _setting(1.0, _sample_rate, _sample_rate_env)
    #: bytes per datagram; default 1432 on UDP, 8192 on TCP and Unix sockets
    max_packet_size: int | None = _setting(
        None, _optional_int(64, 65_000), _optional_int_env(64, 65_000)
    )
    flush_interval_secs: float = _setting(0.5, _positive_float, _positive_float_env)


@attrs.frozen
class DatadogSettings:
    """The ``[datadog]`` table. Unset host, port and socket_path fall back to DogStatsd's
    environment variables (DD_DOGSTATSD_URL, DD_AGENT_HOST, DD_DOGSTATSD_PORT), then to
    localhost:8125; DD_ENV, DD_SERVICE and DD_VERSION become tags."""

    host: str | None = _setting(None, _optional_host)
    port: int | None = _setting(None, _optional_int(1, 65535), _optional_int_env(1, 65535))
    #: a Unix datagram socket of the agent, e.g. /var/run/datadog/dsd.socket
    socket_path: str | None = _setting(None, _optional_str)
    namespace: str = _setting("", _prefix)
    constant_tags: dict[str, str] = _setting(attrs.Factory(dict), _labels, _labels_env)  # noqa: RUF009
    #: "h" (histogram, aggregated by the agent) or "d" (distribution, aggregated globally)
    histogram_type: str = _setting("h", _choice("h", "d"))
    sample_rate: float = _setting(1.0, _sample_rate, _sample_rate_env)
    #: bytes per datagram; default 1432 on UDP, 8192 on a Unix socket
    max_packet_size: int | None = _setting(
        None, _optional_int(64, 65_000), _optional_int_env(64, 65_000)
    )
    flush_interval_secs: float = _setting(0.5, _positive_float, _positive_float_env)


@attrs.frozen
class PrometheusSettings:
    """The ``[prometheus]`` table."""

    #: "own": a private CollectorRegistry (no clash with the host's metrics or process_*);
    #: "global": prometheus-client's default REGISTRY, so /metrics also serves the host's.
    registry: str = _setting("own", _registry)


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

    methods: tuple[str, ...] = _setting(MCP_METHODS, _str_list, _comma_list)
    #: distinct rate-limited clients named in ``client``; later ones are "other"
    max_clients: int = _setting(100, lambda v: _int(v, 0), lambda v: _int(_int_text(v), 0))


def _rates(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a table of method names to requests per second, got {value!r}")
    return {_str(method): _positive_float(rate) for method, rate in value.items()}


def _rates_env(value: object) -> dict[str, float]:
    rates = {}
    for part in _comma_list(value):
        method, sep, rate = part.partition("=")
        if not sep:
            raise _Invalid(f"expected method=rate pairs separated by commas, got {value!r}")
        rates[method.strip()] = _positive_float_env(rate)
    return rates


@attrs.frozen
class ProxySettings:
    """The ``[proxy]`` table of ``metricsfacade proxy``."""

    #: the ``upstream`` label value of the proxied server
    name: str = _setting("upstream", _str)
    #: a request unanswered this long gets a JSON-RPC error and counts as a timeout
    request_timeout_secs: float = _setting(60.0, _positive_float, _positive_float_env)
    #: longer lines are dropped and answered with an error
    max_line_bytes: int = _setting(
        16 * 1024 * 1024, lambda v: _int(v, 1024), lambda v: _int(_int_text(v), 1024)
    )
    #: method -> requests per second (bursts of up to one second's worth)
    rate_limits: dict[str, float] = _setting(attrs.Factory(dict), _rates, _rates_env)  # noqa: RUF009
    #: restart the server when it exits, with backoff, guarded by the circuit breaker
    restart: bool = _setting(False, _bool, _bool_env)
    restart_backoff_secs: float = _setting(0.1, _positive_float, _positive_float_env)
    #: consecutive failures (crashes, failed restarts) that open the breaker
    breaker_failures: int = _setting(3, lambda v: _int(v, 1), lambda v: _int(_int_text(v), 1))
    #: how long the breaker stays open before a trial restart (half-open)
    breaker_reset_secs: float = _setting(5.0, _positive_float, _positive_float_env)


#: Tables: the attribute of MetricsConfig and the attrs class that parses it.
TABLES: dict[str, type[Any]] = {
    "prometheus": PrometheusSettings,
    "statsd": StatsdSettings,
    "datadog": DatadogSettings,
    "shadowcat": ShadowcatSettings,
    "proxy": ProxySettings,
}


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
        raise _Invalid(f"expected a list of tables, got {value!r}")
    metrics = []
    for index, entry in enumerate(value):
        where = f"[{index}]"
        if not isinstance(entry, Mapping):
            raise _Invalid(f"{where}: expected a table, got {entry!r}")
        unknown = sorted(set(entry) - {"name", "help", "kind", "labels", "buckets"})
        if unknown:
            raise _Invalid(f"{where}: unknown key {unknown[0]!r}")
        try:
            kind = Kind(entry.get("kind", "histogram"))
        except ValueError:
            raise _Invalid(
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
            raise _Invalid(f"{where}: {exc}") from None
        metrics.append(
            CustomMetric(spec.name, spec.help, kind.value, spec.label_names, spec.buckets)
        )
    return tuple(metrics)


def _no_env(value: object) -> Any:
    raise _Invalid("cannot be set from the environment; use the config file")


@attrs.frozen
class MetricsConfig:
    """All settings, with the brief's defaults. Build with :func:`load_config` for validation."""

    enabled: bool = _setting(True, _bool, _bool_env)
    port: int | None = _setting(9090, _port, _port_env)
    bind: str = _setting("127.0.0.1", _host)
    path: str = _setting("/metrics", _str)
    collection_interval_secs: float = _setting(10.0, _positive_float, _positive_float_env)
    histogram_buckets: tuple[float, ...] | None = _setting(None, _buckets, _buckets_env)
    cardinality_limit: int = _setting(10_000, lambda v: _int(v, 1), lambda v: _int(_int_text(v), 1))
    backends: tuple[str, ...] = _setting(("prometheus",), _str_list, _comma_list)
    common_labels: dict[str, str] = _setting(attrs.Factory(dict), _labels, _labels_env)  # noqa: RUF009
    strict: bool = _setting(False, _bool, _bool_env)
    handle_sigterm: bool = _setting(True, _bool, _bool_env)
    readiness_timeout_secs: float = _setting(2.0, _positive_float, _positive_float_env)
    #: histogram observations kept per series between two push flushes; past it, a uniform
    #: sample of this size is sent with |@rate so the agent still counts every observation
    max_samples_per_flush: int = _setting(
        1000, lambda v: _int(v, 1, 1_000_000), lambda v: _int(_int_text(v), 1, 1_000_000)
    )
    tls_cert: str | None = _setting(None, _path)
    tls_key: str | None = _setting(None, _path)
    auth_username: str | None = _setting(None, _optional_str)
    auth_password: str | None = _setting(None, _optional_str)
    prometheus: PrometheusSettings = attrs.field(factory=PrometheusSettings)
    statsd: StatsdSettings = attrs.field(factory=StatsdSettings)
    datadog: DatadogSettings = attrs.field(factory=DatadogSettings)
    shadowcat: ShadowcatSettings = attrs.field(factory=ShadowcatSettings)
    proxy: ProxySettings = attrs.field(factory=ProxySettings)
    custom_metrics: tuple[CustomMetric, ...] = _setting((), _custom_metrics, _no_env)

    @property
    def default_buckets(self) -> tuple[float, ...]:
        return self.histogram_buckets or DEFAULT_BUCKETS


ConfigSource = Union[MetricsConfig, Mapping[str, Any], str, "os.PathLike[str]", None]


def load_config(
    source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
) -> MetricsConfig:
    """Build a validated config from a dict, a MetricsConfig, a TOML path or nothing (defaults).

    ``METRICSFACADE_*`` variables from ``environ`` (default: ``os.environ``) override the
    source; pass ``environ={}`` to ignore the environment.
    """
    environ = os.environ if environ is None else environ
    if isinstance(source, MetricsConfig):
        values, origin, prefix = attrs.asdict(source, recurse=True), "MetricsConfig", ""
    elif isinstance(source, Mapping):
        values, origin, prefix = dict(source), "config dict", ""
    elif source is None:
        values, origin, prefix = {}, "defaults", ""
    else:
        values, origin, prefix = _read_toml(Path(source))
    built = _build(MetricsConfig, values, origin, prefix)
    config = _apply_env(built, environ)
    try:
        _check_consistency(config)
    except ConfigError as exc:  # name where the settings came from, as every error does
        if config != built:
            origin = f"{origin} with the METRICSFACADE_* environment variables"
        raise ConfigError(f"{origin}: {prefix}{exc}") from None
    return config


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


def _build(cls: type[Any], values: Mapping[str, Any], origin: str, prefix: str) -> Any:
    fields = {field.name: field for field in attrs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (known keys: {known})")
        table = TABLES.get(key)
        if table is not None:
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{origin}: {prefix}{key}: expected a table, got {raw!r}")
            kwargs[key] = _build(table, raw, origin, f"{prefix}{key}.")
            continue
        try:
            kwargs[key] = field.metadata["parse"](raw)
        except _Invalid as exc:
            raise ConfigError(f"{origin}: {prefix}{key}: {exc}") from None
    return cls(**kwargs)


def _env_overrides(cls: type[Any], environ: Mapping[str, str], stem: str) -> dict[str, Any]:
    """Settings named METRICSFACADE_<KEY>, and METRICSFACADE_<TABLE>__<KEY> for tables."""
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = f"{stem}{field.name.upper()}"
        table = TABLES.get(field.name) if cls is MetricsConfig else None
        if table is not None:
            nested = _env_overrides(table, environ, f"{name}__")
            if nested:
                overrides[field.name] = nested
            continue
        if name in environ:
            try:
                overrides[field.name] = field.metadata["env"](environ[name])
            except _Invalid as exc:
                raise ConfigError(f"environment variable {name}: {exc}") from None
    return overrides


def _apply_env(config: MetricsConfig, environ: Mapping[str, str]) -> MetricsConfig:
    unknown = sorted(
        name for name in environ if name.startswith(ENV_PREFIX) and not _env_name_known(name)
    )
    if unknown:
        raise ConfigError(f"unknown environment variable {unknown[0]} (see the README's table)")
    overrides = _env_overrides(MetricsConfig, environ, ENV_PREFIX)
    for table_name, table_values in list(overrides.items()):
        if table_name in TABLES:
            overrides[table_name] = attrs.evolve(getattr(config, table_name), **table_values)
    return attrs.evolve(config, **overrides) if overrides else config


def _env_name_known(name: str) -> bool:
    names = set()
    for field in attrs.fields(MetricsConfig):
        table = TABLES.get(field.name)
        if table is None:
            names.add(field.name.upper())
        else:
            names.update(f"{field.name.upper()}__{sub.name.upper()}" for sub in attrs.fields(table))
    return name[len(ENV_PREFIX) :] in names


def _check_consistency(config: MetricsConfig) -> None:
    """Rules that involve more than one setting."""
    for name in config.backends:
        if name not in KNOWN_BACKENDS:
            raise ConfigError(
                f"backends: unknown backend {name!r} (available: {', '.join(KNOWN_BACKENDS)})"
            )
    if len(set(config.backends)) != len(config.backends):
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
    if config.statsd.protocol == "unix" and config.statsd.socket_path is None:
        raise ConfigError("statsd.socket_path: required when statsd.protocol is 'unix'")
