"""Third-party backends and config tables: found by class path or by entry point, each
backend built from its own table only, and checked by ``metricsfacade check``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest

import metricsfacade as mf
from metricsfacade.check import run_check
from metricsfacade.config import load_config

SINK_MODULE = '''
from __future__ import annotations

import attrs

from metricsfacade import settings as parse
from metricsfacade.backends import PushBackend
from metricsfacade.settings import InvalidSetting, setting

SENT = []


@attrs.frozen
class ListSinkSettings:
    target: str = setting("nowhere", parse.string)
    flush_interval_secs: float = setting(0.05, parse.positive_float, parse.positive_float_text)

    def __attrs_post_init__(self):
        if self.target == "forbidden":
            raise InvalidSetting("target: 'forbidden' is not a place")


class ListSink(PushBackend):
    """Keeps every counter increase it is sent, with the settings it was built from."""

    name = "listsink"
    Settings = ListSinkSettings

    def __init__(self, settings, common_labels):
        self.settings = settings
        self.common_labels = dict(common_labels)
        self.flush_interval = settings.flush_interval_secs

    @classmethod
    def build(cls, settings, common_labels):
        return cls(settings, common_labels)

    def describe(self):
        return f"list://{self.settings.target}"

    def send(self, changes):
        for spec, label_values, increase in changes.counters:
            SENT.append((spec.name, label_values, increase))


class NotABackend:
    name = "imposter"
'''


@pytest.fixture
def sink_module(tmp_path, monkeypatch):
    (tmp_path / "listsink_plugin.py").write_text(textwrap.dedent(SINK_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("listsink_plugin", None)
    yield __import__("listsink_plugin")
    sys.modules.pop("listsink_plugin", None)


def test_a_backend_by_class_path_gets_its_own_table_and_every_increase(sink_module):
    facade = mf.Metrics(
        {
            "port": None,
            "backends": ["listsink_plugin:ListSink"],
            "common_labels": {"env": "test"},
            "listsink": {"target": "here"},
        },
        environ={},
    )
    try:
        backend = facade.backend("listsink")
        assert backend.settings == sink_module.ListSinkSettings(target="here")
        assert backend.common_labels == {"env": "test"}
        requests = facade.counter("plugin_requests_total", "Requests", ["method"])
        for _ in range(1000):
            requests.labels("get").inc()
        facade.flush()
    finally:
        facade.close()
    sent = [entry for entry in sink_module.SENT if entry[0] == "plugin_requests_total"]
    assert sum(increase for _, _, increase in sent) == 1000
    assert {labels for _, labels, _ in sent} == {("get",)}


def test_a_dotted_class_path_works_too(sink_module):
    config = load_config({"backends": ["listsink_plugin.ListSink"], "port": None}, environ={})
    assert config.table("listsink") == sink_module.ListSinkSettings()


def test_the_tables_settings_are_validated_with_key_and_origin(sink_module):
    base = {"backends": ["listsink_plugin:ListSink"], "port": None}
    with pytest.raises(mf.ConfigError, match=r"config dict: unknown key 'listsink\.colour'"):
        load_config({**base, "listsink": {"colour": "red"}}, environ={})
    with pytest.raises(mf.ConfigError, match=r"listsink\.target: 'forbidden' is not a place"):
        load_config({**base, "listsink": {"target": "forbidden"}}, environ={})
    config = load_config(base, environ={"METRICSFACADE_LISTSINK__TARGET": "from-env"})
    assert config.table("listsink").target == "from-env"
    with pytest.raises(mf.ConfigError, match="METRICSFACADE_LISTSINK__COLOUR"):
        load_config(base, environ={"METRICSFACADE_LISTSINK__COLOUR": "red"})


def test_a_table_of_an_unlisted_unregistered_backend_is_an_unknown_key(sink_module):
    with pytest.raises(mf.ConfigError, match=r"unknown key 'listsink'"):
        load_config({"backends": ["memory"], "listsink": {"target": "x"}}, environ={})


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("listsink_plugin:NotABackend", "is not a metricsfacade Backend class"),
        ("listsink_plugin:Missing", "cannot load 'listsink_plugin:Missing'"),
        ("no_such_module_anywhere:Sink", "cannot load 'no_such_module_anywhere:Sink'"),
        ("influx", "unknown backend 'influx'"),
    ],
)
def test_a_backend_that_cannot_be_found_is_a_config_error(sink_module, reference, message):
    with pytest.raises(mf.ConfigError, match=message):
        load_config({"backends": [reference]}, environ={})


def test_check_reports_a_third_party_push_backend_by_its_description(sink_module, tmp_path):
    config = tmp_path / "metrics.toml"
    config.write_text(
        'port = "off"\nbackends = ["listsink_plugin:ListSink"]\n[listsink]\ntarget = "box"\n'
    )
    out = io.StringIO()
    assert run_check(str(config), out, environ={}) == 0, out.getvalue()
    assert "listsink   ok     metricsfacade_check_total sent to list://box" in out.getvalue()


def test_an_installed_distribution_registers_a_backend_and_a_table_by_entry_point(tmp_path):
    """As ``pip install`` leaves a plugin: a module and a dist-info with entry points."""
    (tmp_path / "listsink_plugin.py").write_text(
        textwrap.dedent(SINK_MODULE)
        + textwrap.dedent("""
            @attrs.frozen
            class ExtraSettings:
                level: int = setting(1, parse.integer(0), parse.integer_text(0))
        """)
    )
    dist_info = tmp_path / "listsink_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: listsink-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[metricsfacade.backends]\nlistsink = listsink_plugin:ListSink\n\n"
        "[metricsfacade.config_tables]\nextra = listsink_plugin:ExtraSettings\n"
    )
    script = textwrap.dedent("""
        import metricsfacade as mf, listsink_plugin
        m = mf.Metrics({"port": None, "backends": ["listsink", "memory"],
                        "listsink": {"target": "t"}, "extra": {"level": 3}}, environ={})
        m.counter("ep_total", "x").inc(5)
        m.flush()
        print(m.backend("listsink").describe(), m.config.table("extra").level,
              [e for e in listsink_plugin.SENT if e[0] == "ep_total"])
        m.close()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "list://t 3 [('ep_total', (), 5.0)]"
