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


# --- engines the tests start themselves: dockerd and podman, each in a directory of its own ----------

#: a busybox image is built from this root filesystem and imported: no image is ever pulled
IMAGE = "nsfs-busybox:test"


def busybox_tar(tmp: Path) -> Path:
    tar = tmp / "busybox.tar"
    if not tar.exists():
        root = rootfs(tmp / "image-rootfs")
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    return tar


def unmount_under(where: Path) -> None:
    """Detach every mount under where (what an engine left: overlays, netns bind mounts)."""
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f.read().splitlines()]
    for point in reversed(points):
        if point == str(where) or point.startswith(f"{where}/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class Dockerd:
    """A dockerd of the tests' own: its own data-root, exec-root, socket and pid file."""

    dir: Path
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None

    @property
    def socket(self) -> str:
        return str(self.dir / "docker.sock")

    @property
    def data_root(self) -> str:
        return str(self.dir / "root")

    @property
    def exec_root(self) -> str:
        return str(self.dir / "exec")

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", "-H", f"unix://{self.socket}", *args], capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (args, result.stderr)
        return result

    def start(self) -> str | None:
        """Start it; None when it runs, else why it cannot here."""
        if shutil.which("dockerd") is None:
            return "dockerd is not installed (bootstrap.sh installs docker.io)"
        self.log = self.dir / "dockerd.log"
        (self.dir / "daemon.json").write_text('{"log-level": "warn"}\n')
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--data-root", self.data_root, "--exec-root", self.exec_root, "-H", f"unix://{self.socket}",
                 "--pidfile", str(self.dir / "docker.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
                 "--config-file", str(self.dir / "daemon.json")],
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"dockerd exited ({self.proc.returncode}): {self.log.read_text()[-600:]}"
            if os.path.exists(self.socket) and self.docker("version", check=False, timeout=10).returncode == 0:
                return None
            time.sleep(0.2)
        return f"dockerd did not answer in 60 s: {self.log.read_text()[-600:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        unmount_under(self.dir)


@dataclass
class Podman:
    """podman (rootful) with a store, run root and tmpdir of its own, runc as its runtime where crun
    refuses the host (crun cannot run on hybrid cgroups), and limits the sandbox allows."""

    dir: Path
    runtime: str = "runc"
    why_not_crun: str = ""

    @property
    def root(self) -> str:
        return str(self.dir / "root")

    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERS_CONF=str(self.dir / "containers.conf"))

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", self.root, "--runroot", str(self.dir / "run"), "--tmpdir", str(self.dir / "tmp"),
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", self.runtime, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(),
                                stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (args, result.stderr)
        return result

    def start(self, tar: Path) -> str | None:
        if shutil.which("podman") is None:
            return "podman is not installed (bootstrap.sh installs it)"
        # the sandbox's hard limits are below podman's defaults (RLIMIT_NOFILE 1048576)
        (self.dir / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
        imported = self.podman("import", str(tar), f"localhost/{IMAGE}", check=False)
        if imported.returncode != 0:
            return f"podman import failed: {imported.stderr.strip()[-400:]}"
        for runtime in ("crun", "runc"):
            self.runtime = runtime
            probe = self.podman("run", "--rm", "--network", "none", f"localhost/{IMAGE}", "true", check=False)
            if probe.returncode == 0:
                return None
            if runtime == "crun":
                self.why_not_crun = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"
        return f"podman cannot run a container here: {probe.stderr.strip()[-400:]}"

    def stop(self) -> None:
        self.podman("pod", "rm", "-af", "-t", "0", check=False)
        self.podman("rm", "-af", "-t", "0", check=False)
        deadline = time.monotonic() + 20  # conmon's exit commands (podman … cleanup) may still run
        while _processes_mentioning(self.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        unmount_under(self.dir)


@dataclass
class RootlessPodman:
    """podman run by a test user of its own (subuid/subgid ranges, a runtime dir /run/user/UID),
    removed at the end with everything it ran."""

    dir: Path
    user: str = "nsfs-rootless"
    uid: int = -1
    made_run_user: bool = False  # /run/user did not exist: removed again at the end

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": f"/home/{self.user}",
               "XDG_RUNTIME_DIR": self.runtime_dir, "CONTAINERS_CONF": f"/home/{self.user}/containers.conf"}
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups", "--",
                "podman", "--cgroup-manager", "cgroupfs", "--runtime", "runc", "--events-backend", "file", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd="/",
                                stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (args, result.stderr)
        return result

    def start(self, tar: Path) -> str | None:
        if shutil.which("podman") is None or shutil.which("newuidmap") is None:
            return "podman or newuidmap (uidmap) is not installed"
        if subprocess.run(["id", self.user], capture_output=True).returncode == 0:
            return f"a user {self.user} exists already (left by another run?): not touched"
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", self.user], check=True, capture_output=True)
        self.uid = int(subprocess.run(["id", "-u", self.user], capture_output=True, text=True, check=True).stdout)
        base = 1 + max([400000] + [int(f) + int(n) for line in _lines("/etc/subuid") + _lines("/etc/subgid")
                                   for _, f, n in [line.split(":")]])
        subprocess.run(["usermod", "--add-subuids", f"{base}-{base + 65535}", "--add-subgids",
                        f"{base}-{base + 65535}", self.user], check=True, capture_output=True)
        self.made_run_user = not os.path.exists(os.path.dirname(self.runtime_dir))
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        os.chown(self.runtime_dir, self.uid, self.uid)
        home = Path(f"/home/{self.user}")  # (the test's temp dirs are root's only)
        (home / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
        shared = home / "busybox.tar"
        shutil.copy(tar, shared)
        for made in (home / "containers.conf", shared):
            os.chown(made, self.uid, self.uid)
        imported = self.podman("import", str(shared), f"localhost/{IMAGE}", check=False)
        if imported.returncode != 0:
            return f"rootless podman import failed: {imported.stderr.strip()[-400:]}"
        probe = self.podman("run", "--rm", "--network", "none", f"localhost/{IMAGE}", "true", check=False)
        if probe.returncode != 0:
            return f"rootless podman cannot run a container here: {probe.stderr.strip()[-400:]}"
        return None

    def pause_pid(self) -> int | None:
        try:
            return int(Path(self.runtime_dir, "libpod", "tmp", "pause.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.uid < 0:
            return
        self.podman("rm", "-af", "-t", "0", check=False)
        pause = self.pause_pid()
        if pause:  # the pause process our podman started (it holds the user's namespaces)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pause, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _processes_of(self.uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["userdel", "-r", self.user], capture_output=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self.made_run_user:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.runtime_dir))  # (only if it is empty: no one else's)


def _lines(path: str) -> list[str]:
    try:
        return [ln for ln in Path(path).read_text().splitlines() if ln.count(":") == 2]
    except OSError:
        return []


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
    return found


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
    return found
