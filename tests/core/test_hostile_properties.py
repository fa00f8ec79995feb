"""Any sequence of declare, hold, configure, record (of anything), fork, scrape and close.

Names and label names are drawn from the whole Prometheus grammar (a declaration may fail,
with a DeclarationError, and only then); label values and values are of any type, including
text that cannot be encoded, unhashable objects and objects whose ``__str__`` raises. Outside
strict mode nothing may raise, every scrape must parse as Prometheus text and as
OpenMetrics, and every counter must hold exactly what a model says.
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from support import require_module

import metricsfacade as mf
from metricsfacade.spec import LABEL_NAME_RE, METRIC_NAME_RE, text_safe

require_module("prometheus_client")
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


names = st.from_regex(METRIC_NAME_RE, fullmatch=True).filter(
    lambda name: not name.startswith("metricsfacade_")
)
label_names = st.lists(
    st.from_regex(LABEL_NAME_RE, fullmatch=True).filter(lambda n: not n.startswith("__")),
    max_size=2,
    unique=True,
)
any_text = st.text(st.characters(codec=None), max_size=8)  # lone surrogates included
label_values = st.one_of(
    any_text,
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),  # unhashable
    st.builds(Unprintable),
)
values = st.one_of(
    st.floats(),
    st.integers(-(10**400), 10**400),
    st.booleans(),
    any_text,
    st.none(),
)


def normalized(value: object) -> str | None:
    """The series label value the facade makes of ``value``, or None if it refuses it."""
    try:
        hash(value)
        return text_safe(value if type(value) is str else str(value))
    except Exception:
        return None


def counted(amount: object) -> float | None:
    """What a counter adds for ``amount``, or None when it drops it."""
    try:
        if 0 <= amount < math.inf:  # type: ignore[operator]
            return float(amount)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return None
    return None


class Hostile(RuleBasedStateMachine):
    counters = Bundle("counters")
    others = Bundle("others")

    def __init__(self) -> None:
        super().__init__()
        self.facade = mf.Metrics()
        self.configured = False
        self.model: dict[tuple[str, tuple[str, ...]], float] = {}

    def teardown(self) -> None:
        self.facade.close()

    def _declare(self, kind: str, name: str, labels: list[str]) -> Any:
        try:
            return getattr(self.facade, kind)(name, "help \udce9", labels)
        except mf.DeclarationError:
            return None  # a clash with an earlier declaration, or a reserved label

    @rule(target=counters, name=names, labels=label_names)
    def declare_counter(self, name: str, labels: list[str]) -> Any:
        return self._declare("counter", name, labels) or mf.Metrics().counter("unused", "h")

    @rule(
        target=others,
        kind=st.sampled_from(["gauge", "histogram", "timer"]),
        name=names,
        labels=label_names,
    )
    def declare_other(self, kind: str, name: str, labels: list[str]) -> Any:
        return self._declare(kind, name, labels) or mf.Metrics().gauge("unused", "h")

    @rule()
    def configure(self) -> None:
        self.facade.configure({"port": None, "backends": ["prometheus", "memory"]}, environ={})
        self.configured = True

    @precondition(lambda self: self.configured)
    @rule()
    def close(self) -> None:
        self.facade.close()
        self.configured = False

    @rule(counter=counters, labels=st.lists(label_values, max_size=3), amount=values)
    def increment(self, counter: Any, labels: list[object], amount: object) -> None:
        counter.labels(*labels).inc(amount)  # never raises
        if not self.configured or self.facade.find(counter.spec.key) is not counter:
            return
        added = counted(amount)
        keys = [normalized(value) for value in labels]
        if added is None or None in keys or len(keys) != len(counter.spec.label_names):
            return
        series = (counter.spec.key, tuple(key for key in keys if key is not None))
        total = self.model.get(series, 0.0) + added
        if total < math.inf:
            self.model[series] = total

    @rule(metric=others, labels=st.lists(label_values, max_size=3), value=values)
    def record_other(self, metric: Any, labels: list[object], value: object) -> None:
        child = metric.labels(*labels)
        if hasattr(child, "observe"):
            child.observe(value)
        else:
            child.set(value)
            child.inc(value)

    @precondition(lambda self: self.configured)
    @invariant()
    def scrapes_parse_and_counters_match_the_model(self) -> None:
        backend = self.facade.backend("prometheus")
        list(openmetrics_families(backend.render(OPENMETRICS)[0].decode()))
        samples = {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(backend.render(None)[0].decode())
            for sample in family.samples
        }
        for (key, labels), expected in self.model.items():
            got = samples.get((f"{key}_total", labels))
            assert got is not None, (key, labels)
            assert math.isclose(got, expected, rel_tol=1e-9), (key, labels)

    @precondition(lambda self: self.configured)
    @rule(counter=counters)
    def fork(self, counter: Any) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(5)
            try:
                counter.labels(*("x",) * len(counter.spec.label_names)).inc()
                self.facade.backend("prometheus").render(None)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


TestHostile = Hostile.TestCase
TestHostile.settings = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
