"""``metricsfacade check``: validate a config, then prove each backend can take a metric.

Each backend gets the counter ``metricsfacade_check_total`` and a verdict: Prometheus by
fetching it back from the running endpoint (or the exposition, with no endpoint); StatsD and
Datadog by delivering it without a counted drop and, on UDP where a send alone proves
nothing, by a connected probe that hears a refusal when no agent listens.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from typing import TextIO

import attrs

from metricsfacade.backends.base import Backend
from metricsfacade.config import ConfigSource, MetricsConfig, load_config
from metricsfacade.errors import ConfigError, MetricsError
from metricsfacade.facade import Metrics

CHECK_METRIC = "metricsfacade_check_total"
EXIT_OK, EXIT_BACKEND_FAILED, EXIT_CONFIG_ERROR = 0, 1, 2


@attrs.frozen
class Verdict:
    backend: str
    ok: bool
    detail: str


def run_check(source: ConfigSource, out: TextIO) -> int:
    """Print the resolved setup and a verdict per backend; return the exit status."""
    try:
        config = load_config(source)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=out)
        return EXIT_CONFIG_ERROR
    _describe(config, out)
    if not config.enabled:
        print("metrics are disabled (enabled = false): nothing to check", file=out)
        return EXIT_OK
    with_memory = ("memory",) if "memory" not in config.backends else ()
    try:
        facade = Metrics(
            attrs.evolve(config, backends=(*config.backends, *with_memory)), environ={}
        )
    except MetricsError as exc:
        print(f"FAILED to start: {exc}", file=out)
        return EXIT_BACKEND_FAILED
    try:
        verdicts = _check_backends(facade, config)
    finally:
        facade.close()
    for verdict in verdicts:
        print(
            f"  {verdict.backend:<10} {'ok    ' if verdict.ok else 'FAILED'} {verdict.detail}",
            file=out,
        )
    return EXIT_OK if all(verdict.ok for verdict in verdicts) else EXIT_BACKEND_FAILED


def _describe(config: MetricsConfig, out: TextIO) -> None:
    print(f"backends: {', '.join(config.backends) or '(none)'}", file=out)
    if config.port is None:
        print("endpoint: none (port is off)", file=out)
    else:
        scheme = "https" if config.tls_cert else "http"
        print(
            f"endpoint: {scheme}://{config.bind}:{config.port}{config.path} (also /health, /ready)",
            file=out,
        )


def _check_backends(facade: Metrics, config: MetricsConfig) -> list[Verdict]:
    facade._internal_counter(CHECK_METRIC, "Sent by `metricsfacade check`").inc()
    facade.flush()
    checks: dict[str, Callable[[Metrics, Backend], Verdict]] = {
        "prometheus": _check_prometheus,
        "statsd": _check_push,
        "datadog": _check_push,
    }
    verdicts = []
    for name in config.backends:
        check = checks.get(name)
        backend = facade.backend(name)
        if check is None:
            verdicts.append(Verdict(name, True, "in-process, nothing to reach"))
            continue
        try:
            verdicts.append(check(facade, backend))
        except Exception as exc:  # a check must report, never crash the command
            verdicts.append(Verdict(name, False, f"{type(exc).__name__}: {exc}"))
    return verdicts


def _check_prometheus(facade: Metrics, backend: Backend) -> Verdict:
    if facade.endpoint_url is None:
        text = backend.render(None)[0].decode()  # type: ignore[attr-defined]
        where = "in the exposition (no endpoint: port is off)"
    else:
        url = f"{facade.endpoint_url}{facade.config.path if facade.config else '/metrics'}"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        where = f"at {url}"
    if f"{CHECK_METRIC} 1.0" in text:
        return Verdict("prometheus", True, f"{CHECK_METRIC} served {where}")
    return Verdict("prometheus", False, f"{CHECK_METRIC} missing {where}")


def _check_push(facade: Metrics, backend: Backend) -> Verdict:
    target, udp_address = _target(backend)
    probe_error = _probe_udp(udp_address) if udp_address else None
    time.sleep(0.05)
    facade.flush()
    dropped = _dropped_lines(facade, backend.name)
    if probe_error:
        return Verdict(backend.name, False, f"nothing listens on {target}: {probe_error}")
    if dropped:
        reasons = ", ".join(f"{reason}={count:g}" for reason, count in dropped.items())
        return Verdict(backend.name, False, f"could not deliver to {target} ({reasons})")
    note = " (UDP: no refusal heard)" if udp_address else ""
    return Verdict(backend.name, True, f"{CHECK_METRIC} sent to {target}{note}")


def _target(backend: Backend) -> tuple[str, tuple[str, int] | None]:
    """A readable destination, and the UDP address to probe when the transport is UDP."""
    client = getattr(backend, "client", None)  # the Datadog backend's DogStatsd
    if client is not None:
        if client.socket_path:
            return f"unix://{client.socket_path}", None
        return f"udp://{client.host}:{client.port}", (client.host, int(client.port))
    settings = backend.settings  # type: ignore[attr-defined]
    if settings.protocol == "unix":
        return f"unix://{settings.socket_path}", None
    target = f"{settings.protocol}://{settings.host}:{settings.port}"
    return target, ((settings.host, settings.port) if settings.protocol == "udp" else None)


def _probe_udp(address: tuple[str, int]) -> str | None:
    """A connected UDP socket learns of an ICMP 'port unreachable' on its next send."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    line = f"{CHECK_METRIC.replace('_', '.', 1)}:0|c".encode()
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(address)
            probe.send(line)
            time.sleep(0.05)
            probe.send(line)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _dropped_lines(facade: Metrics, backend: str) -> dict[str, float]:
    memory = facade.backend("memory")
    records = memory.records("metricsfacade_backend_dropped_total")  # type: ignore[attr-defined]
    return {
        record.labels["reason"]: record.value
        for record in records
        if record.labels["backend"] == backend and record.value
    }
