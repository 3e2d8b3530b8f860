"""A cheap partial rescan: the previous snapshot with a few processes (and mount tables) read again.

    new = refresh(old, {pid, ...})                 # on fork/exec/exit, unshare/setns
    new = refresh(old, pids, mounts=True)          # also their mount namespaces' bind mounts

Each touched process is read again with the per-process sources (process, task, for_children, fd,
socket) exactly as the full scan reads it; with mounts=True the mount tables of the mount
namespaces they are in are read again too (the bindmount source). A process that is gone is
removed with everything it held; namespaces nothing holds any more vanish; new ones are opened for
their id, owner and parent. What the touched processes cannot tell (things held by untouched
processes that changed without an event) stays as it was: the live service's sweep re-reads every
process within a bounded time, and a full scan remains the reference.

Identity is the kernel's 64-bit namespace id: a namespace of the old snapshot is the same as a
fresh one only if type *and* id agree. An inode that now belongs to another namespace proves the
old one dead (nsfs inodes are freed when a namespace dies), and with it every namespace it owned
or was parent of (a live namespace pins its owner and parent): they are dropped, and the processes
that held them are read again (they changed without telling: setns, unshare, a closed fd). So no
namespace of the result ever points at a reused inode.

The work is proportional to what was touched: an index of who holds what (discover.holdings) is
built once for a snapshot that did not come from a refresh, and moved on by each refresh from
what it changed; an update that changes nothing returns `old` itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping

from namespacefs import kernel, tables
from namespacefs.discover import SOURCES, freeze, hierarchy, links, mounts, processes, read_user_maps
from namespacefs.discover.holdings import BINDMOUNT, KERNEL_HELD, PER_PROCESS, Holdings, direct, indirect, resorted, swapped
from namespacefs.discover.links import changes as changes
from namespacefs.discover.links import moved as moved
from namespacefs.discover.state import Info, Scan
from namespacefs.model import DIRECT_KINDS, Holder, Namespace, Process, Snapshot

#: The holder kinds each per-process source gives (and takes away when its process goes).
KINDS_OF: dict[str, frozenset[str]] = {
    "process": frozenset({"process", "zombie"}), "task": frozenset({"task"}),
    "for_children": frozenset({"pid_for_children", "time_for_children"}), "fd": frozenset({"fd"}),
    "socket": frozenset({"socket"}),
}
assert frozenset().union(*KINDS_OF.values()) == PER_PROCESS
PROCESS = "process"  # (the holder kind of a process in a namespace: what `processes` lists)
#: How often suspects found through a reused inode are read again within one refresh.
MAX_ROUNDS = 3

#: The index of the last snapshot a refresh made (or was given): the next refresh most likely
#: starts from it. One at a time; emptied while it is being moved on (an error half-way leaves none).
_last: list[Holdings] = []


def kernel_held(snap: Snapshot) -> int:
    """How many namespaces of `snap` are known only through the kernel (0 if not known here)."""
    return len(_last[0].kernel_held) if _last and _last[0].snap is snap else 0


def renamed(old: Snapshot, new: Snapshot, inodes: frozenset[int] | None = None) -> None:
    """`new` is `old` with other names only (a naming pass; `inodes`: the entries it renamed, if
    known): the next refresh of `new` reuses the index of `old` instead of building one, and
    changes() knows what the refresh behind `old` and this renaming changed together."""
    if _last and _last[0].snap is old and _same_keys(old, new, inodes):
        _last[0].snap = new
    if inodes is None:
        links.forget()
    else:
        links.link(old, new, inodes)


def _same_keys(old: Snapshot, new: Snapshot, inodes: frozenset[int] | None) -> bool:
    """`new`, which is `old` with the entries `inodes` (None: any) renamed, has the same inodes."""
    if inodes is None:
        return tables.same_keys(new.namespaces, old.namespaces)
    return len(new.namespaces) == len(old.namespaces) and all(i in old.namespaces for i in inodes)


def kids(snap: Snapshot, inode: int) -> list[Namespace] | None:
    """The namespaces of `snap` that name `inode` as owner or parent, from the index kept for `snap`
    (None where there is none: ask the snapshot)."""
    if not _last or _last[0].snap is not snap:
        return None
    table = snap.namespaces
    return [table[i] for i in sorted(_last[0].kids.get(inode, ())) if i in table]


def _index(snap: Snapshot) -> Holdings:
    if not _last or _last[0].snap is not snap:
        _last[:] = [Holdings(snap)]
    return _last[0]


def refresh(old: Snapshot, pids: Iterable[int], sources: Iterable[str] = SOURCES, proc: str = "/proc",
            mounts: bool = False, recheck: bool | None = None) -> Snapshot:
    """`old` with the processes in `pids` read again (those that are gone removed); with mounts=True
    also the bind mounts of their mount namespaces; with recheck (default: = mounts), the namespaces
    known only through the kernel are asked again. `old` itself when nothing changed."""
    clock = time.perf_counter()
    chosen = frozenset(sources)
    new, touched, suspects = old, frozenset(pids), frozenset[int]()
    errors: dict[int, Counter[str]] = {}
    reread: set[int] = set()
    changed: set[int] = set()
    for _round in range(MAX_ROUNDS):
        reread |= touched
        new, suspects = _refresh_once(new, touched, chosen, proc, mounts and "bindmount" in chosen, errors,
                                      mounts if recheck is None else recheck, changed)
        touched = suspects - touched
        if not touched:
            break
    if new is old:
        return old
    total, by_pid = _errors(old, reread, errors)
    index = _index(new)
    new = new.replace(taken_at=time.time(), duration=time.perf_counter() - clock, errors=total, errors_by_pid=by_pid)
    index.snap = new  # (the same namespaces: the next refresh starts from `new`, most likely)
    links.link(old, new, frozenset(changed), frozenset(reread))
    return new


#: what one read meets by chance (a process gone, an inode reused while it read): not something the
#: model cannot see, which only holds what is still there
RACES = frozenset({"vanished", "changed"})


def _errors(old: Snapshot, reread: set[int],
            read: Mapping[int, Counter[str]]) -> tuple[dict[str, int], Mapping[int, Mapping[str, int]]]:
    """The model's errors after a re-read of `reread`: what those processes had is replaced by
    what this read found of them (races left out); every other count stays as it was."""
    total = Counter(old.errors)
    by_pid = tables.editable(old.errors_by_pid)
    for pid in reread:
        total.subtract(by_pid.pop(pid, {}))
    for pid in reread & read.keys():
        kept = {reason: n for reason, n in read[pid].items() if reason not in RACES}
        if kept:
            by_pid[pid] = kept
            total.update(kept)
    return {reason: n for reason, n in total.items() if n > 0}, by_pid.finish()


def _refresh_once(old: Snapshot, touched: frozenset[int], chosen: frozenset[str], proc: str, remount: bool,
                  errors: dict[int, Counter[str]], recheck: bool, changed: set[int]) -> tuple[Snapshot, frozenset[int]]:
    """One round: (the new snapshot, pids that held a namespace found dead and must be re-read);
    the index is moved on to the new snapshot, and the inodes whose entries may differ are added to
    `changed`."""
    state = Scan(proc=proc)
    state.known.update(_initial)  # (the walk opens only what it does not know)
    try:
        processes.scan(state, chosen & set(KINDS_OF), sorted(touched))
        if remount:
            mounts.scan(state)
        hierarchy.resolve(state)
        _fixed_maps(state, old)
        read_user_maps(state)
    finally:
        state.close_fds()
    _keep_initial(state)
    for pid, counts in state.errors_by_pid.items():
        errors.setdefault(pid, Counter()).update(counts)
    remounted = state.mounts_read if remount else set()
    index = _index(old)
    merge = _Merge(old, index, touched, chosen, remounted, recheck)
    fresh = freeze(state)
    merge.add_fresh(fresh)
    merge.settle()
    procs = _processes(old.processes, touched, state.processes)
    if procs is old.processes and not merge.changed:
        return old, frozenset(merge.suspects)
    new = old.replace(namespaces=merge.table.finish(), processes=procs)
    changed |= merge.visited
    _last.clear()  # (moved on in place: an error half-way must leave no index behind)
    if chosen >= KINDS_OF.keys():
        index.advance(new, merge.visited, touched, remounted | merge.unmounted, fresh)
    else:  # (some per-process sources were not read: what the touched processes hold is not all known)
        index = Holdings(new)
    _last.append(index)
    return new, frozenset(merge.suspects)


#: What the walk read of the initial namespaces (kernel.INIT_NS_INODES), for every later refresh:
#: they never die, so their inodes are never reused (no other inode can be trusted from one read to
#: the next), and a refresh of a process in the host's namespaces opens none of them (~10 us each).
_initial: dict[int, Info] = {}


def _keep_initial(state: Scan) -> None:
    for inode, nstype in kernel.INIT_NS_INODES.items():
        info = state.known.get(inode)
        if inode not in _initial and info is not None and info[0] == kernel.CLONE_FLAGS[nstype] and info[2] is not None:
            _initial[inode] = info


def _fixed_maps(state: Scan, old: Snapshot) -> None:
    """The id maps of the user namespaces read again that the model has with both maps written: a
    map is written once, and setgroups only before gid_map, so those are theirs for life (the same
    namespace: the same inode and id); only the others are read (three files each)."""
    for inode, found in state.found.items():
        prev = old.namespaces.get(inode)
        if found.type == "user" and prev is not None and prev.id is not None and prev.id == found.id \
                and prev.uid_map and prev.gid_map and prev.setgroups is not None:
            state.user_maps[inode] = (prev.uid_map, prev.gid_map, prev.setgroups)


def _processes(old: Mapping[int, Process], touched: frozenset[int], read: Mapping[int, Process]) -> Mapping[int, Process]:
    """The process table with the touched processes replaced (an unchanged one keeps its object)."""
    same = all(old.get(pid) == p for pid, p in read.items()) and all(pid in read for pid in touched if pid in old)
    if same:
        return old
    procs = tables.editable(old)
    for pid in touched:
        procs.pop(pid, None)
    for pid, p in read.items():
        prev = old.get(pid)
        procs[pid] = prev if prev is not None and prev == p else p
    return procs.finish()


class _Merge:
    """The old namespace table, with what the touched processes (and re-read mount tables) gave
    each namespace before replaced by what the read found they give it now: per namespace, just
    the holders that differ are taken out or put in (the index knows who gave what), so a namespace
    thousands of others hold costs what the touched processes changed in it."""

    def __init__(self, old: Snapshot, index: Holdings, touched: frozenset[int], chosen: frozenset[str],
                 remounted: set[int], recheck: bool) -> None:
        self.old, self.index = old, index
        self.table = tables.editable(old.namespaces)
        self.changed = False
        self.suspects: set[int] = set()
        self.fresh: set[int] = set()  # inodes the read found (alive when it read them)
        self.kids: dict[int, set[int]] = {}  # owner/parent inode -> fresh namespaces naming it
        self.todo: set[int] = set()  # inodes to check for being held at the end
        self.dropped: set[int] = set()  # inodes removed as dead
        self.visited: set[int] = set()  # every inode whose entry changed
        self.remounted = remounted
        self.unmounted: set[int] = set()  # mount namespaces gone, whose bind mounts went with them
        kinds = frozenset().union(*(KINDS_OF[s] for s in chosen if s in KINDS_OF)) | {BINDMOUNT}
        gave = index.affected(touched, remounted, recheck)
        if kinds < PER_PROCESS | {BINDMOUNT}:  # (holders of the sources not read stay as they are)
            gave = {inode: [h for h in part if h.kind in kinds] for inode, part in gave.items()}
        self.gave = gave  # inode -> what the touched processes and tables gave it before

    def add_fresh(self, fresh: Mapping[int, Namespace]) -> None:
        """Put in what the read found: namespaces new to the table (or on a reused inode: the one
        that had it is dead) as read; the others merged."""
        self.fresh = set(fresh)
        merged: list[int] = []
        for inode, ns in fresh.items():
            for ref in (ns.owner, ns.parent):
                if ref is not None:
                    self.kids.setdefault(ref, set()).add(inode)
            prev = self.table.get(inode)
            if prev is not None and prev.type == ns.type and prev.id == ns.id:
                merged.append(inode)
                continue
            if prev is not None:  # the inode was reused: the namespace that had it is dead
                self._dead(prev)
                if prev.type == "mnt" and inode not in self.remounted:
                    self.todo.update(self._unmount(inode))
            self.table[inode] = ns._replace(holders=direct(ns.holders))
            self.todo.add(inode)
        merged.extend(i for i in self.gave if i not in self.fresh)
        for inode in merged:
            prev = self.table.get(inode)
            if prev is not None:  # (else dropped as dead just now)
                self._merge(inode, prev, fresh.get(inode))

    def _merge(self, inode: int, prev: Namespace, ns: Namespace | None) -> None:
        """One namespace of the table that the read found again (`ns`) or that a touched process
        or table gave something before: what they gave replaced by what they give now."""
        gave = self.gave.get(inode, [])
        gives = direct(ns.holders) if ns is not None else ()
        if prev.holders and prev.holders[0].kind in DIRECT_KINDS and prev.holders != (KERNEL_HELD,):
            holders = swapped(prev.holders, gave, gives)
        else:  # held through others, or by the kernel only: held as read now, or settled again
            holders = gives if gives or inode in self.gave else prev.holders
            self.todo.add(inode)
        was = {h.pid for h in gave if h.kind == PROCESS and h.pid is not None}
        now = ns.processes if ns is not None else ()
        procs = prev.processes if was == set(now) else resorted(prev.processes, was, now)
        entry = prev
        if holders is not prev.holders or procs is not prev.processes:
            entry = entry._replace(holders=holders, processes=procs)
        if ns is not None and ((ns.uid_map and ns.uid_map != prev.uid_map) or (ns.gid_map and ns.gid_map != prev.gid_map)
                               or (ns.setgroups and ns.setgroups != prev.setgroups)
                               or (ns.mounts is not None and ns.mounts != prev.mounts)):
            entry = entry._replace(uid_map=ns.uid_map or prev.uid_map, gid_map=ns.gid_map or prev.gid_map,
                                   setgroups=ns.setgroups or prev.setgroups,
                                   mounts=ns.mounts if ns.mounts is not None else prev.mounts)
        if entry is not prev:
            self.table[inode] = entry
            self.todo.add(inode)

    def _dead(self, ns: Namespace) -> None:
        """`ns` (of the old snapshot) is dead, and so is everything it owns or is parent of: drop
        them (where their inode was not just read afresh) and suspect the processes that held them."""
        stack = [ns]
        while stack:
            dead = stack.pop()
            self.suspects.update(dead.processes)
            self.suspects.update(h.pid for h in dead.holders if h.pid is not None and h.kind in PER_PROCESS)
            if dead.inode not in self.fresh and self.table.get(dead.inode) is not None and self.table[dead.inode].id == dead.id:
                del self.table[dead.inode]
                self.dropped.add(dead.inode)
            stack.extend(k for k in self._old_kids(dead.inode)
                         if k.inode != dead.inode and k.inode in self.table and self.table[k.inode].id == k.id
                         and k.inode not in self.fresh)
            for ref in (dead.owner, dead.parent):
                if ref is not None:
                    self.todo.add(ref)

    def _old_kids(self, inode: int) -> list[Namespace]:
        """The namespaces of the old snapshot that name `inode` as owner or parent (its index's)."""
        old = self.old.namespaces
        return [old[i] for i in self.index.kids.get(inode, ()) if i in old]

    def _children(self, inode: int) -> list[Namespace]:
        """The namespaces of the table that name `inode` as owner or parent."""
        found: dict[int, Namespace] = {}
        for k in self._old_kids(inode):
            now = self.table.get(k.inode)
            if now is not None and k.inode not in self.fresh and now.id == k.id:
                found[k.inode] = now
        for kid in self.kids.get(inode, ()):
            if kid in self.table:
                found[kid] = self.table[kid]
        return [n for n in found.values() if n.inode != inode and inode in (n.owner, n.parent)]

    def settle(self) -> None:
        """Every namespace to check: kept with its direct holders, else with `owner`/`parent`
        holders from the namespaces that name it, else dropped (and its owner and parent checked).
        Where nothing changed after all, the old object stays (front ends cache per object)."""
        for inode in self.dropped:
            if self.old.namespaces[inode].type == "mnt" and inode not in self.table:
                self.todo.update(self._unmount(inode))
        todo, seen = list(self.todo), set(self.todo)
        while todo:
            inode = todo.pop()
            ns = self.table.get(inode)
            if ns is None:
                continue
            holders = direct(ns.holders) or indirect(inode, self._children(inode)) or _kernel_held(ns)
            if not holders:
                del self.table[inode]
                again = [r for r in (ns.owner, ns.parent) if r is not None]
                if ns.type == "mnt":
                    again += self._unmount(inode)
                todo.extend(again)
                seen.update(again)
            elif holders != ns.holders:
                self.table[inode] = ns._replace(holders=holders)
        self.visited = set()
        for inode in seen | self.dropped | self.fresh:
            now, prev = self.table.get(inode), self.old.namespaces.get(inode)
            if now is not None and prev is not None and now is not prev and now == prev:
                self.table[inode] = now = prev
            if now is not prev:
                self.visited.add(inode)
        self.changed = bool(self.visited)


    def _unmount(self, mntns: int) -> list[int]:
        """A mount namespace that is gone takes its bind mounts with it (nothing can read its table
        any more): they are taken out of the namespaces they held; those, to check again."""
        self.unmounted.add(mntns)
        out = []
        for target, part in self.index.by_mntns.get(mntns, {}).items():
            ns = self.table.get(target)
            if ns is not None and (holders := swapped(ns.holders, list(part), ())) is not ns.holders:
                self.table[target] = ns._replace(holders=holders)
                out.append(target)
        return out


#: (inode, id) -> when a namespace was first kept as KERNEL_HELD (time.monotonic()).
_held_since: dict[tuple[int, int], float] = {}
#: Seconds a namespace stays KERNEL_HELD: by then the sweep has re-read every process, so a holder
#: that a scan can see would have been found (what is left is held by nothing a scan shows, such as
#: a net namespace the kernel is still cleaning up; the scan is the reference). Set by the caller.
KERNEL_GRACE = [60.0]


def _kernel_held(ns: Namespace) -> tuple[Holder, ...]:
    """(KERNEL_HELD,) if the kernel still has this namespace (opened by its 64-bit id, Linux 6.18)
    and it has not been kept so for longer than KERNEL_GRACE, else (): a namespace that lost every
    holder we know of is dropped only when it is really gone, or no holder was found in time (or
    where the kernel cannot be asked: no id, not allowed)."""
    if ns.id is None:
        return ()
    now = time.monotonic()
    if len(_held_since) > 10_000:  # forget the oldest (what is long gone)
        for key in sorted(_held_since, key=_held_since.__getitem__)[:5_000]:
            del _held_since[key]
    if now - _held_since.setdefault((ns.inode, ns.id), now) > KERNEL_GRACE[0]:
        return ()
    # (None, where the kernel cannot be asked: dropped, as a scan would not show it either)
    return (KERNEL_HELD,) if kernel.ns_alive(ns.id, ns.type, ns.inode) is True else ()
