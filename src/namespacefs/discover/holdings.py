"""Who holds what in a live model's snapshot, kept up to date by each partial re-read at the cost of
what it changed (discover.incremental): pid -> the inodes it is in or holds, mount namespace -> the
inodes bind-mounted in it, owner or parent inode -> the inodes that name it, and the namespaces
known only through the kernel.

Built whole once per snapshot that did not come from a re-read (a full scan), then advanced for
each re-read from what it touched: the processes re-read (their holdings are what the read found),
the mount tables re-read (likewise), and the entries that changed (removed or replaced ones take
their holders, owner and parent with them). Nothing in an update walks every namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from namespacefs.model import Holder, Namespace, Snapshot

#: Holder kinds a process gives (and takes away when it goes): what `by_pid` indexes.
PER_PROCESS = frozenset({"process", "zombie", "task", "pid_for_children", "time_for_children", "fd", "socket"})
#: What a namespace is held by when no re-read process holds it while the kernel says it is alive.
KERNEL_HELD = Holder("listns")


def holders_of(ns: Namespace) -> tuple[set[int], set[int]]:
    """(pids that hold `ns` themselves, mount namespaces it is bind-mounted in)."""
    pids = set(ns.processes)
    pids.update(h.pid for h in ns.holders if h.pid is not None and h.kind in PER_PROCESS)
    mounts = {h.mntns for h in ns.holders if h.kind == "bindmount" and h.mntns is not None}
    return pids, mounts


def _found(fresh: Mapping[int, Namespace]) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """pid -> inodes, mount namespace -> inodes, of what a read found."""
    by_pid: dict[int, set[int]] = {}
    by_mnt: dict[int, set[int]] = {}
    for inode, ns in fresh.items():
        pids, mounts = holders_of(ns)
        for pid in pids:
            by_pid.setdefault(pid, set()).add(inode)
        for m in mounts:
            by_mnt.setdefault(m, set()).add(inode)
    return by_pid, by_mnt


def _refs(ns: Namespace) -> set[int]:
    return {r for r in (ns.owner, ns.parent) if r is not None and r != ns.inode}


class Holdings:
    """The index of one snapshot (`snap`); `advance` moves it to the next one."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.by_pid: dict[int, set[int]] = {}
        self.by_mntns: dict[int, set[int]] = {}
        self.kids: dict[int, set[int]] = {}  # owner or parent inode -> inodes naming it
        self.kernel_held: set[int] = set()
        for inode, ns in snap.namespaces.items():
            self._add(inode, ns)

    def _add(self, inode: int, ns: Namespace) -> None:
        pids, mounts = holders_of(ns)
        for table, keys in ((self.by_pid, pids), (self.by_mntns, mounts), (self.kids, _refs(ns))):
            for key in keys:
                table.setdefault(key, set()).add(inode)
        if ns.holders == (KERNEL_HELD,):
            self.kernel_held.add(inode)

    def _remove(self, inode: int, ns: Namespace, skip_pids: frozenset[int] = frozenset()) -> None:
        pids, mounts = holders_of(ns)
        for table, keys in ((self.by_pid, pids - skip_pids), (self.by_mntns, mounts), (self.kids, _refs(ns))):
            for key in keys:
                found = table.get(key)
                if found is not None:
                    found.discard(inode)
                    if not found:
                        del table[key]
        self.kernel_held.discard(inode)

    def affected(self, pids: Iterable[int], mntns: Iterable[int], kernel_held: bool) -> set[int]:
        """The inodes these processes hold, bind-mounted in these mount namespaces, and (if asked)
        those known only through the kernel."""
        out: set[int] = set()
        for pid in pids:
            out |= self.by_pid.get(pid, set())
        for m in mntns:
            out |= self.by_mntns.get(m, set())
        if kernel_held:
            out |= self.kernel_held
        return out

    def advance(self, new: Snapshot, changed: Iterable[int], reread: frozenset[int], remounted: set[int],
                fresh: Mapping[int, Namespace]) -> None:
        """Make this the index of `new`, which is this snapshot with the entries `changed` (every inode
        whose entry may differ), after a re-read that read every per-process source of the
        processes `reread` and the mount tables of `remounted`, and found `fresh`.

        The holdings of a re-read process are exactly what the read found (what it held before was
        taken out of every entry it was in); a re-read mount table likewise. Every other process
        and mount table keeps its holdings, but for entries removed or replaced (a dead namespace's
        holders, owner and parent go with it)."""
        old = self.snap.namespaces
        for inode in set(changed):
            before, now = old.get(inode), new.namespaces.get(inode)
            if before is not now:
                self._entry(inode, before, now, reread)
        found_pid, found_mnt = _found(fresh)
        for table, read, keys in ((self.by_pid, found_pid, reread), (self.by_mntns, found_mnt, remounted)):
            for key in keys:
                table.pop(key, None)
            for key, inodes in read.items():
                kept = {i for i in inodes if i in new.namespaces}  # (a fresh entry settled away)
                if kept:
                    table.setdefault(key, set()).update(kept)
        self.snap = new

    def _entry(self, inode: int, before: Namespace | None, now: Namespace | None, reread: frozenset[int]) -> None:
        """One entry went from `before` to `now` (either None: absent): all but the holdings of the
        re-read processes and tables (advance sets those whole)."""
        if before is not None and (now is None or now.id != before.id or now.type != before.type):
            self._remove(inode, before, reread)  # gone, or another namespace on that inode
            before = None
        if before is not None and now is not None and _refs(before) != _refs(now):
            self._remove_refs(inode, before)
            before = None
        if now is not None:
            if before is None:
                for key in _refs(now):
                    self.kids.setdefault(key, set()).add(inode)
            (self.kernel_held.add if now.holders == (KERNEL_HELD,) else self.kernel_held.discard)(inode)

    def _remove_refs(self, inode: int, ns: Namespace) -> None:
        for key in _refs(ns):
            found = self.kids.get(key)
            if found is not None:
                found.discard(inode)
                if not found:
                    del self.kids[key]

    def check(self) -> bool:
        """This index equals one built whole from its snapshot (for tests)."""
        whole = Holdings(self.snap)
        return (whole.by_pid, whole.by_mntns, whole.kids, whole.kernel_held) == (
            self.by_pid, self.by_mntns, self.kids, self.kernel_held)
