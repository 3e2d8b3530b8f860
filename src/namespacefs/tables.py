"""The tables of a live model's snapshots (inode -> namespace, pid -> process) as persistent maps
(immutables.Map, a hash array mapped trie in C). An update that changes a few entries of 5,000 makes
its table in O(changes x log N), sharing every other node with the table before it: a copy touched,
and later freed, every entry at every daemon update, in caches the update had not warmed, and cost
more than the change itself. A full scan's tables are dicts; the first update converts them once.

A Map's key views are not sets (no `-`, `==` compares identity): same_keys() and missing() say what
`a.keys() == b.keys()` and `a.keys() - b.keys()` say of dicts, for either kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from immutables import Map, MapMutation

K = TypeVar("K")
V = TypeVar("V")


def editable(table: Mapping[K, V]) -> MapMutation[K, V]:
    """A new version of `table` to change; its finish() is the new table (`table` stays as it was)."""
    return (table if isinstance(table, Map) else Map(table)).mutate()


def same_keys(a: Mapping[K, object], b: Mapping[K, object]) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys()
    return len(a) == len(b) and all(k in b for k in a)


def missing(a: Mapping[K, object], b: Mapping[K, object]) -> set[K]:
    """The keys of `a` that `b` has not."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a.keys() - b.keys())
    return {k for k in a if k not in b}
