"""Where the filesystem gets its data: snapshots from namespacefs.core, re-taken in the background
(the live snapshot of `nsfs serve` when it runs, else a scan of our own), and per-namespace details
from namespacefs.details, cached for a short while. Reads never wait for a rescan; only a lookup of
something unknown asks for a fresh scan (and shares it with others)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from namespacefs import core, details
from namespacefs.discover import SOURCES
from namespacefs.handles import Gone
from namespacefs.model import Namespace, Snapshot

if TYPE_CHECKING:
    from namespacefs.containers import ContainerTree

log = logging.getLogger("namespacefs.fs")

#: The background rescan runs at most this often; slower when a scan takes long (at most half the
#: time is spent scanning).
MIN_INTERVAL = 0.5
#: How long a detail (uname, interfaces, mountinfo, ...) is reused.
DETAIL_TTL = 1.0
#: How long a lookup of an unknown name waits for a fresh scan before answering from the one it has.
LOOKUP_WAIT = 2.0
LOOKUP_WAIT_MAX = 10.0


#: take(fresh) -> Snapshot. fresh=False: the daemon's live snapshot where one runs, else a scan;
#: fresh=True: a scan now (a lookup waits for something newer than what it has).
Taker = Callable[[bool], Snapshot]


def snapshot_taker(sources: tuple[str, ...] = SOURCES, db: str | None = None) -> Taker:
    """Snapshots named from db (see Taker)."""
    return lambda fresh: core.snapshot(sources, fresh=fresh, db=db, provider=_daemon_snapshot)


def _daemon_snapshot() -> Snapshot | None:
    """The running daemon's snapshot (the provider core.snapshot asks first), None without one."""
    from namespacefs.service.client import fetch_snapshot

    return fetch_snapshot(timeout=2.0)


class Source:
    """The current snapshot, kept fresh by run() in the background (the only place scans run)."""

    def __init__(self, take: Taker, db: str | None = None) -> None:
        self._take = take
        self._db = db  # the names database (stored container names, for by/)
        self._tree: tuple[Snapshot, ContainerTree] | None = None
        self._on_change: Callable[[Snapshot, Snapshot], None] | None = None
        started = time.monotonic()
        self.current: Snapshot = _first(take)
        # (timed too: the first lookups after mounting wait for a rescan as long as scans take here)
        self.took = time.monotonic() - started  # seconds the last scan took
        self._wanted = trio.Event()  # someone asked for a scan now
        self._scanned = trio.Event()  # set (and replaced) after every scan
        self._details: dict[tuple[Any, str], tuple[float, Any]] = {}
        self.scans = 1

    def set_on_change(self, callback: Callable[[Snapshot, Snapshot], None]) -> None:
        """callback(old, new) runs after every rescan."""
        self._on_change = callback

    async def run(self) -> None:
        """Rescan forever: at most every MIN_INTERVAL seconds (never more than half the time),
        at once (and fresh) when refresh() asks."""
        fresh = False
        while True:
            started = time.monotonic()
            try:
                await self._scan(fresh)
            except Exception as e:  # a scan that fails must not take the filesystem down
                log.warning("rescan failed (%s: %s); keeping the previous snapshot", type(e).__name__, e)
            took = self.took = time.monotonic() - started
            fresh = False
            with trio.move_on_after(max(MIN_INTERVAL - took, took)):
                await self._wanted.wait()
                fresh = True
            self._wanted = trio.Event()

    async def _scan(self, fresh: bool) -> None:
        try:
            new = await trio.to_thread.run_sync(self._take, fresh, abandon_on_cancel=True)
            old, self.current = self.current, new
            self.scans += 1
            if self._on_change is not None:
                self._on_change(old, new)
            self._expire()
        finally:
            done, self._scanned = self._scanned, trio.Event()
            done.set()

    async def refresh(self, newer_than: float) -> Snapshot:
        """A snapshot taken no earlier than newer_than (time.time()), asking for a scan now; after
        LOOKUP_WAIT seconds (more on a host where one scan takes long: the one under way and the
        next), whatever is current, so a slow scan never holds a request for long."""
        with trio.move_on_after(min(max(LOOKUP_WAIT, 2.5 * self.took), LOOKUP_WAIT_MAX)):
            while self.current.taken_at < newer_than:
                scanned = self._scanned
                self._wanted.set()
                await scanned.wait()
        return self.current

    def tree_if_known(self, snapshot: Snapshot) -> ContainerTree | None:
        """The container tree of snapshot if tree() made it already."""
        return self._tree[1] if self._tree is not None and self._tree[0] is snapshot else None

    async def tree(self, snapshot: Snapshot) -> ContainerTree:
        """The container tree of snapshot (by/ resolves container names in it), made once per
        snapshot in a worker thread (engines may be asked over their sockets, a bounded wait)."""
        known = self.tree_if_known(snapshot)
        if known is None:
            known = await trio.to_thread.run_sync(core.container_tree, snapshot, self._db)
            self._tree = (snapshot, known)
        return known

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expires, _) in self._details.items() if expires < now]:
            del self._details[key]

    async def detail(self, ns: Namespace, name: str) -> str:
        """The content of a file read through namespacefs.details (uname, hostname, domainname, interfaces,
        mountinfo, root, offsets, objects); raises Gone if it cannot be read."""
        key = (ns.key, "uname" if name in ("uname", "hostname", "domainname") else name)
        hit = self._details.get(key)
        if hit is not None and hit[0] >= time.monotonic():
            value = hit[1]
        else:
            snapshot = self.current
            value = await trio.to_thread.run_sync(_read_detail, ns, key[1], snapshot)
            self._details[key] = (time.monotonic() + DETAIL_TTL, value)
        if isinstance(value, Exception):
            raise value
        return _format_detail(name, value)


def _first(take: Taker, attempts: int = 5) -> Snapshot:
    """The first snapshot; a scan that trips over a process exiting under it is simply retried."""
    for attempt in range(attempts):
        try:
            return take(False)
        except OSError as e:
            if attempt == attempts - 1:
                raise
            log.info("scan failed (%s); retrying", e)
    raise AssertionError("unreachable")


def _read_detail(ns: Namespace, what: str, snapshot: Snapshot) -> Any:
    """Runs in a worker thread. Failures are returned (and cached) like values."""
    try:
        if what == "uname":
            return details.uname(ns, snapshot)
        if what == "interfaces":
            return details.interfaces(ns, snapshot)
        if what == "mountinfo":
            return details.mountinfo(ns)
        if what == "root":
            return details.cgroup_root(ns, snapshot)
        if what == "offsets":
            return details.time_offsets(ns)
        if what == "objects":
            return details.ipc_objects(ns, snapshot)
    except Gone as e:
        return e
    except OSError as e:
        return Gone(f"{ns.type}:[{ns.inode}]: {e.strerror or e}")
    raise ValueError(f"no detail called {what}")


def _format_detail(name: str, value: Any) -> str:
    if name == "uname":
        return " ".join(str(value[k]) for k in ("sysname", "nodename", "release", "version", "machine")) + "\n"
    if name in ("hostname", "domainname"):
        return str(value["nodename" if name == "hostname" else "domainname"]) + "\n"
    if name == "interfaces":
        return "".join(f"{i}\n" for i in value)
    if name == "mountinfo":
        return bytes(value).decode(errors="surrogateescape")
    if name == "root":
        return "".join(sorted(f"{key or 'cgroup2'} {root}\n" for key, root in value.items()))
    if name == "offsets":
        return "".join(f"{clock} {s} {ns}\n" for clock, (s, ns) in sorted(value.items(), reverse=True))
    if name == "objects":
        return "".join(f"{kind} {n}\n" for kind, n in value.items())
    raise ValueError(f"no detail called {name}")

