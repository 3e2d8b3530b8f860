"""The socket source: a socket keeps its net namespace alive even after every process left it.

Each socket fd is duplicated through a pidfd (pidfd_getfd) and asked for its net namespace
(SIOCGSKNS); results are cached by socket inode, since one socket is often shared by many fds.
Only sockets in a net namespace other than their process's own are reported as holders: the
process itself already holds its own.
"""

from __future__ import annotations

import os

from namespacefs import kernel
from namespacefs.discover.state import Scan
from namespacefs.model import Holder


def scan(state: Scan) -> None:
    """Probe the sockets the process source listed (state.sockets, emptied: each is probed once)."""
    netns_of_socket: dict[int, int] = {}
    listed, state.sockets = state.sockets, {}
    for pid, sockets in listed.items():
        proc = state.processes.get(pid)
        if proc is None:
            continue
        try:
            pidfd = kernel.pidfd_open(pid)
        except OSError as e:
            state.failed(e)
            continue
        try:
            for fd, sock_inode in sockets:
                netns = netns_of_socket.get(sock_inode)
                if netns is None:
                    netns = _probe(state, pidfd, fd, sock_inode)
                    if netns is None:
                        continue
                    netns_of_socket[sock_inode] = netns
                if netns != proc.namespaces.get("net"):
                    state.add("net", netns, Holder("socket", pid=pid, fd=fd, socket=sock_inode))
        finally:
            os.close(pidfd)


def _probe(state: Scan, pidfd: int, fd: int, sock_inode: int) -> int | None:
    """The inode of the socket's net namespace; a net namespace seen here first is kept open."""
    try:
        sock = kernel.pidfd_getfd(pidfd, fd)
    except OSError as e:
        state.failed(e)
        return None
    try:
        if os.fstat(sock).st_ino != sock_inode:
            return None  # the fd was closed and reused since we listed it
        nsfd = kernel.socket_netns_fd(sock)
    except OSError as e:
        state.failed(e)
        return None
    finally:
        os.close(sock)
    inode = os.fstat(nsfd).st_ino
    known = state.found.get(inode)
    if known is not None and known.fds:
        os.close(nsfd)  # already open in hand: one fd per namespace is enough
    else:
        # keep it even when the namespace was seen before: the paths of its other holders may
        # be gone by the hierarchy pass, while this socket still holds it
        state.ensure("net", inode, nsfd)
    return inode
