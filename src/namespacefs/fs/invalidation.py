"""What the kernel must forget after a rescan, when it caches (no --allow-other): the listings
(directories) and the names (entries) that the new snapshot changed. Pure: from the two snapshots,
their diff and the node numbers handed out so far (a node the kernel never saw has nothing cached).

The kernel keeps listings until told (fs.session) and names for nodes.CACHED_TIMEOUT, so this is
what keeps `ls` honest: a namespace that appears is listed, one that vanishes is neither listed
nor found by name, a rename in tree/ shows, as soon as the rescan that sees it.
"""

from __future__ import annotations

from collections.abc import Mapping

from namespacefs.fs import layout
from namespacefs.fs.nodes import Key, Kind, find
from namespacefs.model import Diff, Snapshot

#: Directories whose listing is made from names and containers (by/): dropped at every change.
_BY_DIRS = (Kind.BY, Kind.BYDIR)


def stale(old: Snapshot, new: Snapshot, d: Diff, ino: Mapping[Key, int]) -> tuple[set[int], list[tuple[int, str]]]:
    """(directories whose listing changed, (directory, name) entries that went or now mean
    something else). Processes coming and going change no listing (tasks is read at open)."""
    if not (d.appeared or d.vanished or d.changed):
        return set(), []
    before, after = layout.View(old), layout.View(new)
    dirs: set[int] = set()
    names: list[tuple[int, str]] = []
    for nstype in {ns.type for ns in (*d.appeared, *d.vanished)}:
        if (type_dir := ino.get((Kind.TYPE, nstype))) is not None:
            dirs.add(type_dir)
    for ns in d.vanished:
        if (type_dir := ino.get((Kind.TYPE, ns.type))) is not None and (Kind.NS, ns.key) in ino:
            names.append((type_dir, str(ns.inode)))
    for key, number in list(ino.items()):
        kind = key[0]
        if kind in _BY_DIRS:
            dirs.add(number)
        elif kind is Kind.TREE or kind is Kind.TDIR:
            _compare(number, _tree(before, key), _tree(after, key), dirs, names)
        elif kind is Kind.NS and (d.appeared or d.vanished):
            _compare(number, _links(before, key), _links(after, key), dirs, names)
    return dirs, names


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
