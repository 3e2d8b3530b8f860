"""A bind mount of a namespace made in another mount namespace, after the daemon started, is in the
model within the bound: the daemon polls (POLLPRI) each mount namespace's mountinfo. The sweep and
the full scans run 10 minutes apart here, so only the poll can see it in time."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from namespacefs.service import client
from namespacefs.service.events import Event
from test_service import Daemon, Holder

BOUND = 1.0  # generous for a loaded machine; the target is ~20 ms
QUIET = ("--interval", "600", "--sweep", "600")


@pytest.fixture
def quiet_daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, QUIET)
    yield d
    d.stop()


def _events(d: Daemon) -> queue.Queue[Event]:
    stream = client.stream_events(d.socket, kinds="created,destroyed", types="net")
    assert stream is not None
    got: queue.Queue[Event] = queue.Queue()
    threading.Thread(target=lambda: [got.put(e) for e in stream], daemon=True).start()
    return got


def _bindmounts(d: Daemon, inode: int) -> list[dict[str, Any]]:
    found = d.http.get(f"/api/namespaces/{inode}")
    return [h for h in found.json()["holders"] if h["kind"] == "bindmount"] if found.status_code == 200 else []


def _seen_within(check: Any, bound: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound + 30, "never seen"
        time.sleep(0.005)
    return time.monotonic() - start


def test_a_bind_mount_in_another_mount_namespace_is_seen_by_the_poll(quiet_daemon: Daemon, tmp_path: Path) -> None:
    d = quiet_daemon
    box = Holder("--mount", "--propagation", "private")  # a mount namespace of its own
    net = Holder("--net")
    target = tmp_path / "netns-pin"
    target.touch()
    try:
        inode = net.ns("net")[0]
        mnt = box.ns("mnt")[0]
        d.wait_for(lambda: d.has(inode) and d.has(mnt))
        d.wait_for(lambda: d.status()["mechanisms"]["mountinfo_poll"]["watched"] > 0)
        poll = d.status()["mechanisms"]["mountinfo_poll"]
        assert poll["running"] and poll["error"] is None, poll
        events = _events(d)
        subprocess.run(["nsenter", "-t", str(box.pid), "-m", "--", "mount", "--bind", f"/proc/{net.pid}/ns/net",
                        str(target)], check=True)
        took = _seen_within(lambda: any(h.get("path") == str(target) for h in _bindmounts(d, inode)), BOUND)
        assert took < BOUND, f"the bind mount was seen after {took:.3f} s"
        net.kill()  # now only the bind mount in the other mount namespace holds it
        time.sleep(0.5)
        assert d.has(inode) and _bindmounts(d, inode)
        clock = time.time()
        subprocess.run(["nsenter", "-t", str(box.pid), "-m", "--", "umount", str(target)], check=True)
        deadline = time.monotonic() + BOUND + 30
        while True:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
            if event.kind == "destroyed" and event.inode == inode:
                break
        assert event.time - clock < BOUND, f"destroyed {event.time - clock:.3f} s after the umount"
        assert d.status()["mechanisms"]["mountinfo_poll"]["changes"] >= 2
    finally:
        net.kill()
        box.kill()


def test_the_poll_watches_a_bounded_number_of_mount_namespaces(quiet_daemon: Daemon) -> None:
    poll = quiet_daemon.status()["mechanisms"]["mountinfo_poll"]
    assert poll["watched"] <= poll["limit"]
    mounts = sum(1 for ns in quiet_daemon.http.get("/api/namespaces?type=mnt").json() if ns["processes"])
    assert poll["watched"] + poll["unwatched"] >= min(mounts, poll["limit"]) - 5  # (others' come and go)


def test_a_bind_mount_goes_with_the_mount_namespace_it_was_made_in(tmp_path: Path) -> None:
    """A net namespace held only by a bind mount in a private mount namespace: when the last
    process of that mount namespace ends, the mount namespace is gone and its table can no longer
    be read; the bind mount goes with it, and so does the net namespace (it was kept forever, as
    held by a mount table no one could re-read)."""
    from namespacefs.discover import discover, incremental

    target = tmp_path / "netns"
    target.touch()
    net = Holder("--net")
    mounter = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"mount --bind /proc/{net.pid}/ns/net {target} && exec sleep 600"], start_new_session=True)
    try:
        inode, _ident = net.ns("net")
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{mounter.pid}/exe").resolve().name.startswith("sleep"):
            assert time.monotonic() < deadline and mounter.poll() is None, "the bind mount was not made"
            time.sleep(0.02)
        model = incremental.refresh(discover(), {mounter.pid}, mounts=True)
        held = model.get(inode)
        assert held is not None and any(h.kind == "bindmount" for h in held.holders), held
        net.kill()
        model = incremental.refresh(model, {net.pid})
        held = model.get(inode)
        assert held is not None and [h.kind for h in held.holders] == ["bindmount"], held
        mounter.kill()
        mounter.wait()
        deadline = time.monotonic() + 20
        while (held := model.get(inode)) is not None:  # (the kernel frees a net namespace a little later)
            assert time.monotonic() < deadline, f"still in the model: {held}"
            model = incremental.refresh(model, {mounter.pid}, recheck=True)
            time.sleep(0.1)
    finally:
        net.kill()
        mounter.kill()
        mounter.wait()
