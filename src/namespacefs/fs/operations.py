"""The FUSE operations (pyfuse3): a thin translation of layout.View into inodes, attributes,
directory listings and file contents, for the reader each request comes from."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from namespacefs import access, kernel
from namespacefs.fs import layout
from namespacefs.fs.source import Source
from namespacefs.handles import Gone, still_members
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot, diff
from namespacefs.syntax import is_number

log = logging.getLogger("namespacefs.fs")

Key = tuple[Any, ...]
ROOT: Key = ("root",)
TREE: Key = ("tree",)
#: Cache timeouts (seconds) when only the mounting user can read (everyone sees everything).
#: With allow_other the view depends on the reader, so the kernel must ask every time (0).
TIMEOUT = 1.0
#: Entries that look the same to every reader (cached by the kernel even with --allow-other).
SHARED = frozenset({"root", "type", "tree", "file"})
#: How long the user namespace of a requesting pid is remembered (a find makes thousands of
#: requests; a pid is not reused that fast, and a process that moves to a child user namespace
#: could see the parent's view a moment ago anyway).
READER_TTL = 0.25
#: How long the tree/ name of a namespace that vanished is remembered (a lookup of it then fails
#: at once instead of waiting for a rescan).
GONE_MEMORY = 30.0
#: Files listing processes: only those still in the namespace when the file is opened are listed.
MEMBER_FILES = frozenset({"tasks", "nspids", "init"})
#: Renames through `mv` by a user other than root: at most this many in this many seconds.
RENAME_BURST = 10
RENAME_WINDOW = 10.0
#: Files with a namespace's own state, shown to a reader only as the kernel would show it (access.py).
GUARDED_FILES = frozenset({"uname", "hostname", "domainname", "interfaces", "mountinfo", "root", "offsets", "objects"})


def NoEntry() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.ENOENT)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def guarded(op: F) -> F:
    """An unexpected error in one request fails that request (EIO), never the whole filesystem."""
    @functools.wraps(op)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await op(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s failed", op.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]


@dataclass
class Node:
    """What one FUSE inode is right now, for one reader."""

    key: Key
    ns: Namespace | None = None


class NamespaceFS(pyfuse3.Operations):
    """Everything is read-only except rename (mv) inside tree/, which renames a namespace."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: Source, filtered: bool, db: str | None = None,
                 reader_userns: Callable[[int], tuple[int, int | None] | None] | None = None) -> None:
        super().__init__()
        self.source = source
        self.filtered = filtered  # allow_other: each reader sees its own subtree
        self.db = db
        self.timeout = 0.0 if filtered else TIMEOUT
        self._reader_userns = reader_userns or userns_of_pid
        self._ino: dict[Key, int] = {ROOT: pyfuse3.ROOT_INODE}
        self._key: dict[int, Key] = {pyfuse3.ROOT_INODE: ROOT}
        self._views: dict[tuple[int | None, int | None, int | None], layout.View] = {}
        self._views_of: Snapshot | None = None
        self._readers: dict[int, tuple[float, tuple[int, int | None]]] = {}
        self._open: dict[int, bytes] = {}
        self._dirs: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._next_fh = 1
        self._gone: dict[str, float] = {}  # names of namespaces that vanished lately -> when
        self._gone_pruned = 0.0
        self._renames: dict[int, list[float]] = {}  # uid -> when its recent renames were made
        self.started = time.time_ns()
        source.set_on_change(self._changed)

    # --- inode numbers: one per key for the life of the mount ------------------------------

    def ino(self, key: Key) -> int:
        ino = self._ino.get(key)
        if ino is None:
            ino = self._ino[key] = len(self._ino) + 1
            self._key[ino] = key
        return ino

    # --- who is asking ---------------------------------------------------------------------

    async def view(self, ctx: pyfuse3.RequestContext | None) -> layout.View:
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

    # --- keys -> what they are now -----------------------------------------------------------

    @staticmethod
    def _find(snapshot: Snapshot, nskey: tuple[Any, int]) -> Namespace | None:
        if nskey[0] == "id":
            return snapshot.by_id(nskey[1])
        ns = snapshot.get(nskey[1])
        return ns if ns is not None and ns.type == nskey[0] else None

    def node(self, view: layout.View, ino: int) -> Node:
        key = self._key.get(ino)
        if key is None:
            raise NoEntry()
        if key[0] in ("root", "tree", "type"):
            return Node(key)
        ns = self._find(view.snapshot, key[1])
        if ns is None:
            raise NoEntry()
        if not view.can_see(ns):  # (reached through a handle someone else passed: the same answer for any name)
            raise pyfuse3.FUSEError(errno.EPERM)
        if key[0] == "link" and view.link_target(ns, key[2]) is None:
            raise NoEntry()
        if key[0] in ("tdir", "tlink") and view.tree_chain(ns) is None:
            raise NoEntry()
        return Node(key, ns)

    def attrs(self, view: layout.View, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        kind, ns = node.key[0], node.ns
        a.st_ino = self.ino(node.key)
        # with a per-reader view, only what is the same for every reader may be cached: the top
        # directories and the files inside a namespace's directory (reached only through that
        # directory, which the kernel asks about every time)
        a.entry_timeout = a.attr_timeout = TIMEOUT if kind in SHARED else self.timeout
        a.st_nlink = 1
        a.st_size = 0
        if kind in ("root", "tree", "type", "ns", "tdir"):
            a.st_mode = stat.S_IFDIR | (0o755 if kind == "tdir" else 0o555)
            a.st_nlink = 2
        elif kind == "file":
            a.st_mode = stat.S_IFREG | 0o444
        else:
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_size = len(self.link_text(view, node))
        uid = owner_uid(view.snapshot, ns) if ns is not None else 0
        a.st_uid = uid
        a.st_gid = 0
        stamp = int(view.snapshot.taken_at * 1e9) if ns is not None else self.started
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = stamp
        a.st_blksize = 4096
        return a

    def link_text(self, view: layout.View, node: Node) -> str:
        ns = node.ns
        assert ns is not None
        if node.key[0] == "link":
            target = view.link_target(ns, node.key[2])
            if target is None:
                raise NoEntry()
            return f"../../{target.type}/{target.inode}"
        chain = view.tree_chain(ns)
        if chain is None:
            raise NoEntry()
        return "../" * (len(chain) + 1) + f"{ns.type}/{ns.inode}"

    def children(self, view: layout.View, node: Node) -> list[tuple[str, Key]]:
        kind, ns = node.key[0], node.ns
        if kind == "root":
            return [(t, ("type", t)) for t in NS_TYPES] + [(layout.TREE, TREE)]
        if kind == "type":
            return [(str(n.inode), ("ns", n.key)) for n in view.of_type(node.key[1])]
        if kind == "ns" and ns is not None:
            return [(name, ("link" if name in layout.LINKS else "file", ns.key, name)) for name in view.entries_of(ns)]
        if kind in ("tree", "tdir"):
            entries = view.tree_entries(ns.inode if ns is not None else None)
            return [(name, ("tdir" if n.type == "user" else "tlink", n.key)) for name, n in entries.items()]
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def child(self, view: layout.View, node: Node, name: str) -> Node | None:
        """One entry of a directory, without listing it all."""
        kind, ns = node.key[0], node.ns
        if kind == "type":
            if not is_number(name):
                return None
            found = view.snapshot.get(int(name))
            if found is None or found.type != node.key[1] or not view.can_see(found):
                return None
            return Node(("ns", found.key), found)
        if kind in ("tree", "tdir"):
            found = view.tree_entries(ns.inode if ns is not None else None).get(name)
            if found is None:
                return None
            return Node(("tdir" if found.type == "user" else "tlink", found.key), found)
        for entry, key in self.children(view, node):
            if entry == name:
                return Node(key, ns)
        return None

    # --- FUSE operations ---------------------------------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        view = await self.view(ctx)
        parent = self.node(view, parent_inode)
        found = self.child(view, parent, text)
        if found is not None and found.ns is not None and parent.key[0] == "type" and not alive(found.ns):
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
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        view = await self.view(ctx)
        return self.attrs(view, self.node(view, inode))

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        view = await self.view(ctx)
        node = self.node(view, inode)
        if node.key[0] not in ("link", "tlink"):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(self.link_text(view, node))

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        view = await self.view(ctx)
        node = self.node(view, inode)
        entries = []
        for name, key in self.children(view, node):
            try:
                child = self.node(view, self.ino(key))
            except pyfuse3.FUSEError:
                continue
            entries.append((os.fsencode(name), self.attrs(view, child)))
        fh = self._fh()
        self._dirs[fh] = entries
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, attrs = entries[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                return

    @guarded
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EACCES)
        view = await self.view(ctx)
        node = self.node(view, inode)
        if node.key[0] != "file" or node.ns is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        reader = access.Reader(ctx.uid, ctx.gid, ctx.pid) if self.filtered else None
        if reader is not None:  # (the probe forks: not in the event loop)
            await trio.to_thread.run_sync(access.access_of, reader, view.snapshot)
        data = await self.content(view.snapshot, node.ns, node.key[2], reader)
        fh = self._fh()
        self._open[fh] = data
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

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
            raise pyfuse3.FUSEError(errno.EACCES)
        text = layout.simple_content(snapshot, ns, name)
        if text is None:
            try:
                text = await self.source.detail(ns, name)
            except Gone as e:
                log.info("%s/%s/%s: %s", ns.type, ns.inode, name, e)
                raise pyfuse3.FUSEError(errno.ENODATA) from None
        return text.encode(errors="surrogateescape")

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._open.get(fh, b"")[off:off + size]

    @guarded
    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    @guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        view = await self.view(ctx)
        node = self.node(view, inode)
        return not (mode & os.W_OK) or node.key[0] == "tdir"

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(self.source.current)
        s.f_namemax = 255
        return s

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        view = await self.view(ctx)
        parent = self.node(view, parent_inode_old)
        if parent.key[0] not in ("tree", "tdir"):
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent_inode_new != parent_inode_old:
            raise pyfuse3.FUSEError(errno.EPERM)  # a namespace cannot change owner
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        node = self.child(view, parent, old)
        if node is None or node.ns is None:
            raise NoEntry()
        ns = node.ns
        if old == new:
            return
        clash = self.child(view, parent, new)
        if clash is not None and clash.ns is not None and clash.ns.inode != ns.inode:
            raise pyfuse3.FUSEError(errno.EEXIST)
        user_ns = view.root if self.filtered else None
        if not privileged_over(view.snapshot, user_ns, ctx.uid, ns.owner):
            raise pyfuse3.FUSEError(errno.EPERM)
        if ctx.uid != 0 and not self._rename_allowed(ctx.uid):
            log.warning("renames by uid %d come too fast (%d in %.0f s); refused for now", ctx.uid, RENAME_BURST,
                        RENAME_WINDOW)
            raise pyfuse3.FUSEError(errno.EAGAIN)
        try:
            from namespacefs import names  # the naming core (optional until it lands)
        except ImportError:
            log.warning("rename of %s: this build has no naming core", old)
            raise pyfuse3.FUSEError(errno.ENOTSUP) from None
        try:
            await trio.to_thread.run_sync(lambda: names.rename(view.snapshot, ns, new, db=self.db))
        except names.NameError as e:
            log.warning("rename of %s to %s refused: %s", old, new, e)
            raise pyfuse3.FUSEError(getattr(e, "errno", None) or errno.EINVAL) from None
        await self.source.refresh(newer_than=time.time())

    def _rename_allowed(self, uid: int) -> bool:
        """At most RENAME_BURST renames per RENAME_WINDOW seconds for each unprivileged uid (each is a
        write to root's names database; its history is bounded per user namespace as well)."""
        now = time.monotonic()
        recent = [t for t in self._renames.get(uid, []) if t > now - RENAME_WINDOW]
        if len(recent) >= RENAME_BURST:
            self._renames[uid] = recent
            return False
        self._renames[uid] = [*recent, now]
        if len(self._renames) > 4096:
            self._renames = {u: ts for u, ts in self._renames.items() if ts and ts[-1] > now - RENAME_WINDOW}
        return True

    # Namespaces are made and ended by the kernel, not by this filesystem: every other change is
    # refused with EPERM ("Operation not permitted"), which says more to `rm` or `mkdir` users
    # than pyfuse3's default ENOSYS ("Function not implemented").

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # inode numbers live as long as the mount (a few bytes each)

    # --- keeping the kernel's caches honest -----------------------------------------------

    def _may_be_new(self, parent: Node, name: str) -> bool:
        """Whether a name missing from the snapshot may be a namespace that appeared since it was
        taken (then the lookup waits for a rescan): any inode number in <type>/ (the kernel reuses
        inode numbers at once, so one that just died may be a new namespace already); in tree/,
        unless it is the name of a namespace that vanished lately."""
        kind = parent.key[0]
        if kind == "type":
            return is_number(name)
        if kind not in ("tree", "tdir"):
            return False
        now = time.monotonic()
        if self._gone and self._gone_pruned < now - 1.0:
            self._gone = {k: t for k, t in self._gone.items() if t > now - GONE_MEMORY}
            self._gone_pruned = now
        return name not in self._gone

    def _changed(self, old: Snapshot, new: Snapshot) -> None:
        """After a rescan: remember what vanished, and drop the kernel's cached entries for it
        (cached mode only)."""
        d = diff(old, new)
        if not d.vanished:
            return
        now = time.monotonic()
        for ns in d.vanished:
            self._gone[layout.display_name(ns)] = now
        if self.filtered:
            return  # nothing is cached by the kernel
        old_view = layout.View(old)
        for ns in d.vanished:
            type_dir = self._ino.get(("type", ns.type))
            if type_dir is not None and ("ns", ns.key) in self._ino:
                self._invalidate(type_dir, str(ns.inode))
            tree_key = ("tdir" if ns.type == "user" else "tlink", ns.key)
            path = old_view.tree_path(ns) if tree_key in self._ino else None
            if path:
                head, _, name = path.rpartition("/")
                holder = old.get(ns.owner) if ns.owner is not None and head != layout.TREE else None
                parent_key = TREE if holder is None else ("tdir", holder.key)
                if parent_key in self._ino:
                    self._invalidate(self._ino[parent_key], name)

    @staticmethod
    def _invalidate(parent: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        except Exception:  # the kernel may already have dropped it
            log.debug("invalidate %s/%s failed", parent, name, exc_info=True)

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


def owner_uid(snapshot: Snapshot, ns: Namespace) -> int:
    """The uid that owns ns's user namespace (for a user namespace, the one that created it)."""
    user = ns if ns.type == "user" else (snapshot.get(ns.owner) if ns.owner is not None else None)
    return user.owner_uid if user is not None and user.owner_uid is not None else 0


def _uid_inside(user: Namespace, uid: int) -> int | None:
    """A host uid as seen inside a user namespace (None: unmapped)."""
    if user.owner is None:
        return uid
    for inside, outside, count in user.uid_map or ():
        if outside <= uid < outside + count:
            return uid - outside + inside
    return None


def privileged_over(snapshot: Snapshot, reader_userns: int | None, uid: int, target: int | None) -> bool:
    """Whether a reader (in reader_userns, None: the initial one, with host uid `uid`) may change
    something owned by user namespace `target` (None: the initial one). The kernel's rule, with
    'has capabilities' approximated by 'is root inside its own user namespace': the reader is root
    in target or in an ancestor of it, or owns the child of its namespace on the path to target."""
    initial = snapshot.initial_user
    if reader_userns is None and initial is not None:
        reader_userns = initial.inode
    if target is None:
        if initial is None:
            return uid == 0
        target = initial.inode
    ns = snapshot.get(target)
    while ns is not None:
        if ns.inode == reader_userns:
            return _uid_inside(ns, uid) == 0
        if ns.owner == reader_userns and ns.owner_uid == uid:
            return True
        ns = snapshot.get(ns.owner) if ns.owner is not None else None
    return False
