"""The chain of the last refreshes (and renamings) of a live model, each with what it may have
changed: which entries differ between two snapshots, and which processes may be in other
namespaces, is then known at the cost of what changed, not found by comparing whole tables
(discover.incremental makes the links; events, naming, the sweep and the mount watch ask)."""

from __future__ import annotations

from namespacefs.model import Snapshot

#: (old, new, inodes, pids): the last refreshes (and renamings), each with the inodes whose entries
#: it may have changed and the processes it read again (no other process is in other namespaces in
#: `new` than in `old`); a chain, each starting from the one before it.
_links: list[tuple[Snapshot, Snapshot, frozenset[int], frozenset[int]]] = []


def link(old: Snapshot, new: Snapshot, inodes: frozenset[int], pids: frozenset[int] = frozenset()) -> None:
    if not (_links and _links[-1][1] is old):
        _links.clear()
    _links.append((old, new, inodes, pids))
    del _links[:-4]


def changes(old: Snapshot, new: Snapshot) -> frozenset[int] | None:
    """The inodes whose entries may differ between `old` and `new` where `new` is what the last
    refreshes made of `old` (every other entry is the same object in both); None if it is not."""
    both = _chain(old, new)
    return both[0] if both is not None else None


def moved(old: Snapshot, new: Snapshot) -> frozenset[int] | None:
    """The processes that may be in other namespaces in `new` than in `old` (read again, come or
    gone), where `new` is what the last refreshes made of `old`; None if it is not."""
    both = _chain(old, new)
    return both[1] if both is not None else None


def _chain(old: Snapshot, new: Snapshot) -> tuple[frozenset[int], frozenset[int]] | None:
    """(inodes, pids) of the links from `old` to `new` together."""
    inodes: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()
    links = list(_links)  # (a copy: other threads ask while the updater adds)
    for i in range(len(links) - 1, -1, -1):
        start, end, these, read = links[i]
        if i == len(links) - 1 and end is not new:
            return None
        inodes, pids = inodes | these, pids | read
        if start is old:
            return inodes, pids
    return None


def forget() -> None:
    """A snapshot changed in a way no link describes: nothing is known from the chain any more."""
    _links.clear()
