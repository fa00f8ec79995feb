"""ShadowcatMetrics: the request/session helpers, label bounding, one-call events, the catalog
as Prometheus exposes it, and the same recordings on the StatsD wire.

Every test gets its own facade (memory backend, read through MetricsMock), so none depends on
another or on the global facade.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import support
from support import bucket_bounds, eventually_async, strict_statsd

import metricsfacade as mf
from metricsfacade.shadowcat import ShadowcatMetrics
from metricsfacade.shadowcat.metrics import MAX_METHODS
from metricsfacade.shadowcat.settings import MCP_METHODS as DEFAULT_ALLOW_LIST
from metricsfacade.testing import MetricsMock

REQUESTS = "shadowcat_requests_total"
DURATION = "shadowcat_request_duration_seconds"
REQUEST_SIZE = "shadowcat_request_size_bytes"
RESPONSE_SIZE = "shadowcat_response_size_bytes"
PROXY_LATENCY = "shadowcat_proxy_latency_seconds"
ACTIVE_SESSIONS = "shadowcat_active_sessions"
SESSION_DURATION = "shadowcat_session_duration_seconds"
BREAKER = "shadowcat_circuit_breaker_state"
RATE_LIMITED = "shadowcat_rate_limit_exceeded_total"


@pytest.fixture
def sc(facade: mf.Metrics) -> ShadowcatMetrics:
    return ShadowcatMetrics(facade)


def req_labels(method: str, transport: str = "stdio", status: str = "ok") -> dict[str, str]:
    return {"method": method, "transport": transport, "status": status}


def observed(mock: MetricsMock, name: str, labels: Mapping[str, str]) -> list[float]:
    """The raw observations of one histogram series."""
    wanted = dict(labels)
    for record in mock.records(name):
        if record.labels == wanted:
            assert record.histogram is not None
            return list(record.histogram.values)
    raise AssertionError(f"no series {name}{wanted}; recorded:\n{mock.format_records()}")


def counter_values(mock: MetricsMock, name: str) -> dict[tuple[str, ...], float]:
    """Every series of a counter as {label values: value}."""
    return {tuple(r.labels.values()): r.value or 0.0 for r in mock.records(name)}


def label_values(mock: MetricsMock, name: str, label: str) -> set[str]:
    return {record.labels[label] for record in mock.records(name)}


def total(mock: MetricsMock, name: str) -> float:
    return sum(record.value or 0.0 for record in mock.records(name))


# -- track_request in its four forms --------------------------------------------------------

FORMS = ["with", "async with", "decorator", "async decorator"]


def run_tracked(sc: ShadowcatMetrics, form: str, method: str, body: Callable[[], Any]) -> Any:
    """Run ``body()`` inside ``track_request(method, "stdio")`` used in the given form."""
    if form == "with":
        with sc.track_request(method, "stdio"):
            return body()
    if form == "async with":

        async def main() -> Any:
            async with sc.track_request(method, "stdio"):
                await asyncio.sleep(0)
                return body()

        return asyncio.run(main())
    if form == "decorator":
        return sc.track_request(method, "stdio")(body)()

    async def coroutine() -> Any:
        await asyncio.sleep(0)
        return body()

    return asyncio.run(sc.track_request(method, "stdio")(coroutine)())


@pytest.mark.parametrize("form", FORMS)
def test_each_form_counts_a_successful_request_as_ok(
    sc: ShadowcatMetrics, mock: MetricsMock, form: str
) -> None:
    def body() -> str:
        time.sleep(0.01)
        return "result"

    assert run_tracked(sc, form, "tools/call", body) == "result"
    mock.assert_counter(REQUESTS, req_labels("tools/call"), 1)
    assert total(mock, REQUESTS) == 1
    [duration] = observed(mock, DURATION, req_labels("tools/call"))
    assert 0.01 <= duration < 5


OUTCOMES = [
    pytest.param(ValueError, "error", id="ValueError-error"),
    pytest.param(KeyError, "error", id="KeyError-error"),
    pytest.param(TimeoutError, "timeout", id="TimeoutError-timeout"),
    pytest.param(asyncio.TimeoutError, "timeout", id="asyncio.TimeoutError-timeout"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("exc_type", "status"), OUTCOMES)
def test_an_escaping_exception_sets_the_status_and_propagates_unchanged(
    sc: ShadowcatMetrics,
    mock: MetricsMock,
    form: str,
    exc_type: type[Exception],
    status: str,
) -> None:
    boom = exc_type("boom")

    def body() -> None:
        raise boom

    with pytest.raises(exc_type) as raised:
        run_tracked(sc, form, "ping", body)
    assert raised.value is boom
    mock.assert_counter(REQUESTS, req_labels("ping", status=status), 1)
    assert total(mock, REQUESTS) == 1
    mock.assert_observed(DURATION, req_labels("ping", status=status), count=1)


def test_decorators_keep_the_function_identity(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    @sc.track_request("tools/list", "stdio")
    def handle(value: int) -> int:
        """Doubles."""
        return value * 2

    @sc.track_request("tools/list", "sse")
    async def handle_async(value: int, *, plus: int = 0) -> int:
        await asyncio.sleep(0)
        return value + plus

    assert handle(21) == 42
    assert handle(1) == 2
    assert handle.__name__ == "handle"
    assert handle.__doc__ == "Doubles."
    assert inspect.iscoroutinefunction(handle_async)
    assert asyncio.run(handle_async(1, plus=2)) == 3
    mock.assert_counter(REQUESTS, req_labels("tools/list"), 2)
    mock.assert_counter(REQUESTS, req_labels("tools/list", "sse"), 1)


def test_request_and_response_sizes_are_observed(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    with sc.track_request("resources/read", "http") as req:
        req.request_size(120)
        req.response_size(4500)
    with sc.track_request("resources/read", "http") as req:
        req.request_size(7)
    size_labels = {"method": "resources/read", "transport": "http"}
    mock.assert_observed(REQUEST_SIZE, size_labels, values=[120, 7])
    mock.assert_observed(RESPONSE_SIZE, size_labels, values=[4500])


def test_a_real_asyncio_timeout_is_status_timeout(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    async def main() -> None:
        async with sc.track_request("tools/call", "stdio"):
            await asyncio.wait_for(asyncio.sleep(30), timeout=0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    mock.assert_counter(REQUESTS, req_labels("tools/call", status="timeout"), 1)
    assert total(mock, REQUESTS) == 1


def test_a_cancelled_request_is_status_cancelled(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    async def main() -> None:
        inside = asyncio.Event()

        async def handler() -> None:
            async with sc.track_request("tools/call", "stdio"):
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(handler())
        await asyncio.wait_for(inside.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    mock.assert_counter(REQUESTS, req_labels("tools/call", status="cancelled"), 1)
    assert total(mock, REQUESTS) == 1
    mock.assert_observed(DURATION, req_labels("tools/call", status="cancelled"), count=1)


@pytest.mark.parametrize(
    ("status", "label"),
    [
        ("timeout", "timeout"),
        ("error", "error"),
        ("cancelled", "cancelled"),
        ("ok", "ok"),
        (503, "503"),
        (200, "200"),
        ("404", "404"),
        (100, "100"),
        (599, "599"),
    ],
)
def test_an_explicit_status_is_the_label(
    sc: ShadowcatMetrics, mock: MetricsMock, status: object, label: str
) -> None:
    with sc.track_request("tools/call", "http") as req:
        req.status = status  # type: ignore[assignment]
    mock.assert_counter(REQUESTS, req_labels("tools/call", "http", label), 1)
    assert total(mock, REQUESTS) == 1


def test_an_explicit_status_wins_over_an_exception(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    boom = RuntimeError("upstream said no")

    def handle() -> None:
        with sc.track_request("tools/call", "http") as req:
            req.status = 502
            raise boom

    with pytest.raises(RuntimeError) as raised:
        handle()
    assert raised.value is boom
    mock.assert_counter(REQUESTS, req_labels("tools/call", "http", "502"), 1)
    assert total(mock, REQUESTS) == 1


@pytest.mark.parametrize("status", ["ok", 200, "204"])
def test_an_escaping_exception_outranks_a_success_status(
    sc: ShadowcatMetrics, mock: MetricsMock, status: object
) -> None:
    boom = TimeoutError("upstream too slow")

    def handle() -> None:
        with sc.track_request("tools/call", "http") as req:
            req.status = status  # type: ignore[assignment]
            raise boom

    with pytest.raises(TimeoutError) as raised:
        handle()
    assert raised.value is boom
    assert counter_values(mock, REQUESTS) == {("tools/call", "http", "timeout"): 1}


GARBAGE_STATUSES = [
    pytest.param("banana", id="word"),
    pytest.param("OK", id="uppercase-ok"),
    pytest.param("", id="empty"),
    pytest.param(42, id="below-100"),
    pytest.param(600, id="above-599"),
    pytest.param(-200, id="negative"),
    pytest.param(True, id="bool"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(["200"], id="list"),
    pytest.param(object(), id="object"),
]


@pytest.mark.parametrize("status", GARBAGE_STATUSES)
def test_a_garbage_status_becomes_other(
    sc: ShadowcatMetrics, mock: MetricsMock, status: object
) -> None:
    with sc.track_request("ping", "stdio") as req:
        req.status = status  # type: ignore[assignment]
    mock.assert_counter(REQUESTS, req_labels("ping", status="other"), 1)
    assert total(mock, REQUESTS) == 1


@pytest.mark.parametrize("status", GARBAGE_STATUSES)
def test_a_garbage_status_never_replaces_the_applications_exception(
    sc: ShadowcatMetrics, mock: MetricsMock, status: object
) -> None:
    boom = ValueError("the application's own error")

    def handle() -> None:
        with sc.track_request("ping", "stdio") as req:
            req.status = status  # type: ignore[assignment]
            raise boom

    with pytest.raises(ValueError, match="application's own") as raised:
        handle()
    assert raised.value is boom
    mock.assert_counter(REQUESTS, req_labels("ping", status="other"), 1)


def test_status_spellings_keep_memory_bounded(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    """Statuses that map to a valid code ("0200", 200.5) are as unbounded as method names: the
    per-status cache must not keep one entry per spelling."""
    spellings: list[object] = ["0" * zeros + "200" for zeros in range(1, 2_001)]
    spellings += [200 + index / 10_000 for index in range(1, 2_001)]
    for status in spellings:
        tracker = sc.start_request("ping", "http")
        tracker.finish(status=status)  # type: ignore[arg-type]
    assert label_values(mock, REQUESTS, "status") <= {"200", "other"}
    mock.assert_counter(REQUESTS, None, len(spellings))
    assert len(sc.request_series("ping", "http").by_status) <= 505  # 500 codes + 4 words


# -- the latency the proxy adds ---------------------------------------------------------------


def test_upstream_wait_is_not_counted_as_proxy_latency(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    with sc.track_request("tools/call", "stdio", upstream="local") as req, req.upstream_wait():
        time.sleep(0.05)
    [duration] = observed(mock, DURATION, req_labels("tools/call"))
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "local"})
    assert duration >= 0.05
    assert 0 <= added < 0.01


def test_upstream_wait_in_async_code(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    async def main() -> None:
        async with sc.track_request("tools/call", "stdio", upstream="local") as req:
            with req.upstream_wait():
                await asyncio.sleep(0.05)

    asyncio.run(main())
    [duration] = observed(mock, DURATION, req_labels("tools/call"))
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "local"})
    assert duration >= 0.05
    assert 0 <= added < 0.01


def test_without_upstream_wait_the_whole_time_is_proxy_latency(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    with sc.track_request("tools/call", "stdio", upstream="local"):
        time.sleep(0.03)
    [duration] = observed(mock, DURATION, req_labels("tools/call"))
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "local"})
    assert added >= 0.03
    assert added == pytest.approx(duration)


def test_proxy_work_outside_the_wait_is_counted(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    with sc.track_request("tools/call", "stdio", upstream="remote") as req:
        time.sleep(0.02)  # the proxy's own work
        with req.upstream_wait():
            time.sleep(0.05)
    [duration] = observed(mock, DURATION, req_labels("tools/call"))
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "remote"})
    assert duration >= 0.07
    assert added >= 0.02  # the proxy's own work counts
    assert added <= duration - 0.05 + 1e-9  # the upstream wait does not


def test_without_upstream_no_proxy_latency_is_observed(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    with sc.track_request("tools/call", "stdio") as req, req.upstream_wait():
        time.sleep(0.001)
    tracker = sc.start_request("ping", "stdio")
    tracker.finish()
    mock.assert_counter(REQUESTS, None, 2)
    mock.assert_not_recorded(PROXY_LATENCY)


def test_start_request_finished_in_another_task(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    async def main() -> None:
        handoff: asyncio.Queue[Any] = asyncio.Queue()

        async def reader() -> None:
            tracker = sc.start_request("tools/call", "http", upstream="remote")
            tracker.request_size(10)
            tracker.upstream_started()
            await handoff.put(tracker)

        async def writer() -> None:
            tracker = await handoff.get()
            await asyncio.sleep(0.05)  # the upstream answering
            tracker.upstream_finished()
            tracker.finish(status=200, response_size=999)
            tracker.finish(status=500, response_size=1)  # a second finish records nothing

        await asyncio.gather(writer(), reader())

    asyncio.run(main())
    assert counter_values(mock, REQUESTS) == {("tools/call", "http", "200"): 1}
    [duration] = observed(mock, DURATION, req_labels("tools/call", "http", "200"))
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "remote"})
    assert duration >= 0.05
    assert 0 <= added < 0.01
    size_labels = {"method": "tools/call", "transport": "http"}
    mock.assert_observed(REQUEST_SIZE, size_labels, values=[10])
    mock.assert_observed(RESPONSE_SIZE, size_labels, values=[999])


def test_finish_closes_an_open_upstream_wait(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    tracker = sc.start_request("tools/call", "stdio", upstream="local")
    tracker.upstream_started()
    time.sleep(0.03)
    tracker.finish(status="timeout")
    tracker.finish()
    assert counter_values(mock, REQUESTS) == {("tools/call", "stdio", "timeout"): 1}
    [added] = observed(mock, PROXY_LATENCY, {"upstream": "local"})
    assert added < 0.01
    mock.assert_observed(PROXY_LATENCY, None, count=1)


def test_finish_without_status_is_ok(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.start_request("ping", "stdio").finish()
    tracker = sc.start_request("ping", "stdio")
    tracker.status = 404
    tracker.finish()
    assert counter_values(mock, REQUESTS) == {
        ("ping", "stdio", "ok"): 1,
        ("ping", "stdio", "404"): 1,
    }


# -- bounding the method and client labels ----------------------------------------------------

MCP_METHODS = [
    "initialize",
    "ping",
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "resources/subscribe",
    "prompts/get",
    "prompts/list",
    "notifications/initialized",
    "notifications/cancelled",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
]
BAD_METHODS = ["evil/method", "toolsX", "", "tools", "Initialize", "ping ", "../tools/call", "x"]


def test_mcp_methods_keep_their_names(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    for method in MCP_METHODS:
        with sc.track_request(method, "stdio"):
            pass
    for method in MCP_METHODS:
        mock.assert_counter(REQUESTS, req_labels(method), 1)
    assert label_values(mock, REQUESTS, "method") == set(MCP_METHODS)


def test_unknown_methods_become_other(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    for method in BAD_METHODS:
        with sc.track_request(method, "stdio") as req:
            req.request_size(1)
    assert label_values(mock, REQUESTS, "method") == {"other"}
    mock.assert_counter(REQUESTS, req_labels("other"), len(BAD_METHODS))
    assert label_values(mock, REQUEST_SIZE, "method") == {"other"}


def test_a_configured_method_allow_list_is_honoured(make_facade) -> None:
    metrics = make_facade(shadowcat={"methods": ["ping", "custom/*"]})
    try:
        sc = ShadowcatMetrics(metrics)
        with MetricsMock(metrics) as mock:
            for method in ["ping", "custom/thing", "custom/a/b", "initialize", "tools/call"]:
                with sc.track_request(method, "stdio"):
                    pass
            for method in ["custom", "customX/y", "pingX"]:
                with sc.track_request(method, "stdio"):
                    pass
            assert counter_values(mock, REQUESTS) == {
                ("ping", "stdio", "ok"): 1,
                ("custom/thing", "stdio", "ok"): 1,
                ("custom/a/b", "stdio", "ok"): 1,
                ("other", "stdio", "ok"): 5,
            }
    finally:
        metrics.close()


def test_a_method_flood_under_an_allowed_family_stays_bounded(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    flood = 10_000
    for index in range(flood):
        with sc.track_request(f"tools/t{index}", "stdio"):
            pass
    methods = label_values(mock, REQUESTS, "method")
    kept = methods - {"other"}
    assert len(kept) <= MAX_METHODS
    assert kept == {f"tools/t{index}" for index in range(MAX_METHODS)}
    mock.assert_counter(REQUESTS, req_labels("other"), flood - MAX_METHODS)
    mock.assert_counter(REQUESTS, None, flood)
    assert len(mock.records(REQUESTS)) == MAX_METHODS + 1
    assert len(mock.records(DURATION)) == MAX_METHODS + 1
    # the admitted family names, plus the allow-list's exact names (a fixed set)
    assert len(sc.method_label._known) <= MAX_METHODS + len(DEFAULT_ALLOW_LIST)


def test_a_method_flood_does_not_push_exact_mcp_methods_into_other(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    """Names listed exactly in the allow-list are bounded by the list itself: a client inventing
    ``tools/<random>`` names must not turn a later ``initialize`` or ``ping`` into ``other``."""
    for index in range(MAX_METHODS + 50):
        with sc.track_request(f"tools/t{index}", "stdio"):
            pass
    for method in ["initialize", "ping", "completion/complete"]:
        with sc.track_request(method, "stdio"):
            pass
        mock.assert_counter(REQUESTS, req_labels(method), 1)


def test_rate_limited_clients_past_max_clients_are_other(make_facade) -> None:
    metrics = make_facade(shadowcat={"max_clients": 3})
    try:
        sc = ShadowcatMetrics(metrics)
        with MetricsMock(metrics) as mock:
            for client in ["a", "b", "c", "d", "e", "a", "d"]:
                sc.rate_limit_exceeded("requests_per_second", client)
            assert counter_values(mock, RATE_LIMITED) == {
                ("requests_per_second", "a"): 2,
                ("requests_per_second", "b"): 1,
                ("requests_per_second", "c"): 1,
                ("requests_per_second", "other"): 3,
            }
            for index in range(50_000):
                sc.rate_limit_exceeded("burst", f"client-{index}")
            assert len(sc.client_label._known) <= 3
            assert label_values(mock, RATE_LIMITED, "client") == {"a", "b", "c", "other"}
            mock.assert_counter(RATE_LIMITED, {"limit_type": "burst", "client": "other"}, 50_000)
    finally:
        metrics.close()


# -- sessions ---------------------------------------------------------------------------------


def test_a_sync_session_is_active_inside_and_timed(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    with sc.session():
        mock.assert_gauge(ACTIVE_SESSIONS, {}, 1)
        with sc.session():
            mock.assert_gauge(ACTIVE_SESSIONS, {}, 2)
            time.sleep(0.01)
        mock.assert_gauge(ACTIVE_SESSIONS, {}, 1)
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    durations = observed(mock, SESSION_DURATION, {})
    assert len(durations) == 2
    assert min(durations) >= 0.01


def test_an_async_session_is_active_inside_and_timed(
    sc: ShadowcatMetrics, mock: MetricsMock
) -> None:
    async def main() -> None:
        async with sc.session():
            mock.assert_gauge(ACTIVE_SESSIONS, {}, 1)
            await asyncio.sleep(0.01)
        mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)

    asyncio.run(main())
    [duration] = observed(mock, SESSION_DURATION, {})
    assert duration >= 0.01


def test_a_session_ends_on_an_exception(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    boom = RuntimeError("client went away")
    with pytest.raises(RuntimeError) as raised, sc.session():
        raise boom
    assert raised.value is boom

    async def main() -> None:
        async with sc.session():
            raise boom

    with pytest.raises(RuntimeError) as raised:
        asyncio.run(main())
    assert raised.value is boom
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    mock.assert_observed(SESSION_DURATION, {}, count=2)


def test_a_cancelled_session_ends(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    async def main() -> None:
        inside = asyncio.Event()

        async def serve() -> None:
            async with sc.session():
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(serve())
        await asyncio.wait_for(inside.wait(), 5)
        mock.assert_gauge(ACTIVE_SESSIONS, {}, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    mock.assert_observed(SESSION_DURATION, {}, count=1)


def test_200_concurrent_tasks_give_exact_totals(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    tasks = 200
    entered = 0

    async def main() -> None:
        go = asyncio.Event()

        async def one(index: int) -> None:
            nonlocal entered
            async with (
                sc.session(),
                sc.track_request("tools/call", "stdio", upstream="local") as req,
            ):
                req.request_size(index)
                entered += 1
                with req.upstream_wait():
                    await go.wait()
                if index % 4 == 0:
                    raise ValueError(index)

        running = [asyncio.create_task(one(index)) for index in range(tasks)]
        await eventually_async(lambda: entered == tasks, interval=0.001)
        mock.assert_gauge(ACTIVE_SESSIONS, {}, tasks)
        go.set()
        results = await asyncio.gather(*running, return_exceptions=True)
        assert sum(isinstance(result, ValueError) for result in results) == tasks // 4

    asyncio.run(main())
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    mock.assert_counter(REQUESTS, req_labels("tools/call"), tasks - tasks // 4)
    mock.assert_counter(REQUESTS, req_labels("tools/call", status="error"), tasks // 4)
    mock.assert_observed(DURATION, None, count=tasks)
    mock.assert_observed(SESSION_DURATION, {}, count=tasks)
    mock.assert_observed(PROXY_LATENCY, {"upstream": "local"}, count=tasks)
    mock.assert_observed(
        REQUEST_SIZE, {"method": "tools/call", "transport": "stdio"}, sum=sum(range(tasks))
    )


def test_8_threads_give_exact_totals(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    threads, per_thread = 8, 250
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait(timeout=5)
            for index in range(per_thread):
                with sc.session():
                    try:
                        with sc.track_request("tools/call", f"t{worker % 2}") as req:
                            req.response_size(1)
                            if index % 2:
                                raise KeyError(index)
                    except KeyError:
                        pass
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    assert not failures
    assert not any(thread.is_alive() for thread in workers)
    requests = threads * per_thread
    mock.assert_gauge(ACTIVE_SESSIONS, {}, 0)
    mock.assert_counter(REQUESTS, None, requests)
    for transport in ("t0", "t1"):
        mock.assert_counter(REQUESTS, req_labels("tools/call", transport), requests // 4)
        mock.assert_counter(REQUESTS, req_labels("tools/call", transport, "error"), requests // 4)
    mock.assert_observed(DURATION, None, count=requests)
    mock.assert_observed(SESSION_DURATION, {}, count=requests)
    mock.assert_observed(RESPONSE_SIZE, None, count=requests, sum=requests)


# -- one-call events --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ("closed", 0),
        ("open", 1),
        ("half_open", 2),
        ("half-open", 2),
        (0, 0),
        (1, 1),
        (2, 2),
    ],
)
def test_circuit_breaker_state_sets_the_gauge_per_upstream(
    sc: ShadowcatMetrics, mock: MetricsMock, state: str | int, value: int
) -> None:
    sc.circuit_breaker_state("up-a", (value + 1) % 3)  # something else first
    sc.circuit_breaker_state("up-b", "open")
    sc.circuit_breaker_state("up-a", state)
    mock.assert_gauge(BREAKER, {"upstream": "up-a"}, value)
    mock.assert_gauge(BREAKER, {"upstream": "up-b"}, 1)
    assert mock.dropped() == 0


INVALID_STATES = ["broken", 7, -1, 1.5, "1", "OPEN", None, float("nan")]


def test_an_invalid_breaker_state_is_dropped(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.circuit_breaker_state("up-a", "open")
    for state in INVALID_STATES:
        sc.circuit_breaker_state("up-a", state)  # type: ignore[arg-type]
    mock.assert_gauge(BREAKER, {"upstream": "up-a"}, 1)
    assert mock.dropped(BREAKER, "invalid_value") == len(INVALID_STATES)
    assert label_values(mock, BREAKER, "upstream") == {"up-a"}


def test_an_invalid_breaker_state_raises_in_strict_mode(make_facade) -> None:
    metrics = make_facade(strict=True)
    try:
        sc = ShadowcatMetrics(metrics)
        sc.circuit_breaker_state("up-a", "half_open")
        with pytest.raises(mf.RecordError, match="broken"):
            sc.circuit_breaker_state("up-a", "broken")
        with pytest.raises(mf.RecordError):
            sc.circuit_breaker_state("up-a", 7)
        memory = metrics.backend("memory")
        assert memory.value(BREAKER, {"upstream": "up-a"}) == 2  # type: ignore[attr-defined]
    finally:
        metrics.close()


def test_upstream_error(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.upstream_error("local", "connection_refused")
    sc.upstream_error("local", "connection_refused")
    sc.upstream_error("remote", "timeout")
    assert counter_values(mock, "shadowcat_upstream_errors_total") == {
        ("local", "connection_refused"): 2,
        ("remote", "timeout"): 1,
    }


def test_tape_size(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.tape_size("stdio", 12_345)
    sc.tape_size("http", 2_000_000)
    mock.assert_observed("shadowcat_tape_size_bytes", {"transport": "stdio"}, values=[12_345])
    mock.assert_observed("shadowcat_tape_size_bytes", {"transport": "http"}, values=[2_000_000])


def test_tape_operation(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.tape_operation("record")
    sc.tape_operation("replay")
    sc.tape_operation("record")
    assert counter_values(mock, "shadowcat_tape_operations_total") == {
        ("record",): 2,
        ("replay",): 1,
    }


def test_rate_limit_exceeded(sc: ShadowcatMetrics, mock: MetricsMock) -> None:
    sc.rate_limit_exceeded("global", "client-1")
    assert counter_values(mock, RATE_LIMITED) == {("global", "client-1"): 1}


# -- the catalog as Prometheus exposes it -----------------------------------------------------

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (100.0, 1000.0, 10000.0, 100000.0, 1000000.0)
REQUEST = ("method", "transport", "status")

#: name: (type, HELP, label names, bucket bounds), written from the brief's Step 1.
BRIEF_CATALOG: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "shadowcat_requests_total": (
        "counter",
        "Total number of requests processed",
        REQUEST,
        None,
    ),
    "shadowcat_request_duration_seconds": (
        "histogram",
        "Request duration in seconds",
        REQUEST,
        LATENCY_BUCKETS,
    ),
    "shadowcat_request_size_bytes": (
        "histogram",
        "Request size in bytes",
        ("method", "transport"),
        SIZE_BUCKETS,
    ),
    "shadowcat_response_size_bytes": (
        "histogram",
        "Response size in bytes",
        ("method", "transport"),
        SIZE_BUCKETS,
    ),
    "shadowcat_active_sessions": ("gauge", "Number of active sessions", (), None),
    "shadowcat_session_duration_seconds": (
        "histogram",
        "Session duration in seconds",
        (),
        (1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0),
    ),
    "shadowcat_proxy_latency_seconds": (
        "histogram",
        "Additional latency introduced by proxy",
        ("upstream",),
        (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1),
    ),
    "shadowcat_upstream_errors_total": (
        "counter",
        "Total upstream errors by type",
        ("upstream", "error_type"),
        None,
    ),
    "shadowcat_circuit_breaker_state": (
        "gauge",
        "Circuit breaker state (0=closed, 1=open, 2=half-open)",
        ("upstream",),
        None,
    ),
    "shadowcat_rate_limit_exceeded_total": (
        "counter",
        "Number of rate limit violations",
        ("limit_type", "client"),
        None,
    ),
    "shadowcat_memory_usage_bytes": ("gauge", "Current memory usage in bytes", (), None),
    "shadowcat_cpu_usage_percent": ("gauge", "Current CPU usage percentage", (), None),
    "shadowcat_goroutines": ("gauge", "Number of active goroutines (tokio tasks)", (), None),
    "shadowcat_tape_size_bytes": (
        "histogram",
        "Size of recorded tapes",
        ("transport",),
        (1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0),
    ),
    "shadowcat_tape_operations_total": (
        "counter",
        "Tape operations by type",
        ("operation",),
        None,
    ),
}
#: Metrics the brief uses without declaring them (UPTIME) or that the collector adds.
EXTRA_GAUGES = ("shadowcat_uptime_seconds", "shadowcat_threads", "shadowcat_open_fds")


def record_everything(sc: ShadowcatMetrics) -> None:
    """One value into every labeled metric, so its series (and buckets) are exposed."""
    with sc.session(), sc.track_request("tools/call", "stdio", upstream="local") as req:
        req.request_size(10)
        req.response_size(20)
    sc.upstream_error("local", "refused")
    sc.circuit_breaker_state("local", "open")
    sc.rate_limit_exceeded("global", "client-1")
    sc.tape_size("stdio", 5000)
    sc.tape_operation("record")


def exposed_labels(family: Any) -> set[str]:
    return {label for sample in family.samples for label in sample.labels if label != "le"}


@pytest.fixture
def prometheus_facade(make_facade: Callable[..., mf.Metrics]) -> mf.Metrics:
    return make_facade(backends=["prometheus"])


def assert_matches_brief(family: Any, name: str) -> None:
    kind, help_text, labels, buckets = BRIEF_CATALOG[name]
    assert family.type == kind, f"{name}: type {family.type}, brief {kind}"
    assert family.documentation == help_text, f"{name}: HELP {family.documentation!r}"
    assert family.samples, f"{name}: no sample exposed"
    assert exposed_labels(family) == set(labels), f"{name}: labels {exposed_labels(family)}"
    if buckets is not None:
        assert bucket_bounds(family) == buckets, f"{name}: buckets {bucket_bounds(family)}"
        assert any(s.labels.get("le") == "+Inf" for s in family.samples)


@pytest.mark.parametrize("name", [n for n in BRIEF_CATALOG if n != "shadowcat_goroutines"])
def test_the_exposition_has_every_metric_of_the_brief(
    prometheus_facade: mf.Metrics, name: str
) -> None:
    record_everything(ShadowcatMetrics(prometheus_facade))
    families = support.families(support.scrape(prometheus_facade))
    assert name in families, f"{name} not exposed; exposed: {sorted(families)}"
    assert_matches_brief(families[name], name)


def test_goroutines_matches_the_brief(prometheus_facade: mf.Metrics) -> None:
    """Kept apart: the brief's HELP text says "tokio tasks"."""
    record_everything(ShadowcatMetrics(prometheus_facade))
    families = support.families(support.scrape(prometheus_facade))
    assert_matches_brief(families["shadowcat_goroutines"], "shadowcat_goroutines")


def test_the_exposition_has_the_extra_gauges(prometheus_facade: mf.Metrics) -> None:
    ShadowcatMetrics(prometheus_facade)
    families = support.families(support.scrape(prometheus_facade))
    for name in EXTRA_GAUGES:
        assert families[name].type == "gauge", name
        assert families[name].documentation, name
        assert exposed_labels(families[name]) == set(), name
    shadowcat = {name for name in families if name.startswith("shadowcat_")}
    assert shadowcat == set(BRIEF_CATALOG) | set(EXTRA_GAUGES)


def test_histogram_buckets_replace_only_the_request_duration_buckets() -> None:
    custom = (0.01, 0.1, 1.0, 10.0, 60.0)
    metrics = mf.Metrics(
        {"port": None, "backends": ["prometheus"], "histogram_buckets": list(custom)},
        environ={},
    )
    try:
        record_everything(ShadowcatMetrics(metrics))
        families = support.families(support.scrape(metrics))
        assert bucket_bounds(families[DURATION]) == custom
        for name, (kind, _help, _labels, buckets) in BRIEF_CATALOG.items():
            if kind == "histogram" and name != DURATION:
                assert bucket_bounds(families[name]) == buckets, name
    finally:
        metrics.close()


# -- the same recordings on the StatsD wire ---------------------------------------------------


def text_lines(datagrams: list[bytes]) -> list[str]:
    return [line for data in datagrams for line in data.decode().split("\n")]


def test_the_same_recordings_reach_statsd(make_facade, udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    metrics = make_facade(
        backends=["memory", "statsd"], statsd={"port": port, "flush_interval_secs": 0.05}
    )
    try:
        sc = ShadowcatMetrics(metrics)
        with sc.track_request("tools/call", "stdio"):
            time.sleep(0.002)
        metrics.flush()
        tags = "#method:tools/call,transport:stdio,status:ok"

        def complete(lines: list[str]) -> bool:
            names = {line.partition(":")[0] for line in lines}
            return {"shadowcat.requests", "shadowcat.request_duration"} <= names

        lines = text_lines(
            support.receive_datagrams(
                udp_receiver, lambda datagrams: complete(text_lines(datagrams))
            )
        )
        assert f"shadowcat.requests:1|c|{tags}" in lines, lines
        [timing] = [line for line in lines if line.startswith("shadowcat.request_duration:")]
        parsed = strict_statsd.parse_line(timing)
        assert parsed.type == "ms"
        assert parsed.tags == (("method", "tools/call"), ("transport", "stdio"), ("status", "ok"))
        assert timing.endswith(f"|ms|{tags}")
        memory = metrics.backend("memory")
        [seconds] = [
            value
            for record in memory.records(DURATION)  # type: ignore[attr-defined]
            for value in record.histogram.values
        ]
        assert parsed.value == pytest.approx(seconds * 1000, rel=1e-9)
        assert parsed.value >= 2
    finally:
        metrics.close()
