"""The hierarchy pass: the id, owner and parent of every namespace found, and the owners and
parents that nothing holds but a child (`owner`, `parent`), to a fixpoint.

The walk (namespacefs._walk) opened each namespace where it first saw it and read it with
NS_GET_ID / NS_GET_USERNS / NS_GET_PARENT into Scan.known, relatives included. What it could not
open (a bind mount, an fd in hand from listns, a link that moved on between its readlink and its
open) is opened here once, through an fd in hand or else the first holder whose /proc path still
refers to it, and read by the same compiled code. The inode *and* the type must match, since a
path seen a moment ago may now lead to a namespace that reused the inode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from namespacefs import kernel
from namespacefs.discover.processes import resolve_fd
from namespacefs.discover.state import Found, Info, Scan
from namespacefs.handles import holder_path
from namespacefs.model import NsType


def resolve(state: Scan) -> None:
    found, known, flags, hierarchical = state.found, state.known, kernel.CLONE_FLAGS, kernel.HIERARCHICAL
    todo = list(found)
    while todo:
        inode = todo.pop()
        ns = found.get(inode)
        if ns is None or ns.resolved:
            continue
        info = known.get(inode)
        if info is None or info[0] != flags[ns.type]:  # (else _info would return it as it is)
            info = _info(state, inode, ns)
        if info is None:
            del found[inode]  # every holder went away mid-scan
            state.errors["vanished"] += 1
            continue
        _, ns.dev, ns.id, owner, parent, ns.owner_uid = info
        ns.resolved = True
        if owner is not None:
            ns.owner = _relative(state, owner, NsType.USER, todo)
        if parent is not None and ns.type in hierarchical:
            ns.parent = _relative(state, parent, ns.type, todo)


def _relative(state: Scan, inode: int, nstype: str, todo: list[int]) -> int:
    """An owner or parent: found (if unseen) and resolved in its turn (if not resolved yet)."""
    ns = state.found.get(inode)
    if ns is None or ns.type != nstype:  # (else ensure would return it as it is)
        ns = state.ensure(nstype, inode)
    if not ns.resolved:
        todo.append(inode)
    return inode


def _info(state: Scan, inode: int, ns: Found) -> Info | None:
    """What the walk read of this namespace, if it was this namespace (the type matches), else
    what it reads now through one of the namespace's own ways in."""
    flag = kernel.CLONE_FLAGS[ns.type]
    info = state.known.get(inode)
    if info is not None and info[0] == flag:
        return info
    if info is not None:
        del state.known[inode]  # the inode was another type's when the walk opened it
    for fd in _candidates(state, ns):
        try:
            st = os.fstat(fd)
            if st.st_ino == inode and stat.S_ISREG(st.st_mode):
                resolve_fd(fd, state.known)
                info = state.known.get(inode)
                if info is not None and info[0] == flag:
                    return info
                state.known.pop(inode, None)
        except OSError:
            pass  # not an nsfs file (any more)
        finally:
            os.close(fd)
    return None


def _candidates(state: Scan, ns: Found) -> Iterator[int]:
    """Open fds that may be the namespace: fds in hand first, then each holder's path."""
    for fd in ns.fds:
        yield os.dup(fd)
    for holder in ns.holders:
        path = holder_path(ns.type, holder, state.proc)
        if path is None:
            continue
        try:
            yield os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            state.failed(e)
