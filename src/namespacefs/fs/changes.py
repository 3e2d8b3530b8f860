"""The filesystem's one change, and its refusals: rename (mv) inside tree/ renames a namespace
through the naming core; every other change is refused (namespaces come and go with the kernel)."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyfuse3
import trio

from namespacefs import access
from namespacefs.fs import layout
from namespacefs.fs.guard import guarded
from namespacefs.fs.nodes import Kind, Node, NoEntry

log = logging.getLogger("namespacefs.fs")

#: Renames through `mv` by a user other than root: at most this many in this many seconds.
RENAME_BURST = 10
RENAME_WINDOW = 10.0


class Changes:
    """rename() and the refused changes, for NamespaceFS (which provides view, child, source, db)."""

    filtered: bool
    db: str | None
    source: Any
    _renames: dict[int, list[float]]
    view: Callable[[pyfuse3.RequestContext | None], Awaitable[layout.View]]
    node: Callable[[layout.View, int], Node]
    child: Callable[[layout.View, Node, str], Node | None]

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        view = await self.view(ctx)
        parent = self.node(view, parent_inode_old)
        if parent.kind not in (Kind.TREE, Kind.TDIR):
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
        if not access.privileged_over(view.snapshot, user_ns, ctx.uid, ns.owner):
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
        except names.NamingError as e:
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

