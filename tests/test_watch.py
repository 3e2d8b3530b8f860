"""`nsfs watch`: lifecycle events by default, process membership on request, and never the
project's own helper processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group
from namespacefs.discover import discover
from namespacefs.service.events import LIFECYCLE, events_between, own_helpers


class Unshared:
    """`unshare -u sleep 600` in a process group of its own: a uts namespace of ours."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-u", "sleep", "600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.proc.pid}/exe").endswith("unshare"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        self.pid = self.proc.pid
        self.inode = os.stat(f"/proc/{self.pid}/ns/uts").st_ino


@pytest.fixture
def unshared() -> Iterator[list[Unshared]]:
    made: list[Unshared] = []
    yield made
    for u in made:
        kill_group(u.proc)


def _watch(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "namespacefs", "watch", "-J", "--no-daemon", "--interval", "0.5",
                             "-t", "uts", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "NSFS_DB": str(tmp_path / "names.db")})


def _read_until(watch: subprocess.Popen[str], seen: list[dict[str, Any]], done: Any, timeout: float, poke: Any = None) -> None:
    assert watch.stdout is not None
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline and watch.poll() is None, f"not seen; got {seen[-5:]}"
        if poke is not None:
            poke()
        ready, _, _ = select.select([watch.stdout], [], [], 1.0)
        if ready:
            seen.append(json.loads(watch.stdout.readline()))


def test_watch_reports_lifecycle_events_and_no_process_membership_by_default(
        tmp_path: Path, unshared: list[Unshared]) -> None:
    watch = _watch(tmp_path)
    seen: list[dict[str, Any]] = []
    joiners: list[subprocess.Popen[bytes]] = []
    try:
        def ours(kind: str) -> bool:
            return any(e["event"] == kind and e["inode"] in {u.inode for u in unshared} for e in seen)

        def make() -> None:  # the watcher announces nothing when ready: make one until it is reported
            if not ours("created"):
                unshared.append(Unshared())
                # a process joining it: a `joined` event, which the default must leave out
                joiners.append(subprocess.Popen(["nsenter", "-t", str(unshared[-1].pid), "-u", "sleep", "30"],
                                                start_new_session=True))

        _read_until(watch, seen, lambda: ours("created"), 90, make)
        victim = next(u for u in unshared if any(e["event"] == "created" and e["inode"] == u.inode for e in seen))
        time.sleep(1.5)  # three rescans: any joined event would have been printed by now
        for j in joiners:
            kill_group(j)
        kill_group(victim.proc)
        _read_until(watch, seen, lambda: any(e["event"] == "destroyed" and e["inode"] == victim.inode for e in seen), 60)
    finally:
        for j in joiners:
            if j.poll() is None:
                kill_group(j)
        kill_group(watch)
    assert {e["event"] for e in seen} <= set(LIFECYCLE), seen


def test_watch_processes_adds_joined_and_left(tmp_path: Path, unshared: list[Unshared]) -> None:
    watch = _watch(tmp_path, "--processes")
    seen: list[dict[str, Any]] = []
    joiners: list[subprocess.Popen[bytes]] = []
    try:
        def joined() -> bool:
            return any(e["event"] == "joined" and e.get("pid") in {j.pid for j in joiners} for e in seen)

        def make() -> None:
            if not joined() and len(joiners) < 60:
                if not unshared:
                    unshared.append(Unshared())
                joiners.append(subprocess.Popen(["nsenter", "-t", str(unshared[0].pid), "-u", "sleep", "30"],
                                                start_new_session=True))

        _read_until(watch, seen, joined, 90, make)
    finally:
        for j in joiners:
            kill_group(j)
        kill_group(watch)


def test_a_fork_of_the_scanning_process_is_in_no_event_and_a_program_it_runs_is() -> None:
    """The daemon forks a second reader on each rescan; a fork that did not exec is ours."""
    before = discover()
    program = subprocess.Popen(["sleep", "60"])
    child = os.fork()
    if child == 0:  # pragma: no cover - the fork only sleeps (as a reader would read) and exits
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while "python" in os.path.basename(os.readlink(f"/proc/{program.pid}/exe")):  # until it exec'd sleep
            assert time.monotonic() < deadline
        during = discover()
        assert child in during.processes and program.pid in during.processes
        assert child in own_helpers(during) and program.pid not in own_helpers(during)
        joined = {e.pid for e in events_between(before, during, time.time()) if e.kind == "joined"}
        assert program.pid in joined  # an ordinary new process is reported (with --processes)
        assert child not in joined
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        program.kill()
        program.wait()
    after = discover()
    left = {e.pid for e in events_between(during, after, time.time()) if e.kind == "left"}
    assert program.pid in left and child not in left
