"""The filesystem's nodes: what each FUSE inode is (a Kind and a key), its attributes, its entries,
its link text, for one reader's layout.View. No FUSE requests here (fs.operations makes those).

Keys are tuples whose first item is the Kind:

    (ROOT,)  (TREE,)  (BY,)               the top directory, tree/, by/
    (TYPE, t)                             <type>/
    (NS, nskey)                           <type>/<inode>/
    (FILE, nskey, name)  (LINK, nskey, name)   a file, an owner/parent link in it
    (TDIR, nskey)  (TLINK, nskey)         a user namespace's directory in tree/, a link there
    (BYLINK, nskey)                       by/SELECTOR for a namespace: a link to its directory
    (BYDIR, cpath)  (BYNSLINK, cpath, t)  by/SELECTOR for a container: a directory of links, one
                                          per type, to the container's own namespaces

nskey is Namespace.key (("id", ID) or (TYPE, INODE)): an inode number stays the same node for the
life of the mount only as long as it is the same namespace.
"""

from __future__ import annotations

import enum
import errno
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from namespacefs.fs import layout, selectors
from namespacefs.fs.wire import ROOT_INODE, Attributes, FUSEError
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.syntax import is_number

if TYPE_CHECKING:
    from namespacefs.containers import ContainerTree


class Kind(enum.Enum):
    ROOT = "root"
    TREE = "tree"
    BY = "by"
    TYPE = "type"
    NS = "ns"
    FILE = "file"
    LINK = "link"
    TDIR = "tdir"
    TLINK = "tlink"
    BYLINK = "bylink"
    BYDIR = "bydir"
    BYNSLINK = "bynslink"


Key = tuple[Any, ...]
ROOT: Key = (Kind.ROOT,)
TREE: Key = (Kind.TREE,)
BY: Key = (Kind.BY,)
#: How long the kernel keeps names and attributes (seconds). Only the mounting user can read
#: (no --allow-other): everyone sees everything, so the kernel keeps them long, and the operations
#: invalidate what a rescan changed (fs.operations); the timeout only bounds what a change that
#: invalidates nothing (an attribute) leaves stale. by/ names resolve through names and containers
#: that change without a namespace coming or going: kept TIMEOUT only.
CACHED_TIMEOUT = 60.0
#: With --allow-other the view depends on the reader, so the kernel must ask every time (0),
#: except for what looks the same to every reader (SHARED).
TIMEOUT = 1.0
SHARED = frozenset({Kind.ROOT, Kind.TYPE, Kind.TREE, Kind.FILE, Kind.BY})
#: by/ and its directories (listings made from names and containers)
BY_DIRECTORIES = frozenset({Kind.BY, Kind.BYDIR})
DIRECTORIES = frozenset({Kind.ROOT, Kind.TREE, Kind.BY, Kind.TYPE, Kind.NS, Kind.TDIR, Kind.BYDIR})
#: Kinds whose node is a namespace of the snapshot (found again by its key).
OF_A_NAMESPACE = frozenset({Kind.NS, Kind.FILE, Kind.LINK, Kind.TDIR, Kind.TLINK, Kind.BYLINK})
SYMLINKS = frozenset({Kind.LINK, Kind.TLINK, Kind.BYLINK, Kind.BYNSLINK})
BY_KINDS = frozenset({Kind.BY, Kind.BYLINK, Kind.BYDIR, Kind.BYNSLINK})


def NoEntry() -> FUSEError:
    return FUSEError(errno.ENOENT)


class Node:
    """What one FUSE inode is right now, for one reader (ns: its namespace, if it is one's)."""

    __slots__ = ("key", "ns")

    def __init__(self, key: Key, ns: Namespace | None = None) -> None:
        self.key, self.ns = key, ns

    @property
    def kind(self) -> Kind:
        kind: Kind = self.key[0]
        return kind


def tree_key(ns: Namespace) -> Key:
    return (Kind.TDIR if ns.type == "user" else Kind.TLINK, ns.key)


def owner_uid(snapshot: Snapshot, ns: Namespace) -> int:
    """The uid that owns ns's user namespace (for a user namespace, the one that created it)."""
    user = ns if ns.type == "user" else (snapshot.get(ns.owner) if ns.owner is not None else None)
    return user.owner_uid if user is not None and user.owner_uid is not None else 0


def find(snapshot: Snapshot, nskey: tuple[Any, int]) -> Namespace | None:
    if nskey[0] == "id":
        return snapshot.by_id(nskey[1])
    ns = snapshot.get(nskey[1])
    return ns if ns is not None and ns.type == nskey[0] else None


class Nodes:
    """Inode numbers (one per key for the life of the mount) and what each is for a view."""

    cached: bool  # the kernel caches (no --allow-other)
    started: int

    def __init__(self, tree_of: Callable[[Snapshot], ContainerTree | None]) -> None:
        self._ino: dict[Key, int] = {ROOT: ROOT_INODE}
        self._key: dict[int, Key] = {ROOT_INODE: ROOT}
        self._by_dirs: list[int] = []  # by/ and its directories: their listings change with any name
        self._tree_of = tree_of  # the container tree of a snapshot, if it is known yet (by/)
        self._by: tuple[layout.View, selectors.ByDir] | None = None

    def by(self, view: layout.View) -> selectors.ByDir:
        """by/ for this view (one at a time: a find walks with one reader)."""
        if self._by is None or self._by[0] is not view or self._by[1].tree is None:
            self._by = (view, selectors.ByDir(view, self._tree_of(view.snapshot)))
        return self._by[1]

    def ino(self, key: Key) -> int:
        ino = self._ino.get(key)
        if ino is None:
            ino = self._ino[key] = len(self._ino) + 1
            self._key[ino] = key
            if key[0] in BY_DIRECTORIES:
                self._by_dirs.append(ino)
        return ino

    def node(self, view: layout.View, ino: int) -> Node:
        key = self._key.get(ino)
        if key is None:
            raise NoEntry()
        kind = key[0]
        if kind in (Kind.BYDIR, Kind.BYNSLINK):
            if self.by(view).container_links(key[1]) is None:
                raise NoEntry()
            return Node(key)
        if kind not in OF_A_NAMESPACE:
            return Node(key)
        ns = find(view.snapshot, key[1])
        if ns is None:
            raise NoEntry()
        if not view.can_see(ns):  # (reached through a handle someone else passed: the same answer for any name)
            raise FUSEError(errno.EPERM)
        if kind is Kind.LINK and view.link_target(ns, key[2]) is None:
            raise NoEntry()
        if kind in (Kind.TDIR, Kind.TLINK) and view.tree_chain(ns) is None:
            raise NoEntry()
        return Node(key, ns)

    def timeout(self, kind: Kind) -> float:
        if self.cached:
            return TIMEOUT if kind in BY_KINDS else CACHED_TIMEOUT
        # with a per-reader view, only what is the same for every reader may be cached: the top
        # directories and the files inside a namespace's directory (reached only through that
        # directory, which the kernel asks about every time)
        return TIMEOUT if kind in SHARED else 0.0

    def attrs(self, view: layout.View, node: Node) -> Attributes:
        a = Attributes()
        kind, ns = node.kind, node.ns
        a.st_ino = self.ino(node.key)
        a.entry_timeout = a.attr_timeout = self.timeout(kind)
        if kind in DIRECTORIES:
            a.st_mode = stat.S_IFDIR | (0o755 if kind is Kind.TDIR else 0o555)
            a.st_nlink = 2
        elif kind is Kind.FILE:
            a.st_mode = stat.S_IFREG | 0o444
        else:
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_size = len(self.link_text(view, node))
        a.st_uid = owner_uid(view.snapshot, ns) if ns is not None else 0
        # a directory's mtime stays put: the kernel drops its cached listing when it changes
        stamp = int(view.snapshot.taken_at * 1e9) if ns is not None and kind not in DIRECTORIES else self.started
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = stamp
        return a

    def link_text(self, view: layout.View, node: Node) -> str:
        kind, ns = node.kind, node.ns
        if kind is Kind.BYNSLINK:
            links = self.by(view).container_links(node.key[1]) or {}
            target = links.get(node.key[2])
            if target is None:
                raise NoEntry()
            return f"../../{target.type}/{target.inode}"
        assert ns is not None
        if kind is Kind.BYLINK:
            return f"../{ns.type}/{ns.inode}"
        if kind is Kind.LINK:
            target = view.link_target(ns, node.key[2])
            if target is None:
                raise NoEntry()
            return f"../../{target.type}/{target.inode}"
        chain = view.tree_chain(ns)
        if chain is None:
            raise NoEntry()
        return "../" * (len(chain) + 1) + f"{ns.type}/{ns.inode}"

    def children(self, view: layout.View, node: Node) -> list[tuple[str, Key]]:
        kind, ns = node.kind, node.ns
        if kind is Kind.ROOT:
            return [(t, (Kind.TYPE, t)) for t in NS_TYPES] + [(layout.TREE, TREE)]  # (by/ is not listed)
        if kind is Kind.TYPE:
            return [(str(n.inode), (Kind.NS, n.key)) for n in view.of_type(node.key[1])]
        if kind is Kind.NS and ns is not None:
            return [(name, (Kind.LINK if name in layout.LINKS else Kind.FILE, ns.key, name))
                    for name in view.entries_of(ns)]
        if kind in (Kind.TREE, Kind.TDIR):
            entries = view.tree_entries(ns.inode if ns is not None else None)
            return [(name, tree_key(n)) for name, n in entries.items()]
        if kind is Kind.BY:
            return [(name, key) for name in self.by(view).listed() if (key := self.by(view).key_of(name)) is not None]
        if kind is Kind.BYDIR:
            links = self.by(view).container_links(node.key[1]) or {}
            return [(t, (Kind.BYNSLINK, node.key[1], t)) for t in links]
        raise FUSEError(errno.ENOTDIR)

    def child(self, view: layout.View, node: Node, name: str) -> Node | None:
        """One entry of a directory, without listing it all."""
        kind, ns = node.kind, node.ns
        if kind is Kind.TYPE:
            if not is_number(name):
                return None
            found = view.snapshot.get(int(name))
            if found is None or found.type != node.key[1] or not view.can_see(found):
                return None
            return Node((Kind.NS, found.key), found)
        if kind in (Kind.TREE, Kind.TDIR):
            found = view.tree_entries(ns.inode if ns is not None else None).get(name)
            return None if found is None else Node(tree_key(found), found)
        if kind is Kind.ROOT and name == selectors.BY:
            return Node(BY)
        if kind is Kind.BY:
            key = self.by(view).key_of(name)
            if key is None:
                return None
            return Node(key, find(view.snapshot, key[1]) if key[0] is Kind.BYLINK else None)
        for entry, key in self.children(view, node):
            if entry == name:
                return Node(key, ns)
        return None
