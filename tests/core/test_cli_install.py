"""The core stands alone: ``pip install metricsfacade`` with no extras, into a fresh venv.

The command's help and version, ``import metricsfacade`` and ``check`` work there, and a
subcommand whose extra is missing says so in one line, never with a traceback. One venv for
the module (a pip install takes seconds). A machine that cannot create a venv skips these
tests, unless ``REQUIRE_REAL_SINKS=1`` (CI) turns that into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import support
from support import sinks

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = support.REPO
#: What building the distribution reads from the working tree.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "metricsfacade")
MISSING_PROMETHEUS = (
    "the 'prometheus' backend needs the 'prometheus_client' package: "
    "pip install 'metricsfacade[prometheus]'"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the commands run: outside the repository, so nothing imports from its tree."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv (no system site-packages) with metricsfacade installed."""
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=base, timeout=120)
    if created.returncode != 0:
        sinks.unavailable(f"cannot create a venv: {created.stderr.strip()}")
    source = _copy_sources(base / "source")  # pip would write build/ into the shared tree
    python = venv / "bin" / "python"
    installed = _run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)], cwd=base, timeout=300
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"


def _copy_sources(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, target / name, ignore=ignore)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)
    return target


def _received(agent: socket.socket, line: bytes) -> bool:
    """Whether ``line`` arrives (beside any probe) before the socket's timeout."""
    try:
        while line not in agent.recv(9000).splitlines():
            pass
    except TimeoutError:
        return False
    return True


def _env() -> dict[str, str]:
    """The user's environment without this checkout's influence (PYTHONPATH, METRICSFACADE_*)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONPATH" and not name.startswith("METRICSFACADE_")
    }


def _run(args: list[str], *, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd, check=False
    )


def test_the_venv_has_the_declared_dependencies_and_no_extra(venv_bin, workdir):
    probe = (
        "import importlib.util as u, attrs, metricsfacade;"
        "print(metricsfacade.__file__);"
        "print([m for m in ('prometheus_client', 'statsd', 'datadog', 'psutil', 'orjson')"
        " if u.find_spec(m)])"
    )
    result = _run([str(venv_bin / "python"), "-c", probe], cwd=workdir)
    assert result.returncode == 0, result.stderr
    module_file, extras = result.stdout.splitlines()
    assert Path(module_file).is_relative_to(venv_bin.parent), module_file
    assert extras == "[]"


def test_help_lists_the_subcommands(venv_bin, workdir):
    result = _run([str(venv_bin / "metricsfacade"), "--help"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "{check,proxy,bench,demo}" in result.stdout
    assert result.stderr == ""


def test_version_is_the_installed_distributions(venv_bin, workdir):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = _run([str(venv_bin / "metricsfacade"), "--version"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"metricsfacade {declared}\n"


def test_the_license_ships_in_the_metadata(venv_bin, workdir):
    show = "import importlib.metadata as m; d = m.distribution('metricsfacade');"
    show += "print(d.metadata['License-Expression']); print(d.read_text('licenses/LICENSE'))"
    result = _run([str(venv_bin / "python"), "-c", show], cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MIT\nMIT License\n")
    assert "Copyright (c) 2026 the metricsfacade authors" in result.stdout


def test_check_on_a_prometheus_config_names_the_missing_extra_in_one_line(venv_bin, workdir):
    config = workdir / "prometheus.toml"
    config.write_text('port = "off"\nbackends = ["prometheus"]\n')
    result = _run([str(venv_bin / "metricsfacade"), "check", "--config", str(config)], cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] == f"FAILED to start: {MISSING_PROMETHEUS}"


def test_check_on_a_statsd_config_delivers_or_names_the_missing_extra(venv_bin, workdir):
    """Whether the statsd backend needs the ``statsd`` package is the backend's business; with
    it or without, ``check`` ends in a verdict or one line, never a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent:
        agent.bind(("127.0.0.1", 0))
        agent.settimeout(5)
        config = workdir / "statsd.toml"
        config.write_text(
            f'port = "off"\nbackends = ["statsd"]\n[statsd]\nport = {agent.getsockname()[1]}\n'
        )
        result = _run(
            [str(venv_bin / "metricsfacade"), "check", "--config", str(config)], cwd=workdir
        )
        output = result.stdout + result.stderr
        assert "Traceback" not in output
        missing = (
            "the 'statsd' backend needs the 'statsd' package: pip install 'metricsfacade[statsd]'"
        )
        if "metricsfacade[statsd]" in output:
            assert result.returncode == 1, output
            assert result.stdout.splitlines()[-1] == f"FAILED to start: {missing}"
        else:
            assert result.returncode == 0, output
            assert _received(agent, b"metricsfacade.check:1|c")


@pytest.mark.parametrize(
    "args",
    [["demo", "--duration", "1"], ["proxy", "--", "true"], ["bench", "--rounds", "1"]],
    ids=["demo", "proxy", "bench"],
)
def test_a_subcommand_without_its_extra_says_so_in_one_line(venv_bin, workdir, args):
    result = _run([str(venv_bin / "metricsfacade"), *args], cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"metricsfacade {args[0]}: {MISSING_PROMETHEUS}\n"
    assert result.stdout == ""
