"""Datadog backend: DogStatsD lines to the agent, through ``datadog``'s DogStatsd socket.

DogStatsd resolves where the agent is (arguments, else DD_DOGSTATSD_URL, DD_AGENT_HOST,
DD_DOGSTATSD_PORT), turns DATADOG_TAGS, DD_ENTITY_ID, DD_ENV, DD_SERVICE and DD_VERSION into
tags and owns the UDP or Unix socket; its own buffering, aggregation and telemetry stay off,
since the facade's store already aggregates. Like DogStatsd, lines carry origin detection
fields: ``|c:<container id>`` when one can be read (unless DD_ORIGIN_DETECTION_ENABLED is
false) and ``|e:<DD_EXTERNAL_ENV>``. DD_TAGS adds tags too. Histograms and timers (in
milliseconds) go out as ``h`` or ``d``, several values per line (DogStatsD protocol 1.1).
Gauges are absolute values.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from datadog.dogstatsd.base import DogStatsd
from datadog.dogstatsd.container import Cgroup

from metricsfacade.backends.lines import SeriesFormat, sanitize
from metricsfacade.backends.push import LinePushBackend, warn_if_sampled
from metricsfacade.backends.transport import Packer
from metricsfacade.config import DatadogSettings, MetricsConfig

logger = logging.getLogger("metricsfacade")
UDP_MAX_PACKET = 1432
UDS_MAX_PACKET = 8192


class DogStatsdTransport:
    stream = False

    def __init__(self, client: DogStatsd) -> None:
        self.client = client

    def send(self, payload: bytes) -> None:
        sock = self.client.get_socket()
        if sock.type == socket.SOCK_STREAM:  # DogStatsD framing on unixstream:// sockets
            payload = struct.pack("<I", len(payload)) + payload
        sock.send(payload)

    def reset(self) -> None:
        self.client.close_socket()


def origin_trailer(environ: Mapping[str, str]) -> str:
    """The ``|c:`` and ``|e:`` fields DogStatsd itself appends after the tags."""
    trailer = ""
    detection = environ.get("DD_ORIGIN_DETECTION_ENABLED", "").strip().lower()
    if detection not in ("no", "false", "0", "n", "off"):
        try:
            container_id = Cgroup().container_id
        except Exception:  # not in a container, or cgroups unreadable: no field, as DogStatsd
            container_id = None
        if container_id:
            trailer += f"|c:{container_id}"
    external = environ.get("DD_EXTERNAL_ENV", "")
    if external:
        trailer += f"|e:{sanitize(external)}"
    return trailer


def environment_tags(client_tags: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """DogStatsd's constant tags (DATADOG_TAGS, DD_* unified tags) plus DD_TAGS."""
    tags = list(client_tags)
    for tag in environ.get("DD_TAGS", "").replace(",", " ").split():
        if tag not in tags:
            tags.append(tag)
    return tags


class DatadogBackend(LinePushBackend):
    name = "datadog"

    def __init__(self, settings: DatadogSettings, common_labels: dict[str, str]) -> None:
        destination: dict[str, Any] = {  # unset ones are left to DogStatsd's DD_* variables
            key: value
            for key, value in (
                ("host", settings.host),
                ("port", settings.port),
                ("socket_path", settings.socket_path),
            )
            if value is not None
        }
        self.client = DogStatsd(
            **destination,
            disable_buffering=True,
            disable_aggregation=True,
            disable_telemetry=True,
            origin_detection_enabled=False,  # read below, for our own lines
        )
        tags = [
            tag.partition(":") for tag in environment_tags(self.client.constant_tags, os.environ)
        ]
        default_size = UDS_MAX_PACKET if self.client.socket_path else UDP_MAX_PACKET
        warn_if_sampled(self.name, settings.sample_rate)
        super().__init__(
            Packer(
                DogStatsdTransport(self.client),
                settings.max_packet_size or default_size,
                self.name,
            ),
            prefix=settings.namespace,
            tags=(
                *common_labels.items(),
                *settings.constant_tags.items(),
                *((key, value) for key, _, value in tags),
            ),
            tag_format="dogstatsd",
            histogram_type=settings.histogram_type,
            flush_interval=settings.flush_interval_secs,
            trailer=origin_trailer(os.environ),
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> DatadogBackend:
        return cls(config.datadog, dict(config.common_labels))

    def histogram_lines(
        self, series: SeriesFormat, metric_type: str, values: list[str], rate: str
    ) -> Iterable[bytes]:
        """``name:v1:v2:v3|h|@rate|#tags``, as many values per line as fit a packet."""
        room = self._packer.max_line - len(series.line("", metric_type, rate))
        lines = []
        chunk: list[str] = []
        size = -1  # no ":" before the first value
        for value in values:
            if chunk and size + 1 + len(value) > room:
                lines.append(series.line(":".join(chunk), metric_type, rate))
                chunk, size = [], -1
            chunk.append(value)
            size += 1 + len(value)
        if chunk:
            lines.append(series.line(":".join(chunk), metric_type, rate))
        return lines

    def close(self) -> None:
        super().close()
        self.client.close_socket()
