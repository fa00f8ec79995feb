"""`metricsfacade check`, run as a real subprocess against real sockets."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import closed_udp_port


def run_check(config: Path | None, *, env: dict[str, str] | None = None):
    args = [sys.executable, "-m", "metricsfacade", "check"]
    if config is not None:
        args += ["--config", str(config)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.fixture
def udp_agent():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    yield receiver
    receiver.close()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metrics.toml"
    path.write_text(text)
    return path


def test_all_backends_reachable_exit_0(tmp_path, udp_agent):
    port = udp_agent.getsockname()[1]
    config = _write(
        tmp_path,
        f'port = 0\nbackends = ["prometheus", "statsd", "datadog"]\n'
        f'[statsd]\nport = {port}\n[datadog]\nhost = "127.0.0.1"\nport = {port}\n',
    )
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backends: prometheus, statsd, datadog" in result.stdout
    endpoint = re.search(r"endpoint: http://127\.0\.0\.1:(\d+)/metrics", result.stdout)
    assert endpoint, result.stdout
    assert int(endpoint.group(1)) != 0, "port = 0 reports the port the system picked"
    assert "prometheus ok" in result.stdout
    assert f"statsd     ok     metricsfacade_check_total sent to udp://127.0.0.1:{port}" in (
        result.stdout
    )
    received = b"\n".join(udp_agent.recv(9000) for _ in range(2))
    assert b"metricsfacade.check:1|c" in received


def test_an_unreachable_agent_exits_1_and_names_it(tmp_path):
    port = closed_udp_port()
    config = _write(
        tmp_path, f'port = "off"\nbackends = ["prometheus", "statsd"]\n[statsd]\nport = {port}\n'
    )
    result = run_check(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "endpoint: none" in result.stdout
    assert "prometheus ok" in result.stdout
    assert f"statsd     FAILED nothing listens on udp://127.0.0.1:{port}" in result.stdout


def test_a_refused_tcp_agent_exits_1(tmp_path):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    config = _write(
        tmp_path,
        f'port = "off"\nbackends = ["statsd"]\n[statsd]\nprotocol = "tcp"\nport = {port}\n',
    )
    result = run_check(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"could not deliver to tcp://127.0.0.1:{port} (send_failed=1" in result.stdout


def test_a_busy_endpoint_port_exits_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _write(tmp_path, f"port = {busy.getsockname()[1]}\n")
        result = run_check(config)
    assert result.returncode == 1
    assert "FAILED to start" in result.stdout
    assert "already in use" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics]\nport = 'x'\n", "metrics.port: expected an integer"),
        ("[statsd]\nprotocol = 'smoke'\n", "statsd.protocol: expected one of 'udp', 'tcp', 'unix'"),
        ("colour = 1\n", "unknown key 'colour'"),
    ],
)
def test_a_configuration_error_exits_2_naming_key_and_file(tmp_path, text, message):
    config = _write(tmp_path, text)
    result = run_check(config)
    assert result.returncode == 2
    assert f"configuration error: {config}: " in result.stdout
    assert message in result.stdout


def test_environment_errors_exit_2_naming_the_variable():
    result = run_check(None, env={"METRICSFACADE_STATSD__PORT": "many", "PATH": ""})
    assert result.returncode == 2
    assert "environment variable METRICSFACADE_STATSD__PORT" in result.stdout
