"""Configuration: defaults, dict, TOML (top level or [metrics]), environment, and errors."""

from __future__ import annotations

import pytest

import metricsfacade as mf
from metricsfacade.config import load_config


def test_defaults_follow_the_brief():
    config = load_config(environ={})
    assert config.enabled is True
    assert config.port == 9090
    assert config.bind == "127.0.0.1"
    assert config.path == "/metrics"
    assert config.collection_interval_secs == 10
    assert config.histogram_buckets is None
    assert config.cardinality_limit == 10_000
    assert config.backends == ("prometheus",)
    assert config.strict is False
    assert config.table("prometheus").registry == "own"


def test_dict_source():
    config = load_config(
        {"port": 9464, "backends": ["memory"], "common_labels": {"service": "x"}}, environ={}
    )
    assert config.port == 9464
    assert config.backends == ("memory",)
    assert config.common_labels == {"service": "x"}


def test_toml_top_level(tmp_path):
    path = tmp_path / "metrics.toml"
    path.write_text(
        'port = 9464\nbackends = ["memory", "prometheus"]\nhistogram_buckets = [0.1, 1, 10]\n'
        '[prometheus]\nregistry = "global"\n'
    )
    config = load_config(path, environ={})
    assert config.port == 9464
    assert config.backends == ("memory", "prometheus")
    assert config.histogram_buckets == (0.1, 1.0, 10.0)
    assert config.table("prometheus").registry == "global"


def test_toml_metrics_table_inside_a_larger_file(tmp_path):
    path = tmp_path / "shadowcat.toml"
    path.write_text('[server]\nlisten = "x"\n\n[metrics]\nport = "off"\nstrict = true\n')
    config = load_config(str(path), environ={})
    assert config.port is None
    assert config.strict is True


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "metrics.toml"
    path.write_text("port = 9464\ncardinality_limit = 5\n")
    environ = {
        "METRICSFACADE_PORT": "9100",
        "METRICSFACADE_BACKENDS": "memory, prometheus",
        "METRICSFACADE_ENABLED": "false",
        "METRICSFACADE_HISTOGRAM_BUCKETS": "0.5,1,2",
        "METRICSFACADE_COMMON_LABELS": "service=shadowcat,env=prod",
        "METRICSFACADE_PROMETHEUS__REGISTRY": "global",
    }
    config = load_config(path, environ=environ)
    assert config.port == 9100
    assert config.cardinality_limit == 5  # from the file, untouched
    assert config.backends == ("memory", "prometheus")
    assert config.enabled is False
    assert config.histogram_buckets == (0.5, 1.0, 2.0)
    assert config.common_labels == {"service": "shadowcat", "env": "prod"}
    assert config.table("prometheus").registry == "global"


def test_os_environ_is_read_by_default(monkeypatch):
    monkeypatch.setenv("METRICSFACADE_PORT", "off")
    assert load_config({"port": 1234}).port is None


def test_a_metricsconfig_instance_round_trips():
    config = load_config(
        {"port": 1, "backends": ["memory"], "histogram_buckets": [1, 2]}, environ={}
    )
    assert load_config(config, environ={}) == config


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"prot": 9090}, "config dict: unknown key 'prot'"),
        ({"port": "9090"}, "config dict: port: expected an integer"),
        ({"port": 70000}, "port: expected an integer from 0 to 65535"),
        ({"enabled": "yes"}, "enabled: expected true or false"),
        ({"cardinality_limit": 0}, "cardinality_limit: expected an integer of at least 1"),
        ({"collection_interval_secs": -1}, "collection_interval_secs: expected a positive"),
        ({"histogram_buckets": [2, 1]}, "histogram_buckets: buckets must be strictly increasing"),
        ({"backends": "prometheus"}, "backends: expected a list of strings"),
        (
            {"backends": ["influx"]},
            "unknown backend 'influx' (available: datadog, memory, prometheus, statsd, "
            "or a class path",
        ),
        ({"backends": ["memory", "memory"]}, "listed twice"),
        ({"common_labels": {"bad-name": "x"}}, "common_labels: invalid label name"),
        ({"path": "metrics"}, "path: expected a URL path"),
        ({"path": "/health"}, "other than /health"),
        ({"tls_cert": "cert.pem"}, "tls_cert and tls_key"),
        ({"auth_username": "u"}, "auth_username and auth_password"),
        (
            {"prometheus": {"registry": "mine"}},
            "prometheus.registry: expected one of 'own', 'global', got 'mine'",
        ),
        ({"prometheus": {"regsitry": "own"}}, "unknown key 'prometheus.regsitry'"),
    ],
)
def test_invalid_settings_name_the_key_and_origin(source, fragment):
    with pytest.raises(mf.ConfigError) as caught:
        load_config(source, environ={})
    assert fragment in str(caught.value)


def test_toml_errors_name_the_file_and_the_dotted_key(tmp_path):
    path = tmp_path / "shadowcat.toml"
    path.write_text('[metrics]\nport = "high"\n')
    with pytest.raises(mf.ConfigError, match=f"{path}: metrics.port: expected an integer"):
        load_config(path, environ={})
    path.write_text("port = [\n")
    with pytest.raises(mf.ConfigError, match="cannot read config"):
        load_config(path, environ={})
    with pytest.raises(mf.ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"METRICSFACADE_PORT": "abc"}, "environment variable METRICSFACADE_PORT: expected an int"),
        ({"METRICSFACADE_STRICT": "maybe"}, "METRICSFACADE_STRICT: expected true or false"),
        ({"METRICSFACADE_PROT": "1"}, "unknown environment variable METRICSFACADE_PROT"),
        ({"METRICSFACADE_COMMON_LABELS": "novalue"}, "expected name=value pairs"),
        ({"METRICSFACADE_HISTOGRAM_BUCKETS": "1,x"}, "expected comma-separated numbers"),
    ],
)
def test_invalid_environment_names_the_variable(environ, fragment):
    with pytest.raises(mf.ConfigError, match=fragment):
        load_config(None, environ=environ)


def test_configure_rejects_a_bad_config_and_keeps_the_old_one():
    with mf.Metrics({"port": None, "backends": ["memory"]}, environ={}) as m:
        with pytest.raises(mf.ConfigError):
            m.configure({"port": "x"}, environ={})
        assert m.config is not None
        assert m.config.backends == ("memory",)


def test_a_common_label_named_le_is_refused() -> None:
    """A histogram's buckets carry ``le``: a common one would clash with it on every bucket."""
    with pytest.raises(mf.ConfigError, match="'le' is reserved for histogram bucket bounds"):
        mf.Metrics({"port": None, "backends": ["memory"], "common_labels": {"le": "x"}})
    with pytest.raises(mf.ConfigError, match="METRICSFACADE_COMMON_LABELS"):
        mf.Metrics(
            {"port": None, "backends": ["memory"]}, environ={"METRICSFACADE_COMMON_LABELS": "le=x"}
        )
