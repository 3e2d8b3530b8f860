"""What the filesystem shows, as pure functions of a snapshot and a reader's view (no FUSE, no I/O).

    <type>/<inode>/           every namespace of that type (the 2021 namespacefs proposal)
        type inode id name path holders tasks     every type
        owner parent                              symlinks to ../../user/<inode> (parent: pid, user)
        uname hostname domainname                 uts
        uid_map gid_map setgroups owner_uid       user
        init nspids                               pid
        interfaces                                net
        mountinfo                                 mnt
        root                                      cgroup
        offsets                                   time
        objects                                   ipc
    tree/<user ns name>/...   each user namespace as a directory holding what it owns (the 2020
                              /proc/namespaces proposal): child user namespaces as directories,
                              every other namespace as a symlink to its <type>/<inode> directory.

A View is what one reader may see: everything, or only the subtree of namespaces owned
(recursively) by the reader's own user namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot

#: Files in every namespace directory, then the ones per type.
COMMON_FILES: tuple[str, ...] = ("type", "inode", "id", "name", "path", "holders", "tasks")
TYPE_FILES: dict[str, tuple[str, ...]] = {
    "uts": ("uname", "hostname", "domainname"),
    "user": ("uid_map", "gid_map", "setgroups", "owner_uid"),
    "pid": ("init", "nspids"),
    "net": ("interfaces",),
    "mnt": ("mountinfo",),
    "cgroup": ("root",),
    "time": ("offsets",),
    "ipc": ("objects",),
}
LINKS: tuple[str, ...] = ("owner", "parent")
TREE = "tree"


def files_of(nstype: str) -> tuple[str, ...]:
    return COMMON_FILES + TYPE_FILES.get(nstype, ())


def default_name(ns: Namespace) -> str:
    return f"{ns.type}-{ns.inode}"


def display_name(ns: Namespace) -> str:
    """The name a namespace has in tree/: its name from the naming core, else TYPE-INODE."""
    name = (ns.name or "").replace("/", "_").strip()
    return name if name and name not in (".", "..") else default_name(ns)


@dataclass(frozen=True)
class View:
    """What one reader sees of a snapshot. root None: everything (a reader in the initial user
    namespace); otherwise the user namespace `root` and everything it owns, recursively."""

    snapshot: Snapshot
    root: int | None = None
    visible: frozenset[int] | None = None  # inodes; None: all
    _entries: dict[int | None, dict[str, Namespace]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, snapshot: Snapshot, user_ns: int | None, seen: frozenset[int] | None = None) -> View:
        """The view of a reader in user namespace user_ns (None or the initial one: everything;
        one not in the snapshot: nothing), narrowed to `seen` (access.visible_namespaces) if given."""
        initial = snapshot.initial_user
        if user_ns is None or (initial is not None and user_ns == initial.inode):
            return cls(snapshot, None, seen)
        own = frozenset(subtree(snapshot, user_ns))
        return cls(snapshot, user_ns, own if seen is None else own & seen)

    def can_see(self, ns: Namespace | None) -> bool:
        return ns is not None and (self.visible is None or ns.inode in self.visible)

    def of_type(self, nstype: str) -> list[Namespace]:
        return sorted((ns for ns in self.snapshot.of_type(nstype) if self.can_see(ns)), key=lambda ns: ns.inode)

    def tops(self) -> list[Namespace]:
        """What tree/ holds: the reader's user namespace, or (everything) the initial user namespace
        and anything else with no visible owner."""
        if self.root is not None:
            ns = self.snapshot.get(self.root)
            return [ns] if ns is not None else []
        return sorted(self.snapshot.owned_by(None), key=lambda ns: (ns.type != "user", ns.level, ns.inode))

    def tree_entries(self, user_ns: int | None) -> dict[str, Namespace]:
        """The entries of a tree/ directory by name: user_ns None is tree/ itself. Names are made
        unique within the directory (a clash falls back to TYPE-INODE)."""
        cached = self._entries.get(user_ns)
        if cached is not None:
            return cached
        members = self.tops() if user_ns is None else self.snapshot.owned_by(user_ns)
        entries: dict[str, Namespace] = {}
        for ns in sorted(members, key=lambda ns: (NS_TYPES.index(ns.type), ns.inode)):
            if not self.can_see(ns):
                continue
            name = display_name(ns)
            if name in entries:
                name = default_name(ns)
            entries[name] = ns
        self._entries[user_ns] = entries
        return entries

    def tree_chain(self, ns: Namespace) -> list[Namespace] | None:
        """The user namespaces from the top of tree/ down to ns's owner (the directories that hold
        ns's tree entry), or None if ns is not in this reader's tree."""
        if not self.can_see(ns):
            return None
        tops = {t.inode for t in self.tops()}
        if ns.inode in tops:
            return []
        chain: list[Namespace] = []
        owner = self.snapshot.get(ns.owner) if ns.owner is not None else None
        while owner is not None and self.can_see(owner):
            chain.append(owner)
            if owner.inode in tops:
                return chain[::-1]
            owner = self.snapshot.get(owner.owner) if owner.owner is not None else None
        return None

    def tree_path(self, ns: Namespace) -> str | None:
        """ns's path under tree/, e.g. 'tree/user-4026531837/uts-4026532301'."""
        chain = self.tree_chain(ns)
        if chain is None:
            return None
        parts, parent = [], None
        for step in [*chain, ns]:
            entries = self.tree_entries(parent)
            name = next((n for n, e in entries.items() if e.inode == step.inode), None)
            if name is None:
                return None
            parts.append(name)
            parent = step.inode
        return "/".join([TREE, *parts])

    def link_target(self, ns: Namespace, name: str) -> Namespace | None:
        """The namespace the owner/parent symlink of ns points to, if the reader may see it."""
        if name == "owner":
            target = self.snapshot.get(ns.owner) if ns.owner is not None else None
        elif name == "parent" and ns.type in ("pid", "user"):
            target = self.snapshot.get(ns.parent) if ns.parent is not None else None
        else:
            return None
        return target if self.can_see(target) else None

    def entries_of(self, ns: Namespace) -> list[str]:
        """The names in ns's <type>/<inode>/ directory."""
        links = [name for name in LINKS if self.link_target(ns, name) is not None]
        return [*files_of(ns.type), *links]


def subtree(snapshot: Snapshot, user_ns: int) -> Iterable[int]:
    """user_ns and the inodes of everything it owns, recursively."""
    if snapshot.get(user_ns) is None:
        return
    todo = [user_ns]
    yield user_ns
    while todo:
        for ns in snapshot.owned_by(todo.pop()):
            yield ns.inode
            if ns.type == "user":
                todo.append(ns.inode)


# --- file contents that need nothing but the snapshot ---------------------------------------


def format_map(mapping: tuple[tuple[int, int, int], ...] | None) -> str:
    """Like /proc/PID/uid_map."""
    return "".join(f"{inside:>10} {outside:>10} {count:>10}\n" for inside, outside, count in mapping or ())


def init_pid(snapshot: Snapshot, ns: Namespace) -> int | None:
    """The host pid of the init (pid 1) of a pid namespace."""
    for pid in ns.processes:
        proc = snapshot.processes.get(pid)
        if proc is not None and proc.nspid and proc.nspid[-1] == 1:
            return pid
    return None


#: The files that the snapshot alone answers, by name (simple_content).
_SIMPLE: dict[str, Callable[[Snapshot, Namespace], str]] = {
    "type": lambda snap, ns: f"{ns.type}\n",
    "inode": lambda snap, ns: f"{ns.inode}\n",
    "id": lambda snap, ns: f"{ns.id}\n" if ns.id is not None else "",
    "name": lambda snap, ns: f"{display_name(ns)}\n",
    "path": lambda snap, ns: f"{ns.path or display_name(ns)}\n",
    "holders": lambda snap, ns: "".join(f"{h.describe()}\n" for h in ns.holders),
    "tasks": lambda snap, ns: "".join(f"{pid}\n" for pid in sorted(ns.processes)),
    "uid_map": lambda snap, ns: format_map(ns.uid_map),
    "gid_map": lambda snap, ns: format_map(ns.gid_map),
    "setgroups": lambda snap, ns: f"{ns.setgroups}\n" if ns.setgroups else "",
    "owner_uid": lambda snap, ns: f"{ns.owner_uid}\n" if ns.owner_uid is not None else "",
    "init": lambda snap, ns: "" if (pid := init_pid(snap, ns)) is None else f"{pid}\n",
    "nspids": lambda snap, ns: _nspids(snap, ns),
}


def simple_content(snapshot: Snapshot, ns: Namespace, name: str) -> str | None:
    """The content of a file that the snapshot alone answers; None for detail files."""
    content = _SIMPLE.get(name)
    return None if content is None else content(snapshot, ns)


def _nspids(snapshot: Snapshot, ns: Namespace) -> str:
    lines = []
    for pid in sorted(ns.processes):
        proc = snapshot.processes.get(pid)
        if proc is not None and proc.nspid:
            lines.append(f"{pid}\t{proc.nspid[-1]}\n")
    return "".join(lines)
