"""The per-process sources: process, task, pid_for_children/time_for_children, fd and socket.

The walk itself is compiled (namespacefs._walk, from _walk.c): per process one O_PATH handle on
/proc/PID, so every read refers to the same process even if its pid is recycled mid-scan (the
handle then answers ESRCH/ENOENT); its status, ns links, cmdline and cgroup, each read to the
end; its threads' links and its fds' links; each socket's net namespace; and the id, owner and
parent of every namespace it sees first. It returns plain tuples; what they mean is decided here.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable

from namespacefs import procfs
from namespacefs.discover.state import DENIED, Info, Scan
from namespacefs.kernel import FOR_CHILDREN_LINKS, NS_TYPES
from namespacefs.model import Holder, HolderKind, NsType, Process, Source

try:
    from namespacefs import _walk
except ImportError as e:  # pragma: no cover - a broken install, not a state of the host
    raise ImportError(
        "namespacefs._walk, the compiled /proc walk, is not built: install with `bash bootstrap.sh` "
        "(or `pip install -e .` with gcc and python3-dev present)", name="namespacefs._walk") from e

#: The links the walk reads per process and thread, in this order.
LINKS = NS_TYPES + tuple(FOR_CHILDREN_LINKS)
#: The fd link kinds the walk reports ("KIND:[INODE]"): sockets and namespaces.
FD_KINDS = (HolderKind.SOCKET, *NS_TYPES)
_CHUNK = 65536
# (the enum members _take reads for every process, looked up once: on Python 3.11 each lookup of an
# enum member runs Python code)
_PROCESS, _FOR_CHILDREN = Source.PROCESS, Source.FOR_CHILDREN
_ZOMBIE = HolderKind.ZOMBIE
_MNT, _NET = NsType.MNT, NsType.NET
#: From this many processes on, two threads walk half of them each: the walk is ~90% kernel time,
#: spent without the GIL, so two threads spend it on two CPUs (a shared `known`: each namespace
#: is still resolved about once).
TWO_THREADS_FROM = 200


def read_at(name: str, dir_fd: int | None = None) -> bytes:
    """The whole of a (/proc) file, relative to a directory handle if one is given: the one reader
    of /proc files. It reads until read() returns b"": a short read is NOT the end, since what the
    kernel serves through seq_file (mountinfo, mounts, status, ...) comes about a page per read()."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _CHUNK)
        if not data:
            return data
        chunks = [data]
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return data if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def scan(state: Scan, sources: frozenset[str], todo: Iterable[int] | None = None) -> None:
    """Read these processes (pids; every one in /proc when None) with the per-process sources, in
    one call to the compiled walk, and add what each holds to the scan. A process that vanished (or
    may not be read) while the walk read it is counted and left out whole."""
    flags = ((_walk.WANT_TASKS if Source.TASK in sources else 0) | (_walk.WANT_FDS if Source.FD in sources else 0)
             | (_walk.WANT_SOCKETS if Source.SOCKET in sources else 0) | _walk.WANT_CGROUP
             | (_walk.WANT_MOUNTS if Source.BINDMOUNT in sources else 0))  # (mounts.scan takes the tables)
    pids = None if todo is None else list(todo)
    for record in _records(state, pids, flags):
        if len(record) == 2:
            state.failed(_error(record[1], f"{state.proc}/{record[0]}"))
            continue
        try:
            _take(state, sources, *record)
        except OSError as e:
            state.failed(e)


def _records(state: Scan, pids: list[int] | None, flags: int) -> list[_walk.Record]:
    """The walk's records of these processes (every one in /proc when None)."""
    def walk(some: list[int] | None) -> list[_walk.Record]:
        return _walk.walk(state.proc, some, LINKS, FD_KINDS, flags, state.known, state.mount_tables)

    if len(os.sched_getaffinity(0)) < 2:  # (the CPUs this process may run on)
        return walk(pids)
    if pids is None:
        pids = [int(name) for name in os.listdir(state.proc) if name.isdigit()]
    if len(pids) < TWO_THREADS_FROM:
        return walk(pids)
    # this process first, alone: what one thread has open (a namespace it reads, a socket it took
    # with pidfd_getfd) is among this process's fds while the other thread lists them
    me = os.getpid()
    first = walk([me]) if me in pids else []
    pids = [pid for pid in pids if pid != me]
    other: list[_walk.Record] = []
    failure: list[BaseException] = []

    def walk_other_half() -> None:
        try:
            other.extend(walk(pids[1::2]))
        except BaseException as e:  # (raised in the caller's thread below)
            failure.append(e)

    helper = threading.Thread(target=walk_other_half, name="nsfs-walk", daemon=True)
    helper.start()
    try:
        mine = walk(pids[0::2])
    finally:
        helper.join()
    if failure:
        raise failure[0]
    return first + mine + other


def resolve_fd(fd: int, known: dict[int, Info]) -> int:
    """The compiled reading of one namespace fd (not closed) into known, relatives included
    (what the walk does for every namespace it opens); its inode."""
    return _walk.resolve(fd, known)


def _error(err: int, where: str) -> OSError:
    return OSError(err, os.strerror(err), where)


def links_of(state: Scan, raw: tuple[int, ...], where: str, zombie: bool = False, pid: int | None = None) -> dict[str, int]:
    """The namespace links the walk read (inode, or -errno) as link name -> inode. A link the kernel
    hides (pid_for_children before the first child; all but pid and user of a zombie) is left out,
    and so is one we may not read while others can be (counted): those still show where the
    process is. When none can be read (another user's process, to an unprivileged caller)
    PermissionError says so for the whole process; a link gone otherwise means the process is."""
    if min(raw) > 0:  # every link read (all but always): nothing to tell apart
        return dict(zip(LINKS, raw, strict=True))
    links = {}
    denied = 0
    for link, value in zip(LINKS, raw, strict=True):
        if value > 0:
            links[link] = value
        elif -value in DENIED:
            denied += 1
        elif -value != errno.ENOENT or not (zombie or link in FOR_CHILDREN_LINKS):
            raise _error(-value, f"{where}/{link}")
    if denied:
        if not links:
            raise PermissionError(errno.EACCES, "cannot read any namespace link", where)
        state.count("denied", denied, pid)
    return links


def _take(state: Scan, sources: frozenset[str], pid: int, status_text: bytes, raw_links: tuple[int, ...],
          cmdline: bytes, cgroup: bytes | None, tasks: list[tuple[int, tuple[int, ...]]] | int,
          fds: list[tuple[int, int, int, int]] | int) -> None:
    """One process's record: checked whole first (links_of may raise), then added."""
    status = procfs.parse_status(status_text)
    zombie = status.zombie
    links = links_of(state, raw_links, f"{state.proc}/{pid}/ns", zombie, pid)
    state.processes[pid] = Process(pid, status.ppid, status.name, procfs.parse_cmdline(cmdline), status.uid,
                                   status.gid, status.nspid, status.threads, links, cgroup)
    if _PROCESS in sources:
        _add_process(state, pid, links, zombie)
    if _FOR_CHILDREN in sources:
        for link, nstype in FOR_CHILDREN_LINKS.items():
            if link in links and links[link] != links.get(nstype):
                state.add(nstype, links[link], Holder(link, pid=pid))
    mntns = links.get(_MNT)
    if mntns is not None:
        state.mount_readers.setdefault(mntns, []).append(pid)
    if isinstance(tasks, int):
        state.failed(_error(tasks, f"{state.proc}/{pid}/task"))
    else:
        _add_tasks(state, pid, links, tasks)
    if isinstance(fds, int):
        state.failed(_error(fds, f"{state.proc}/{pid}/fd"))
    else:
        _add_fds(state, sources, pid, links.get(_NET), fds)


def _add_process(state: Scan, pid: int, links: dict[str, int], zombie: bool) -> None:
    """The process source: a process holds the namespaces it is in. An exited, unreaped process is
    in nothing any more, yet still pins its user and pid namespaces (lsns counts it as a
    process): a holder of its own kind."""
    holder = Holder(_ZOMBIE if zombie else _PROCESS, pid)  # (one for all of them)
    for nstype in NS_TYPES:
        inode = links.get(nstype)
        if inode is not None:
            ns = state.add(nstype, inode, holder)
            if not zombie:
                ns.processes.append(pid)


def _add_tasks(state: Scan, pid: int, process_links: dict[str, int], tasks: list[tuple[int, tuple[int, ...]]]) -> None:
    """Threads can unshare or setns uts, ipc, net, mnt, cgroup on their own: report each thread
    link that differs from its process's."""
    for tid, raw in tasks:
        try:
            links = links_of(state, raw, f"{state.proc}/{pid}/task/{tid}/ns", pid=pid)
        except OSError as e:
            state.failed(e)
            continue
        for link, inode in links.items():
            if inode == process_links.get(link):
                continue
            nstype = FOR_CHILDREN_LINKS.get(link, link)
            kind = link if link in FOR_CHILDREN_LINKS else HolderKind.TASK
            state.add(nstype, inode, Holder(kind, pid=pid, tid=tid))


def _add_fds(state: Scan, sources: frozenset[str], pid: int, own_net: int | None,
             fds: list[tuple[int, int, int, int]]) -> None:
    """fds that are namespaces (the fd source) and sockets, which hold the net namespace they
    live in when it is not their process's own (the socket source: the walk asked each socket
    once, with pidfd_getfd and SIOCGSKNS)."""
    for fd, kind, inode, netns in fds:
        nstype = FD_KINDS[kind]
        if nstype != HolderKind.SOCKET:
            if Source.FD in sources:
                state.add(nstype, inode, Holder(HolderKind.FD, pid=pid, fd=fd))
        elif netns < 0:
            if -netns != errno.ESTALE:  # ESTALE: the fd was closed and reused since it was listed
                state.failed(_error(-netns, f"{state.proc}/{pid}/fd/{fd}"))
        elif netns != own_net:
            state.add(NsType.NET, netns, Holder(HolderKind.SOCKET, pid=pid, fd=fd, socket=inode))
