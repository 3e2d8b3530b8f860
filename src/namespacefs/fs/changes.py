"""The filesystem's one change, and its refusals: rename (mv) inside tree/ renames a namespace
through the naming core; every other change is refused (namespaces come and go with the kernel)."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from namespacefs import access
from namespacefs.fs import layout
from namespacefs.fs.guard import guarded
from namespacefs.fs.nodes import Kind, Node, NoEntry
from namespacefs.fs.wire import RENAME_EXCHANGE, Context, FUSEError

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
    view: Callable[[Context | None], Awaitable[layout.View]]
    node: Callable[[layout.View, int], Node]
    child: Callable[[layout.View, Node, str], Node | None]

    @guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Context) -> None:
        view = await self.view(ctx)
        parent = self.node(view, parent_inode_old)
        if parent.kind not in (Kind.TREE, Kind.TDIR):
            raise FUSEError(errno.EROFS)
        if parent_inode_new != parent_inode_old:
            raise FUSEError(errno.EPERM)  # a namespace cannot change owner
        if flags & RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        node = self.child(view, parent, old)
        if node is None or node.ns is None:
            raise NoEntry()
        ns = node.ns
        if old == new:
            return
        clash = self.child(view, parent, new)
        if clash is not None and clash.ns is not None and clash.ns.inode != ns.inode:
            raise FUSEError(errno.EEXIST)
        user_ns = view.root if self.filtered else None
        if not access.privileged_over(view.snapshot, user_ns, ctx.uid, ns.owner):
            raise FUSEError(errno.EPERM)
        if ctx.uid != 0 and not self._rename_allowed(ctx.uid):
            log.warning("renames by uid %d come too fast (%d in %.0f s); refused for now", ctx.uid, RENAME_BURST,
                        RENAME_WINDOW)
            raise FUSEError(errno.EAGAIN)
        try:
            from namespacefs import names  # the naming core (optional until it lands)
        except ImportError:
            log.warning("rename of %s: this build has no naming core", old)
            raise FUSEError(errno.ENOTSUP) from None
        try:
            await trio.to_thread.run_sync(lambda: names.rename(view.snapshot, ns, new, db=self.db))
        except names.NamingError as e:
            log.warning("rename of %s to %s refused: %s", old, new, e)
            raise FUSEError(getattr(e, "errno", None) or errno.EINVAL) from None
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

    # Namespaces are made and ended by the kernel, not by this filesystem: every other change
    # (mkdir, mknod, create, symlink, link, unlink, rmdir, setattr) is refused with EPERM
    # ("Operation not permitted"), which says more to `rm` or `mkdir` users than ENOSYS
    # ("Function not implemented").
    def refusal(self, what: str) -> int:
        return errno.EPERM
