"""Discovery: one scan of the host, made of independent sources that each add to one Scan, frozen
into an immutable Snapshot at the end. Everything follows from the processes: one compiled walk of
/proc (discover.processes) reads their links, threads, fds and sockets, and the ids, owners and
parents of the namespaces it sees; then the mount tables of their mount namespaces (bindmount),
the namespaces the walk could not open (hierarchy), and the id maps of the user namespaces.

    snapshot = discover()                       # every source
    snapshot = discover(sources={"process"})    # only what processes are in
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from namespacefs import kernel, procfs
from namespacefs.discover import hierarchy, mounts, processes
from namespacefs.discover.state import Found, Scan
from namespacefs.model import DIRECT_KINDS, SOURCES, Holder, HolderKind, Namespace, NsType, Snapshot, Source, indirect_holders

# SOURCES (model.Source): every source, in the order they run. "hierarchy" (owners and parents)
# always runs: without it no namespace has an owner, and it is what opens each namespace to read its id.

__all__ = ["SOURCES", "boot_id", "discover", "freeze", "read_user_maps"]


def boot_id(proc: str = "/proc") -> str:
    with open(f"{proc}/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def discover(sources: Iterable[str] = SOURCES, proc: str = "/proc") -> Snapshot:
    """Scan the host and return a snapshot of every namespace the chosen sources can find."""
    chosen = frozenset(sources)
    unknown = chosen - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown discovery source(s): {', '.join(sorted(unknown))}")
    started, clock = time.time(), time.perf_counter()
    state = Scan(proc=proc)
    try:
        processes.scan(state, chosen)
        if Source.BINDMOUNT in chosen:
            mounts.scan(state)
        hierarchy.resolve(state)
        read_user_maps(state)
        if Source.LISTNS in chosen:
            _cross_check_listns(state)
        if Source.BINDMOUNT in chosen:
            mounts.scan_unentered(state)  # mount namespaces no process is in
    finally:
        state.close_fds()
    namespaces = freeze(state)
    return Snapshot(
        boot_id=boot_id(proc), kernel=os.uname().release, taken_at=started,
        duration=time.perf_counter() - clock, namespaces=namespaces, processes=dict(state.processes),
        errors=dict(state.errors), sources=tuple(s for s in SOURCES if s in chosen),
        errors_by_pid={pid: dict(counts) for pid, counts in state.errors_by_pid.items()},
    )


def _cross_check_listns(state: Scan) -> None:
    """Linux 6.19+: anything listns() knows that the sources missed is added (holder `listns`)."""
    try:
        ids = kernel.listns()
    except OSError as e:
        state.failed(e)
        return
    if ids is None:
        return  # older kernel: silently nothing
    known = {ns.id for ns in state.found.values()}
    for ident in ids:
        if ident in known:
            continue
        try:
            fd = kernel.open_ns_by_id(ident)
            inode, nstype = os.fstat(fd).st_ino, kernel.ns_type(fd)
        except OSError as e:
            state.failed(e)
            continue
        state.add(nstype, inode, Holder(HolderKind.LISTNS), fd)
    hierarchy.resolve(state)


def read_user_maps(state: Scan) -> None:
    """uid_map, gid_map and setgroups of every user namespace a process is in, into
    state.user_maps (read once each)."""
    maps = state.user_maps
    for inode, ns in state.found.items():
        if ns.type != NsType.USER or not ns.processes or inode in maps:
            continue
        for pid in ns.processes:
            base = f"{state.proc}/{pid}/"
            try:
                maps[inode] = (procfs.parse_id_map(processes.read_at(base + "uid_map")),
                               procfs.parse_id_map(processes.read_at(base + "gid_map")),
                               processes.read_at(base + "setgroups").decode().strip())
                break
            except OSError as e:
                state.failed(e)


def freeze(state: Scan) -> dict[int, Namespace]:
    """The namespaces a scan found, as the model's immutable Namespaces (holders, processes in
    pid order, levels, id maps), by inode."""
    found = state.found
    indirect = _indirect_holders(found)
    levels: dict[int, int] = {}
    namespaces = {}
    user_maps, no_maps, hierarchical = state.user_maps, (None, None, None), kernel.HIERARCHICAL
    for inode, ns in found.items():
        uid_map, gid_map, setgroups = user_maps.get(inode, no_maps)
        # (positional, in Namespace's field order: a call by keyword costs three times as much)
        namespaces[inode] = Namespace(
            ns.type, inode, ns.id, ns.dev, ns.owner, ns.parent, tuple(ns.holders or indirect.get(inode, ())),
            tuple(sorted(ns.processes)), ns.owner_uid, uid_map, gid_map, setgroups,
            _level(inode, found, levels) if ns.type in hierarchical else 0, ns.mounts)
    return namespaces


def _level(inode: int | None, found: dict[int, Found], levels: dict[int, int]) -> int:
    """The depth of a pid or user namespace in its tree (0: the root seen), worked out once each.
    (Not a closure: a nested function that calls itself is a reference cycle, and each scan's
    namespaces would wait in it for the garbage collector.)"""
    if inode is None or inode not in found:
        return -1
    if inode not in levels:
        levels[inode] = 0  # guards against a cycle in a corrupt answer
        levels[inode] = _level(found[inode].parent, found, levels) + 1
    return levels[inode]


def _indirect_holders(found: dict[int, Found]) -> dict[int, list[Holder]]:
    """For namespaces nothing holds directly: the children that keep them alive. (Only the
    relations that name such a namespace are looked at: the initial user namespace owns almost
    everything, and a holder for each of those would be made only to be dropped.)"""
    bare = {inode for inode, ns in found.items() if not _held_directly(ns.holders)}
    return indirect_holders((inode, ns.owner if ns.owner in bare else None, ns.parent if ns.parent in bare else None)
                            for inode, ns in found.items() if ns.owner in bare or ns.parent in bare) if bare else {}


def _held_directly(holders: list[Holder]) -> bool:
    """Is anything among these holders one that holds by itself (DIRECT_KINDS)? (The first one,
    all but always a process, answers for most namespaces.)"""
    if holders and holders[0].kind in DIRECT_KINDS:
        return True
    return any(h.kind in DIRECT_KINDS for h in holders)


# the names discover/incremental.py used before they were public (kept until it uses the new ones)
_freeze = freeze
_read_user_maps = read_user_maps
