"""Reopening a namespace seen in a snapshot, to act on it later.

On Linux 6.18 a namespace reopens from its 64-bit id alone (an nsfs file handle), with no path
that could have changed meanwhile. Elsewhere, or without CAP_SYS_ADMIN, each holder's path is
tried. Either way the fd is checked to be the same namespace (inode and type) before it is
returned.
"""

from __future__ import annotations

import errno
import os

from namespacefs import kernel
from namespacefs.kernel import HIERARCHICAL
from namespacefs.model import NS_LINK_KINDS, Holder, HolderKind, Namespace, Snapshot


class Gone(LookupError):
    """The namespace no longer exists (or cannot be reached)."""




def holder_path(nstype: str, h: Holder, proc: str = "/proc") -> str | None:
    """The /proc path through which a holder reaches its namespace of type nstype (None for a
    socket or listns holder, which only an fd in hand reaches, and for parent and owner)."""
    if h.kind in NS_LINK_KINDS:
        link = h.kind if h.kind.endswith("_for_children") else nstype
        return f"{proc}/{h.pid}/task/{h.tid}/ns/{link}" if h.tid else f"{proc}/{h.pid}/ns/{link}"
    if h.kind == HolderKind.FD:
        return f"{proc}/{h.pid}/fd/{h.fd}"
    if h.kind == HolderKind.BINDMOUNT and h.pid is not None:  # (one in a mount namespace no process is in: no path)
        return f"{proc}/{h.pid}/root{h.path}"
    return None


def open_namespace(ns: Namespace, snapshot: Snapshot | None = None, proc: str = "/proc") -> int:
    """An O_RDONLY fd for this very namespace; raises Gone if it is not there any more. With the
    snapshot, a namespace held only as an owner or parent is reached through its child."""
    if ns.id is not None:
        try:
            fd = kernel.open_ns_by_id(ns.id, ns.type, ns.inode)
        except OSError:
            pass  # no file handles here, or not privileged: fall back to paths
        else:
            if _is(fd, ns):
                return fd
    for h in ns.holders:
        try:
            held = _open_holder(ns, h, snapshot, proc)
        except (OSError, Gone):
            continue
        if held is not None and _is(held, ns):
            return held
    raise Gone(f"{ns.type}:[{ns.inode}] is gone or cannot be opened")


def alive_by_id(ident: int, nstype: str, inode: int) -> bool | None:
    """Is the namespace with this 64-bit id (and type and inode) still alive, asked of the kernel
    (an nsfs file handle)? None where that cannot be asked (no file handles, not privileged)."""
    try:
        fd = kernel.open_ns_by_id(ident, nstype, inode)
    except OSError as e:
        if e.errno in (errno.ESTALE, errno.ENOENT, errno.ESRCH):
            return False
        return None
    os.close(fd)
    return True


def _open_holder(ns: Namespace, h: Holder, snapshot: Snapshot | None, proc: str) -> int | None:
    if h.kind in (HolderKind.OWNER, HolderKind.PARENT):
        child = snapshot.get(h.via) if snapshot and h.via is not None else None
        if child is None:
            return None
        child_fd = open_namespace(child, snapshot, proc)
        try:
            return kernel.ns_owner_fd(child_fd) if h.kind == HolderKind.OWNER else kernel.ns_parent_fd(child_fd)
        finally:
            os.close(child_fd)
    path = holder_path(ns.type, h, proc)
    if path is None:
        return None
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)


def _is(fd: int, ns: Namespace) -> bool:
    try:
        if os.fstat(fd).st_ino == ns.inode and kernel.ns_type(fd) == ns.type:
            return True
    except OSError:
        pass
    os.close(fd)
    return False


def still_members(ns: Namespace, proc: str = "/proc") -> tuple[int, ...]:
    """The processes of the snapshot's ns that are still in it now (a snapshot can be a second old;
    a pid listed in `tasks` must not be gone when a script opens /proc/PID/ns/... next). One stat
    of /proc/PID/ns/TYPE each, a few microseconds; a pid reused by another process is dropped too,
    and so is a zombie (it has exited: its uts link is gone, though its pid and user links stay)."""
    members = []
    for pid in ns.processes:
        try:
            if os.stat(f"{proc}/{pid}/ns/{ns.type}").st_ino != ns.inode:
                continue
            if ns.type in HIERARCHICAL:
                os.stat(f"{proc}/{pid}/ns/uts")  # (the links of an exited task's nsproxy fail: ENOENT)
        except OSError:
            continue  # gone
        members.append(pid)
    return tuple(members)
