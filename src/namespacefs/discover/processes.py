"""The per-process sources: process, task, pid_for_children/time_for_children and fd.

Each process is read through one O_PATH handle on /proc/PID, so every read refers to the same
process even if its pid is recycled mid-scan (the handle then answers ESRCH/ENOENT), and each
file is read exactly once.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from namespacefs import procfs
from namespacefs.discover.state import Scan
from namespacefs.kernel import FOR_CHILDREN_LINKS, NS_TYPES
from namespacefs.model import Holder, Process

LINKS = NS_TYPES + tuple(FOR_CHILDREN_LINKS)
_NS_TYPE_SET = frozenset(NS_TYPES)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 65536


def read_at(name: str, dir_fd: int | None = None, records: bool = False) -> bytes:
    """The whole of a (small, /proc) file, relative to a directory handle if one is given.
    records: a file the kernel writes record by record (a seq_file such as mountinfo), which
    answers at most about a page per read: read until EOF."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _CHUNK)
        # a one-shot /proc file answers a read in full when the buffer is large enough: a short
        # read is the end, which saves the read that would return b"" (one syscall per file)
        if records:
            chunks = [data]
            while chunks[-1]:
                chunks.append(os.read(fd, _CHUNK))
            return b"".join(chunks)
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        while len(chunks[-1]) == _CHUNK:
            chunks.append(os.read(fd, _CHUNK))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_links(state: Scan, dir_fd: int, prefix: str = "ns/", zombie: bool = False) -> dict[str, int]:
    """The namespace links of a process or thread: link name -> inode. A link the kernel hides
    (pid_for_children before the first child; all but pid and user of a zombie) is left out, and
    so is one we may not read while others can be (counted): those still show where the process
    is. When none can be read (another user's process, to an unprivileged caller) PermissionError
    says so for the whole process."""
    links = {}
    denied = 0
    for link in LINKS:
        try:
            target = os.readlink(prefix + link, dir_fd=dir_fd)
        except FileNotFoundError:
            if zombie or link in FOR_CHILDREN_LINKS:
                continue
            raise
        except PermissionError:
            denied += 1
            continue
        links[link] = int(target[target.index("[") + 1 : -1])
    if denied:
        if not links:
            raise PermissionError(errno.EACCES, "cannot read any namespace link", prefix)
        state.errors["denied"] += denied
    return links


def pids(proc: str) -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def scan(state: Scan, sources: frozenset[str], todo: Iterable[int]) -> None:
    """Read these processes (pids) with the per-process sources."""
    for pid in todo:
        try:
            dir_fd = os.open(f"{state.proc}/{pid}", _DIR_FLAGS)
        except OSError as e:
            state.failed(e, pid)
            continue
        try:
            _scan_process(state, pid, dir_fd, sources)
        except OSError as e:
            state.failed(e, pid)
            state.processes.pop(pid, None)  # half read: as good as gone
        finally:
            os.close(dir_fd)


def _scan_process(state: Scan, pid: int, dir_fd: int, sources: frozenset[str]) -> None:
    status = procfs.parse_status(read_at("status", dir_fd))
    links = read_links(state, dir_fd, zombie=status.zombie)
    cmdline = procfs.parse_cmdline(read_at("cmdline", dir_fd))
    state.processes[pid] = Process(pid, status.ppid, status.name, cmdline, status.uid, status.gid,
                                   status.nspid, status.threads, links)
    if "process" in sources:
        # an exited, unreaped process is in nothing any more, yet still pins its user and pid
        # namespaces (lsns counts it as a process): a holder of its own kind
        holder = Holder("zombie" if status.zombie else "process", pid=pid)
        for nstype in NS_TYPES:
            if nstype in links:
                ns = state.add(nstype, links[nstype], holder)
                if not status.zombie:
                    ns.processes.append(pid)
    if "for_children" in sources:
        for link, nstype in FOR_CHILDREN_LINKS.items():
            if link in links and links[link] != links.get(nstype):
                state.add(nstype, links[link], Holder(link, pid=pid))
    if "mnt" in links:
        state.mount_readers.setdefault(links["mnt"], []).append(pid)
    if "task" in sources and status.threads > 1:
        _scan_tasks(state, pid, dir_fd, links)
    if "fd" in sources or "socket" in sources:
        _scan_fds(state, pid, dir_fd, sources)


def _scan_tasks(state: Scan, pid: int, dir_fd: int, process_links: dict[str, int]) -> None:
    """Threads can unshare or setns uts, ipc, net, mnt, cgroup on their own: report each thread
    link that differs from its process's."""
    try:
        tids = os.listdir(f"{state.proc}/{pid}/task")
    except OSError as e:
        state.failed(e)
        return
    for name in tids:
        tid = int(name)
        if tid == pid:
            continue
        try:
            links = read_links(state, dir_fd, f"task/{tid}/ns/")
        except OSError as e:
            state.failed(e)
            continue
        for link, inode in links.items():
            if inode == process_links.get(link):
                continue
            nstype = FOR_CHILDREN_LINKS.get(link, link)
            kind = link if link in FOR_CHILDREN_LINKS else "task"
            state.add(nstype, inode, Holder(kind, pid=pid, tid=tid))


def _scan_fds(state: Scan, pid: int, dir_fd: int, sources: frozenset[str]) -> None:
    try:
        fds = os.listdir(f"{state.proc}/{pid}/fd")
    except OSError as e:
        state.failed(e)
        return
    want_fd, want_socket = "fd" in sources, "socket" in sources
    sockets = []
    for name in fds:
        try:
            target = os.readlink(f"fd/{name}", dir_fd=dir_fd)
        except OSError:
            continue  # closed since listdir: an fd is not a namespace we lose
        if target.startswith("socket:["):
            if want_socket:
                sockets.append((int(name), int(target[8:-1])))
        elif want_fd and (link := procfs.parse_ns_link(target)) and link[0] in _NS_TYPE_SET:
            fd = int(name)
            state.add(link[0], link[1], Holder("fd", pid=pid, fd=fd))
    if sockets:
        state.sockets[pid] = sockets
