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
from typing import TYPE_CHECKING, Any

import attrs

from metricsfacade import settings as parse
from metricsfacade.backends.base import unresolvable
from metricsfacade.backends.lines import SeriesFormat, sanitize
from metricsfacade.backends.push import LinePushBackend, warn_if_sampled
from metricsfacade.backends.transport import Packer
from metricsfacade.settings import setting

if TYPE_CHECKING:
    from datadog.dogstatsd.base import DogStatsd

logger = logging.getLogger("metricsfacade")
UDP_MAX_PACKET = 1432
UDS_MAX_PACKET = 8192


@attrs.frozen
class DatadogSettings:
    """The ``[datadog]`` table. Unset host, port and socket_path fall back to DogStatsd's
    environment variables (DD_DOGSTATSD_URL, DD_AGENT_HOST, DD_DOGSTATSD_PORT), then to
    localhost:8125; DD_ENV, DD_SERVICE and DD_VERSION become tags."""

    host: str | None = setting(None, parse.optional_host)
    port: int | None = setting(None, parse.optional_integer(1, 65535), parse.integer_text(1, 65535))
    #: a Unix datagram socket of the agent, e.g. /var/run/datadog/dsd.socket
    socket_path: str | None = setting(None, parse.optional_string)
    namespace: str = setting("", parse.prefix)
    constant_tags: dict[str, str] = setting(attrs.Factory(dict), parse.labels, parse.labels_text)  # noqa: RUF009
    #: "h" (histogram, aggregated by the agent) or "d" (distribution, aggregated globally)
    histogram_type: str = setting("h", parse.choice("h", "d"))
    #: ignored (every change is sent; histograms are sampled past max_samples_per_flush)
    sample_rate: float = setting(1.0, parse.sample_rate, parse.sample_rate_text)
    #: bytes per datagram; default 1432 on UDP, 8192 on a Unix socket
    max_packet_size: int | None = setting(
        None, parse.optional_integer(64, 65_000), parse.integer_text(64, 65_000)
    )
    flush_interval_secs: float = setting(0.5, parse.positive_float, parse.positive_float_text)


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
            # the datadog extra is there: the backend imported DogStatsd before calling this
            from datadog.dogstatsd.container import Cgroup  # noqa: PLC0415

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
    Settings = DatadogSettings
    needs = ("datadog", "datadog")

    def __init__(self, settings: DatadogSettings, common_labels: Mapping[str, str]) -> None:
        dogstatsd = self.library("datadog.dogstatsd.base")
        destination: dict[str, Any] = {  # unset ones are left to DogStatsd's DD_* variables
            key: value
            for key, value in (
                ("host", settings.host),
                ("port", settings.port),
                ("socket_path", settings.socket_path),
            )
            if value is not None
        }
        self.client: DogStatsd = dogstatsd.DogStatsd(
            **destination,
            disable_buffering=True,
            disable_aggregation=True,
            disable_telemetry=True,
            origin_detection_enabled=False,  # read below, for our own lines
        )
        tags = [
            tag.partition(":") for tag in environment_tags(self.client.constant_tags, os.environ)
        ]
        self.over_udp = not self.client.socket_path
        default_size = UDP_MAX_PACKET if self.over_udp else UDS_MAX_PACKET
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
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> DatadogBackend:
        return cls(settings, common_labels)

    def describe(self) -> str:
        """The agent DogStatsd resolved (from the table or the DD_* variables)."""
        if self.client.socket_path:
            return f"unix://{self.client.socket_path}"
        return f"udp://{self.client.host}:{self.client.port}"

    def probe(self) -> str | None:
        host, port = self.client.host, self.client.port
        if self.client.socket_path or host is None or port is None:
            return None
        return unresolvable(host, int(port))

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
