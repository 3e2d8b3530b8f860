"""Naming the live model: core.name (the one naming pass), run where it is needed and no more often
than the daemon can afford (`duty`, a share of the updater's time). A whole pass costs ~30 us per
namespace; between whole passes new namespaces are named by the same pass over just them and their
owners (provisional), and a whole pass is due again (`due`).

A name depends on the namespaces (their ids, owners, `ip netns` bind mounts), the names database
and the containers recognised in the snapshot. A change of processes alone (a fork, an exit, an
exec in namespaces that are all named) can change a name only through container recognition (a
container whose engine is known only once its process exec'd): it makes the names `stale` and a
whole pass due STALE_AFTER seconds later (a trickle of forks on a host at rest costs a pass per
STALE_AFTER at most, not one per fork)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable

from namespacefs import tables
from namespacefs.discover import incremental
from namespacefs.model import Namespace, Snapshot, netns_names

Namer = Callable[[Snapshot], Snapshot]
#: Seconds from a change of processes alone to the whole pass it makes due.
STALE_AFTER = 5.0
#: Seconds between whole passes at least, under churn: until then new namespaces keep the names the
#: pass over just them gave (what can differ: a default lengthened against a sibling's, a container
#: an engine names only once the others of its namespaces are seen), and a whole pass follows.
WHOLE_EVERY = 5.0
#: The share of one core whole passes may take under churn (~60 us of CPU per namespace: at 5,000
#: namespaces one per ~15 s), and the periodic pass at rest (for engine renames: one per
#: `rename_every` seconds, or per ~150 s at that size). `bounds()` says what they come to.
WHOLE_SHARE, REST_SHARE = 0.02, 0.002


class Naming:
    def __init__(self, name: Namer | None, duty: float) -> None:
        self.name_func, self.duty = name, duty
        self.spent = 0.0  # seconds the last call spent naming
        self.whole = 0.0  # CPU seconds the last whole pass took
        self.named_at = 0.0  # when it ended (time.monotonic())
        self.due = math.inf  # when a whole pass is wanted (after provisional names)
        self.stale = False  # processes changed since the last whole pass (see above)
        self.provisional = False  # namespaces came or went since the last whole pass
        self.passes = 0  # whole passes made

    def named(self, raw: Snapshot, force: bool, base: Snapshot | None, current: Snapshot | None) -> Snapshot:
        """raw named by the naming pass. Skipped where nothing a name depends on changed (the same
        processes, the same namespaces, all named); where namespaces came or went, the pass runs
        over just the new ones and their owners (provisional) and a whole pass is made due, at
        most one per `gap` (it may rename: `renamed`). A whole pass runs only when forced (a job
        of its own: the updater makes one when it is due and no event waits), so no update for
        events waits for one."""
        self.spent = 0.0
        if self.name_func is None:
            return raw
        if force or base is None:
            return self._whole(raw, current)
        if raw is base:
            return raw
        changed = _changed(base, raw)
        unnamed = [ns for i in changed if (ns := raw.namespaces.get(i)) is not None and ns.name is None]
        came_or_went = any((i in raw.namespaces) != (i in base.namespaces) for i in changed)
        gap = self.gap
        if not came_or_went and not unnamed and not _netns_changed(raw, base, changed):
            if raw.processes is not base.processes and not self.stale:
                self.stale = True
                self.due = min(self.due, max(self.named_at + gap, time.monotonic() + STALE_AFTER))
            return raw
        self.due = min(self.due, max(self.named_at + gap, time.monotonic()))
        self.provisional = True
        return self._provisional(raw, unnamed) if unnamed else raw

    @property
    def gap(self) -> float:
        """Seconds from one whole pass to the next at least, under churn (WHOLE_EVERY, WHOLE_SHARE)."""
        return max(WHOLE_EVERY, self.whole / WHOLE_SHARE, self.whole * (1 / self.duty - 1))

    def periodic(self, every: float) -> float:
        """Seconds between periodic whole passes at rest: `every`, or more where a pass costs more
        than REST_SHARE of a core at that pace."""
        return max(every, self.whole / REST_SHARE)

    def _provisional(self, raw: Snapshot, unnamed: list[Namespace]) -> Snapshot:
        """The naming pass over the unnamed namespaces, their owners and parents and the processes
        in them (no sources: the names database is not maintained from a partial view)."""
        assert self.name_func is not None
        clock = time.monotonic()
        keep: dict[int, Namespace] = {}
        todo = [ns.inode for ns in unnamed]
        while todo:
            inode = todo.pop()
            ns = raw.namespaces.get(inode)
            if ns is None or inode in keep:
                continue
            keep[inode] = ns
            todo.extend(r for r in (ns.owner, ns.parent) if r is not None)
        pids = {pid for ns in unnamed for pid in ns.processes}
        sub = raw.replace(namespaces={i: raw.namespaces[i] for i in keep},
                          processes={p: raw.processes[p] for p in pids if p in raw.processes}, sources=())
        named = self.name_func(sub)
        self.spent = time.monotonic() - clock
        return _renamed(raw, _with(raw, (named.namespaces[ns.inode] for ns in unnamed)),
                        frozenset(ns.inode for ns in unnamed))

    def _whole(self, raw: Snapshot, current: Snapshot | None) -> Snapshot:
        assert self.name_func is not None
        clock, cpu = time.monotonic(), time.thread_time()
        named = self.name_func(raw)
        self.spent, self.whole = time.monotonic() - clock, time.thread_time() - cpu
        self.named_at, self.due, self.stale, self.provisional = time.monotonic(), math.inf, False, False
        self.passes += 1
        result = _same_objects(named, current)
        before, after = raw.namespaces, result.namespaces
        # (what differs, by identity: the events, the next naming and the mount watch look at those only)
        differ = frozenset({i for i, ns in after.items() if before.get(i) is not ns} | tables.missing(before, after))
        return _renamed(raw, result, differ)


def _changed(base: Snapshot, raw: Snapshot) -> frozenset[int]:
    """The inodes whose entries differ between base and raw (what the refresh that made raw of base
    says, else found by comparing every entry)."""
    known = incremental.changes(base, raw)
    if known is not None:
        return known
    before, after = base.namespaces, raw.namespaces
    return frozenset({i for i, ns in after.items() if before.get(i) is not ns} | tables.missing(before, after))


def _netns_changed(raw: Snapshot, base: Snapshot, changed: frozenset[int]) -> bool:
    """A net namespace whose `ip netns` names (bind mounts under /run/netns) changed: its name may."""
    old, new = base.namespaces, raw.namespaces
    return any(netns_names(ns) != netns_names(old[inode]) for inode in changed
               if (ns := new.get(inode)) is not None and ns.type == "net" and inode in old)


def _renamed(raw: Snapshot, named: Snapshot, inodes: frozenset[int] | None = None) -> Snapshot:
    """`named`, which is `raw` with names (what the incremental refresh keeps about `raw` holds;
    `inodes`: the entries named, where known)."""
    incremental.renamed(raw, named, inodes)
    return named


def _same_objects(new: Snapshot, old: Snapshot | None) -> Snapshot:
    """`new`, with each namespace equal to the one `old` has kept as that object (the naming pass
    makes every namespace anew; what is served is cached per object)."""
    if old is None:
        return new
    same = [prev for inode, ns in new.namespaces.items() if (prev := old.namespaces.get(inode)) is not None
            and prev is not ns and prev == ns]
    if (len(same) == len(new.namespaces) == len(old.namespaces) and new.processes is old.processes
            and new.taken_at == old.taken_at):
        return old  # a pass that changed nothing: no new model (no events, nothing served anew)
    return _with(new, same) if same else new


def _with(snap: Snapshot, namespaces: Iterable[Namespace]) -> Snapshot:
    """snap.with_namespaces(namespaces), a new version of its table (namespacefs.tables)."""
    table = tables.editable(snap.namespaces)
    for ns in namespaces:
        table[ns.inode] = ns
    return snap.replace(namespaces=table.finish())


def names_path(given: str | None) -> str:
    """The names database a model is named with (the given one, else $NSFS_DB, else the default)."""
    from namespacefs.names import db_path

    return db_path(given)


def db_stamp(path: str) -> tuple[float, int] | None:
    """(mtime, size) of the names database: a rename changes it."""
    try:
        st = os.stat(path)
        return st.st_mtime, st.st_size
    except (OSError, ValueError):
        return None
