"""Shared fixtures: real namespaces made by helper processes that the test owns and kills."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
NSHOLDER = HERE / "nsholder.py"


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill the process group we created for proc (and only that), then reap proc."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value for the duration, then as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@pytest.fixture(autouse=True, scope="session")
def private_names_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test touches the host's names database: whatever a test runs without --db (in this
    process or as `nsfs`) uses one of the session's own."""
    with environment("NSFS_DB", str(tmp_path_factory.mktemp("names") / "names.db")):
        yield


@pytest.fixture(autouse=True, scope="session")
def no_host_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test talks to a daemon the host (or another checkout) runs on the default socket: its
    snapshot would stand in for the scan a test expects. Tests that start a daemon of their own
    point NSFS_SOCKET at it."""
    with environment("NSFS_SOCKET", str(tmp_path_factory.mktemp("nodaemon") / "api.sock")):
        yield


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a command in a process group of its own; every group is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, start_new_session=True, text=True, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc)


@pytest.fixture
def holder(spawn: Callable[..., subprocess.Popen[str]]) -> Callable[..., dict[str, Any]]:
    """Make one namespace shape with tests/nsholder.py; returns what it reported (pid, inodes)."""

    def make(shape: str, *args: str) -> dict[str, Any]:
        proc = spawn([sys.executable, str(NSHOLDER), shape, *args], stdout=subprocess.PIPE)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"nsholder {shape} failed to start")
        return json.loads(line)

    return make


def nsfs(*args: str, user: str | None = None, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real `nsfs` command (as another user with setpriv when asked)."""
    argv = [sys.executable, "-m", "namespacefs", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *argv]  # user: a uid
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result
