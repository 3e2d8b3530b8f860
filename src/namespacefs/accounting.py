"""Per-user-namespace accounting: who runs how many tasks under which ids, the limits in force, and
which user namespaces share host ids.

Everything is computed from a Snapshot plus the few reads a snapshot does not carry:
/proc/PID/limits (RLIMIT_NPROC of each process) and /proc/sys/user/* read *inside* each user
namespace (those sysctls are per user namespace: a reader sees the values of its own). A user
namespace can only be joined by a single-threaded process, so each one is read by a forked child
that setns()es into it and sends the values back (namespacefs.ops.inside.call, its fork rule).

What the kernel counts (kernel/ucount.c, since Linux 5.14): RLIMIT_NPROC is checked against a
counter per (user namespace, host uid), and every task is also charged to the namespace creator's
counter in the parent namespace, up to the initial one. Before 5.14 there was one counter per host
uid, so namespaces mapping the same host uids shared it; that is reported where it applies.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from namespacefs import handles
from namespacefs.model import Namespace, Snapshot
from namespacefs.ops import inside

IdMap = tuple[tuple[int, int, int], ...]
Range = tuple[int, int]  # (first host id, count)

SYSCTL_USER: Final = "/proc/sys/user"
#: The kernel release from which RLIMIT_NPROC is counted per user namespace (ucounts).
PER_USERNS_NPROC: Final = (5, 14)


# --- pure helpers ------------------------------------------------------------------------------


def parse_nproc_limit(data: bytes) -> tuple[int | None, int | None]:
    """The soft and hard RLIMIT_NPROC from /proc/PID/limits (None: unlimited)."""
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("Max processes"):
            parts = line[len("Max processes"):].split()
            soft, hard = parts[0], parts[1]
            return (None if soft == "unlimited" else int(soft)), (None if hard == "unlimited" else int(hard))
    raise ValueError("no 'Max processes' line in limits")


def to_inside(idmap: IdMap | None, host_id: int) -> int | None:
    """The id inside a namespace for a host id, through the map as read from the host; None if unmapped."""
    for first, outside, count in idmap or ():
        if outside <= host_id < outside + count:
            return first + host_id - outside
    return None


def host_ranges(idmap: IdMap | None) -> list[Range]:
    """The host side of a map, sorted and merged."""
    ranges = sorted((outside, count) for _inside, outside, count in idmap or ())
    merged: list[Range] = []
    for start, count in ranges:
        if merged and start <= merged[-1][0] + merged[-1][1]:
            first, n = merged[-1]
            merged[-1] = (first, max(first + n, start + count) - first)
        else:
            merged.append((start, count))
    return merged


def intersect(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """The host ids two sets of merged ranges share, as merged ranges."""
    out: list[Range] = []
    for sa, na in a:
        for sb, nb in b:
            lo, hi = max(sa, sb), min(sa + na, sb + nb)
            if lo < hi:
                out.append((lo, hi - lo))
    return sorted(out)


def kernel_release(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# --- the result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UidCount:
    """The tasks of one uid inside one user namespace."""

    uid: int | None  # inside the namespace (None: not mapped there)
    host_uid: int
    processes: int
    threads: int  # tasks: what RLIMIT_NPROC counts
    nproc_limit: int | None  # the lowest soft RLIMIT_NPROC among these processes; None: unlimited
    nproc_unknown: int  # processes whose limits could not be read (vanished, denied)
    host_threads: int  # tasks with this real uid on the whole host, in every namespace
    # what the kernel compares with RLIMIT_NPROC on fork: the (namespace, host uid) counter, which
    # also holds the tasks of user namespaces this uid created below (before 5.14: host_threads)
    charged: int = 0

    @property
    def at_limit(self) -> bool:
        """The kernel's counter has reached the lowest soft limit among these processes: their next
        fork or clone fails with EAGAIN (unless they have CAP_SYS_RESOURCE/CAP_SYS_ADMIN on the host)."""
        return self.nproc_limit is not None and self.charged >= self.nproc_limit

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "host_uid": self.host_uid, "processes": self.processes, "threads": self.threads,
                "nproc_limit": self.nproc_limit, "nproc_unknown": self.nproc_unknown,
                "host_threads": self.host_threads, "charged": self.charged, "at_limit": self.at_limit}


@dataclass(frozen=True)
class UsernsAccount:
    namespace: Namespace
    processes: int
    threads: int
    uids: tuple[UidCount, ...]
    limits: dict[str, int] | None = None  # /proc/sys/user/* as seen inside; None: not read
    limits_error: str | None = None
    host_root: tuple[str, ...] = ()  # 'uid'/'gid' where host id 0 is mapped into this (non-initial) namespace

    def to_dict(self) -> dict[str, Any]:
        ns = self.namespace
        return {
            "inode": ns.inode, "id": ns.id, "name": ns.name, "path": ns.path, "level": ns.level,
            "parent": ns.parent, "owner_uid": ns.owner_uid,
            "uid_map": [list(m) for m in ns.uid_map or ()], "gid_map": [list(m) for m in ns.gid_map or ()],
            "processes": self.processes, "threads": self.threads,
            "uids": [u.to_dict() for u in self.uids],
            "limits": self.limits, "limits_error": self.limits_error,
            "host_root": list(self.host_root),
        }


@dataclass(frozen=True)
class Overlap:
    """Two unrelated user namespaces whose maps share host ids."""

    a: int  # inode
    b: int
    kind: str  # 'uid' or 'gid'
    ranges: tuple[Range, ...]
    meaning: str

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "kind": self.kind, "ranges": [list(r) for r in self.ranges],
                "meaning": self.meaning}


@dataclass(frozen=True)
class Accounting:
    kernel: str
    users: tuple[UsernsAccount, ...]
    overlaps: tuple[Overlap, ...]
    warnings: tuple[str, ...] = field(default=())

    def get(self, inode: int) -> UsernsAccount | None:
        return next((u for u in self.users if u.namespace.inode == inode), None)

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "user_namespaces": [u.to_dict() for u in self.users],
                "overlaps": [o.to_dict() for o in self.overlaps], "warnings": list(self.warnings)}


# --- reads the snapshot does not carry ---------------------------------------------------------


def read_nproc_limit(pid: int, proc: str = "/proc") -> tuple[int | None, int | None] | None:
    """RLIMIT_NPROC of a process, or None if it vanished or may not be read."""
    try:
        with open(f"{proc}/{pid}/limits", "rb") as f:
            return parse_nproc_limit(f.read())
    except (OSError, ValueError):
        return None


def _read_sysctls(directory: str = SYSCTL_USER) -> dict[str, int]:
    values = {}
    for name in sorted(os.listdir(directory)):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                values[name] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return values


def userns_limits(ns: Namespace, snapshot: Snapshot) -> dict[str, int]:
    """/proc/sys/user/* as seen inside this user namespace. A forked (single-threaded) child joins
    the namespace and sends the values back; raises handles.Gone or OSError."""
    if ns.owner is None and ns.parent is None and _is_own_userns(ns):
        return _read_sysctls()
    fd = handles.open_namespace(ns, snapshot)
    try:
        return _in_child(fd, _read_sysctls)
    finally:
        os.close(fd)


def _is_own_userns(ns: Namespace) -> bool:
    try:
        return os.stat("/proc/self/ns/user").st_ino == ns.inode
    except OSError:
        return False


def _in_child(userns_fd: int, func: Callable[[], dict[str, int]]) -> dict[str, int]:
    """func() in a child that joined the user namespace (ops.inside.call: the fork rule)."""
    values = inside.call(func, inside.Join(fds={"user": userns_fd}))
    return {str(k): int(v) for k, v in values.items()}


# --- the computation ---------------------------------------------------------------------------


def charged_tasks(snapshot: Snapshot) -> Counter[tuple[int, int]]:
    """The kernel's RLIMIT_NPROC counters since 5.14 (kernel/ucount.c), by (user namespace inode,
    host uid): a task is charged to (its user namespace, its uid) and, at every level above, to
    (that ancestor, the uid that created the namespace below it), as inc_rlimit_ucounts() walks up."""
    up: dict[int, list[tuple[int, int]]] = {}
    for ns in snapshot.of_type("user"):
        chain: list[tuple[int, int]] = []
        cur = ns
        while cur.parent is not None and cur.owner_uid is not None and len(chain) < 64:  # 32 levels at most
            chain.append((cur.parent, cur.owner_uid))
            parent = snapshot.get(cur.parent)
            if parent is None:
                break
            cur = parent
        up[ns.inode] = chain
    charged: Counter[tuple[int, int]] = Counter()
    for ns in snapshot.of_type("user"):
        for pid in ns.processes:
            p = snapshot.processes.get(pid)
            if p is None:
                continue
            charged[(ns.inode, p.uid)] += p.threads
            for key in up[ns.inode]:
                charged[key] += p.threads
    return charged


def compute(snapshot: Snapshot, limits: bool = True,
            nproc: Callable[[int], tuple[int | None, int | None] | None] = read_nproc_limit) -> Accounting:
    """Accounting for every user namespace in the snapshot. limits=False skips the per-namespace
    sysctl reads (one fork each)."""
    host_threads: dict[int, int] = {}
    for p in snapshot.processes.values():
        host_threads[p.uid] = host_threads.get(p.uid, 0) + p.threads
    limit_cache: dict[int, tuple[int | None, int | None] | None] = {}
    per_userns = kernel_release(snapshot.kernel) >= PER_USERNS_NPROC
    charged = charged_tasks(snapshot) if per_userns else None
    users = []
    warnings: list[str] = []
    for ns in sorted(snapshot.of_type("user"), key=lambda n: (n.level, n.inode)):
        procs = [snapshot.processes[pid] for pid in ns.processes if pid in snapshot.processes]
        per_uid: dict[int, list[Any]] = {}
        for p in procs:
            entry = per_uid.setdefault(p.uid, [0, 0, None, 0])  # processes, threads, lowest soft limit, unknown
            entry[0] += 1
            entry[1] += p.threads
            if p.pid not in limit_cache:
                limit_cache[p.pid] = nproc(p.pid)
            lim = limit_cache[p.pid]
            if lim is None:
                entry[3] += 1
            elif lim[0] is not None:
                entry[2] = lim[0] if entry[2] is None else min(entry[2], lim[0])
        uids = tuple(
            UidCount(to_inside(ns.uid_map, host_uid), host_uid, e[0], e[1], e[2], e[3], host_threads.get(host_uid, 0),
                     charged[(ns.inode, host_uid)] if charged is not None else host_threads.get(host_uid, 0))
            for host_uid, e in sorted(per_uid.items()))
        initial = ns.owner is None and ns.parent is None
        root = tuple(kind for kind, m in (("uid", ns.uid_map), ("gid", ns.gid_map))
                     if not initial and to_inside(m, 0) is not None)
        account = UsernsAccount(ns, len(procs), sum(p.threads for p in procs), uids, host_root=root)
        if limits:
            try:
                account = _with_limits(account, userns_limits(ns, snapshot))
            except (handles.Gone, OSError) as e:
                account = _with_limits(account, None, str(e) or type(e).__name__)
        users.append(account)
        for kind in root:
            inside = to_inside(ns.uid_map if kind == "uid" else ns.gid_map, 0)
            warnings.append(f"user:[{ns.inode}] maps host {kind} 0 (root) to {kind} {inside} inside: "
                            f"that {kind} owns the host root's files")
    overlaps = find_overlaps(snapshot.of_type("user"), snapshot, kernel_release(snapshot.kernel))
    return Accounting(snapshot.kernel, tuple(users), tuple(overlaps), tuple(warnings))


def _with_limits(a: UsernsAccount, limits: dict[str, int] | None, error: str | None = None) -> UsernsAccount:
    return UsernsAccount(a.namespace, a.processes, a.threads, a.uids, limits, error, a.host_root)


def _ancestors(ns: Namespace, snapshot: Snapshot) -> set[int]:
    seen: set[int] = set()
    cur = ns.parent
    while cur is not None and cur not in seen:
        seen.add(cur)
        parent = snapshot.get(cur)
        cur = parent.parent if parent else None
    return seen


def meaning(kind: str, release: tuple[int, int]) -> str:
    if kind == "gid":
        return "the same host gids: files group-owned in one are group-owned in the other"
    text = ("the same host uids: each owns the other's files (read, write, chmod where modes allow) and "
            "can signal the other's processes where their pids are visible")
    if release < PER_USERNS_NPROC:
        return text + "; they share one RLIMIT_NPROC counter per host uid"
    return text + ("; since Linux 5.14 each has its own RLIMIT_NPROC counter, but all their tasks are also "
                   "charged to their creators' counters in the parent namespace")


def find_overlaps(namespaces: Iterable[Namespace], snapshot: Snapshot, release: tuple[int, int]) -> list[Overlap]:
    """Every pair of unrelated, non-initial user namespaces whose uid or gid maps share host ids. A
    namespace and its ancestors always share ids (a child's ids come from its parent) and are not
    reported."""
    users = [ns for ns in namespaces if ns.type == "user" and not (ns.owner is None and ns.parent is None)]
    users.sort(key=lambda n: n.inode)
    ancestors = {ns.inode: _ancestors(ns, snapshot) for ns in users}
    ranges = {ns.inode: {"uid": host_ranges(ns.uid_map), "gid": host_ranges(ns.gid_map)} for ns in users}
    found = []
    for i, a in enumerate(users):
        for b in users[i + 1:]:
            if a.inode in ancestors[b.inode] or b.inode in ancestors[a.inode]:
                continue
            for kind in ("uid", "gid"):
                shared = intersect(ranges[a.inode][kind], ranges[b.inode][kind])
                if shared:
                    found.append(Overlap(a.inode, b.inode, kind, tuple(shared), meaning(kind, release)))
    return found
