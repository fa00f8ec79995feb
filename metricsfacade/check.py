"""``metricsfacade check``: validate a config, then prove each backend can take a metric.

Each backend gets the counter ``metricsfacade_check_total`` and a verdict. Prometheus: the
value is read back from the running endpoint (or the exposition, with no endpoint), parsed
as an exposition, whatever the labels (``common_labels``). StatsD and Datadog: the counter's
own line is delivered without a counted drop (``metricsfacade_backend_dropped_total``, read
through a memory backend the check adds).

On UDP a send alone proves nothing, and the check sends the agent nothing but that line:
no separate probe, no placeholder metric. The backend's socket is connected, so the ICMP
"port unreachable" answering a datagram sent to an absent agent makes the next send on that
socket fail. So on UDP the counter is incremented and flushed twice, ``PROBE_WAIT_SECS``
apart: an agent that listens receives the check line twice (``metricsfacade.check:1|c``, the
counter at 2); an absent one refuses the first, the second send hears it, and the backend
counts both as ``send_failed``. (An empty datagram would probe as well, but it is still a
datagram the agent did not ask for; the check line is one it counts anyway.) Each push
backend runs in a facade of its own, so what one backend counts as undeliverable is never
sent to another agent as a line of its own.

Every configuration error names its origin: the file given with ``--config`` (with the
environment variables when they caused it), and never ends in a traceback.
"""

from __future__ import annotations

import base64
import math
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import TextIO

import attrs

from metricsfacade import plugins
from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.backends.memory import MemoryBackend
from metricsfacade.config import ConfigSource, MetricsConfig, load_config
from metricsfacade.errors import ConfigError, DeclarationError, MetricsError
from metricsfacade.facade import Metrics
from metricsfacade.handles import Counter
from metricsfacade.spec import Kind, make_spec

CHECK_METRIC = "metricsfacade_check_total"
#: in metricsfacade's reserved prefix, so it never clashes with an application's metrics
CHECK_SPEC = make_spec(CHECK_METRIC, "Sent by `metricsfacade check`", Kind.COUNTER, internal=True)
EXIT_OK, EXIT_BACKEND_FAILED, EXIT_CONFIG_ERROR = 0, 1, 2
#: how long an absent UDP agent's ICMP refusal gets to come back before the second send
PROBE_WAIT_SECS = 0.1
FETCH_TIMEOUT_SECS = 5.0


@attrs.frozen
class Verdict:
    backend: str
    ok: bool
    detail: str


def run_check(
    source: ConfigSource, out: TextIO, *, environ: Mapping[str, str] | None = None
) -> int:
    """Print the resolved setup and a verdict per backend; return the exit status."""
    environ = os.environ if environ is None else environ
    try:
        config = load_config(source, environ=environ)
    except Exception as exc:  # a config error, or a file tomllib cannot read: one line
        print(f"configuration error: {_config_error(source, exc)}", file=out)
        return EXIT_CONFIG_ERROR
    backends = f"backends: {', '.join(config.backends) or '(none)'}"
    if not config.enabled:
        print(f"{backends}\nmetrics are disabled (enabled = false): nothing to check", file=out)
        return EXIT_OK
    facades: dict[str, Metrics] = {}
    try:
        for name, facade_config in _facade_configs(config).items():
            facades[name] = Metrics(facade_config, environ={})
    except (ConfigError, DeclarationError) as exc:  # e.g. custom_metrics vs common_labels
        _close_all(facades)
        print(f"configuration error: {_config_error(source, exc, _declares)}", file=out)
        return EXIT_CONFIG_ERROR
    except Exception as exc:  # a busy port, a missing extra, an unreadable certificate
        _close_all(facades)
        detail = str(exc) if isinstance(exc, MetricsError) else f"{type(exc).__name__}: {exc}"
        print(f"{backends}\nFAILED to start: {detail}", file=out)
        return EXIT_BACKEND_FAILED
    print(backends, file=out)
    try:
        _describe_endpoint(config, facades[""], out)
        verdicts = _check_backends(facades, config)
    finally:
        _close_all(facades)
    for verdict in verdicts:
        print(
            f"  {verdict.backend:<10} {'ok    ' if verdict.ok else 'FAILED'} {verdict.detail}",
            file=out,
        )
    return EXIT_OK if all(verdict.ok for verdict in verdicts) else EXIT_BACKEND_FAILED


def _config_error(
    source: ConfigSource, exc: Exception, recheck: Callable[[MetricsConfig], object] = id
) -> str:
    """The message, naming the config file when there is one and the message does not.
    ``recheck`` repeats, on the file's settings alone, what failed after loading."""
    message = str(exc) if isinstance(exc, MetricsError) else _unreadable(exc)
    if not isinstance(source, (str, os.PathLike)):
        return message
    path = os.fspath(source)
    if message.startswith(f"{path}:"):
        return message
    if "environment variable" in message:
        return f"{message} (applied over the config file {path})"
    try:  # a rule spanning several settings: did the file alone break it?
        recheck(load_config(source, environ={}))
    except Exception:
        return f"{path}: {message}"
    return f"{path} with the METRICSFACADE_* environment variables: {message}"


def _declares(config: MetricsConfig) -> None:
    """Declare the config's metrics as a start does, starting no backend and no endpoint."""
    Metrics(attrs.evolve(config, enabled=False), environ={}).close()


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read config: not UTF-8 text ({exc})"
    return f"cannot read config: {type(exc).__name__}: {exc}"


def _facade_configs(config: MetricsConfig) -> dict[str, MetricsConfig]:
    """The facades to start: ``""`` with the endpoint and every backend but the push ones,
    plus a memory backend; one per push backend, with a memory backend and no endpoint."""
    classes = {reference: plugins.backend_class(reference) for reference in config.backends}
    pushing = [ref for ref, cls in classes.items() if issubclass(cls, PushBackend)]
    others = tuple(ref for ref in config.backends if ref not in pushing)
    has_memory = any(issubclass(classes[ref], MemoryBackend) for ref in others)
    configs = {"": attrs.evolve(config, backends=(*others, *(() if has_memory else ("memory",))))}
    for reference in pushing:
        configs[classes[reference].name] = attrs.evolve(
            config, backends=(reference, "memory"), port=None
        )
    return configs


def _close_all(facades: Mapping[str, Metrics]) -> None:
    for facade in facades.values():
        facade.close()


def _describe_endpoint(config: MetricsConfig, facade: Metrics, out: TextIO) -> None:
    url = facade.endpoint_url
    if url is None:
        print("endpoint: none (port is off)", file=out)
    else:  # the real port, also when port = 0 had the system pick one
        print(f"endpoint: {url}{config.path} (also /health, /ready)", file=out)


def _check_backends(facades: Mapping[str, Metrics], config: MetricsConfig) -> list[Verdict]:
    main = facades[""]
    _check_counter(main).inc()
    verdicts = []
    for reference in config.backends:
        name = plugins.backend_class(reference).name
        facade = facades.get(name, main)
        backend = facade.backend(name)
        try:
            if isinstance(backend, PushBackend):
                verdicts.append(_check_push(facade, backend))
            elif backend.pull:
                verdicts.append(_check_pull(facade, backend))
            else:
                verdicts.append(Verdict(name, True, f"{backend.describe()}, nothing to reach"))
        except Exception as exc:  # a check must report, never crash the command
            verdicts.append(Verdict(name, False, f"{type(exc).__name__}: {exc}"))
    return verdicts


def _check_counter(facade: Metrics) -> Counter:
    handle = facade.declare(CHECK_SPEC)
    assert isinstance(handle, Counter)
    return handle


def _check_pull(facade: Metrics, backend: Backend) -> Verdict:
    name = backend.name
    if facade.endpoint_url is None:
        text = backend.render(None)[0].decode()
        where = "in the exposition (no endpoint: port is off)"
    else:
        url = f"{facade.endpoint_url}{facade.config.path if facade.config else '/metrics'}"
        text = _fetch(url, facade.config)
        where = f"at {url}"
    value = _exposed_value(text, CHECK_METRIC)
    if value == 1:
        return Verdict(name, True, f"{CHECK_METRIC} served {where}")
    if value is None:
        return Verdict(name, False, f"{CHECK_METRIC} missing {where}")
    return Verdict(name, False, f"{CHECK_METRIC} is {value:g} {where}, not 1")


def _fetch(url: str, config: MetricsConfig | None) -> str:
    """GET our own endpoint, with its basic auth, trusting its own certificate."""
    request = urllib.request.Request(url)
    context = None
    if config is not None and config.auth_username is not None:
        credentials = f"{config.auth_username}:{config.auth_password}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(credentials).decode()}")
    if config is not None and config.tls_cert is not None:
        context = ssl.create_default_context(cafile=config.tls_cert)
        context.check_hostname = False  # the endpoint's own certificate, whatever it names
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf or self-signed cert
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECS, context=context) as answer:
        return str(answer.read().decode())


def _exposed_value(text: str, sample_name: str) -> float | None:
    """The sum of a metric's samples over every label set, or None when it has none."""
    from prometheus_client.parser import (  # noqa: PLC0415 - the prometheus extra, if any
        text_string_to_metric_families,
    )

    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    ]
    return math.fsum(values) if values else None


def _check_push(facade: Metrics, backend: PushBackend) -> Verdict:
    target = backend.describe()
    problem = backend.probe()
    if problem:
        return Verdict(backend.name, False, f"cannot reach {target}: {problem}")
    counter = _check_counter(facade)
    counter.inc()
    facade.flush()
    if backend.over_udp:  # the second send hears the refusal of the first
        time.sleep(PROBE_WAIT_SECS)
        counter.inc()
        facade.flush()
    dropped = _dropped_lines(facade, backend.name)
    reasons = ", ".join(f"{reason}={count:g}" for reason, count in dropped.items())
    if dropped and backend.over_udp:
        return Verdict(backend.name, False, f"nothing listens on {target} ({reasons})")
    if dropped:
        return Verdict(backend.name, False, f"could not deliver to {target} ({reasons})")
    note = " (UDP: sent twice, no refusal heard)" if backend.over_udp else ""
    return Verdict(backend.name, True, f"{CHECK_METRIC} sent to {target}{note}")


def _dropped_lines(facade: Metrics, backend: str) -> dict[str, float]:
    memory = facade.backend("memory")
    assert isinstance(memory, MemoryBackend)
    return {
        record.labels["reason"]: record.value
        for record in memory.records("metricsfacade_backend_dropped_total")
        if record.labels["backend"] == backend and record.value
    }
