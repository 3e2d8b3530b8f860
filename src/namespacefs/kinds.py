"""The words of the model, and nothing else: the namespace types, the holder kinds and the
discovery sources, as named strings. The command line checks what a user typed against them
(`-t TYPE`, `--sources LIST`) and prints them; it needs no data classes, no ctypes and no model
for that, so they live here, below everything (namespacefs.model re-exports each of them).

kernel.NS_TYPES (the CLONE_NEW* table) is the kernel layer's list of the same eight types; a test
holds the two together."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class _Names(StrEnum):
    """Named strings: each member is its value, and shows as it (in a repr too)."""

    def __repr__(self) -> str:
        return repr(self.value)


class NsType(_Names):
    """The eight namespace types, by the names of their /proc/PID/ns links, in lsns's order
    (kernel.NS_TYPES's)."""

    MNT = "mnt"
    UTS = "uts"
    IPC = "ipc"
    USER = "user"
    PID = "pid"
    NET = "net"
    CGROUP = "cgroup"
    TIME = "time"


class HolderKind(_Names):
    """Why a namespace is alive, in the order kinds are reported."""

    PROCESS = "process"  # a process is in it (/proc/PID/ns/TYPE)
    ZOMBIE = "zombie"  # an exited, unreaped process still pins it (user and pid namespaces)
    TASK = "task"  # only some thread of a process is in it (/proc/PID/task/TID/ns/TYPE)
    PID_FOR_CHILDREN = "pid_for_children"  # a process's future children will be in it
    TIME_FOR_CHILDREN = "time_for_children"
    FD = "fd"  # an open file descriptor refers to it (/proc/PID/fd/N)
    BINDMOUNT = "bindmount"  # an nsfs file is bind-mounted in some mount namespace
    SOCKET = "socket"  # a socket (of a process in another net namespace) lives in it
    PARENT = "parent"  # nothing holds it directly; it is the parent of a pid/user namespace that is held
    OWNER = "owner"  # nothing holds it directly; it owns a namespace that is held
    LISTNS = "listns"  # found only by the kernel's listns() (Linux 6.19+)


class Source(_Names):
    """The discovery sources (`--sources`), in the order they run."""

    PROCESS = "process"
    TASK = "task"
    FOR_CHILDREN = "for_children"
    FD = "fd"
    SOCKET = "socket"
    BINDMOUNT = "bindmount"
    LISTNS = "listns"


#: The namespace types, in NsType's order.
NS_TYPES: Final[tuple[str, ...]] = tuple(NsType)
#: Holder kinds, in the order they are reported.
HOLDER_KINDS: Final[tuple[str, ...]] = tuple(HolderKind)
#: What holds a namespace itself (not only through a child that names it as parent or owner).
DIRECT_KINDS: Final[frozenset[str]] = frozenset(HOLDER_KINDS) - {HolderKind.PARENT, HolderKind.OWNER}
#: Kinds whose /proc path is a namespace link (ns/TYPE): what it opens is always of that type.
NS_LINK_KINDS: Final[frozenset[str]] = frozenset({
    HolderKind.PROCESS, HolderKind.ZOMBIE, HolderKind.TASK, HolderKind.PID_FOR_CHILDREN, HolderKind.TIME_FOR_CHILDREN})
#: Kinds a process gives a namespace (and takes away when it goes).
PER_PROCESS_KINDS: Final[frozenset[str]] = NS_LINK_KINDS | {HolderKind.FD}
#: Every source, in the order they run.
SOURCES: Final[tuple[str, ...]] = tuple(Source)
