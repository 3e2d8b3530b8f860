"""What the discovery sources accumulate during one scan, before it is frozen into a Snapshot."""

from __future__ import annotations

import errno
import mmap
import os
from collections import Counter

from namespacefs.model import Holder, Process

#: errno values that mean "this process (or fd) is gone": the normal case for a live host.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENOTDIR,
                  errno.EBADF})  # EBADF: pidfd_getfd of an fd closed since it was listed (issue 7)
#: errno values that mean "not allowed to look".
DENIED = frozenset({errno.EACCES, errno.EPERM})
#: Where Scan.failed names each entry it skips (`nsfs ls -v`): None, or a file such as sys.stderr.
#: A module setting, so a forked reader inherits it.
REPORT_TO = None

class Found:
    """One namespace as seen so far. It is opened again (by the hierarchy pass) through an fd in
    hand, else through the /proc path each holder implies: no path is stored per sighting.
    (Found and Scan are plain classes: discovery must not import dataclasses before it forks.)"""

    __slots__ = ("dev", "fds", "holders", "id", "mounts", "owner", "owner_uid", "parent", "processes",
                 "resolved", "type")

    def __init__(self, nstype: str) -> None:
        self.type = nstype
        self.holders: list[Holder] = []
        self.processes: list[int] = []
        self.fds: list[int] = []  # nsfs fds in hand (a socket's net namespace, listns)
        # filled in by the hierarchy pass
        self.id: int | None = None
        self.dev = 0
        self.owner: int | None = None
        self.parent: int | None = None
        self.owner_uid: int | None = None
        self.mounts: int | None = None
        self.resolved = False


#: Tasks a reader claims per namespace (Scan.claim), as bits of one byte.
RESOLVE, MOUNTS, MAPS = 1, 2, 4

#: Scan.portable(): found as plain tuples (unpickled three times faster than Found objects),
#: processes, errors, mount_readers, mounts_read, user_maps (a reader's sockets are probed by it)
Resolution = tuple[int | None, int, int | None, int | None, int | None]  # id, dev, owner, parent, owner_uid
PortableFound = tuple[str, list[Holder], list[int], Resolution | None, int | None]  # ..., mounts
UserMaps = dict[int, tuple[tuple, tuple, str]]
Portable = tuple[dict[int, PortableFound], dict[int, Process], Counter[str], dict[int, list[int]], set[int], UserMaps]


class Scan:
    """The mutable state of one scan; each source adds to it."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.found: dict[int, Found] = {}
        self.processes: dict[int, Process] = {}
        self.errors: Counter[str] = Counter()
        #: pids whose fds are sockets, for the socket source: pid -> [(fd, socket inode)]
        self.sockets: dict[int, list[tuple[int, int]]] = {}
        #: the processes of each mount namespace, in scan order: the bindmount source reads the
        #: mountinfo of the first one still alive
        self.mount_readers: dict[int, list[int]] = {}
        self.mounts_read: set[int] = set()  # by the bindmount source
        #: user namespace -> (uid_map, gid_map, setgroups), read once each
        self.user_maps: UserMaps = {}
        #: while two readers scan (discover.parallel): memory both share, one byte per namespace
        #: (by inode), with a bit for each task a reader has taken on (Scan.claim)
        self.claims: mmap.mmap | None = None

    def claim(self, inode: int, task: int = RESOLVE) -> bool:
        """Should this reader do this task for the namespace (RESOLVE: open it through its holders
        for its id, owner and parent; MOUNTS: read its mount table; MAPS: its id maps)? Not if the
        other reader took it: its answer comes back with its part. The check and the mark are not
        atomic: at worst both readers do it (once each). What neither does (its slot shared with
        another namespace's, or the claimer found every way there gone) is done after the merge,
        when there are no claims, with what both readers saw."""
        if self.claims is None:
            return True
        slot = inode % len(self.claims)
        held = self.claims[slot]
        if held & task:
            return False
        self.claims[slot] = held | task
        return True

    def add(self, nstype: str, inode: int, holder: Holder, fd: int | None = None) -> Found:
        ns = self.ensure(nstype, inode, fd)
        ns.holders.append(holder)
        return ns

    def ensure(self, nstype: str, inode: int, fd: int | None = None) -> Found:
        """The record for a namespace, made on first sight; fd (an open nsfs file, which the scan
        now owns) is one more way to open it."""
        ns = self.found.get(inode)
        if ns is None:
            ns = self.found[inode] = Found(nstype)
        elif ns.type != nstype:
            # the inode was reused by a namespace of another type during the scan
            self.errors["changed"] += 1
            if fd is not None:
                os.close(fd)
            return Found(nstype)  # a throwaway: the stale sighting is dropped
        if fd is not None:
            ns.fds.append(fd)
        return ns

    def portable(self) -> Portable:
        """What a forked reader found, to send back: it holds no fds (closed once resolved)."""
        found = {inode: (ns.type, ns.holders, ns.processes,
                         (ns.id, ns.dev, ns.owner, ns.parent, ns.owner_uid) if ns.resolved else None, ns.mounts)
                 for inode, ns in self.found.items()}
        return found, self.processes, self.errors, self.mount_readers, self.mounts_read, self.user_maps

    def merge(self, part: Portable) -> None:
        """Add what another reader found (Scan.portable()) for other processes."""
        found, processes, errors, mount_readers, mounts_read, user_maps = part
        for inode, (nstype, holders, pids, resolution, mounts) in found.items():
            mine = self.ensure(nstype, inode)
            mine.holders += holders
            mine.processes += pids
            if resolution is not None and not mine.resolved:
                mine.id, mine.dev, mine.owner, mine.parent, mine.owner_uid = resolution
                mine.resolved = True
            if mounts is not None:
                mine.mounts = mounts
        self.processes.update(processes)
        self.errors.update(errors)
        for mntns, readers in mount_readers.items():
            self.mount_readers.setdefault(mntns, []).extend(readers)
        self.mounts_read |= mounts_read
        self.user_maps.update(user_maps)

    def failed(self, err: OSError, pid: int | None = None) -> None:
        """Count an error that a source chose to skip; raise what is not a normal race. What root
        itself may not read (this sandbox's pid 1, say) the kernel or a security module protects:
        counted as "protected", apart from "denied" (what a user may not read)."""
        if err.errno in GONE:
            reason = "vanished"
        elif err.errno in DENIED:
            reason = "protected" if os.geteuid() == 0 else "denied"
        else:
            raise err
        self.errors[reason] += 1
        if REPORT_TO is not None:
            print(f"nsfs: {reason}: {self._where(err, pid)}: {err.strerror}", file=REPORT_TO)

    def _where(self, err: OSError, pid: int | None) -> str:
        """'pid N /proc/N/...' for -v: the pid given, else the one the path names."""
        path = str(err.filename or "")
        if pid is not None and not path.startswith("/"):
            path = f"{self.proc}/{pid}/{path}"  # read through the process's directory fd
        if pid is None and path.startswith(self.proc + "/"):
            head = path[len(self.proc) + 1:].split("/", 1)[0]
            pid = int(head) if head.isdigit() else None
        return f"pid {pid} {path}" if pid is not None else path

    def close_fds(self) -> None:
        for ns in self.found.values():
            for fd in ns.fds:
                os.close(fd)
            ns.fds.clear()
