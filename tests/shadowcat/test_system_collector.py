"""SystemCollector: real process measurements, collected at scrape time for Prometheus and on
a thread of its own for push backends, counting the asyncio tasks of its loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import (
    eventually,
    families,
    receive_datagrams,
    require_module,
    samples,
    scrape,
    strict_statsd,
)

import metricsfacade as mf
from metricsfacade.shadowcat import SystemCollector

require_module("prometheus_client")
psutil = require_module("psutil")
from prometheus_client import REGISTRY, generate_latest  # noqa: E402

THREAD_NAME = "metricsfacade-system-collector"
PROMETHEUS = {"port": None, "backends": ["prometheus"]}


@pytest.fixture
def facade(make_facade: Callable[..., mf.Metrics]) -> mf.Metrics:
    """This file's facades expose what they collect with the Prometheus backend."""
    return make_facade(backends=["prometheus"])


def values(metrics: mf.Metrics) -> dict[str, float]:
    """Every unlabeled sample of the exposition, by name (the render must parse)."""
    return {name: value for (name, labels), value in samples(scrape(metrics)).items() if not labels}


def collector_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == THREAD_NAME}


# -- pull: values at scrape time ----------------------------------------------------------------


def test_values_are_collected_at_scrape_time(make_facade) -> None:
    metrics = make_facade(backends=["memory", "prometheus"])
    try:
        SystemCollector(metrics)
        memory = metrics.backend("memory")
        before = memory.value("shadowcat_memory_usage_bytes")  # type: ignore[attr-defined]
        assert before == 0  # nothing collected until a scrape
        first = values(metrics)
        rss = psutil.Process().memory_info().rss
        assert first["shadowcat_memory_usage_bytes"] == pytest.approx(rss, rel=0.1)
        # the scrape's collection reached every backend, not only the one scraped
        after = memory.value("shadowcat_memory_usage_bytes")  # type: ignore[attr-defined]
        assert after == first["shadowcat_memory_usage_bytes"]
        assert first["shadowcat_threads"] >= 1
        assert first["shadowcat_open_fds"] > 0
        assert first["shadowcat_uptime_seconds"] > 0
    finally:
        metrics.close()


def test_uptime_increases_between_scrapes(facade: mf.Metrics) -> None:
    SystemCollector(facade)
    first = values(facade)["shadowcat_uptime_seconds"]
    expected = time.time() - psutil.Process().create_time()
    assert first == pytest.approx(expected, abs=1.0)
    eventually(lambda: values(facade)["shadowcat_uptime_seconds"] > first)


def test_thread_and_fd_counts_follow_the_process(facade: mf.Metrics) -> None:
    SystemCollector(facade)
    process = psutil.Process()
    stop = threading.Event()
    extra = [threading.Thread(target=stop.wait) for _ in range(3)]
    files = [open(__file__, "rb") for _ in range(5)]  # noqa: SIM115 - closed below
    try:
        for thread in extra:
            thread.start()
        during = values(facade)
        threads, fds = process.num_threads(), process.num_fds()
    finally:
        stop.set()
        for thread in extra:
            thread.join(timeout=5)
        for handle in files:
            handle.close()
    assert during["shadowcat_threads"] >= 4  # the main thread and the 3 extra ones
    assert during["shadowcat_threads"] == pytest.approx(threads, abs=2)
    assert during["shadowcat_open_fds"] >= 5
    assert during["shadowcat_open_fds"] == pytest.approx(fds, abs=3)
    after = values(facade)
    assert after["shadowcat_open_fds"] <= during["shadowcat_open_fds"] - 5 + 3


def test_cpu_percent_is_a_real_measurement(facade: mf.Metrics) -> None:
    SystemCollector(facade)
    values(facade)
    deadline = time.perf_counter() + 0.3
    spins = 0
    while time.perf_counter() < deadline:
        spins += 1
    busy = values(facade)["shadowcat_cpu_usage_percent"]
    assert spins > 0
    assert busy > 10
    time.sleep(0.3)  # idle: the next measure covers an interval spent mostly sleeping
    idle = values(facade)["shadowcat_cpu_usage_percent"]
    assert idle < busy


def test_goroutines_counts_the_tasks_of_the_running_loop(facade: mf.Metrics) -> None:
    memory_facade = mf.Metrics({"port": None, "backends": ["memory"]}, environ={})

    async def main() -> tuple[float, float, float, float]:
        collector = SystemCollector(facade)  # picks up the running loop
        mirror = SystemCollector(memory_facade)
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        sleepers = [asyncio.create_task(release.wait()) for _ in range(25)]
        await asyncio.sleep(0)
        # collect() from another thread than the loop's
        await loop.run_in_executor(None, mirror.collect)
        from_thread = memory_facade.backend("memory").value(  # type: ignore[attr-defined]
            "shadowcat_goroutines"
        )
        scraped = await loop.run_in_executor(None, values, facade)
        release.set()
        await asyncio.gather(*sleepers)
        await loop.run_in_executor(None, collector.collect)
        after = values(facade)["shadowcat_goroutines"]
        await loop.run_in_executor(None, mirror.collect)
        after_thread = memory_facade.backend("memory").value(  # type: ignore[attr-defined]
            "shadowcat_goroutines"
        )
        return from_thread, scraped["shadowcat_goroutines"], after, after_thread

    try:
        from_thread, scraped, after, after_thread = asyncio.run(main())
    finally:
        memory_facade.close()
    assert from_thread == 26  # 25 sleepers and main()
    assert scraped == 26
    assert after == 1
    assert after_thread == 1


def test_goroutines_without_a_loop_then_watch_loop(facade: mf.Metrics) -> None:
    collector = SystemCollector(facade)  # no loop running here
    assert values(facade)["shadowcat_goroutines"] == 0

    async def main() -> float:
        collector.watch_loop(asyncio.get_running_loop())
        release = asyncio.Event()
        sleepers = [asyncio.create_task(release.wait()) for _ in range(4)]
        await asyncio.sleep(0)
        value = values(facade)["shadowcat_goroutines"]
        release.set()
        await asyncio.gather(*sleepers)
        return value

    assert asyncio.run(main()) == 5
    values(facade)  # the loop is closed now: collecting must not fail
    assert values(facade)["shadowcat_memory_usage_bytes"] > 0


def test_goroutines_counts_the_units_of_work_of_threaded_code(facade: mf.Metrics) -> None:
    """Without asyncio (the threaded proxy), it counts what ``watch_work`` says, read on the
    scraping thread at each scrape."""
    collector = SystemCollector(facade)
    in_flight: set[int] = set()
    collector.watch_work(lambda: len(in_flight))
    seen = []
    for work in ({1, 2, 3}, {1}, set()):
        in_flight.clear()
        in_flight.update(work)
        seen.append(values(facade)["shadowcat_goroutines"])
    assert seen == [3, 1, 0]


# -- push: a collector thread -------------------------------------------------------------------


def statsd_config(port: int, interval: float = 0.2) -> dict[str, Any]:
    return {
        "port": None,
        "backends": ["statsd"],
        "collection_interval_secs": interval,
        "statsd": {"port": port, "flush_interval_secs": 0.05},
    }


def memory_lines(sock: socket.socket, wanted: int, timeout: float) -> list[strict_statsd.Line]:
    """``shadowcat.memory_usage_bytes`` gauge lines, until ``wanted`` or the timeout."""

    def memory(datagrams: list[bytes]) -> list[strict_statsd.Line]:
        lines = (line for data in datagrams for line in strict_statsd.parse_datagram(data))
        return [line for line in lines if line.name == "shadowcat.memory_usage_bytes"]

    return memory(
        receive_datagrams(sock, lambda datagrams: len(memory(datagrams)) >= wanted, timeout)
    )


def test_push_backends_get_values_periodically(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    before = collector_threads()
    metrics = mf.Metrics(statsd_config(port), environ={})
    try:
        SystemCollector(metrics)
        started = collector_threads() - before
        assert len(started) == 1
        [thread] = started
        assert thread.daemon
        start = time.monotonic()
        lines = memory_lines(udp_receiver, wanted=3, timeout=5)
        elapsed = time.monotonic() - start
        assert len(lines) >= 3, lines
        assert all(line.type == "g" and line.value > 0 for line in lines)
        assert elapsed >= 0.2  # periodic, not a burst: 3 collections take 2 intervals
    finally:
        metrics.close()
    eventually(lambda: not thread.is_alive())
    assert collector_threads() == before


def test_no_collector_thread_with_pull_backends_only(facade: mf.Metrics) -> None:
    before = collector_threads()
    collector = SystemCollector(facade)
    assert values(facade)["shadowcat_memory_usage_bytes"] > 0
    assert collector_threads() == before
    assert collector._thread is None


def test_reconfigure_starts_and_stops_the_thread(
    facade: mf.Metrics, udp_receiver: socket.socket
) -> None:
    port = udp_receiver.getsockname()[1]
    before = collector_threads()
    SystemCollector(facade)
    assert collector_threads() == before

    facade.configure(statsd_config(port), environ={})
    [first] = collector_threads() - before
    assert memory_lines(udp_receiver, wanted=1, timeout=5)

    facade.configure(statsd_config(port, interval=0.3), environ={})  # restarted
    [second] = collector_threads() - before
    assert second is not first
    assert not first.is_alive()
    assert memory_lines(udp_receiver, wanted=1, timeout=5)

    facade.configure(PROMETHEUS, environ={})
    eventually(lambda: not second.is_alive())
    assert collector_threads() == before
    assert values(facade)["shadowcat_memory_usage_bytes"] > 0

    facade.configure({**statsd_config(port), "enabled": False}, environ={})
    assert collector_threads() == before


def test_memory_and_push_backends_run_the_thread(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    before = collector_threads()
    config = statsd_config(port)
    config["backends"] = ["memory", "statsd"]
    metrics = mf.Metrics(config, environ={})
    try:
        SystemCollector(metrics)
        assert len(collector_threads() - before) == 1
        memory = metrics.backend("memory")
        eventually(
            lambda: memory.value("shadowcat_memory_usage_bytes") > 0  # type: ignore[attr-defined]
        )
    finally:
        metrics.close()
    eventually(lambda: collector_threads() == before)


# -- prometheus-client's own process collector ------------------------------------------------


def test_no_clash_with_the_process_collector_on_the_global_registry(make_facade) -> None:
    metrics = make_facade(backends=["prometheus"], prometheus={"registry": "global"})
    try:
        SystemCollector(metrics)
        exposed = families(scrape(metrics))  # fails on a family exposed twice
        assert "process_resident_memory_bytes" in exposed
        assert "shadowcat_memory_usage_bytes" in exposed
        unlabeled = values(metrics)
        assert unlabeled["shadowcat_memory_usage_bytes"] == pytest.approx(
            unlabeled["process_resident_memory_bytes"], rel=0.1
        )
    finally:
        metrics.close()
    assert b"shadowcat_memory_usage_bytes" not in generate_latest(REGISTRY)
