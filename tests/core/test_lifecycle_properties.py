"""Any order of declare, hold, configure, record, reconfigure and close gives what a model says.

Users declare metrics at import time, keep children, bound methods and timers around, and
configure (and re-configure, and close) whenever their application gets to it. This state
machine does all of that in any order and compares every configured exposition with a
model: a recording counts exactly when the facade is configured, through whatever reference
it is made, and values recorded so far survive every re-configure and close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from support import require_module

import metricsfacade as mf

require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

#: name -> (kind, label names): fixed per name, so declarations never conflict
METRICS = {
    "life_requests_total": ("counter", ("method",)),
    "life_plain_total": ("counter", ()),
    "life_level": ("gauge", ("pool",)),
    "life_size_bytes": ("histogram", ("method",)),
    "life_latency_seconds": ("timer", ()),
}
LABEL_VALUES = ("a", "b")
CONFIGS = [
    {"port": None, "backends": ["memory"]},
    {"port": None, "backends": ["memory", "prometheus"]},
    {"port": None, "backends": ["prometheus", "memory"], "cardinality_limit": 500},
]

Series = tuple[str, tuple[str, ...]]


class Lifecycle(RuleBasedStateMachine):
    recorders = Bundle("recorders")

    def __init__(self) -> None:
        super().__init__()
        self.facade = mf.Metrics()
        self.configured = False
        #: counters and gauges: value; histograms: [count, sum]
        self.model: dict[Series, Any] = {}

    def teardown(self) -> None:
        self.facade.close()

    # -- declare and hold ------------------------------------------------------------------

    def _declare(self, name: str) -> Any:
        kind, labels = METRICS[name]
        return getattr(self.facade, kind)(name, f"{name} help", labels=list(labels))

    @rule(
        target=recorders,
        name=st.sampled_from(sorted(METRICS)),
        value=st.sampled_from(LABEL_VALUES),
        how=st.sampled_from(["child", "bound_method", "timer", "keyword_child"]),
    )
    def hold(self, name: str, value: str, how: str) -> tuple[Series, str, Callable[..., Any]]:
        """Keep a reference the way users do: a child, a bound method, a timing decorator."""
        kind, labels = METRICS[name]
        handle = self._declare(name)
        values = (value,) * len(labels)
        if not labels:
            target = handle
        elif how == "keyword_child":
            target = handle.labels(**dict(zip(labels, values, strict=True)))
        else:
            target = handle.labels(*values)
        series = (name, values)
        if kind == "counter":
            return series, "inc", target.inc
        if kind == "gauge":
            return series, "set", target.set
        if how == "timer" and kind == "timer":
            # a function decorated before configure(): it must record when called later
            return series, "timed", target.time()(lambda: None)
        return series, "observe", target.observe

    # -- configure, re-configure, close ----------------------------------------------------

    @rule(config=st.sampled_from(CONFIGS))
    def configure(self, config: dict[str, Any]) -> None:
        self.facade.configure(config, environ={})
        self.configured = True

    @precondition(lambda self: self.configured)
    @rule()
    def close(self) -> None:
        self.facade.close()
        self.configured = False

    # -- record ------------------------------------------------------------------------------

    @rule(recorder=recorders, amount=st.integers(min_value=0, max_value=1000))
    def record(self, recorder: tuple[Series, str, Callable[..., Any]], amount: int) -> None:
        series, how, call = recorder
        if how == "timed":
            call()
        else:
            call(amount)
        if not self.configured:
            return  # unconfigured: a silent no-op
        if how == "inc":
            self.model[series] = self.model.get(series, 0) + amount
        elif how == "set":
            self.model[series] = amount
        else:
            count, total = self.model.get(series, (0, 0.0))
            self.model[series] = (count + 1, total + (0.0 if how == "timed" else amount))

    # -- what the backends show --------------------------------------------------------------

    @precondition(lambda self: self.configured)
    @invariant()
    def memory_matches_the_model(self) -> None:
        memory = self.facade.backend("memory")
        for (name, values), expected in self.model.items():
            labels = dict(zip(METRICS[name][1], values, strict=True))
            if isinstance(expected, tuple):
                (record,) = [r for r in memory.records(name) if r.labels == labels]
                assert record.histogram.count == expected[0], (name, labels)
                if name != "life_latency_seconds":  # a timed call's duration is not exact
                    assert record.histogram.sum == expected[1], (name, labels)
            else:
                assert memory.value(name, labels) == expected, (name, labels)

    @precondition(lambda self: self.configured)
    @invariant()
    def exposition_matches_the_model(self) -> None:
        config = self.facade.config
        assert config is not None
        if "prometheus" not in config.backends:
            return
        text = self.facade.backend("prometheus").render(None)[0].decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        for (name, values), expected in self.model.items():
            labels = tuple(sorted(zip(METRICS[name][1], values, strict=True)))
            if isinstance(expected, tuple):
                assert samples[(f"{name}_count", labels)] == expected[0]
            else:
                assert samples[(name, labels)] == expected, (name, labels)


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
