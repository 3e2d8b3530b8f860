"""The bindmount source: nsfs files bind-mounted (as `ip netns add` does) in any mount namespace.

One process per mount namespace is enough: its /proc/PID/mountinfo lists that namespace's mounts,
and the bind-mounted file opens through /proc/PID/root/<mountpoint> without entering anything.
The same read gives each mount namespace's mount count for free.

A mount namespace that no process is in (held by an fd, a pin or a bind mount) has no
/proc/PID/mountinfo: its mounts are listed by its id (listmount()/statmount(), Linux 6.11+), and
its bind-mounted namespace files are opened by a short-lived child that enters it and passes the
fds back (SCM_RIGHTS).
"""

from __future__ import annotations

import contextlib
import errno
import os

from namespacefs import kernel, procfs
from namespacefs.discover import hierarchy
from namespacefs.discover.processes import read_at
from namespacefs.discover.state import Found, Scan
from namespacefs.forking import fork_and_act
from namespacefs.handles import holder_path
from namespacefs.model import Holder, HolderKind

#: how long the child that opens files inside a mount namespace may take
_CHILD_TIMEOUT = 2.0


def scan(state: Scan) -> None:
    """Read the mount table of each mount namespace in state.mount_readers not read yet: the one the
    walk read (state.mount_tables, when its process is one the scan took), else the first reader's."""
    for mntns, readers in state.mount_readers.items():
        if mntns in state.mounts_read:
            continue
        read = state.mount_tables.get(mntns)
        if read is None or read[0] not in state.processes:
            read = _first_readable(state, readers)
        if read is None:
            continue  # every reader gone
        state.mounts_read.add(mntns)
        pid, count, data = read
        if mntns in state.found:
            state.found[mntns].mounts = count
        for nstype, inode, mountpoint in procfs.nsfs_mounts(data):
            holder = Holder(HolderKind.BINDMOUNT, pid=pid, mntns=mntns, path=mountpoint)
            state.add(nstype, inode, holder)


def _first_readable(state: Scan, readers: list[int]) -> tuple[int, int, bytes] | None:
    """(pid, number of mounts, text) of the mountinfo of the first reader still alive: a process that
    exits between the process scan and here answers ENOENT, or EINVAL while it is tearing down its
    mount namespace."""
    for pid in readers:
        try:
            data = read_at(f"{state.proc}/{pid}/mountinfo")
            return pid, data.count(b"\n"), data
        except OSError as e:
            if e.errno == errno.EINVAL:
                state.errors["vanished"] += 1
            else:
                state.failed(e)
    return None


def scan_unentered(state: Scan) -> None:
    """The mount namespaces found so far that no process is in (so none was read above): their bind
    mounts, by the namespace's id. Repeated while new ones turn up (one can be bound inside
    another); each namespace found is resolved (hierarchy) like any other."""
    while todo := [(inode, ns) for inode, ns in state.found.items()
                   if ns.type == "mnt" and ns.id is not None and inode not in state.mount_readers
                   and inode not in state.mounts_read]:
        for inode, ns in todo:
            state.mounts_read.add(inode)
            try:
                _read_unentered(state, inode, ns)
            except OSError as e:
                state.failed(e)
        hierarchy.resolve(state)


def _read_unentered(state: Scan, mntns: int, ns: Found) -> None:
    assert ns.id is not None
    ids = kernel.listmount(ns.id)
    if ids is None:
        return  # Linux < 6.11: such a namespace's mounts cannot be listed without entering it
    binds: list[tuple[str, int, str]] = []
    for mnt_id in ids:
        try:
            m = kernel.statmount(mnt_id, ns.id)
        except OSError as e:
            state.failed(e)  # (ENOENT: unmounted since it was listed)
            continue
        if m.sb_magic == kernel.NSFS_MAGIC and (link := procfs.parse_ns_link(m.root)):
            binds.append((link[0], link[1], m.mountpoint))
    ns.mounts = len(ids)
    if not binds:
        return
    mnt_fd = _open_mntns(state, mntns, ns)
    if mnt_fd is None:
        state.errors["vanished"] += 1
        return
    try:
        fds = open_inside(mnt_fd, [path for _, _, path in binds])
    finally:
        os.close(mnt_fd)
    for (nstype, inode, path), fd in zip(binds, fds, strict=True):
        if fd is None:
            state.errors["vanished"] += 1
        elif os.fstat(fd).st_ino != inode or kernel.ns_type(fd) != nstype:
            os.close(fd)  # remounted meanwhile
            state.errors["changed"] += 1
        else:
            state.add(nstype, inode, Holder(HolderKind.BINDMOUNT, mntns=mntns, path=path), fd)


def _open_mntns(state: Scan, inode: int, ns: Found) -> int | None:
    """An fd of this mount namespace: from its id (Linux 6.18), an fd in hand or a holder's path."""
    candidates: list[int] = []
    with contextlib.suppress(OSError):
        candidates.append(kernel.open_ns_by_id(ns.id or 0, "mnt", inode))
    candidates += [os.dup(fd) for fd in ns.fds]
    for h in ns.holders:
        if (path := holder_path("mnt", h, state.proc)) is not None:
            try:
                candidates.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK))
            except OSError:
                continue
    found = None
    for fd in candidates:
        try:
            if found is None and os.fstat(fd).st_ino == inode and kernel.ns_type(fd) == "mnt":
                found = fd
                continue
        except OSError:
            pass
        os.close(fd)
    return found


def open_inside(mnt_fd: int, paths: list[str]) -> list[int | None]:
    """Open each path inside the mount namespace mnt_fd (None where it cannot be opened), through a
    child that enters it (setns needs an fs_struct of its own: a forked child has one) and sends the
    fds back over a unix socket. The child never returns into the caller (forking.fork_and_act)."""
    import socket  # (only where such a namespace has bind mounts: discovery does not need it else)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    def send_them() -> None:
        ours.close()
        kernel.setns(mnt_fd, kernel.CLONE_FLAGS["mnt"])
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                theirs.send(b"0")
                continue
            socket.send_fds(theirs, [b"1"], [fd])
            os.close(fd)

    pid = fork_and_act(send_them)
    theirs.close()
    got: list[int | None] = []
    try:
        ours.settimeout(_CHILD_TIMEOUT)
        for _ in paths:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
            except OSError:  # (TimeoutError too: a path that hangs, on a stuck FUSE mount)
                break
            if not msg:
                break  # the child died (setns refused: not privileged over that namespace)
            got.append(fds[0] if fds else None)
    finally:
        ours.close()
        if len(got) < len(paths):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    return got + [None] * (len(paths) - len(got))
