"""fs.invalidation.stale compares only the directories a rescan's diff can have changed; it must
find exactly what comparing every directory the kernel may have cached finds (pure: snapshots
made here, any shape Hypothesis picks: nested user namespaces, pid chains, namespaces coming,
going and renamed, inodes reused)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from namespacefs.fs import invalidation, layout
from namespacefs.fs.nodes import Key, Kind
from namespacefs.model import Namespace, Snapshot, diff

TYPES = ("user", "pid", "net", "uts", "mnt")


def _snapshot(namespaces: list[Namespace]) -> Snapshot:
    return Snapshot("boot", "k", 0.0, 0.0, {ns.inode: ns for ns in namespaces}, {})


@st.composite
def hosts(draw: Any) -> list[Namespace]:
    """An initial user namespace (inode 1) and up to 30 more, each owned by an earlier user
    namespace; pid and user namespaces with a parent of their type."""
    made = [Namespace("user", 1, 1, 4, None, None, (), (), name="user-top")]
    for inode in range(2, draw(st.integers(2, 32))):
        nstype = draw(st.sampled_from(TYPES))
        users = [ns.inode for ns in made if ns.type == "user"]
        owner = draw(st.sampled_from([*users, None]))  # (None: an owner the scan could not see)
        same = [ns.inode for ns in made if ns.type == nstype]
        parent = draw(st.sampled_from(same)) if nstype in ("pid", "user") and same else None
        if nstype == "user":
            parent = owner
        name = draw(st.sampled_from([None, f"{nstype}-{inode}", "shared"]))  # (names may clash)
        made.append(Namespace(nstype, inode, inode, 4, owner, parent, (), (), name=name))
    return made


def _all_directories(snap: Snapshot) -> dict[Key, int]:
    """Every directory of the view, numbered (what the kernel may have cached)."""
    keys: list[Key] = [(Kind.TREE,), *((Kind.TYPE, t) for t in TYPES)]
    for ns in snap:
        keys.append((Kind.NS, ns.key))
        if ns.type == "user":
            keys.append((Kind.TDIR, ns.key))
    return {key: number for number, key in enumerate(keys, start=2)}


def _compare_every_directory(old: Snapshot, new: Snapshot, ino: dict[Key, int]) -> tuple[set[int], set[tuple[int, str]]]:
    """The brute-force answer: every directory's entries before and after."""
    d = diff(old, new)
    if not (d.appeared or d.vanished or d.changed):
        return set(), set()
    before, after = layout.View(old), layout.View(new)
    dirs: set[int] = {ino[(Kind.TYPE, ns.type)] for ns in (*d.appeared, *d.vanished)}
    names: list[tuple[int, str]] = [(ino[(Kind.TYPE, ns.type)], str(ns.inode)) for ns in d.vanished]
    for key, number in ino.items():
        if key[0] in (Kind.TREE, Kind.TDIR):
            invalidation._compare(number, invalidation._tree(before, key), invalidation._tree(after, key), dirs, names)
        elif key[0] is Kind.NS:
            invalidation._compare(number, invalidation._links(before, key), invalidation._links(after, key), dirs, names)
    return dirs, set(names)


@settings(max_examples=300, deadline=None)
@given(hosts(), st.data())
def test_stale_finds_what_comparing_every_directory_finds(namespaces: list[Namespace], data: Any) -> None:
    old = _snapshot(namespaces)
    kept = [ns for ns in namespaces[1:] if not data.draw(st.booleans(), label="vanishes")]
    renamed = [ns.named(data.draw(st.sampled_from([None, "shared", f"new-{ns.inode}"]), label="rename"), None)
               if data.draw(st.booleans(), label="renamed") else ns for ns in kept]
    users = [1, *(ns.inode for ns in renamed if ns.type == "user")]
    born = []
    for inode in data.draw(st.lists(st.sampled_from([*(ns.inode for ns in namespaces if ns not in kept), 100, 101, 102]),
                                    unique=True, max_size=4), label="born"):
        if inode == 1:
            continue  # (the initial user namespace stays)
        nstype = data.draw(st.sampled_from(TYPES), label="type")
        owner = data.draw(st.sampled_from([*users, None]), label="owner")
        born.append(Namespace(nstype, inode, 1000 + inode, 4, owner, owner if nstype == "user" else None, (), (),
                              name=data.draw(st.sampled_from([None, "shared"]), label="name")))
    new = _snapshot([namespaces[0], *renamed, *born])
    ino = _all_directories(old)
    dirs, names = invalidation.stale(old, new, diff(old, new), ino)
    assert (dirs, set(names)) == _compare_every_directory(old, new, ino)
    assert len(names) == len(set(names))


def test_by_directories_are_dropped_at_every_change() -> None:
    user = Namespace("user", 1, 1, 4, None, None, (), ())
    old = _snapshot([user])
    new = _snapshot([user, Namespace("net", 5, 5, 4, 1, None, (), ())])
    dirs, _ = invalidation.stale(old, new, diff(old, new), _all_directories(old), [40, 41])
    assert {40, 41} <= dirs
    assert invalidation.stale(old, old, diff(old, old), _all_directories(old), [40, 41]) == (set(), [])
