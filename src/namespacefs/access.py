"""Who may see what: the one rule every front end applies to a reader (the FUSE filesystem with
--allow-other, the HTTP API), so that namespacefs never tells a user what the kernel would not.

The kernel guards /proc/PID/ns/*, /proc/PID/mountinfo and the like with the ptrace read check
(PTRACE_MODE_READ_FSCREDS: the same uid and gid as the target, or CAP_SYS_PTRACE over its user
namespace, and a dumpable target), and lets a process read a uts, ipc, net or cgroup namespace's
state (a hostname, interfaces) only by entering it (setns: CAP_SYS_ADMIN over the namespace's owner
and in its own user namespace). namespacefs runs as root and could read it all; so a reader's
share is not modelled, it is asked of the kernel itself: a forked child takes the reader's
credentials (its user namespace, its uid and gid there; capabilities as a process of that uid has
them there) and tries, for every process of the snapshot, the very check (stat of
/proc/PID/ns/user), and for every namespace that needs entering, setns() into it. What it could
do is what the reader may see. The answer is kept for the snapshot it was made for.

    Reader(uid, gid, pid)        who asks: host uid/gid, and a pid (whose user namespace it is in)
    may_see(reader, thing, snapshot, enter=False)   a pid, or a namespace (seen through one of its
                                 processes; enter=True: also entered)
    privileged_over(snapshot, reader_userns, uid, target)   may the reader change what a user
                                 namespace owns (the kernel's capability rule, approximated)
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from namespacefs import kernel
from namespacefs.model import Namespace, Snapshot
from namespacefs.ops import inside

#: Namespace types whose state a reader can only read by entering them (details.inside).
ENTERED = ("uts", "ipc", "net", "cgroup")


class Reader(NamedTuple):
    uid: int
    gid: int
    pid: int  # a process of the reader (FUSE gives the requesting thread's), for its user namespace


@dataclass(frozen=True)
class Access:
    """What one reader may see of one snapshot; None: everything."""

    pids: frozenset[int] | None
    entered: frozenset[int] | None  # inodes of the namespaces it could enter

    @classmethod
    def everything(cls) -> Access:
        return cls(None, None)


NOTHING = Access(frozenset(), frozenset())
_cache: dict[tuple[int, int, int | None], tuple[Snapshot, Access]] = {}
_lock = threading.Lock()
CACHED_READERS = 64


def may_see(reader: Reader | None, thing: Namespace | int, snapshot: Snapshot, enter: bool = False) -> bool:
    """Whether the kernel would show `thing` to the reader (None: the service's own trusted
    callers, root over the Unix socket or a holder of the token): a pid it may ptrace-read, or a
    namespace it could open through one of its processes (enter=True: and also setns() into)."""
    access = access_of(reader, snapshot)
    if isinstance(thing, int):
        return access.pids is None or thing in access.pids
    if enter:
        return access.entered is None or thing.inode in access.entered
    return access.pids is None or any(pid in access.pids for pid in _pids_of(thing))


def visible_namespaces(reader: Reader | None, snapshot: Snapshot) -> frozenset[int] | None:
    """The inodes of the namespaces a reader may see (None: all): those it could open through one
    of their processes (may_see), and the owners and parents of those (the kernel answers
    NS_GET_USERNS and NS_GET_PARENT from a namespace one holds), up to the initial user namespace."""
    if access_of(reader, snapshot).pids is None:
        return None
    seen: set[int] = set()
    todo = [ns for ns in snapshot if may_see(reader, ns, snapshot)]
    while todo:
        ns = todo.pop()
        if ns.inode in seen:
            continue
        seen.add(ns.inode)
        todo.extend(up for i in (ns.owner, ns.parent) if i is not None and (up := snapshot.get(i)) is not None)
    if snapshot.initial_user is not None:
        seen.add(snapshot.initial_user.inode)
    return frozenset(seen)


def visible_pids(reader: Reader | None, pids: Iterable[int], snapshot: Snapshot) -> list[int]:
    """The pids of a list the reader may see (may_see for each)."""
    return [pid for pid in pids if may_see(reader, pid, snapshot)]


def _pids_of(ns: Namespace) -> set[int]:
    return set(ns.processes) | {h.pid for h in ns.holders if h.pid is not None}


def access_of(reader: Reader | None, snapshot: Snapshot) -> Access:
    """The reader's share of the snapshot, asked of the kernel once per reader and snapshot."""
    if reader is None:
        return Access.everything()
    userns = _userns(reader.pid)
    if userns is None:
        return NOTHING  # the reader is gone
    if reader.uid == 0 and userns == _userns(os.getpid()):
        return Access.everything()  # root in our user namespace: what we see
    key = (reader.uid, reader.gid, userns)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is snapshot:
            return hit[1]
    access = _probe(reader, snapshot)
    with _lock:
        if len(_cache) >= CACHED_READERS:
            _cache.clear()
        _cache[key] = (snapshot, access)
    return access


def _userns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino
    except OSError:
        return None


def _probe(reader: Reader, snapshot: Snapshot) -> Access:
    """Fork; the child becomes the reader (credentials, user namespace) and reports what it could do."""
    pids = sorted(snapshot.processes)
    entered = [(ns.inode, ns.type, sorted(_pids_of(ns))) for ns in snapshot if ns.type in ENTERED]
    try:
        userns_fd = os.open(f"/proc/{reader.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return NOTHING
    same = userns_fd_is_ours(userns_fd)
    ids = (reader.uid, reader.gid) if same else (_inside(reader.pid, "uid_map", reader.uid),
                                                  _inside(reader.pid, "gid_map", reader.gid))
    if min(ids) < 0:  # unmapped in its own user namespace (and setres*id(-1) would change nothing)
        os.close(userns_fd)
        return NOTHING
    own = _own_namespaces(reader.pid)  # what it is in, it reads without entering (uname(), ...)
    join = None if same else inside.Join(fds={"user": userns_fd})  # (ids are those of the reader in there)
    try:
        seen, entered_ok = inside.call(lambda: _as_reader(ids, pids, entered), join)
    except Exception:  # the child failed before it answered (or could not be made): nothing may be shown
        return NOTHING
    finally:
        os.close(userns_fd)
    return Access(frozenset(seen), frozenset(entered_ok) | own)


def _own_namespaces(pid: int) -> frozenset[int]:
    inodes = set()
    for nstype in ENTERED:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/proc/{pid}/ns/{nstype}").st_ino)
    return frozenset(inodes)


def userns_fd_is_ours(fd: int) -> bool:
    return os.fstat(fd).st_ino == _userns(os.getpid())


def _as_reader(ids: tuple[int, int], pids: list[int],
               entered: list[tuple[int, str, list[int]]]) -> tuple[list[int], list[int]]:  # pragma: no cover
    """In the child (ops.inside.call, in the reader's user namespace): become the reader, then try
    what it may; (the pids it may read, the namespaces it could enter). Plain os calls only."""
    uid, gid = ids
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from here on, only what the reader's own credentials allow
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError("could not take the reader's ids")  # (the parent then shows nothing)
    seen = []
    for pid in pids:
        try:
            os.stat(f"/proc/{pid}/ns/user")  # the ptrace read check (PTRACE_MODE_READ_FSCREDS)
            seen.append(pid)
        except OSError:
            pass
    readable = set(seen)
    inside_: list[int] = []
    later: dict[int, list[tuple[int, str, int]]] = {}  # a member's user namespace -> what to enter from there
    for inode, nstype, members in entered:
        member = next((pid for pid in members if pid in readable), None)
        if member is None:
            continue
        if _enter(member, nstype, inode):
            inside_.append(inode)
        else:
            with contextlib.suppress(OSError):
                later.setdefault(os.stat(f"/proc/{member}/ns/user").st_ino, []).append((member, nstype, inode))
    for tries in later.values():  # entering the user namespace first, as `nsenter -U -u` would
        inside_.extend(_enter_through_userns(tries))
    return seen, inside_


def _enter(pid: int, nstype: str, inode: int) -> bool:  # pragma: no cover - child only
    """setns() into pid's namespace of nstype, if it is still `inode`."""
    try:
        fd = os.open(f"/proc/{pid}/ns/{nstype}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        kernel.setns(fd, kernel.CLONE_FLAGS[nstype])
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _enter_through_userns(tries: list[tuple[int, str, int]]) -> list[int]:  # pragma: no cover - child only
    """In a grandchild (entering a user namespace cannot be undone): join the members' user
    namespace, then each namespace; the inodes it could enter."""
    def act() -> list[int]:
        if not _enter(tries[0][0], "user", os.stat(f"/proc/{tries[0][0]}/ns/user").st_ino):
            return []
        return [inode for pid, nstype, inode in tries if _enter(pid, nstype, inode)]

    try:
        return inside.call(act)
    except Exception:
        return []


def _inside(pid: int, map_name: str, host_id: int) -> int:
    """A host id as the reader's user namespace sees it (read from here, the map is relative to our
    user namespace); -1 if unmapped, which setres*id refuses, and the reader then sees nothing."""
    try:
        with open(f"/proc/{pid}/{map_name}", "rb") as f:
            text = f.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        inside, outside, count = (int(x) for x in line.split())
        if outside <= host_id < outside + count:
            return host_id - outside + inside
    return -1


# --- privilege over a user namespace (renaming through the filesystem) -----------------------


def _uid_inside(user: Namespace, uid: int) -> int | None:
    """A host uid as seen inside a user namespace (None: unmapped; accounting.to_inside's map rule)."""
    from namespacefs.accounting import to_inside

    return uid if user.owner is None else to_inside(user.uid_map, uid)


def privileged_over(snapshot: Snapshot, reader_userns: int | None, uid: int, target: int | None) -> bool:
    """Whether a reader (in reader_userns, None: the initial one, with host uid `uid`) may change
    something owned by user namespace `target` (None: the initial one). The kernel's rule, with
    'has capabilities' approximated by 'is root inside its own user namespace': the reader is root
    in target or in an ancestor of it, or owns the child of its namespace on the path to target."""
    initial = snapshot.initial_user
    if reader_userns is None and initial is not None:
        reader_userns = initial.inode
    if target is None:
        if initial is None:
            return uid == 0
        target = initial.inode
    ns = snapshot.get(target)
    while ns is not None:
        if ns.inode == reader_userns:
            return _uid_inside(ns, uid) == 0
        if ns.owner == reader_userns and ns.owner_uid == uid:
            return True
        ns = snapshot.get(ns.owner) if ns.owner is not None else None
    return False
