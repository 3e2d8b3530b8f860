"""A synthetic host for the discovery benchmark: N processes in one of two shapes.

    with SyntheticHost(1000) as host:            # builds it (a few seconds), verifies it, tears it down
        host.manifest                             # what was made: pids, expected hidden namespaces, totals
    with SyntheticHost(1000, "dense") as host:   # the namespace-dense shape

"dense": every process sits in its own uts, ipc, net, mnt and cgroup namespaces (five per process;
what sandboxes, browsers, systemd services with `Private*=` and single-process containers look
like). Each is forked by the builder, unshares the five (its mount tree made private, so nothing
mounted on the host propagates into thousands of copies), keeps /dev/null and a UDP socket open and
becomes `busybox sleep`.

"sets" (the default): the processes are split into sets of GROUP processes. Each set is one "container": a leader that
unshares a private mount namespace (with a tmpfs and an `ip netns add`-style nsfs bind mount of
a net namespace nothing else holds) and then a rotating mix of user (mapped 0 -> 0), net, uts,
ipc, cgroup, pid and time namespaces; its members are forked after that, so they share the set's
namespaces (and are in its pid/time namespace). Every process keeps a few open fds (/dev/null,
a temp file, a socketpair, a UDP socket); some hold what lsns cannot see:

  fd-only net namespace      a member unshares net, keeps an fd to it and returns (setns)
  socket-only net namespace  a member unshares net, keeps a socket in it and returns
  nsfs fds                   a member keeps fds to its own uts and ipc namespaces
  thread-only uts namespace  in every THREADED_EVERY-th set one member stays Python with THREADS
                             threads, one of which has unshared uts
  bind-mounted net namespace one per set, in the set's private mount namespace only

Everything else becomes `busybox sleep` (static, ~100 kB of memory each), so N = 4000 fits easily.

The builder runs as `python bench/synthetic.py build ...` in its own session (so one process
group holds everything). Teardown is SIGKILL to that group; it is also triggered if the bench
dies (the builder has PR_SET_PDEATHSIG and then removes its temp directory and kills its group, and
every process has PR_SET_PDEATHSIG towards its parent). Mounts exist only inside the private mount namespaces, so
they vanish with the processes; the temp directory is removed by the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from namespacefs import kernel

SHAPES = ("sets", "dense")
GROUP = 10  # processes per namespace set (leader + members)
THREADED_EVERY = 4  # every 4th set has one multi-threaded member
THREADS = 4  # threads of that member (one of them in its own uts namespace)
SLEEPER = ["/bin/busybox", "sleep", "100000"]

#: The namespace mixes the sets rotate through (besides their private mount namespace).
PATTERNS: tuple[tuple[str, ...], ...] = (
    ("net", "uts", "ipc", "cgroup"),  # a root container without a pid namespace
    ("user", "net", "uts", "ipc", "pid"),  # a rootless-style container
    ("net", "uts"),
    ("ipc", "pid", "time"),
    ("user", "net", "uts", "ipc", "pid", "cgroup", "time"),  # everything
)

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MS_PRIVATE = 1 << 18


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _flags(types: tuple[str, ...]) -> int:
    flags = 0
    for t in types:
        flags |= kernel.CLONE_FLAGS[t]
    return flags


def _host_pid() -> int:
    """Our pid as the host sees it (os.getpid() answers in our own pid namespace)."""
    return int(os.readlink("/proc/self"))


def _ns_inode(link: str) -> int:
    return os.stat(f"/proc/thread-self/ns/{link}").st_ino


class _Reporter:
    """Lines of JSON to the builder through a pipe (each write is one atomic line < PIPE_BUF)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, **fields: Any) -> None:
        os.write(self.fd, (json.dumps(fields) + "\n").encode())


# --- what runs in each process -------------------------------------------------------------------


def _detour_net(keep: str) -> tuple[int, int]:
    """Unshare net, keep an fd ('fd') or a socket ('socket') in the new one, and go back.
    Returns (kept fd, inode of that net namespace)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.unshare(kernel.CLONE_FLAGS["net"])
        inode = _ns_inode("net")
        if keep == "fd":
            kept = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        else:
            kept = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
        kernel.setns(home, kernel.CLONE_FLAGS["net"])
    finally:
        os.close(home)
    return kept, inode


def _member(report: _Reporter, workdir: str, set_no: int, index: int, threaded: bool) -> None:
    """A member of a set: open its fds, maybe hold a hidden namespace, then sleep forever."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    pid = _host_pid()
    fds = [os.open("/dev/null", os.O_RDONLY), os.open(f"{workdir}/data", os.O_RDONLY)]
    a, b = socket.socketpair()
    fds += [a.detach(), b.detach(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()]
    role = index % 5
    if role == 1:
        fd, inode = _detour_net("fd")
        fds.append(fd)
        report(kind="fd", pid=pid, set=set_no, type="net", inode=inode)
    elif role == 2:
        fd, inode = _detour_net("socket")
        fds.append(fd)
        report(kind="socket", pid=pid, set=set_no, type="net", inode=inode)
    elif role == 3:
        fds += [os.open("/proc/thread-self/ns/uts", os.O_RDONLY), os.open("/proc/thread-self/ns/ipc", os.O_RDONLY)]
    if threaded:
        _threaded(report, pid, set_no)  # never returns
    for fd in fds:
        os.set_inheritable(fd, True)
    report(kind="ready", pid=pid, set=set_no, threads=1)
    os.execv(SLEEPER[0], SLEEPER)


def _threaded(report: _Reporter, pid: int, set_no: int) -> None:
    """Stay Python with THREADS threads; the first unshares uts (a thread-only uts namespace)."""
    started = threading.Barrier(THREADS + 1)
    forever = threading.Event()

    def worker(own_uts: bool) -> None:
        if own_uts:
            kernel.unshare(kernel.CLONE_FLAGS["uts"])
            tid = int(os.readlink("/proc/thread-self").rsplit("/", 1)[1])  # as the host sees it
            report(kind="task", pid=pid, tid=tid, set=set_no, type="uts", inode=_ns_inode("uts"))
        started.wait()
        forever.wait()

    for i in range(THREADS):
        threading.Thread(target=worker, args=(i == 0,), daemon=True).start()
    started.wait()
    report(kind="ready", pid=pid, set=set_no, threads=THREADS + 1)
    os.close(report.fd)  # the builder reads until every writer is gone
    while True:
        signal.pause()


def _leader(report: _Reporter, workdir: str, set_no: int, size: int) -> None:
    """One namespace set: private mounts + bind mount, the set's namespaces, then its members."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the builder's "kill the group" handlers are not ours
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    pid = _host_pid()
    kernel.unshare(kernel.CLONE_FLAGS["mnt"])
    kernel.mount("none", "/", None, kernel.MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    kernel.mount("tmpfs", f"{workdir}/mnt", "tmpfs", 0, "size=64k")
    target = f"{workdir}/mnt/netns-{set_no}"
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    kernel.unshare(kernel.CLONE_FLAGS["net"])
    inode = _ns_inode("net")
    kernel.mount("/proc/thread-self/ns/net", target, None, kernel.MS_BIND)
    kernel.setns(home, kernel.CLONE_FLAGS["net"])
    os.close(home)
    report(kind="bindmount", pid=pid, set=set_no, type="net", inode=inode, path=target)

    pattern = PATTERNS[set_no % len(PATTERNS)]
    kernel.unshare(_flags(pattern))
    if "user" in pattern:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/self/{name}", "w") as f:
                f.write("0 0 1")
    namespaces = {t: _ns_inode(t) for t in pattern if t not in ("pid", "time")}
    members = []
    for index in range(1, size):
        child = os.fork()
        if child == 0:
            try:
                _member(report, workdir, set_no, index, threaded=index == 4 and set_no % THREADED_EVERY == 0)
            finally:
                os._exit(1)
        members.append(child)
    for t in ("pid", "time"):
        if t in pattern and members:
            namespaces[t] = os.stat(f"/proc/{members[0]}/ns/{t}").st_ino
    report(kind="set", pid=pid, set=set_no, pattern=list(pattern), namespaces=namespaces, members=members)
    report(kind="ready", pid=pid, set=set_no, threads=1)
    os.execv(SLEEPER[0], SLEEPER)  # members are reaped by the builder (subreaper) once we are gone


# --- the builder -----------------------------------------------------------------------------------


#: The namespaces each process of the dense shape has of its own.
DENSE = ("mnt", "uts", "ipc", "net", "cgroup")


def _dense(report: _Reporter) -> None:
    """One process of the dense shape: its own DENSE namespaces, two fds, then sleep forever."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    kernel.unshare(_flags(DENSE))
    kernel.mount("none", "/", None, kernel.MS_REC | MS_PRIVATE)
    fds = [os.open("/dev/null", os.O_RDONLY), socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()]
    for fd in fds:
        os.set_inheritable(fd, True)
    report(kind="dense", pid=_host_pid(), namespaces={t: _ns_inode(t) for t in DENSE})
    report(kind="ready", pid=_host_pid(), set=-1, threads=1)
    os.execv(SLEEPER[0], SLEEPER)


def _start_dense(n: int, report: _Reporter, read_end: int) -> int:
    for _ in range(n):
        if os.fork() == 0:
            try:
                os.close(read_end)
                _dense(report)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    report(kind="error", set=-1, error=repr(e))
            finally:
                os._exit(1)
    return n


def _start_sets(n: int, workdir: str, report: _Reporter, read_end: int) -> int:
    sets = [GROUP] * (n // GROUP) + ([n % GROUP] if n % GROUP else [])
    for set_no, size in enumerate(sets):
        if os.fork() == 0:
            try:
                os.close(read_end)
                _leader(report, workdir, set_no, size)
            except BaseException as e:  # report, never fall back into the builder's loop
                with contextlib.suppress(Exception):
                    report(kind="error", set=set_no, error=repr(e))
            finally:
                os._exit(1)
    return len(sets)


def build(n: int, workdir: str, manifest: str, shape: str = "sets") -> None:
    """Runs as the process-group leader: make N processes, write the manifest, print READY, wait."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)

    def die(*_: object) -> None:
        shutil.rmtree(workdir, ignore_errors=True)  # the bench may be gone (SIGKILL) and cannot
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGTERM, die)
    signal.signal(signal.SIGHUP, die)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and soft < n + 1000:
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))  # ours and our children's only
    Path(workdir, "mnt").mkdir(exist_ok=True)
    Path(workdir, "data").write_bytes(b"synthetic\n")
    read_end, write_end = os.pipe()
    report = _Reporter(write_end)
    started = time.perf_counter()
    sets = _start_dense(n, report, read_end) if shape == "dense" else _start_sets(n, workdir, report, read_end)
    os.close(write_end)
    records: list[dict[str, Any]] = []
    ready = 0
    with os.fdopen(read_end) as lines:
        for line in lines:  # EOF once every process has exec'd (the pipe is close-on-exec)
            record = json.loads(line)
            if record["kind"] == "error":
                raise RuntimeError(f"set {record['set']} failed: {record['error']}")
            records.append(record)
            ready += record["kind"] == "ready"
    if ready != n:
        raise RuntimeError(f"only {ready} of {n} processes came up")
    data = {
        "n": n, "shape": shape, "build_seconds": time.perf_counter() - started, "sets": sets, "builder": os.getpid(),
        "records": records, "threads": sum(r["threads"] for r in records if r["kind"] == "ready"),
    }
    Path(manifest).write_text(json.dumps(data))
    print("READY", flush=True)
    while True:  # reap members whose leader has exec'd, until killed
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()


# --- the bench side ----------------------------------------------------------------------------------


class SyntheticHost:
    """Build (in a separate process group), verify and tear down one synthetic host."""

    def __init__(self, n: int, shape: str = "sets") -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r} (one of {', '.join(SHAPES)})")
        self.n = n
        self.shape = shape
        self.workdir = tempfile.mkdtemp(prefix="nsfs-discover-bench-")
        self.proc: subprocess.Popen[str] | None = None
        self.manifest: dict[str, Any] = {}

    def __enter__(self) -> SyntheticHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        manifest = f"{self.workdir}/manifest.json"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "build", str(self.n), self.workdir, manifest, self.shape],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"building the synthetic host failed (exit {self.proc.wait()})")
        self.manifest = json.loads(Path(manifest).read_text())
        self.verify()

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.manifest["records"] if r["kind"] == kind]

    @property
    def pids(self) -> list[int]:
        return [r["pid"] for r in self.of_kind("ready")]

    @property
    def hidden(self) -> list[dict[str, Any]]:
        """The namespaces lsns cannot see (held by an fd, a socket, a thread or a bind mount)."""
        return [r for r in self.manifest["records"] if r["kind"] in ("fd", "socket", "task", "bindmount")]

    def verify(self) -> None:
        """Independently of nsfs: every process is alive and in our group, every hidden holder holds."""
        group = self.proc.pid if self.proc else -1
        for pid in self.pids:
            if os.getpgid(pid) != group:
                raise RuntimeError(f"synthetic process {pid} is not in the bench's process group")
        for r in self.of_kind("dense"):
            if any(_ns_inode(t) == inode for t, inode in r["namespaces"].items()):
                raise RuntimeError(f"synthetic process {r['pid']} shares a namespace with the bench: {r}")
        for r in self.hidden:
            if r["kind"] == "fd":
                ok = any(os.readlink(f"/proc/{r['pid']}/fd/{fd}") == f"net:[{r['inode']}]"
                         for fd in os.listdir(f"/proc/{r['pid']}/fd"))
            elif r["kind"] == "task":
                ok = os.stat(f"/proc/{r['pid']}/task/{r['tid']}/ns/uts").st_ino == r["inode"]
            elif r["kind"] == "bindmount":
                with open(f"/proc/{r['pid']}/mountinfo") as f:
                    ok = any(f" {r['path']} " in line and " nsfs " in line for line in f)
                ok = ok and os.stat(f"/proc/{r['pid']}/root{r['path']}").st_ino == r["inode"]
            else:
                ok = _socket_in(r["pid"], r["inode"])
            if not ok:
                raise RuntimeError(f"synthetic host is not as built: {r}")

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
            deadline = time.monotonic() + 10
            while self.manifest and any(_alive(pid) for pid in self.pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            for name in ("manifest.json", "data"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.workdir}/{name}")
            os.rmdir(f"{self.workdir}/mnt")
        with contextlib.suppress(OSError):
            os.rmdir(self.workdir)


def _socket_in(pid: int, netns: int) -> bool:
    """Does pid hold a socket in net namespace netns (while not being in it)?"""
    if os.stat(f"/proc/{pid}/ns/net").st_ino == netns:
        return False
    pidfd = kernel.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            sock = kernel.pidfd_getfd(pidfd, int(name))
            try:
                ns = kernel.socket_netns_fd(sock)
                try:
                    if os.fstat(ns).st_ino == netns:
                        return True
                finally:
                    os.close(ns)
            finally:
                os.close(sock)
    finally:
        os.close(pidfd)
    return False


def _alive(pid: int) -> bool:
    """Still there and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="(internal) build and hold a synthetic host")
    b.add_argument("n", type=int)
    b.add_argument("workdir")
    b.add_argument("manifest")
    b.add_argument("shape", nargs="?", default="sets", choices=SHAPES)
    s = sub.add_parser("show", help="build a host of N processes, print a summary, tear it down")
    s.add_argument("n", type=int)
    s.add_argument("--shape", default="sets", choices=SHAPES)
    args = parser.parse_args()
    if args.command == "build":
        build(args.n, args.workdir, args.manifest, args.shape)
    else:
        with SyntheticHost(args.n, args.shape) as host:
            m = host.manifest
            print(f"{m['n']} processes ({m['shape']}) in {m['sets']} sets, {m['threads']} threads, "
                  f"built in {m['build_seconds']:.2f}s; "
                  f"hidden namespaces: {len(host.hidden)}")


if __name__ == "__main__":
    main()
