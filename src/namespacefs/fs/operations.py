"""The FUSE operations: a thin translation of layout.View into inodes, attributes,
directory listings and file contents, for the reader each request comes from."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

import trio

from namespacefs import access, kernel
from namespacefs.fs import invalidation, layout
from namespacefs.fs.changes import RENAME_BURST, RENAME_WINDOW, Changes
from namespacefs.fs.guard import guarded
from namespacefs.fs.nodes import BY_KINDS, SYMLINKS, Kind, Node, Nodes, NoEntry
from namespacefs.fs.session import Session
from namespacefs.fs.source import Source
from namespacefs.fs.wire import Attributes, Context, FileInfo, FUSEError, Listing, Statfs
from namespacefs.handles import Gone, still_members
from namespacefs.model import Namespace, Snapshot, diff
from namespacefs.syntax import is_number

log = logging.getLogger("namespacefs.fs")

#: How long the user namespace of a requesting pid is remembered (a find makes thousands of
#: requests; a pid is not reused that fast, and a process that moves to a child user namespace
#: could see the parent's view a moment ago anyway).
READER_TTL = 0.25
#: How long the tree/ name of a namespace that vanished is remembered (a lookup of it then fails
#: at once instead of waiting for a rescan).
GONE_MEMORY = 30.0
#: Files listing processes: only those still in the namespace when the file is opened are listed.
MEMBER_FILES = frozenset({"tasks", "nspids", "init"})
#: Files with a namespace's own state, shown to a reader only as the kernel would show it (access.py).
GUARDED_FILES = frozenset({"uname", "hostname", "domainname", "interfaces", "mountinfo", "root", "offsets", "objects"})


class NamespaceFS(Nodes, Changes):
    """Everything is read-only except rename (mv) inside tree/, which renames a namespace."""

    def __init__(self, source: Source, filtered: bool, db: str | None = None,
                 reader_userns: Callable[[int], tuple[int, int | None] | None] | None = None) -> None:
        Nodes.__init__(self, source.tree_if_known)
        self.source = source
        self.filtered = filtered  # allow_other: each reader sees its own subtree
        self.db = db
        self.cached = not filtered
        self.session: Session | None = None  # (set once mounted: the kernel's caches are told through it)
        self._reader_userns = reader_userns or userns_of_pid
        self._views: dict[tuple[int | None, int | None, int | None], layout.View] = {}
        self._views_of: Snapshot | None = None
        self._readers: dict[int, tuple[float, tuple[int, int | None]]] = {}
        self._open: dict[int, bytes] = {}
        self._dirs: dict[int, list[tuple[bytes, Attributes]]] = {}  # by fh (--allow-other)
        self._listing: dict[int, list[tuple[bytes, Attributes]]] = {}  # by inode, until listed to the end (cached)
        self._next_fh = 1
        self._gone: dict[str, float] = {}  # names of namespaces that vanished lately -> when
        self._gone_pruned = 0.0
        self._renames: dict[int, list[float]] = {}  # uid -> when its recent renames were made
        self.started = time.time_ns()
        self._by_used = False  # set once a request reaches by/ (from then on, trees are made)
        source.set_on_change(self._changed)

    # --- who is asking ---------------------------------------------------------------------

    async def view(self, ctx: Context | None) -> layout.View:
        """What the requesting reader may see: with --allow-other, its user namespace's tree,
        narrowed to what the kernel would show it (access.visible_namespaces)."""
        snapshot = self.source.current
        who: access.Reader | None = None
        if not self.filtered:
            user_ns: int | None = None
        elif ctx is None or not ctx.pid:
            user_ns = -1  # a request with no process behind it sees nothing
        else:
            user_ns, snapshot = await self.reader(ctx.pid)
            who = access.Reader(ctx.uid, ctx.gid, ctx.pid)
        if self._views_of is not snapshot:
            self._views, self._views_of = {}, snapshot
        key = (user_ns, who.uid, who.gid) if who is not None else (user_ns, None, None)
        view = self._views.get(key)
        if view is None:
            seen = await trio.to_thread.run_sync(access.visible_namespaces, who, snapshot) if who else None
            view = self._views[key] = layout.View.of(snapshot, user_ns, seen)
        if self._by_used:  # by/ resolves container names: the snapshot's container tree, once
            await self.source.tree(snapshot)
        return view

    async def reader(self, pid: int) -> tuple[int, Snapshot]:
        """The inode of the reader's user namespace, and a snapshot that knows it (inode numbers are
        reused, so it is matched by its 64-bit id where the kernel has one)."""
        now = time.monotonic()
        cached = self._readers.get(pid)
        if cached is not None and cached[0] > now:
            identity: tuple[int, int | None] | None = cached[1]
        else:
            identity = self._reader_userns(pid)
            if len(self._readers) > 4096:
                self._readers.clear()
            if identity is not None:
                self._readers[pid] = (now + READER_TTL, identity)
        if identity is None:
            raise NoEntry()  # the reader is gone
        inode, ident = identity
        snapshot = self.source.current
        for attempt in range(2):
            ns = snapshot.by_id(ident) if ident is not None else snapshot.get(inode)
            if ns is not None and ns.type == "user" and ns.inode == inode:
                return inode, snapshot
            if attempt == 0:  # a user namespace newer than the snapshot
                snapshot = await self.source.refresh(newer_than=time.time())
        return -1, snapshot  # unknown even now: it sees nothing

    # --- FUSE operations ---------------------------------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: Context) -> Attributes:
        text = os.fsdecode(name)
        view = await self.view(ctx)
        parent = self.node(view, parent_inode)
        if parent.kind in BY_KINDS and not self._by_used:
            self._by_used = True
            view = await self.view(ctx)
        found = self.child(view, parent, text)
        if found is not None and found.ns is not None and parent.kind is Kind.TYPE and not alive(found.ns):
            found = None  # it died, and the kernel may already have given its inode number to a new one
        if found is None and self._may_be_new(parent, text):
            # it has just appeared: look again in a snapshot taken from now on
            await self.source.refresh(newer_than=time.time())
            view = await self.view(ctx)
            parent = self.node(view, parent_inode)
            found = self.child(view, parent, text)
        if found is None:
            raise NoEntry()
        return self.attrs(view, found)

    @guarded
    async def getattr(self, inode: int, ctx: Context) -> Attributes:
        view = await self.view(ctx)
        return self.attrs(view, self.node(view, inode))

    @guarded
    async def readlink(self, inode: int, ctx: Context) -> bytes:
        view = await self.view(ctx)
        node = self.node(view, inode)
        if node.kind not in SYMLINKS:
            raise FUSEError(errno.EINVAL)
        return os.fsencode(self.link_text(view, node))

    @guarded
    async def opendir(self, inode: int, ctx: Context) -> int:
        """(--allow-other only: in cached mode the kernel opens directories without asking.)"""
        fh = self._fh()
        self._dirs[fh] = await self._entries(inode, ctx)
        return fh

    async def _entries(self, inode: int, ctx: Context) -> list[tuple[bytes, Attributes]]:
        view = await self.view(ctx)
        node = self.node(view, inode)
        if node.kind in BY_KINDS and not self._by_used:
            self._by_used = True
            view = await self.view(ctx)
        entries = []
        for name, key in self.children(view, node):
            try:
                child = self.node(view, self.ino(key))
            except FUSEError:
                continue
            entries.append((os.fsencode(name), self.attrs(view, child)))
        return entries

    @guarded
    async def readdir(self, inode: int, fh: int, offset: int, listing: Listing, ctx: Context) -> None:
        """The entries from offset on (each offset the index of the next one). Without a handle
        (cached mode) the listing of an inode is made at offset 0 and kept until it is read to
        the end, so that the kernel caches one listing, not pieces of two."""
        if fh:
            entries = self._dirs.get(fh, [])
        elif offset == 0 or inode not in self._listing:
            entries = self._listing[inode] = await self._entries(inode, ctx)
        else:
            entries = self._listing[inode]
        if offset >= len(entries):
            self._listing.pop(inode, None)
        for i in range(offset, len(entries)):
            name, attrs = entries[i]
            if not listing.add(name, attrs, i + 1):
                return

    @guarded
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @guarded
    async def open(self, inode: int, flags: int, ctx: Context) -> FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise FUSEError(errno.EACCES)
        view = await self.view(ctx)
        node = self.node(view, inode)
        if node.kind is not Kind.FILE or node.ns is None:
            raise FUSEError(errno.EISDIR)
        reader = access.Reader(ctx.uid, ctx.gid, ctx.pid) if self.filtered else None
        if reader is not None:  # (the probe forks: not in the event loop)
            await trio.to_thread.run_sync(access.access_of, reader, view.snapshot)
        data = await self.content(view.snapshot, node.ns, node.key[2], reader)
        fh = self._fh()
        self._open[fh] = data
        return FileInfo(fh, direct_io=True)

    async def content(self, snapshot: Snapshot, ns: Namespace, name: str, reader: access.Reader | None = None) -> bytes:
        """A file's content as this reader may see it (access.may_see): only the processes and
        holders it could see in /proc itself, and the state of a namespace only if it could read it
        there (mountinfo, offsets) or by entering it (hostname, interfaces, ipc objects, cgroup root)."""
        if name in MEMBER_FILES:
            ns = ns._replace(processes=still_members(ns))
        if name in MEMBER_FILES or name == "holders":
            ns = ns._replace(processes=tuple(access.visible_pids(reader, ns.processes, snapshot)),
                             holders=tuple(h for h in ns.holders
                                           if h.pid is None or access.may_see(reader, h.pid, snapshot)))
        elif name in GUARDED_FILES and not access.may_see(reader, ns, snapshot, enter=ns.type in access.ENTERED):
            raise FUSEError(errno.EACCES)
        text = layout.simple_content(snapshot, ns, name)
        if text is None:
            try:
                text = await self.source.detail(ns, name)
            except Gone as e:
                log.info("%s/%s/%s: %s", ns.type, ns.inode, name, e)
                raise FUSEError(errno.ENODATA) from None
        return text.encode(errors="surrogateescape")

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._open.get(fh, b"")[off:off + size]

    @guarded
    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    @guarded
    async def access(self, inode: int, mode: int, ctx: Context) -> bool:
        view = await self.view(ctx)
        node = self.node(view, inode)
        return not (mode & os.W_OK) or node.kind is Kind.TDIR

    @guarded
    async def statfs(self, ctx: Context) -> Statfs:
        return Statfs(files=len(self.source.current))

    # --- keeping the kernel's caches honest -----------------------------------------------

    def _may_be_new(self, parent: Node, name: str) -> bool:
        """Whether a name missing from the snapshot may be a namespace that appeared since it was
        taken (then the lookup waits for a rescan): any inode number in <type>/ (the kernel reuses
        inode numbers at once, so one that just died may be a new namespace already); in tree/,
        unless it is the name of a namespace that vanished lately."""
        kind = parent.kind
        if kind is Kind.TYPE:
            return is_number(name)
        if kind is Kind.BY:
            return True  # any selector may name what appeared since (a container, an ip netns name)
        if kind not in (Kind.TREE, Kind.TDIR):
            return False
        now = time.monotonic()
        if self._gone and self._gone_pruned < now - 1.0:
            self._gone = {k: t for k, t in self._gone.items() if t > now - GONE_MEMORY}
            self._gone_pruned = now
        return name not in self._gone

    def _changed(self, old: Snapshot, new: Snapshot) -> None:
        """After a rescan: remember what vanished, and (cached mode) tell the kernel which of its
        cached listings and names the rescan changed (fs.invalidation)."""
        d = diff(old, new)
        now = time.monotonic()
        for ns in d.vanished:
            self._gone[layout.display_name(ns)] = now
        if self.filtered or self.session is None:
            return  # (with --allow-other the kernel caches no listing, and names for 1 s at most)
        dirs, names = invalidation.stale(old, new, d, self._ino, self._by_dirs)
        for parent, name in names:
            self.session.invalidate_entry(parent, os.fsencode(name))
        for number in dirs:
            self._listing.pop(number, None)
            self.session.invalidate_inode(number)

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh


def userns_of_pid(pid: int) -> tuple[int, int | None] | None:
    """The user namespace (inode, id) of the process or thread making a request, None if it is gone.
    Not discovery: it is the identity of the caller, which FUSE gives as a pid only."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_ino, kernel.ns_id(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def alive(ns: Namespace) -> bool:
    """False if the namespace is certainly gone (its 64-bit id no longer opens); True otherwise."""
    return kernel.ns_alive(ns.id, ns.type, ns.inode) is not False


__all__ = ["GONE_MEMORY", "READER_TTL", "RENAME_BURST", "RENAME_WINDOW", "NamespaceFS", "alive", "userns_of_pid"]
