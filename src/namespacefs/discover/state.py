"""What the discovery sources accumulate during one scan, before it is frozen into a Snapshot."""

from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from namespacefs.model import Holder, Process

#: errno values that mean "this process (or fd) is gone": the normal case for a live host.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENOTDIR,
                  errno.EBADF})  # EBADF: pidfd_getfd of an fd closed since it was listed (issue 7)
#: errno values that mean "not allowed to look".
DENIED = frozenset({errno.EACCES, errno.EPERM})
#: Where Scan.failed names each entry it skips (`nsfs ls -v`): None, or a file such as sys.stderr.
#: A module setting, so a forked reader inherits it.
REPORT_TO: TextIO | None = None

#: What the compiled walk (namespacefs._walk) reads of each namespace it opens, by inode:
#: (CLONE_NEW* type, st_dev, id, owner inode, parent inode, owner uid), None where there is none.
Info = tuple[int, int, int | None, int | None, int | None, int | None]
IdMap = tuple[tuple[int, int, int], ...]
UserMaps = dict[int, tuple[IdMap, IdMap, str]]


@dataclass(slots=True)
class Found:
    """One namespace as seen so far. Its id, owner and parent come from the walk, which opened it
    where it first saw it; one it could not open is opened again (by the hierarchy pass) through
    an fd in hand, else through the /proc path each holder implies."""

    type: str
    holders: list[Holder] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # nsfs fds in hand (listns)
    # filled in by the hierarchy pass
    id: int | None = None
    dev: int = 0
    owner: int | None = None
    parent: int | None = None
    owner_uid: int | None = None
    mounts: int | None = None
    resolved: bool = False


class Scan:
    """The mutable state of one scan; each source adds to it."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.found: dict[int, Found] = {}
        self.processes: dict[int, Process] = {}
        self.errors: Counter[str] = Counter()
        #: the same errors of each process they belong to: a partial re-read (the daemon's) replaces
        #: what a process had with what it has now, instead of adding to the count
        self.errors_by_pid: dict[int, Counter[str]] = {}
        #: every namespace the walk (or the hierarchy pass) opened, by inode (see Info)
        self.known: dict[int, Info] = {}
        #: the processes of each mount namespace, in scan order: the bindmount source reads the
        #: mountinfo of the first one still alive
        self.mount_readers: dict[int, list[int]] = {}
        self.mounts_read: set[int] = set()  # by the bindmount source
        #: mount tables the walk read (the first process of each mount namespace it saw): mnt inode
        #: -> (pid, number of mounts, the lines of the table that name nsfs); mounts.scan takes them
        self.mount_tables: dict[int, tuple[int, int, bytes]] = {}
        #: user namespace -> (uid_map, gid_map, setgroups), read once each
        self.user_maps: UserMaps = {}

    def add(self, nstype: str, inode: int, holder: Holder, fd: int | None = None) -> Found:
        ns = self.found.get(inode)
        if ns is None or ns.type != nstype or fd is not None:  # (else ensure would return it as it is)
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
        path = str(err.filename or "")
        if pid is not None and not path.startswith("/"):
            path = f"{self.proc}/{pid}/{path}"  # read through the process's directory fd
        if pid is None and path.startswith(self.proc + "/"):
            head = path[len(self.proc) + 1:].split("/", 1)[0]
            pid = int(head) if head.isdigit() else None
        self.count(reason, pid=pid)
        if REPORT_TO is not None:
            where = f"pid {pid} {path}" if pid is not None else path
            print(f"nsfs: {reason}: {where}: {err.strerror}", file=REPORT_TO)

    def count(self, reason: str, n: int = 1, pid: int | None = None) -> None:
        """n more entries that could not be read, for `reason`, of process `pid` if one."""
        self.errors[reason] += n
        if pid is not None:
            self.errors_by_pid.setdefault(pid, Counter())[reason] += n

    def close_fds(self) -> None:
        for ns in self.found.values():
            for fd in ns.fds:
                os.close(fd)
            ns.fds.clear()
