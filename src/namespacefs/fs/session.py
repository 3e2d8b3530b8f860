"""The FUSE connection: reads requests from /dev/fuse, runs each as a trio task through the
operations (fs.operations), writes the replies; and the kernel's cache notifications.

In cached mode (no --allow-other: every reader sees the same tree) OPENDIR is answered ENOSYS:
the kernel then opens directories without asking (FUSE_NO_OPENDIR_SUPPORT) and keeps each
listing in its page cache (FOPEN_CACHE_DIR is its default for such directories) until the
operations invalidate it, so a walk of a tree that did not change costs no request at all.
With --allow-other the listing depends on the reader: OPENDIR is answered, nothing is cached.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from namespacefs.fs import wire
from namespacefs.fs.wire import FUSEError, Op, Request

log = logging.getLogger("namespacefs.fs")

Handler = Callable[[Any, Request], Awaitable[bytes]]


class Session:
    """One mounted connection (fd: the /dev/fuse fd the mount was made with)."""

    def __init__(self, fd: int, operations: Any, debug: bool = False) -> None:
        self.fd, self.ops, self.debug = fd, operations, debug
        self.cached: bool = operations.cached  # (the operations decide: no --allow-other)
        self._cancel: trio.CancelScope | None = None
        # Notifications go out from a thread of their own: the kernel may hold a directory's
        # lock while it waits for our reply to a request in it, and an invalidation of a name
        # there waits for that lock: written from the event loop, it would wait for itself.
        self._notices: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._notifier = threading.Thread(target=self._notify_loop, name="fuse-notify", daemon=True)

    # --- the request loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the filesystem is unmounted (the device then answers ENODEV) or stop()."""
        os.set_blocking(self.fd, False)
        self._notifier.start()
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                while (data := await self._next()) is not None:
                    nursery.start_soon(self._serve, data)
                nursery.cancel_scope.cancel()
        finally:
            self._notices.put(None)
            self._notifier.join(timeout=5)

    async def _next(self) -> bytes | None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                return os.read(self.fd, wire.BUFFER_SIZE)
            except BlockingIOError:
                continue  # another reader took it (or a spurious wake-up)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue  # the request was interrupted before we read it
                if e.errno in (errno.ENODEV, errno.ECONNABORTED):
                    return None  # unmounted, or the connection aborted
                raise

    def stop(self) -> None:
        """End run() (from the event loop's thread)."""
        if self._cancel is not None:
            self._cancel.cancel()

    async def _serve(self, data: bytes) -> None:
        request = Request.parse(data)
        if self.debug:
            log.debug("request %s node %d (uid %d pid %d)", _name(request.opcode), request.nodeid,
                      request.context.uid, request.context.pid)
        handler = _HANDLERS.get(request.opcode)
        try:
            if handler is None:
                raise FUSEError(errno.ENOSYS)
            payload = await handler(self, request)
        except FUSEError as e:
            payload, error = b"", e.errno
        else:
            error = 0
        if request.opcode not in wire.NO_REPLY:
            self._write(wire.reply(request.unique, payload, error))

    def _write(self, record: bytes) -> None:
        try:
            os.write(self.fd, record)
        except OSError as e:  # ENOENT: the request was interrupted meanwhile; ENODEV: unmounted
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("a FUSE reply could not be written: %s", e.strerror)

    # --- notifications ---------------------------------------------------------------------

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached entry `name` of directory `parent` (soon, not before return)."""
        self._notices.put((f"forget entry {name!r} of node {parent}", wire.inval_entry(parent, name)))

    def invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached attributes of ino and, for a directory, its cached listing."""
        self._notices.put((f"forget node {ino}", wire.inval_inode(ino)))

    def _notify_loop(self) -> None:
        while (notice := self._notices.get()) is not None:
            what, record = notice
            if self.debug:
                log.debug("notify: %s", what)
            try:
                os.write(self.fd, record)
            except OSError as e:  # ENOENT: nothing cached under that name; ENODEV: unmounted
                if e.errno == errno.ENODEV:
                    return
                if e.errno != errno.ENOENT:
                    log.debug("a FUSE notification failed: %s", e.strerror)

    # --- the requests ----------------------------------------------------------------------

    async def _init(self, r: Request) -> bytes:
        major, minor, readahead, offered = r.init_in()
        if major != wire.MAJOR:
            log.error("the kernel speaks FUSE %d.%d; this filesystem speaks %d.x", major, minor, wire.MAJOR)
            raise FUSEError(errno.EPROTO)
        return wire.init_out(min(minor, wire.MINOR), min(readahead, wire.MAX_WRITE), offered & wire.WANTED)

    async def _lookup(self, r: Request) -> bytes:
        (name,) = r.names()[:1] or [b""]
        return wire.entry_out(await self.ops.lookup(r.nodeid, name, r.context))

    async def _getattr(self, r: Request) -> bytes:
        return wire.attr_out(await self.ops.getattr(r.nodeid, r.context))

    async def _readlink(self, r: Request) -> bytes:
        target: bytes = await self.ops.readlink(r.nodeid, r.context)
        return target

    async def _open(self, r: Request) -> bytes:
        info = await self.ops.open(r.nodeid, r.u32(), r.context)
        return wire.open_out(info.fh, wire.FOPEN_DIRECT_IO if info.direct_io else 0)

    async def _read(self, r: Request) -> bytes:
        fh, offset, size = r.read_in()
        data: bytes = await self.ops.read(fh, offset, size)
        return data

    async def _release(self, r: Request) -> bytes:
        await self.ops.release(r.u64())
        return b""

    async def _opendir(self, r: Request) -> bytes:
        if self.cached:
            raise FUSEError(errno.ENOSYS)  # (see the module's docstring)
        fh = await self.ops.opendir(r.nodeid, r.context)
        return wire.open_out(fh)  # (a listing for one reader: nothing of it cached)

    async def _readdir(self, r: Request) -> bytes:
        fh, offset, size = r.read_in()
        listing = wire.Listing(size, plus=r.opcode == Op.READDIRPLUS)
        await self.ops.readdir(r.nodeid, fh, offset, listing, r.context)
        return listing.packed()

    async def _releasedir(self, r: Request) -> bytes:
        await self.ops.releasedir(r.u64())
        return b""

    async def _access(self, r: Request) -> bytes:
        if not await self.ops.access(r.nodeid, r.u32(), r.context):
            raise FUSEError(errno.EACCES)
        return b""

    async def _statfs(self, r: Request) -> bytes:
        return wire.statfs_out(await self.ops.statfs(r.context))

    async def _rename(self, r: Request) -> bytes:
        if r.opcode == Op.RENAME2:
            newdir, flags = r.rename2_in()
            old, new = r.names(16)[:2]
        else:
            newdir, flags = r.u64(), 0
            old, new = r.names(8)[:2]
        await self.ops.rename(r.nodeid, old, newdir, new, flags, r.context)
        return b""

    async def _refused(self, r: Request) -> bytes:
        raise FUSEError(self.ops.refusal(_name(r.opcode)))

    async def _forget(self, r: Request) -> bytes:
        return b""  # node numbers live as long as the mount: nothing to forget (and no reply)

    async def _destroy(self, r: Request) -> bytes:
        return b""


def _name(opcode: int) -> str:
    try:
        return Op(opcode).name.lower()
    except ValueError:
        return f"opcode {opcode}"


_HANDLERS: dict[int, Handler] = {
    Op.INIT: Session._init, Op.LOOKUP: Session._lookup, Op.GETATTR: Session._getattr,
    Op.READLINK: Session._readlink, Op.OPEN: Session._open, Op.READ: Session._read, Op.RELEASE: Session._release,
    Op.OPENDIR: Session._opendir, Op.READDIR: Session._readdir, Op.READDIRPLUS: Session._readdir,
    Op.RELEASEDIR: Session._releasedir, Op.ACCESS: Session._access, Op.STATFS: Session._statfs,
    Op.RENAME: Session._rename, Op.RENAME2: Session._rename, Op.FORGET: Session._forget,
    Op.BATCH_FORGET: Session._forget, Op.INTERRUPT: Session._forget, Op.DESTROY: Session._destroy,
    **{op: Session._refused for op in (Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.LINK,
                                       Op.CREATE)},
}
