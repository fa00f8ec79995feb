"""Recording from many threads loses nothing."""

from __future__ import annotations

import threading

import metricsfacade as mf

THREADS = 8
INCREMENTS = 100_000


def _hammer(work) -> None:
    start = threading.Barrier(THREADS)

    def run() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_eight_threads_increment_shared_labels_exactly():
    with mf.Metrics({"port": None, "backends": ["memory", "prometheus"]}, environ={}) as m:
        requests = m.counter("demo_requests_total", "Requests", labels=["method", "status"])

        def work() -> None:
            for _ in range(INCREMENTS):
                requests.labels("ping", "ok").inc()

        _hammer(work)
        memory = m.backend("memory")
        labels = {"method": "ping", "status": "ok"}
        assert memory.value("demo_requests_total", labels) == THREADS * INCREMENTS
        exposition = m.backend("prometheus").render(None)[0].decode()
        assert 'demo_requests_total{method="ping",status="ok"} 800000.0' in exposition


def test_concurrent_first_use_of_a_label_set_creates_one_series():
    with mf.Metrics({"port": None, "backends": ["memory"]}, environ={}) as m:
        gauge = m.gauge("demo_level", "Level", labels=["shard"])
        sizes = m.histogram("demo_size_bytes", "Sizes", labels=["shard"], buckets=[1, 10])

        def work() -> None:
            for shard in range(200):
                gauge.labels(str(shard)).inc()
                sizes.labels(str(shard)).observe(5)

        _hammer(work)
        records = m.backend("memory").records("demo_level")
        assert len(records) == 200
        assert {record.value for record in records} == {THREADS}
        histograms = m.backend("memory").records("demo_size_bytes")
        assert {r.histogram.count for r in histograms if r.histogram} == {THREADS}
