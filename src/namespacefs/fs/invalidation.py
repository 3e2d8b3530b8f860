"""What the kernel must forget after a rescan, when it caches (no --allow-other): the listings
(directories) and the names (entries) that the new snapshot changed. Pure: from the two snapshots,
their diff and the node numbers handed out so far (a node the kernel never saw has nothing cached).

The kernel keeps listings until told (fs.session) and names for nodes.CACHED_TIMEOUT, so this is
what keeps `ls` honest: a namespace that appears is listed, one that vanishes is neither listed
nor found by name, a rename in tree/ shows, as soon as the rescan that sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from namespacefs.fs import layout
from namespacefs.fs.nodes import Key, Kind, find
from namespacefs.model import Diff, Snapshot


def stale(old: Snapshot, new: Snapshot, d: Diff, ino: Mapping[Key, int],
          by_dirs: Iterable[int] = ()) -> tuple[set[int], list[tuple[int, str]]]:
    """(directories whose listing changed, (directory, name) entries that went or now mean
    something else); by_dirs: the node numbers of by/ and its directories, whose listings are
    made from names and containers, dropped at every change. Processes coming and
    going change no listing (tasks is read at open). Only the directories the diff can have
    changed are compared, so the cost follows the change, not the size of the host."""
    if not (d.appeared or d.vanished or d.changed):
        return set(), []
    before, after = layout.View(old), layout.View(new)
    came_went = (*d.appeared, *d.vanished)
    dirs: set[int] = set(by_dirs)
    names: list[tuple[int, str]] = []
    for nstype in {ns.type for ns in came_went}:
        if (type_dir := ino.get((Kind.TYPE, nstype))) is not None:
            dirs.add(type_dir)
    for ns in d.vanished:
        if (type_dir := ino.get((Kind.TYPE, ns.type))) is not None and (Kind.NS, ns.key) in ino:
            names.append((type_dir, str(ns.inode)))
    for key in _tree_dirs(old, new, d):
        if (number := ino.get(key)) is not None:
            _compare(number, _tree(before, key), _tree(after, key), dirs, names)
    for key in _linking(old, new, {ns.inode for ns in came_went}):
        if (number := ino.get(key)) is not None:
            _compare(number, _links(before, key), _links(after, key), dirs, names)
    return dirs, names


def _tree_dirs(old: Snapshot, new: Snapshot, d: Diff) -> set[Key]:
    """The tree/ directories that hold something that came, went or changed (a name): only their
    entries can differ."""
    keys: set[Key] = set()
    moved = [*d.appeared, *d.vanished, *(pair[0] for pair in d.changed), *(pair[1] for pair in d.changed)]
    for ns in moved:
        if ns.owner is None:
            keys.add((Kind.TREE,))  # (tree/ holds what has no owner in the snapshot)
            continue
        for snap in (old, new):
            if (owner := snap.get(ns.owner)) is not None:
                keys.add((Kind.TDIR, owner.key))
    return keys


def _linking(old: Snapshot, new: Snapshot, inodes: set[int]) -> set[Key]:
    """The directories of the namespaces whose owner or parent link points at one of these inodes
    (a link is shown while its target is there)."""
    keys: set[Key] = set()
    for snap in (old, new):
        for inode in inodes:
            keys.update((Kind.NS, ns.key) for ns in (*snap.owned_by(inode), *snap.children(inode)))
    return keys


def _compare(number: int, was: dict[str, Key] | None, now: dict[str, Key] | None, dirs: set[int],
             names: list[tuple[int, str]]) -> None:
    """A directory whose entries differ: its listing, and each name that went or changed meaning."""
    if was is None or now is None or was == now:
        return  # (a directory that came or went: its entry in its parent says so)
    dirs.add(number)
    names.extend((number, name) for name, key in was.items() if now.get(name) != key)


def _tree(view: layout.View, key: Key) -> dict[str, Key] | None:
    """The entries of tree/ (key TREE) or of a user namespace's directory there, by name."""
    if key[0] is Kind.TREE:
        return {name: ns.key for name, ns in view.tree_entries(None).items()}
    user = find(view.snapshot, key[1])
    if user is None:
        return None
    return {name: ns.key for name, ns in view.tree_entries(user.inode).items()}


def _links(view: layout.View, key: Key) -> dict[str, Key] | None:
    """The entries of a namespace's directory (its files, and owner/parent while they are shown)."""
    ns = find(view.snapshot, key[1])
    if ns is None:
        return None
    return {name: (name,) for name in view.entries_of(ns)}
