"""Types of the compiled /proc walk (_walk.c), for the type checker."""

from collections.abc import Sequence
from typing import Any

WANT_TASKS: int
WANT_FDS: int
WANT_SOCKETS: int
WANT_CGROUP: int
WANT_MOUNTS: int

#: (pid, status, links, cmdline, cgroup or None, tasks or errno, fds or errno), or (pid, errno)
Record = tuple[Any, ...]
#: inode -> (CLONE_NEW* type, st_dev, id, owner inode, parent inode, owner uid)
Known = dict[int, tuple[int, int, int | None, int | None, int | None, int | None]]

#: mount namespace inode -> (pid, number of mounts, the lines of its mountinfo that name nsfs)
Tables = dict[int, tuple[int, int, bytes]]

def walk(proc: str, pids: Sequence[int] | None, links: tuple[str, ...], fd_kinds: tuple[str, ...], flags: int,
         known: Known, tables: Tables | None = None, /) -> list[Record]: ...
def resolve(fd: int, known: Known, /) -> int: ...
