"""Long mount tables: a namespace bind-mounted at the very end of a mount table of more than 64 KiB is
found, in the host's mount namespace and in a private one (the kernel serves mountinfo through
seq_file, about a page per read(): a short read is not the end of the file). A net namespace
bind-mounted inside a mount namespace that no process is in (held only by an fd) is found too.

Run as a script, this file is the helper process that builds such a private mount namespace:
    python test_longmounts.py private DIR COUNT    (a long table in a mount namespace of its own)
    python test_longmounts.py orphan DIR           (a mount namespace held only by our fd)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from namespacefs import kernel

MS_PRIVATE = 0x40000
MS_REC = kernel.MS_REC
TABLE = 64 * 1024
#: long mount points: fewer mounts for the same size of table
STEM = "m" * 180


def _new_net_fd() -> int:
    """An fd of a new net namespace, made by a thread that then ends (so no task stays in it)."""
    out: list[int] = []

    def make() -> None:
        kernel.unshare(kernel.CLONE_FLAGS["net"])
        out.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    return out[0]


def fill(directory: str, count: int) -> list[str]:
    """count tmpfs mounts under directory (made private first, so nothing propagates anywhere),
    then an empty file at the end for a namespace to be bound on; the mount points, newest last."""
    kernel.mount(directory, directory, None, kernel.MS_BIND)
    kernel.mount("none", directory, None, MS_PRIVATE)
    made = [directory]
    for i in range(count):
        point = os.path.join(directory, f"{STEM}{i:04d}")
        os.mkdir(point)
        kernel.mount("none", point, "tmpfs", 0, "size=4k")
        made.append(point)
    return made


def bind_net(fd: int, target: str) -> int:
    with open(target, "w"):
        pass
    kernel.mount(f"/proc/self/fd/{fd}", target, None, kernel.MS_BIND)
    return os.fstat(fd).st_ino


def _print(**info: object) -> None:
    print(json.dumps({"pid": os.getpid(), **info}), flush=True)


def _private(directory: str, count: int) -> None:
    kernel.unshare(kernel.CLONE_FLAGS["mnt"])
    kernel.mount("none", "/", None, MS_REC | MS_PRIVATE)
    fill(directory, count)
    fd = _new_net_fd()
    net = bind_net(fd, os.path.join(directory, "zz-net"))
    os.close(fd)
    with open("/proc/self/mountinfo", "rb") as f:
        size = len(f.read())
    _print(net=net, mnt=os.stat("/proc/self/ns/mnt").st_ino, path=os.path.join(directory, "zz-net"), size=size)
    threading.Event().wait()


def _orphan(directory: str) -> None:
    """A child makes a mount namespace with a net namespace bound inside it and exits; we keep
    only an fd of that mount namespace."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            kernel.unshare(kernel.CLONE_FLAGS["mnt"])
            kernel.mount("none", "/", None, MS_REC | MS_PRIVATE)
            kernel.mount("none", directory, "tmpfs", 0, "size=64k")
            fd = _new_net_fd()
            net = bind_net(fd, os.path.join(directory, "held-net"))
            os.write(w, json.dumps({"net": net}).encode())
            os.close(w)
            threading.Event().wait(timeout=30)  # the parent opens our mount namespace, then kills us
        finally:
            os._exit(0)
    os.close(w)
    info = json.loads(os.read(r, 4096))
    mnt_fd = os.open(f"/proc/{child}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    os.kill(child, 9)
    os.waitpid(child, 0)
    _print(net=info["net"], mnt=os.fstat(mnt_fd).st_ino, fd=mnt_fd, path=os.path.join(directory, "held-net"))
    threading.Event().wait()


if __name__ == "__main__":
    if sys.argv[1] == "private":
        _private(sys.argv[2], int(sys.argv[3]))
    else:
        _orphan(sys.argv[2])
    sys.exit(0)


# --- the tests ----------------------------------------------------------------------------------

import pytest  # noqa: E402

from conftest import environment, nsfs  # noqa: E402
from namespacefs import discover  # noqa: E402
from namespacefs.discover.processes import read_at  # noqa: E402
from namespacefs.model import Namespace  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture(autouse=True, scope="module")
def no_daemon() -> Iterator[None]:
    """Scans of our own: a `nsfs serve` someone runs on this machine must not answer for us."""
    with environment("NSFS_NO_DAEMON", "1"):
        yield


def _count_for(size: int) -> int:
    line = len(f"999 888 0:99 / /tmp/pytest-of-root/pytest-99/x0/{STEM}0000 rw,relatime shared:999 - tmpfs none rw,size=4k\n")
    return size // line + 20


def _bindmount_paths(ns: Namespace | None) -> list[str]:
    return [h.path for h in (ns.holders if ns else ()) if h.kind == "bindmount" and h.path]


@pytest.fixture
def long_host_table(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A host mount table of more than 64 KiB whose last mount is a bind-mounted net namespace (held
    by nothing else); all unmounted at teardown."""
    where = tmp_path / "long"
    where.mkdir()
    made: list[str] = []
    try:
        made = fill(str(where), _count_for(TABLE))
        fd = _new_net_fd()
        target = str(where / "zz-net")
        net = bind_net(fd, target)
        os.close(fd)
        made.append(target)
        assert len(read_at("/proc/self/mountinfo")) > TABLE
        yield net, target
    finally:
        for point in reversed(made):
            with contextlib.suppress(OSError):
                kernel.umount(point, kernel.MNT_DETACH)


def test_one_read_of_a_long_mount_table_is_not_all_of_it(long_host_table: tuple[int, str]) -> None:
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY)
    try:
        first = os.read(fd, TABLE)
    finally:
        os.close(fd)
    whole = read_at("/proc/self/mountinfo")
    assert len(first) < len(whole)  # why read_at must go on to b"": seq_file stops near a page
    assert whole.rstrip(b"\n").rsplit(b"\n", 1)[-1].split(b" ")[4].decode() == long_host_table[1]


def test_a_bind_mount_at_the_end_of_a_long_host_table_is_found(long_host_table: tuple[int, str]) -> None:
    net, target = long_host_table
    snap = discover.discover(("process", "bindmount"))
    assert _bindmount_paths(snap.get(net)) == [target]
    shown = nsfs("ls", "-t", "net", "-J", "--sources", "process,bindmount")
    assert any(ns["inode"] == net for ns in json.loads(shown.stdout)["namespaces"])


def test_a_bind_mount_at_the_end_of_a_long_private_table_is_found(
        tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]) -> None:
    where = tmp_path / "private"
    where.mkdir()
    proc = spawn([sys.executable, __file__, "private", str(where), str(_count_for(TABLE))], stdout=subprocess.PIPE)
    info = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    assert info["size"] > TABLE
    assert os.stat("/proc/self/ns/mnt").st_ino != info["mnt"]
    snap = discover.discover(("process", "bindmount"))
    ns = snap.get(info["net"])
    assert ns is not None and not ns.processes
    assert _bindmount_paths(ns) == [info["path"]]
    assert [h.mntns for h in ns.holders] == [info["mnt"]]
    assert snap.get(info["mnt"]).mounts > _count_for(TABLE)  # the whole table was counted


def test_a_bind_mount_in_a_mount_namespace_no_process_is_in_is_found(
        tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]) -> None:
    if kernel.listmount(discover.discover(("process",)).namespace_of(os.getpid(), "mnt").id) is None:
        pytest.skip(f"listmount() by mount namespace id needs Linux 6.11+ (this is {os.uname().release})")
    where = tmp_path / "orphan"
    where.mkdir()
    proc = spawn([sys.executable, __file__, "orphan", str(where)], stdout=subprocess.PIPE)
    info = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    snap = discover.discover()
    mnt = snap.get(info["mnt"])
    assert mnt is not None and not mnt.processes
    assert [(h.kind, h.pid, h.fd) for h in mnt.holders] == [("fd", info["pid"], info["fd"])]
    net = snap.get(info["net"])
    assert net is not None and not net.processes
    assert [(h.kind, h.mntns, h.path) for h in net.holders] == [("bindmount", info["mnt"], info["path"])]
    assert net.id is not None and net.owner is not None  # resolved like any other namespace
    assert not os.path.exists(info["path"])  # the file is only there, in that mount namespace
    shown = json.loads(nsfs("show", f"mnt:[{info['mnt']}]", "-J").stdout)
    assert shown["mounts"] == len(kernel.listmount(mnt.id)) and "details_error" not in shown  # type: ignore[arg-type]
    entered = nsfs("enter", f"net:[{info['net']}]", "--", "readlink", "/proc/self/ns/net")
    assert entered.stdout.strip() == f"net:[{info['net']}]"
