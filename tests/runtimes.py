"""Real containers for the tests: runc (with its own --root, so no other runc state is touched),
bubblewrap and systemd-nspawn, on a busybox-static root filesystem. Every starter registers the
container for cleanup; tests kill only what they started."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "sleep", "hostname", "ip", "cat", "ls", "ps", "unshare", "readlink", "echo", "true")


def rootfs(where: Path) -> Path:
    """A minimal root filesystem: busybox-static and its applets (and a /usr, which nspawn wants)."""
    for d in ("bin", "proc", "sys", "dev", "tmp", "usr", "etc", "root"):
        (where / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, where / "bin" / "busybox")
    for applet in APPLETS:
        (where / "bin" / applet).symlink_to("busybox")
    (where / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (where / "etc" / "os-release").write_text("ID=busybox\n")  # nspawn checks for an OS tree
    return where


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for kid in children(todo.pop()):
            found.append(kid)
            todo.append(kid)
    return found


def gone(pid: int) -> bool:
    """The process has exited (absent, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


@dataclass
class Runc:
    state: Path
    id: str
    pid: int
    cgroup: str

    def delete(self) -> None:
        subprocess.run(["runc", "--root", str(self.state), "delete", "-f", self.id],
                       capture_output=True, timeout=30)


@dataclass
class Started:
    runcs: list[Runc] = field(default_factory=list)
    groups: list[subprocess.Popen[str]] = field(default_factory=list)
    pidfds: list[int] = field(default_factory=list)  # processes outside our groups (nspawn's payload)


def start_runc(tmp: Path, started: Started, hostname: str, args: list[str], caps_all: bool = False) -> Runc:
    bundle = tmp / f"bundle-{hostname}"
    rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["hostname"] = hostname
    spec["root"]["readonly"] = False
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
    spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "cgroup"]
    cid = f"nsfs-{hostname}-{uuid.uuid4().hex[:8]}"
    spec["linux"]["cgroupsPath"] = f"/{cid}"
    if caps_all:
        every = [f"CAP_{c}" for c in ("SYS_ADMIN", "NET_ADMIN", "SYS_CHROOT", "SETUID", "SETGID", "KILL",
                                        "CHOWN", "DAC_OVERRIDE", "FOWNER", "NET_BIND_SERVICE", "AUDIT_WRITE")]
        for kind in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][kind] = every
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp / "runc-state"
    log = tmp / f"runc-{hostname}.log"
    started.runcs.append(Runc(state, cid, 0, f"/{cid}"))  # deleted at teardown even if run fails half-way
    with open(log, "w") as err:  # not a pipe: the detached container inherits it and would hold it open
        result = subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(bundle), cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=60)
    assert result.returncode == 0, log.read_text()
    with open(state / cid / "state.json") as f:
        pid = json.load(f)["init_process_pid"]
    container = Runc(state, cid, pid, f"/{cid}")
    started.runcs[-1] = container
    return container


def start_group(started: Started, argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, start_new_session=True, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started.groups.append(proc)
    return proc


def start_bwrap(started: Started, hostname: str, command: list[str]) -> tuple[subprocess.Popen[str], int]:
    """bwrap --unshare-all; returns the outer bwrap and the host pid of the sandbox's pid 1."""
    proc = start_group(started, ["bwrap", "--unshare-all", "--hostname", hostname, "--ro-bind", "/", "/",
                                 "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *command])
    init = wait_for(lambda: (children(proc.pid) or [None])[0], what="bwrap's sandbox init")
    wait_for(lambda: children(init), what="the sandboxed command")
    return proc, init


def start_nspawn(tmp: Path, started: Started, machine: str, command: list[str]) -> tuple[subprocess.Popen[str], int]:
    root = rootfs(tmp / f"machine-{machine}")
    proc = start_group(started, ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", str(root),
                                 f"--machine={machine}", *command])

    def payload() -> int | None:
        for kid in descendants(proc.pid):
            if os.readlink(f"/proc/{kid}/ns/pid") != os.readlink(f"/proc/{proc.pid}/ns/pid"):
                return kid
        return None

    init = wait_for(payload, what="systemd-nspawn's payload")
    started.pidfds.append(os.pidfd_open(init))
    return proc, init


def stop(started: Started) -> None:
    for c in started.runcs:
        c.delete()
    for proc in started.groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    for fd in started.pidfds:  # nspawn's payload has a session of its own: killed through its pidfd
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)


@pytest.fixture(name="started")
def started_fixture() -> Iterator[Started]:
    """Containers and process groups a test starts; all stopped at teardown."""
    box = Started()
    yield box
    stop(box)


def nsfs_env(state: Path, db: Path) -> dict[str, str]:
    """The environment for `nsfs` in a test: our runc root, and a names database of the test's own."""
    return dict(os.environ, NSFS_OCI_ROOTS=str(state), NSFS_DB=str(db))
