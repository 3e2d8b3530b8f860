"""Per-type details, read on demand (never during a scan, so `ls` stays fast).

uts, ipc, net and cgroup namespaces are per thread: a short-lived helper thread
(namespacefs.ops.inside.in_thread) setns()es into the namespace and reads what the kernel shows
the *current thread* (uname, /proc/sys/kernel, /proc/sysvipc, sockets), so the caller's own
namespaces never change. Everything else comes from /proc files of a member process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from namespacefs import kernel, procfs
from namespacefs.discover.processes import read_at
from namespacefs.handles import Gone, open_namespace
from namespacefs.model import Namespace, Snapshot

if TYPE_CHECKING:
    import socket

T = TypeVar("T")


def inside(ns: Namespace, func: Callable[[], T], snapshot: Snapshot | None = None) -> T:
    """Run func in a helper thread that has joined ns (uts, ipc, net or cgroup: ops.inside.in_thread)."""
    from namespacefs.ops.inside import in_thread  # (here: `nsfs ls` imports this module for NETNSID alone)

    fd = open_namespace(ns, snapshot)
    try:
        return in_thread(fd, ns.type, func)
    finally:
        os.close(fd)


def _member(ns: Namespace) -> int | None:
    """A pid whose /proc files show this namespace (a thread-only one has none)."""
    return ns.processes[0] if ns.processes else None


def _read(path: str) -> bytes:
    return read_at(path)


def uname(ns: Namespace, snapshot: Snapshot | None = None) -> dict[str, str]:
    """sysname, nodename, release, version, machine and domainname of a uts namespace."""
    def read() -> dict[str, str]:
        u = os.uname()
        domain = _read("/proc/sys/kernel/domainname").decode().strip()
        return {"sysname": u.sysname, "nodename": u.nodename, "release": u.release,
                "version": u.version, "machine": u.machine, "domainname": domain}
    return inside(ns, read, snapshot)


def interfaces(ns: Namespace, snapshot: Snapshot | None = None) -> list[str]:
    """The network interfaces of a net namespace, in index order."""
    import socket

    return [name for _, name in sorted(inside(ns, socket.if_nameindex, snapshot))]


def ipc_objects(ns: Namespace, snapshot: Snapshot | None = None) -> dict[str, int]:
    """How many System V shared memory segments, message queues and semaphore sets it has."""
    def count() -> dict[str, int]:
        return {kind: len(_read(f"/proc/sysvipc/{kind}").splitlines()) - 1 for kind in ("shm", "msg", "sem")}
    return inside(ns, count, snapshot)


def cgroup_root(ns: Namespace, snapshot: Snapshot | None = None) -> dict[str, str]:
    """The cgroup each hierarchy's root is at, per controller set ('' is cgroup2): the host path of
    a member minus the path the member sees from inside."""
    pid = _member(ns)
    if pid is None:
        raise Gone("no process is in this cgroup namespace, so its root cannot be read")
    outside = procfs.parse_cgroup(_read(f"/proc/{pid}/cgroup"))
    inner = inside(ns, lambda: procfs.parse_cgroup(_read(f"/proc/{pid}/cgroup")), snapshot)
    roots = {}
    for key, host_path in outside.items():
        seen = inner.get(key, "/")
        root = host_path[: len(host_path) - len(seen)] if seen != "/" and host_path.endswith(seen) else host_path
        roots[key] = root or "/"
    return roots


def time_offsets(ns: Namespace) -> dict[str, tuple[int, int]]:
    """monotonic and boottime offsets (seconds, nanoseconds) of a time namespace."""
    for pid in (*ns.processes, *(h.pid for h in ns.holders if h.kind == "time_for_children")):
        try:
            return procfs.parse_timens_offsets(_read(f"/proc/{pid}/timens_offsets"))
        except OSError:
            continue
    raise Gone("no process shows this time namespace's offsets")


def mountinfo(ns: Namespace) -> bytes:
    """The mountinfo text of a mount namespace, as one of its processes sees it."""
    for pid in ns.processes:
        try:
            return _read(f"/proc/{pid}/mountinfo")
        except OSError:
            continue
    raise Gone("no process is in this mount namespace, so its mounts cannot be read")


# --- NETNSID: the id our net namespace's netlink uses for another one (kernel.netnsid) --------


def netnsid(ns: Namespace, snapshot: Snapshot | None = None) -> int | None:
    """The netnsid our net namespace assigned to ns, or None where none is assigned."""
    return netnsids([ns], snapshot).get(ns.inode)


def netnsids(namespaces: Iterable[Namespace], snapshot: Snapshot | None = None) -> dict[int, int | None]:
    """inode -> netnsid (None: none assigned) of each of these net namespaces, over one netlink
    socket. The ids our net namespace has assigned are listed first (one dump); namespaces are
    opened and asked, one request each, only until every one of those ids is found: on the many
    hosts that assign none, nothing is opened at all. (An id assigned after the dump is not
    looked for: the answer is the host as the dump saw it.)"""
    nets = [ns for ns in namespaces if ns.type == "net"]
    found: dict[int, int | None] = dict.fromkeys((ns.inode for ns in nets), None)
    if not nets:
        return found
    try:
        sock = kernel.route_socket()
    except OSError:
        return found
    with sock:
        try:
            missing: set[int] | None = kernel.assigned_netnsids(sock)
        except OSError:
            missing = None  # no dump: every one is asked
        for ns in nets:
            if missing is not None and not missing:
                break
            found[ns.inode] = nsid = _ask_netnsid(ns, snapshot, sock)
            if missing is not None and nsid is not None:
                missing.discard(nsid)
    return found


def _ask_netnsid(ns: Namespace, snapshot: Snapshot | None, sock: socket.socket) -> int | None:
    try:
        fd = open_namespace(ns, snapshot)
    except Gone:
        return None
    try:
        return kernel.netnsid(fd, sock)
    except OSError:
        return None
    finally:
        os.close(fd)


class Netnsids:
    """The NETNSIDs of a command's rows, asked for all of them at once when the first one is wanted
    (netnsids: one netlink socket, and no namespace opened on a host that assigns none)."""

    __slots__ = ("_found", "_snap", "wanted")

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap
        self._found: dict[int, int | None] | None = None
        #: the rows' namespaces, once they are made (until then: every one of the snapshot)
        self.wanted: list[Namespace] | None = None

    def get(self, ns: Namespace) -> int | None:
        if self._found is None:
            self._found = netnsids(self._snap if self.wanted is None else self.wanted, self._snap)
        if ns.inode not in self._found:  # (a namespace no row announced)
            self._found.update(netnsids([ns], self._snap))
        return self._found[ns.inode]
