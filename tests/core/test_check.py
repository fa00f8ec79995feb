"""`metricsfacade check` as a user runs it: common labels, port 0, what a UDP agent receives,
and every configuration error naming its file. Real subprocesses and real sockets."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import closed_udp_port, eventually

CHECK_LINE = b"metricsfacade.check:1|c"


def run_check(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METRICSFACADE_", "DD_"))}
    return subprocess.run(
        [sys.executable, "-m", "metricsfacade", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **env},
        check=False,
    )


def _write(tmp_path: Path, text: str | bytes, name: str = "metrics.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def udp_agents():
    """UDP sockets standing in for agents; each one's datagrams are read by ``_datagrams``."""
    sockets: list[socket.socket] = []

    def make() -> socket.socket:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        sockets.append(receiver)
        return receiver

    yield make
    for receiver in sockets:
        receiver.close()


def _datagrams(receiver: socket.socket) -> list[bytes]:
    """Every datagram queued on ``receiver`` (the check has exited: nothing more comes)."""
    receiver.settimeout(0.2)
    received = []
    while True:
        try:
            received.append(receiver.recv(65536))
        except TimeoutError:
            return received


# -- 1. Prometheus, read through the parsed exposition --------------------------------------


@pytest.mark.parametrize("port", ["0", '"off"'], ids=["endpoint", "exposition"])
def test_prometheus_passes_with_common_labels(tmp_path, port):
    config = _write(tmp_path, f'port = {port}\ncommon_labels = {{env = "prod", team = "a"}}\n')
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prometheus ok     metricsfacade_check_total served" in result.stdout


def test_prometheus_passes_with_common_labels_from_the_environment(tmp_path):
    config = _write(tmp_path, 'port = "off"\n')
    result = run_check(config, METRICSFACADE_COMMON_LABELS="env=prod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prometheus ok" in result.stdout


def test_prometheus_behind_basic_auth_is_fetched_with_its_credentials(tmp_path):
    config = _write(tmp_path, 'port = 0\nauth_username = "scraper"\nauth_password = "s3cret"\n')
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prometheus ok" in result.stdout


def test_prometheus_over_tls_is_fetched_trusting_its_own_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = shlex.split(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=metrics.example"
    )
    subprocess.run([*command, "-keyout", key, "-out", cert], check=True, capture_output=True)
    config = _write(tmp_path, f'port = 0\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"prometheus ok .* at https://127\.0\.0\.1:\d+/metrics", result.stdout)


# -- 2. the real port -----------------------------------------------------------------------


def test_port_0_reports_the_port_actually_served(tmp_path):
    config = _write(tmp_path, 'port = 0\npath = "/custom"\n')
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^endpoint: http://127\.0\.0\.1:(\d+)/custom \(", result.stdout, re.M)
    assert match, result.stdout
    port = int(match.group(1))
    assert port != 0
    assert f"served at http://127.0.0.1:{port}/custom" in result.stdout


# -- 3. a UDP agent receives the check metric's own lines and nothing else -----------------


def test_udp_agents_receive_only_the_check_line(tmp_path, udp_agents):
    statsd_agent, datadog_agent = udp_agents(), udp_agents()
    config = _write(
        tmp_path,
        f'port = "off"\nbackends = ["statsd", "datadog"]\ncommon_labels = {{env = "prod"}}\n'
        f"[statsd]\nport = {statsd_agent.getsockname()[1]}\n"
        f'[datadog]\nhost = "127.0.0.1"\nport = {datadog_agent.getsockname()[1]}\n',
    )
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    for agent in (statsd_agent, datadog_agent):
        lines = [line for datagram in _datagrams(agent) for line in datagram.split(b"\n")]
        assert lines == [CHECK_LINE + b"|#env:prod"] * 2, lines


def test_a_real_statsd_daemon_counts_the_check_and_sees_no_bad_line(tmp_path, statsd_daemon):
    config = _write(
        tmp_path, f'port = "off"\nbackends = ["statsd"]\n[statsd]\nport = {statsd_daemon.port}\n'
    )
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    eventually(
        lambda: statsd_daemon.counters().get("metricsfacade.check") == 2,
        interval=0.05,
        message=lambda: f"the daemon's counters: {statsd_daemon.counters()}",
    )
    assert [name for name in statsd_daemon.counters() if name.startswith("metricsfacade.")] == [
        "metricsfacade.check"
    ]
    assert statsd_daemon.bad_lines_seen == 0


def test_an_absent_agent_fails_and_its_drops_reach_no_other_agent(tmp_path, udp_agents):
    absent = closed_udp_port()
    datadog_agent = udp_agents()
    config = _write(
        tmp_path,
        f'port = "off"\nbackends = ["statsd", "datadog"]\n[statsd]\nport = {absent}\n'
        f'[datadog]\nhost = "127.0.0.1"\nport = {datadog_agent.getsockname()[1]}\n',
    )
    result = run_check(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"statsd     FAILED nothing listens on udp://127.0.0.1:{absent} (send_failed=2)"
        in result.stdout
    )
    assert "datadog    ok" in result.stdout
    lines = [line for datagram in _datagrams(datadog_agent) for line in datagram.split(b"\n")]
    assert lines == [CHECK_LINE] * 2, lines


# -- 4. every configuration error names the file, never a traceback ------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('backends = ["prometheus", "nope"]\n', "backends: unknown backend 'nope'"),
        ('backends = ["memory", "memory"]\n', "backends: a backend is listed twice"),
        ('path = "/health"\n', "path: expected a URL path"),
        ('tls_cert = "cert.pem"\n', "tls_cert and tls_key: set both"),
        ('auth_username = "u"\n', "auth_username and auth_password: set both"),
        ('[statsd]\nprotocol = "unix"\n', "statsd.socket_path: required"),
        (
            'common_labels = {env = "prod"}\n[[custom_metrics]]\nname = "jobs_total"\n'
            'kind = "counter"\nlabels = ["env"]\n',
            "label 'env' is also a common label",
        ),
        (b'port = "\xff"\n', "cannot read config: not UTF-8 text"),
        ("port = [[[\n", "cannot read config"),
    ],
    ids=[
        "unknown-backend",
        "backend-twice",
        "path",
        "tls",
        "auth",
        "unix-socket",
        "custom-metric-label",
        "not-utf8",
        "bad-toml",
    ],
)
def test_a_configuration_error_names_the_file(tmp_path, text, message):
    config = _write(tmp_path, text)
    result = run_check(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"configuration error: {config}: "), result.stdout
    assert message in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_a_directory_a_fifo_or_a_missing_file_is_named(tmp_path):
    """A FIFO is refused, not opened: reading it would wait for a writer forever."""
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    for path, message in [
        (tmp_path, "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path / "no.toml", "not found"),
    ]:
        result = run_check(path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith(f"configuration error: {path}: ")
        assert message in result.stdout


def test_an_error_the_environment_causes_names_the_file_and_the_environment(tmp_path):
    config = _write(tmp_path, 'backends = ["memory"]\n')
    result = run_check(config, METRICSFACADE_BACKENDS="memory,memory")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(
        f"configuration error: {config} with the METRICSFACADE_* environment variables: "
        "backends: a backend is listed twice"
    )
    result = run_check(config, METRICSFACADE_STATSD__PORT="many")
    assert result.returncode == 2, result.stdout + result.stderr
    expected = "environment variable METRICSFACADE_STATSD__PORT: expected an integer"
    assert expected in result.stdout
    assert f"(applied over the config file {config})" in result.stdout
    custom = _write(
        tmp_path, '[[custom_metrics]]\nname = "jobs_total"\nkind = "counter"\nlabels = ["env"]\n'
    )
    result = run_check(custom, METRICSFACADE_COMMON_LABELS="env=prod")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == (
        f"configuration error: {custom} with the METRICSFACADE_* environment variables: "
        "counter 'jobs_total' (labels [env]): label 'env' is also a common label in the config\n"
    )
