"""The hierarchy pass: open every namespace once, read its id, owner and parent, and follow
NS_GET_USERNS / NS_GET_PARENT to a fixpoint, so namespaces that nothing holds but a child
(`owner`, `parent`) are found too.

Each namespace is opened once, through an fd in hand or else the first holder whose /proc path
still refers to it: the inode *and* the type must match (NS_GET_NSTYPE where the path does not
fix the type), since a path seen a moment ago may now lead to a namespace that reused the inode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from namespacefs import kernel
from namespacefs.discover.state import Found, Scan
from namespacefs.handles import NS_LINK_KINDS, holder_path


def resolve(state: Scan) -> None:
    for inode in list(state.found):
        ns = state.found[inode]
        if ns.resolved or not state.claim(inode):
            continue
        opened = _open(state, inode, ns)
        if opened is None:
            del state.found[inode]  # every holder went away mid-scan
            state.errors["vanished"] += 1
            continue
        _resolve_fd(state, inode, ns, *opened)


def _candidates(state: Scan, ns: Found) -> Iterator[tuple[int, bool]]:
    """Open fds that may be the namespace, each with whether its type is certain (an fd in hand
    never changes what it refers to; nor does an ns/TYPE link its type): fds in hand first."""
    for fd in ns.fds:
        yield os.dup(fd), True
    for holder in ns.holders:
        path = holder_path(ns.type, holder, state.proc)
        if path is None:
            continue
        try:
            yield os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK), holder.kind in NS_LINK_KINDS
        except OSError as e:
            state.failed(e)


def _open(state: Scan, inode: int, ns: Found) -> tuple[int, int] | None:
    """An fd for the namespace and its nsfs device: the inode *and* the type must match, since an
    fd or a mountpoint seen a moment ago may now lead to a namespace that reused the inode."""
    for fd, typed in _candidates(state, ns):
        try:
            st = os.fstat(fd)
            if st.st_ino == inode and stat.S_ISREG(st.st_mode) and (typed or kernel.ns_type(fd) == ns.type):
                return fd, st.st_dev
        except OSError:
            pass  # not an nsfs file (any more)
        os.close(fd)
    return None


def _resolve_fd(state: Scan, inode: int, ns: Found, fd: int, dev: int) -> None:
    """Fill in ns from its open fd (which this closes), descending into unseen relatives."""
    ns.resolved = True
    try:
        ns.dev = dev
        ns.id = kernel.ns_id(fd, ns.type)
        ns.owner = _relative(state, kernel.ns_owner_fd(fd), "user")
        if ns.type in kernel.HIERARCHICAL:
            # a user namespace's owner is its parent: no second ioctl
            ns.parent = ns.owner if ns.type == "user" else _relative(state, kernel.ns_parent_fd(fd), ns.type)
        if ns.type == "user":
            ns.owner_uid = kernel.ns_owner_uid(fd)
    finally:
        os.close(fd)


def _relative(state: Scan, fd: int | None, nstype: str) -> int | None:
    """The inode behind a relative's fd; an unseen relative is resolved now (fd is consumed)."""
    if fd is None:
        return None
    st = os.fstat(fd)
    ns = state.ensure(nstype, st.st_ino)
    if ns.resolved:  # (no claim here: an fd in hand is the surest way there is, so it is used)
        os.close(fd)
    else:
        _resolve_fd(state, st.st_ino, ns, fd, st.st_dev)
    return st.st_ino
