"""ops.inside: code run inside other namespaces brings back its result or its error (a forked
child for any type, a thread for per-thread ones), with real namespaces."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from namespacefs.ops import inside
from runtimes import wait_for


@pytest.fixture
def other_uts() -> Iterator[tuple[int, int]]:
    """A process in a uts namespace of its own (hostname nsfs-inside); (its pid, an fd of the namespace)."""
    proc = subprocess.Popen(["unshare", "-u", "sh", "-c", "hostname nsfs-inside && exec sleep 60"])
    try:
        wait_for(lambda: os.stat(f"/proc/{proc.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino
                 and os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"))
        fd = os.open(f"/proc/{proc.pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        yield proc.pid, fd
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


def test_call_runs_in_the_joined_namespaces_and_returns_the_result(other_uts: tuple[int, int]) -> None:
    pid, fd = other_uts
    assert inside.call(lambda: os.uname().nodename, inside.Join(fds={"uts": fd})) == "nsfs-inside"
    pidfd = os.pidfd_open(pid)
    try:
        assert inside.call(lambda: os.uname().nodename, inside.Join(pidfd, ("uts",), pid)) == "nsfs-inside"
    finally:
        os.close(pidfd)
    assert os.uname().nodename != "nsfs-inside"  # the caller's own namespaces never change


def test_call_raises_the_childs_error_and_says_when_it_sent_none() -> None:
    with pytest.raises(ZeroDivisionError):
        inside.call(lambda: 1 // 0)
    with pytest.raises(FileNotFoundError) as e:
        inside.call(lambda: os.stat("/nonexistent/nsfs"))
    assert e.value.filename == "/nonexistent/nsfs"
    with pytest.raises(inside.ChildDied):
        inside.call(lambda: os._exit(3))
    bad = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:  # joining a uts fd as a net namespace: the kernel's EINVAL comes back
        with pytest.raises(OSError):
            inside.call(lambda: None, inside.Join(fds={"net": bad}))
    finally:
        os.close(bad)


def test_in_thread_joins_per_thread_types_only(other_uts: tuple[int, int]) -> None:
    _, fd = other_uts
    assert inside.in_thread(fd, "uts", lambda: os.uname().nodename) == "nsfs-inside"
    assert os.uname().nodename != "nsfs-inside"
    with pytest.raises(ValueError, match="cannot join a user namespace"):
        inside.in_thread(fd, "user", lambda: None)
    with pytest.raises(KeyError):
        inside.in_thread(fd, "uts", lambda: {}["missing"])
