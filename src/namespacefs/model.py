"""The data model: plain, immutable data with no I/O. Discovery produces a Snapshot; every front end
(CLI, FUSE, HTTP) only reads one."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from namespacefs.kernel import HIERARCHICAL, NS_TYPES

# The words of the model (namespace types, holder kinds, sources) live in namespacefs.kinds, which
# the command line reads without importing this module; they are this module's names too.
from namespacefs.kinds import DIRECT_KINDS as DIRECT_KINDS
from namespacefs.kinds import HOLDER_KINDS as HOLDER_KINDS
from namespacefs.kinds import NS_LINK_KINDS as NS_LINK_KINDS
from namespacefs.kinds import PER_PROCESS_KINDS as PER_PROCESS_KINDS
from namespacefs.kinds import SOURCES as SOURCES
from namespacefs.kinds import HolderKind as HolderKind
from namespacefs.kinds import NsType as NsType
from namespacefs.kinds import Source as Source


class Holder(NamedTuple):
    """One reason a namespace is alive. Only the fields that fit the kind are set."""

    kind: str
    pid: int | None = None
    tid: int | None = None
    fd: int | None = None
    mntns: int | None = None  # the mount namespace a bind mount lives in
    path: str | None = None  # the mountpoint of a bind mount
    socket: int | None = None  # socket inode
    via: int | None = None  # parent/owner: the inode of the namespace it is parent/owner of

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, kind first (spelled out: a listing makes thousands of these)."""
        kind, pid, tid, fd, mntns, path, socket, via = self
        data: dict[str, Any] = {"kind": kind}
        if pid is not None:
            data["pid"] = pid
        if tid is not None:
            data["tid"] = tid
        if fd is not None:
            data["fd"] = fd
        if mntns is not None:
            data["mntns"] = mntns
        if path is not None:
            data["path"] = path
        if socket is not None:
            data["socket"] = socket
        if via is not None:
            data["via"] = via
        return data

    def describe(self) -> str:
        """A short human form: 'fd pid=12 fd=4', 'bindmount /run/netns/a (mnt 4026532...)'."""
        extra = " ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "kind")
        return f"{self.kind} {extra}".strip()


def indirect_holders(relations: Iterable[tuple[int, int | None, int | None]]) -> dict[int, list[Holder]]:
    """From (inode, owner, parent) of each namespace: the `owner` and `parent` holders each owner
    and parent gets from the namespaces that name it (a user namespace's owner is its parent:
    counted once)."""
    indirect: dict[int, list[Holder]] = {}
    for inode, owner, parent in relations:
        if owner is not None and owner != parent:
            indirect.setdefault(owner, []).append(Holder(HolderKind.OWNER, via=inode))
        if parent is not None:
            indirect.setdefault(parent, []).append(Holder(HolderKind.PARENT, via=inode))
    return indirect


class Process(NamedTuple):
    """One process as the scan saw it."""

    pid: int
    ppid: int
    comm: str
    cmdline: tuple[str, ...]
    uid: int
    gid: int
    nspid: tuple[int, ...]  # pid in each pid namespace, outermost (ours) first
    threads: int
    namespaces: Mapping[str, int]  # type -> inode, plus pid_for_children/time_for_children
    cgroup: bytes | None = None  # /proc/PID/cgroup as the scan read it, for container recognition

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) if self.cmdline else f"[{self.comm}]"

    def to_dict(self) -> dict[str, Any]:
        pid, ppid, comm, cmdline, uid, gid, nspid, threads, namespaces, _cgroup = self
        return {
            "pid": pid, "ppid": ppid, "comm": comm, "cmdline": list(cmdline), "uid": uid, "gid": gid,
            "nspid": list(nspid), "threads": threads, "namespaces": dict(namespaces),
        }


class Namespace(NamedTuple):
    """One namespace and everything known about it."""

    type: str
    inode: int
    id: int | None  # the kernel's 64-bit id (NS_GET_ID); never reused, unlike the inode
    dev: int
    owner: int | None  # inode of the owning user namespace; None only for the initial one
    parent: int | None  # pid and user namespaces: inode of the parent
    holders: tuple[Holder, ...]
    processes: tuple[int, ...]  # host pids of the processes in it
    owner_uid: int | None = None  # user namespaces: the uid that created it
    uid_map: tuple[tuple[int, int, int], ...] | None = None
    gid_map: tuple[tuple[int, int, int], ...] | None = None
    setgroups: str | None = None
    level: int = 0  # pid/user: depth below the initial namespace
    mounts: int | None = None  # mnt: number of mounts, where its mountinfo was read
    name: str | None = None
    path: str | None = None  # the name path through the owning user namespaces

    def named(self, name: str | None, path: str | None) -> Namespace:
        """The same namespace with its name and name path (the last two fields) set."""
        return Namespace._make((*self[:-2], name, path))

    @property
    def key(self) -> tuple[str, int]:
        """What identifies this namespace for life: its 64-bit id, never reused (`("id", N)`), or
        (type, inode) on kernels without ids. The one namespace key (stored_key is its text form)."""
        return ("id", self.id) if self.id is not None else (self.type, self.inode)

    @property
    def stored_key(self) -> str:
        """key as text, what a rename is stored under: `id:N`, else `ino:TYPE:DEV:INODE` (with the
        device: an inode is unique only on its nsfs device)."""
        return f"id:{self.id}" if self.id is not None else f"ino:{self.type}:{self.dev}:{self.inode}"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The distinct holder kinds, in HOLDER_KINDS order."""
        present = {h.kind for h in self.holders}
        return tuple(k for k in HOLDER_KINDS if k in present)

    @property
    def persistent(self) -> bool:
        """No process is in it (lsns -P)."""
        return not self.processes

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract's object (README); a listing makes thousands: the fields are unpacked
        at once, not read one by one."""
        (nstype, inode, ident, dev, owner, parent, holders, processes, owner_uid, uid_map, gid_map, setgroups, level,
         mounts, name, path) = self
        return {
            "type": nstype, "inode": inode, "id": ident, "dev": dev, "owner": owner, "parent": parent, "level": level,
            "name": name, "path": path,
            "holders": [h.to_dict() for h in holders],
            "processes": list(processes),
            "owner_uid": owner_uid,
            "uid_map": [list(m) for m in uid_map] if uid_map is not None else None,
            "gid_map": [list(m) for m in gid_map] if gid_map is not None else None,
            "setgroups": setgroups,
            "mounts": mounts,
        }


class _Index(NamedTuple):
    by_id: dict[int, Namespace]
    owned: dict[int | None, list[Namespace]]
    children: dict[int | None, list[Namespace]]


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Every namespace and process seen in one scan (each one its own: compared by identity)."""

    boot_id: str
    kernel: str
    taken_at: float  # seconds since the epoch
    duration: float  # seconds the scan took
    namespaces: Mapping[int, Namespace]  # inode -> namespace (nsfs inodes are unique across types)
    processes: Mapping[int, Process]
    errors: Mapping[str, int] = field(default_factory=dict)  # what could not be read, counted by reason
    sources: tuple[str, ...] = ()
    # the errors of each process they belong to (not in the JSON): what a live model's partial
    # re-read of a process replaces, so its count does not grow with every re-read
    errors_by_pid: Mapping[int, Mapping[str, int]] = field(default_factory=dict, repr=False, compare=False)
    # indexes, derived from namespaces on first use (by id, by owner, by parent): a copy made by
    # replace() that no one asks costs nothing (the daemon makes several per update)
    _index: _Index | None = field(init=False, repr=False, compare=False, default=None)

    def _indexes(self) -> _Index:
        if self._index is not None:
            return self._index
        by_id: dict[int, Namespace] = {}
        owned: dict[int | None, list[Namespace]] = {}
        children: dict[int | None, list[Namespace]] = {}
        for ns in self.namespaces.values():
            if ns.id is not None:
                by_id[ns.id] = ns
            owned.setdefault(ns.owner, []).append(ns)
            if ns.type in HIERARCHICAL:
                children.setdefault(ns.parent, []).append(ns)
        index = _Index(by_id, owned, children)
        object.__setattr__(self, "_index", index)  # (how a frozen dataclass sets a derived field)
        return index

    def __repr__(self) -> str:
        return (f"Snapshot(boot_id={self.boot_id!r}, taken_at={self.taken_at!r}, "
                f"{len(self.namespaces)} namespaces, {len(self.processes)} processes)")

    def replace(self, **changes: Any) -> Snapshot:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def __iter__(self) -> Iterator[Namespace]:
        return iter(self.namespaces.values())

    def __len__(self) -> int:
        return len(self.namespaces)

    def get(self, inode: int) -> Namespace | None:
        return self.namespaces.get(inode)

    def by_id(self, ident: int) -> Namespace | None:
        return self._indexes().by_id.get(ident)

    def of_type(self, *types: str) -> list[Namespace]:
        return [ns for ns in self.namespaces.values() if ns.type in types]

    def owned_by(self, user_ns: int | None) -> list[Namespace]:
        """The namespaces whose owner is this user namespace (None: those with no visible owner)."""
        return self._indexes().owned.get(user_ns, [])

    def children(self, inode: int | None) -> list[Namespace]:
        """The pid/user namespaces whose parent is this one."""
        return self._indexes().children.get(inode, [])

    def namespace_of(self, pid: int, nstype: str) -> Namespace | None:
        proc = self.processes.get(pid)
        return self.namespaces.get(proc.namespaces.get(nstype, -1)) if proc else None

    @property
    def initial_user(self) -> Namespace | None:
        """The top of the visible user-namespace tree."""
        tops = [ns for ns in self._indexes().owned.get(None, []) if ns.type == "user"]
        return min(tops, key=lambda ns: ns.level) if tops else None

    def with_namespaces(self, namespaces: Iterable[Namespace]) -> Snapshot:
        """The same snapshot with some namespaces replaced (for example, once names are added)."""
        # (dict.copy of a dict copies its table at once; dict() re-inserts entry by entry once
        # deletions have left holes in it: ~5x slower at 5,000 namespaces, at every daemon update)
        table = self.namespaces.copy() if isinstance(self.namespaces, dict) else dict(self.namespaces)
        table.update((ns.inode, ns) for ns in namespaces)
        return self.replace(namespaces=table)

    def to_dict(self, namespaces: Iterable[Namespace] | None = None) -> dict[str, Any]:
        """The JSON contract (see README): stable keys, more may be added, none renamed. Its
        namespaces are all of them by type (by_type), or those given, in their order."""
        chosen = sorted(self.namespaces.values(), key=by_type) if namespaces is None else namespaces
        return {
            "boot_id": self.boot_id,
            "kernel": self.kernel,
            "taken_at": self.taken_at,
            "duration": self.duration,
            "errors": dict(self.errors),
            "sources": list(self.sources),
            "namespaces": [ns.to_dict() for ns in chosen],
            "processes": [p.to_dict() for _pid, p in sorted(self.processes.items())],
        }


_TYPE_ORDER: Final = {t: i for i, t in enumerate(NS_TYPES)}


def by_type(ns: Namespace) -> tuple[int, int]:
    """The one sort key of namespaces: by type (kernel.NS_TYPES order), then inode."""
    return _TYPE_ORDER[ns.type], ns.inode


class Diff(NamedTuple):
    """What changed between two snapshots, keyed on Namespace.key (the id where there is one)."""

    appeared: tuple[Namespace, ...]
    vanished: tuple[Namespace, ...]
    changed: tuple[tuple[Namespace, Namespace], ...]  # (old, new) with different holders or name
    joined: tuple[tuple[int, Namespace], ...]  # (pid, namespace) a process entered or was born into
    left: tuple[tuple[int, Namespace], ...]

    def __bool__(self) -> bool:
        return bool(self.appeared or self.vanished or self.changed or self.joined or self.left)


#: where `ip netns add NAME` bind-mounts a net namespace (iproute2's NETNS_RUN_DIR)
NETNS_DIR = "/run/netns/"


def netns_names(ns: Namespace) -> list[str]:
    """The `ip netns` names of a net namespace (its bind mounts under /run/netns)."""
    if ns.type != NsType.NET:
        return []
    found = {h.path[len(NETNS_DIR):] for h in ns.holders
             if h.kind == HolderKind.BINDMOUNT and h.path and h.path.startswith(NETNS_DIR)}
    return sorted(name for name in found if "/" not in name) if found else []


def diff(old: Snapshot, new: Snapshot, moved: Collection[int] | None = None) -> Diff:
    """What changed from `old` to `new`. `moved`, where known, holds every process that may be in
    other namespaces in `new` than in `old` (the ones a partial re-read read again): who joined and
    left a namespace thousands are in is then looked up for those alone."""
    before = {ns.key: ns for ns in old}
    after = {ns.key: ns for ns in new}
    appeared = tuple(ns for k, ns in after.items() if k not in before)
    vanished = tuple(ns for k, ns in before.items() if k not in after)
    changed = []
    joined: list[tuple[int, Namespace]] = []
    left: list[tuple[int, Namespace]] = []
    candidates = sorted(moved) if moved is not None else None
    for k, ns in after.items():
        prev = before.get(k)
        if prev is None:
            joined.extend((pid, ns) for pid in ns.processes)
            continue
        if prev.holders != ns.holders or prev.name != ns.name:
            changed.append((prev, ns))
        if prev.processes != ns.processes:
            came, went = _members_moved(prev.processes, ns.processes, candidates)
            joined.extend((pid, ns) for pid in came)
            left.extend((pid, ns) for pid in went)
    for ns in vanished:
        left.extend((pid, ns) for pid in ns.processes)
    return Diff(appeared, vanished, tuple(changed), tuple(joined), tuple(left))


def _members_moved(was: tuple[int, ...], now: tuple[int, ...],
                   candidates: list[int] | None) -> tuple[list[int], list[int]]:
    """(pids in `now` not in `was`, pids in `was` not in `now`), each sorted. Both are sorted
    (Namespace.processes); where the only pids that can differ are `candidates` (sorted), each is
    looked up by bisection instead of hashing thousands. The counts must add up, else the whole
    comparison decides (a hint that missed a pid must not lose an event)."""
    if candidates is not None and len(candidates) * 16 < len(was) + len(now):
        came = [pid for pid in candidates if _has(now, pid) and not _has(was, pid)]
        went = [pid for pid in candidates if _has(was, pid) and not _has(now, pid)]
        if len(was) + len(came) - len(went) == len(now):
            return came, went
    before, after = set(was), set(now)
    return sorted(after - before), sorted(before - after)


def _has(pids: tuple[int, ...], pid: int) -> bool:
    at = bisect_left(pids, pid)
    return at < len(pids) and pids[at] == pid


# --- the inverse of to_dict (issue 7: snapshots served by the daemon) ----------------------------


def _maps(value: Any) -> tuple[tuple[int, int, int], ...] | None:
    return tuple((int(a), int(b), int(c)) for a, b, c in value) if value is not None else None


def holder_from_dict(data: Mapping[str, Any]) -> Holder:
    return Holder(**{name: data[name] for name in Holder._fields if name in data})


def process_from_dict(data: Mapping[str, Any]) -> Process:
    return Process(
        pid=data["pid"], ppid=data["ppid"], comm=data["comm"], cmdline=tuple(data["cmdline"]), uid=data["uid"],
        gid=data["gid"], nspid=tuple(data["nspid"]), threads=data["threads"], namespaces=dict(data["namespaces"]))


def namespace_from_dict(data: Mapping[str, Any]) -> Namespace:
    """Namespace.to_dict() read back; keys added later by other parts are ignored."""
    return Namespace(
        type=data["type"], inode=data["inode"], id=data["id"], dev=data["dev"], owner=data["owner"],
        parent=data["parent"], holders=tuple(holder_from_dict(h) for h in data["holders"]),
        processes=tuple(data["processes"]), owner_uid=data.get("owner_uid"), uid_map=_maps(data.get("uid_map")),
        gid_map=_maps(data.get("gid_map")), setgroups=data.get("setgroups"), level=data.get("level", 0),
        mounts=data.get("mounts"), name=data.get("name"), path=data.get("path"))


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """Snapshot.to_dict() read back (what the daemon serves)."""
    namespaces = (namespace_from_dict(n) for n in data["namespaces"])
    processes = (process_from_dict(p) for p in data["processes"])
    return Snapshot(
        boot_id=data["boot_id"], kernel=data["kernel"], taken_at=data["taken_at"], duration=data["duration"],
        namespaces={ns.inode: ns for ns in namespaces}, processes={p.pid: p for p in processes},
        errors=dict(data.get("errors", {})), sources=tuple(data.get("sources", ())))


Holder.from_dict = staticmethod(holder_from_dict)  # type: ignore[attr-defined]
Process.from_dict = staticmethod(process_from_dict)  # type: ignore[attr-defined]
Namespace.from_dict = staticmethod(namespace_from_dict)  # type: ignore[attr-defined]
Snapshot.from_dict = staticmethod(snapshot_from_dict)  # type: ignore[attr-defined]
