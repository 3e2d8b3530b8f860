"""One namespace's details are made once per model (asked again at rest, the same bytes) and made
anew when the model changes: a process that joins the namespace is in the next answer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group
from namespacefs.discover import discover
from namespacefs.service import served
from namespacefs.service.served import Served
from test_service import Daemon, Holder


def test_an_answer_is_made_once_per_snapshot_and_key_and_again_for_the_next_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = discover()
    second = first.replace(taken_at=first.taken_at + 1)  # (another model: compared by identity)
    made: list[object] = []

    def make(key: object) -> bytes:
        made.append(key)
        return repr(key).encode()

    s = Served()
    assert s.answer(first, "a", lambda: make("a")) == s.answer(first, "a", lambda: make("a")) == b"'a'"
    assert made == ["a"]
    s.answer(first, "b", lambda: make("b"))
    s.answer(second, "a", lambda: make("a"))
    assert made == ["a", "b", "a"]
    monkeypatch.setattr(served, "ANSWERS", 2)  # (a client that walks every namespace keeps a few)
    for key in "cde":
        s.answer(second, key, lambda key=key: make(key))  # type: ignore[misc]
    assert len(s._answers[1]) <= 2


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, ("--interval", "600"))
    yield d
    d.stop()


def test_one_namespace_is_served_again_as_it_was_and_anew_once_a_process_joins_it(daemon: Daemon) -> None:
    holder = Holder("--uts")
    joiner: subprocess.Popen[bytes] | None = None
    try:
        uts, _ident = holder.ns("uts")
        daemon.wait_for(lambda: daemon.has(uts), timeout=30)

        def pids() -> list[Any]:
            return [p["pid"] for p in daemon.http.get(f"/api/namespaces/{uts}").json()["process_details"]]

        first = daemon.http.get(f"/api/namespaces/{uts}").content
        assert pids() == [holder.pid]
        joiner = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-u", "sleep", "600"], start_new_session=True)
        daemon.wait_for(lambda: joiner is not None and joiner.pid in pids(), timeout=30)
        assert daemon.http.get(f"/api/namespaces/{uts}").content != first
    finally:
        holder.kill()
        if joiner is not None:
            kill_group(joiner)
