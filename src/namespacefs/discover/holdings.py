"""Who holds what in a live model's snapshot, kept up to date by each partial re-read at the cost of
what it changed (discover.incremental): pid -> inode -> the holders that process gives that
namespace, mount namespace -> inode -> the bind mounts of it there, owner or parent inode -> the
inodes that name it, and the namespaces known only through the kernel.

The holders themselves are indexed (not only the inodes): a re-read compares what a process gave
a namespace before with what the read found, and takes out or puts in just that, so an update of a
namespace thousands of processes are in (the host's pid, user and time namespaces) costs what the
re-read processes changed in it, not what the others hold.

Built whole once per snapshot that did not come from a re-read (a full scan), then advanced for
each re-read from what it touched: the processes re-read (their holdings are what the read found),
the mount tables re-read (likewise), and the entries that changed (removed or replaced ones take
their holders, owner and parent with them). Nothing in an update walks every namespace.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from itertools import chain, filterfalse

from namespacefs.model import DIRECT_KINDS, Holder, Namespace, Snapshot

#: Holder kinds a process gives (and takes away when it goes): what `by_pid` indexes.
PER_PROCESS = frozenset({"process", "zombie", "task", "pid_for_children", "time_for_children", "fd", "socket"})
#: What a namespace is held by when no re-read process holds it while the kernel says it is alive.
KERNEL_HELD = Holder("listns")
BINDMOUNT = "bindmount"

#: key (pid or mount namespace) -> inode -> the holders that key gives that namespace
Parts = dict[int, dict[int, tuple[Holder, ...]]]


def direct(holders: tuple[Holder, ...]) -> tuple[Holder, ...]:
    """The direct holders (not `owner`/`parent`) of a namespace. A namespace of a model is held
    either directly or through the namespaces that name it, never both (discovery's rule, kept by
    each re-read), so the first holder tells: no walk over the thousands a big namespace has."""
    if not holders or holders[0].kind in DIRECT_KINDS:
        return holders
    return tuple(h for h in holders if h.kind in DIRECT_KINDS)


def holders_of(ns: Namespace) -> tuple[Parts, Parts]:
    """(pid -> the holders it gives `ns`, mount namespace -> the bind mounts of `ns` in it), keyed
    by `ns.inode` within."""
    by_pid: dict[int, list[Holder]] = {}
    by_mnt: dict[int, list[Holder]] = {}
    for h in ns.holders:
        if h.pid is not None and h.kind in PER_PROCESS:
            by_pid.setdefault(h.pid, []).append(h)
        elif h.kind == BINDMOUNT and h.mntns is not None:
            by_mnt.setdefault(h.mntns, []).append(h)
    return ({pid: {ns.inode: tuple(hs)} for pid, hs in by_pid.items()},
            {m: {ns.inode: tuple(hs)} for m, hs in by_mnt.items()})


def indirect(inode: int, kids: list[Namespace]) -> tuple[Holder, ...]:
    """The `owner` and `parent` holders a namespace gets from those that name it (a user
    namespace's owner is its parent: counted once), as discovery gives them."""
    out = []
    for k in sorted(kids, key=lambda n: n.inode):
        if k.owner == inode and k.owner != k.parent:
            out.append(Holder("owner", via=k.inode))
        if k.parent == inode:
            out.append(Holder("parent", via=k.inode))
    return tuple(out)


def swapped(holders: tuple[Holder, ...], gave: list[Holder], gives: tuple[Holder, ...]) -> tuple[Holder, ...]:
    """`holders` with what the re-read gave before (`gave`, all among them) replaced by what it
    gives now: the same tuple if that is the same; else those no longer given taken out and the new
    ones put at the end (in C: a namespace many processes are in has thousands of holders)."""
    before, after = set(gave), set(gives)
    if before == after:
        return holders
    gone = before - after
    kept = _without(holders, gone) if gone else holders
    return kept + tuple(h for h in gives if h not in before)


def _without(items: tuple[Holder, ...], gone: set[Holder]) -> tuple[Holder, ...]:
    """`items` less `gone`: a few found by position (a scan in C, ~3x cheaper than hashing every
    item), more by a filter."""
    if len(gone) <= FEW:
        with contextlib.suppress(ValueError):  # (one missing: the filter, which needs none)
            cuts = sorted(_position(items, h) for h in gone)
            return tuple(chain.from_iterable(items[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(items)], strict=True)))
    return tuple(filterfalse(gone.__contains__, items))


def _position(items: tuple[Holder, ...], holder: Holder) -> int:
    """Where `holder` is in `items` (ValueError if it is not), the newest RECENT first: what a
    re-read adds goes at the end (`swapped`), and under churn what goes is mostly what came a
    little before (a process forked a second ago exits), so the search of a namespace thousands
    are in mostly ends among the last few hundred holders."""
    tail = max(0, len(items) - RECENT)
    try:
        return items.index(holder, tail)
    except ValueError:
        return items.index(holder, 0, tail)


#: Holders taken out of a namespace by position at most (`_without`).
FEW = 4
#: The holders at the end of a namespace's list searched first (`_position`).
RECENT = 256


def resorted(procs: tuple[int, ...], was: set[int], now: tuple[int, ...]) -> tuple[int, ...]:
    """The sorted pids `procs` with `was` (the re-read processes that were in it) replaced by `now`."""
    after = set(now)
    kept = list(procs)
    for pid in was - after:
        at = bisect_left(kept, pid)
        if at < len(kept) and kept[at] == pid:
            del kept[at]
    for pid in sorted(after - was):
        insort(kept, pid)
    return tuple(kept)


def _found(fresh: Mapping[int, Namespace]) -> tuple[Parts, Parts]:
    """pid -> inode -> holders, mount namespace -> inode -> bind mounts, of what a read found."""
    by_pid: Parts = {}
    by_mnt: Parts = {}
    for ns in fresh.values():
        pids, mounts = holders_of(ns)
        for table, found in ((by_pid, pids), (by_mnt, mounts)):
            for key, part in found.items():
                table.setdefault(key, {}).update(part)
    return by_pid, by_mnt


def _refs(ns: Namespace) -> set[int]:
    return {r for r in (ns.owner, ns.parent) if r is not None and r != ns.inode}


class Holdings:
    """The index of one snapshot (`snap`); `advance` moves it to the next one."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.by_pid: Parts = {}
        self.by_mntns: Parts = {}
        self.kids: dict[int, set[int]] = {}  # owner or parent inode -> inodes naming it
        self.kernel_held: set[int] = set()
        for inode, ns in snap.namespaces.items():
            self._add(inode, ns)

    def _add(self, inode: int, ns: Namespace) -> None:
        pids, mounts = holders_of(ns)
        for table, found in ((self.by_pid, pids), (self.by_mntns, mounts)):
            for key, part in found.items():
                table.setdefault(key, {}).update(part)
        for key in _refs(ns):
            self.kids.setdefault(key, set()).add(inode)
        if ns.holders == (KERNEL_HELD,):
            self.kernel_held.add(inode)

    def _remove(self, inode: int, ns: Namespace, skip_pids: frozenset[int] = frozenset()) -> None:
        pids, mounts = holders_of(ns)
        for table, keys in ((self.by_pid, pids.keys() - skip_pids), (self.by_mntns, mounts.keys())):
            for key in keys:
                held = table.get(key)
                if held is not None:
                    held.pop(inode, None)
                    if not held:
                        del table[key]
        self._remove_refs(inode, ns)
        self.kernel_held.discard(inode)

    def affected(self, pids: Iterable[int], mntns: Iterable[int], kernel_held: bool) -> dict[int, list[Holder]]:
        """inode -> the holders these processes give it and its bind mounts in these mount
        namespaces, for every namespace they hold; and (if asked) those known only through the
        kernel (with none)."""
        out: dict[int, list[Holder]] = {}
        for table, keys in ((self.by_pid, pids), (self.by_mntns, mntns)):
            for key in keys:
                for inode, part in table.get(key, {}).items():
                    out.setdefault(inode, []).extend(part)
        if kernel_held:
            for inode in self.kernel_held:
                out.setdefault(inode, [])
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
            for key, parts in read.items():
                kept = {i: part for i, part in parts.items() if i in new.namespaces}  # (a fresh entry settled away)
                if kept:
                    table.setdefault(key, {}).update(kept)
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
        """This index equals one built whole from its snapshot (for tests; the holders a key gives
        a namespace compared as sets: a re-read may list them in another order)."""
        whole = Holdings(self.snap)

        def sets(parts: Parts) -> dict[int, dict[int, frozenset[Holder]]]:
            return {key: {i: frozenset(part) for i, part in held.items()} for key, held in parts.items()}

        return (sets(whole.by_pid), sets(whole.by_mntns), whole.kids, whole.kernel_held) == (
            sets(self.by_pid), sets(self.by_mntns), self.kids, self.kernel_held)
