"""A cheap partial rescan: the previous snapshot with a few processes read again.

    new = refresh(old, {pid, ...})

Used by the live service on process events (fork, exec, exit): each touched process is read again
with the per-process sources (process, task, for_children, fd) exactly as the full scan reads it;
a process that is gone is removed with everything it held; namespaces nothing holds any more
vanish, and new ones are opened for their id, owner and parent. What a process cannot tell (bind
mounts, sockets, things held by untouched processes that changed without an event) stays as the
last full scan saw it: the full scan remains the reference and runs periodically.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping

from namespacefs.discover import SOURCES, _freeze, _read_user_maps, hierarchy, processes
from namespacefs.discover.state import Scan
from namespacefs.model import DIRECT_KINDS, Namespace, Snapshot, indirect_holders

#: Holder kinds a process gives (and takes away when it goes).
PER_PROCESS = frozenset({"process", "zombie", "task", "pid_for_children", "time_for_children", "fd"})


def refresh(old: Snapshot, pids: Iterable[int], sources: Iterable[str] = SOURCES, proc: str = "/proc") -> Snapshot:
    """`old` with the processes in `pids` read again (those that are gone removed)."""
    clock = time.perf_counter()
    touched = frozenset(pids)
    chosen = frozenset(sources) & {"process", "task", "for_children", "fd"}
    state = Scan(proc=proc)
    try:
        processes.scan(state, chosen, sorted(touched))
        hierarchy.resolve(state)
        _read_user_maps(state)
    finally:
        state.close_fds()
    fresh = _freeze(state)

    namespaces: dict[int, Namespace] = {}
    for inode, ns in old.namespaces.items():
        holders = tuple(h for h in ns.holders if h.kind in DIRECT_KINDS and not (h.kind in PER_PROCESS and h.pid in touched))
        procs = tuple(p for p in ns.processes if p not in touched)
        # unchanged namespaces stay the same objects (front ends cache per object)
        same = holders == ns.holders and procs == ns.processes
        namespaces[inode] = ns if same else ns._replace(holders=holders, processes=procs)
    for inode, ns in fresh.items():
        prev = namespaces.get(inode)
        direct = tuple(h for h in ns.holders if h.kind in DIRECT_KINDS)
        if prev is not None and prev.type == ns.type and prev.id == ns.id:
            namespaces[inode] = prev._replace(
                holders=prev.holders + direct, processes=tuple(sorted({*prev.processes, *ns.processes})),
                uid_map=ns.uid_map or prev.uid_map, gid_map=ns.gid_map or prev.gid_map,
                setgroups=ns.setgroups or prev.setgroups)
        else:  # new (or an inode reused by a new namespace)
            namespaces[inode] = ns._replace(holders=direct)
    _drop_unheld(namespaces, old.namespaces)

    procs = {pid: p for pid, p in old.processes.items() if pid not in touched}
    procs.update(state.processes)
    errors = Counter(old.errors)
    errors.update(state.errors)
    return old.replace(taken_at=time.time(), duration=time.perf_counter() - clock, namespaces=namespaces,
                       processes=procs, errors=dict(errors))


def _drop_unheld(namespaces: dict[int, Namespace], before: Mapping[int, Namespace]) -> None:
    """Remove namespaces with no direct holder that no kept namespace needs as owner or parent;
    give those that are kept only by a child their `owner`/`parent` holders back."""
    while True:
        needed = {r for ns in namespaces.values() for r in (ns.owner, ns.parent) if r is not None}
        drop = [i for i, ns in namespaces.items() if not ns.holders and i not in needed]
        if not drop:
            break
        for inode in drop:
            del namespaces[inode]
    indirect = indirect_holders((inode, ns.owner, ns.parent) for inode, ns in namespaces.items())
    for inode, ns in list(namespaces.items()):
        if not ns.holders and inode in indirect:
            namespaces[inode] = ns._replace(holders=tuple(indirect[inode]))
    for inode, ns in list(namespaces.items()):  # keep the object where nothing changed after all
        prev = before.get(inode)
        if prev is not None and prev is not ns and prev == ns:
            namespaces[inode] = prev
