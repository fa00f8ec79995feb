"""The ``metrics_mock`` pytest fixture, registered through the ``pytest11`` entry point."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metricsfacade.testing import MetricsMock


@pytest.fixture
def metrics_mock() -> Iterator[MetricsMock]:
    """The global facade recording into memory for one test; see MetricsMock's assertions."""
    with MetricsMock() as mock:
        yield mock
