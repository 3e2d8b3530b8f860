"""Mount-table changes as they happen: poll(POLLPRI) on /proc/PID/mountinfo of one process in each
mount namespace (the kernel flags the file when a mount is added to or removed from its namespace:
fs/proc_namespace.c mounts_poll). A bind mount of a namespace file made in another mount namespace
(`ip netns add` in a container, `nsfs pin` in a sandbox) is then re-read at once (Live.remount),
instead of at the sweep.

At most `limit` mount namespaces are watched, those with the most processes first; the others
(`unwatched` in /api/status) are left to the sweep. An open mountinfo holds its mount namespace,
so a watched one is let go as soon as the process it was opened through is touched by an event and
is no longer in it (before that update reads the host), and at each new model.

The tables have a thread of their own (the one watcher that has): a table's POLLPRI is an edge the
kernel clears when the file is polled (mounts_poll), which an epoll nested in the updater's would
take and then not report. Mount changes are rare; it wakes for those, and once per WAKE.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from namespacefs.discover import incremental
from namespacefs.model import Snapshot
from namespacefs.service.watchers import WAKE, Rescan, Touch, Watcher, name_thread

log = logging.getLogger("namespacefs.service")

#: Mount namespaces watched at most (each costs an fd).
LIMIT = 256


class MountTables(Watcher):
    name = "mountinfo"

    def __init__(self, touch: Touch, rescan: Rescan, enabled: bool = True, limit: int = LIMIT) -> None:
        super().__init__(touch, rescan)
        self.limit = limit
        self.unwatched = 0  # mount namespaces over the limit
        self._lock = threading.Lock()
        self._open: dict[int, tuple[int, int]] = {}  # mount namespace inode -> (fd, pid)
        self._by_fd: dict[int, tuple[int, int]] = {}  # fd -> (inode, pid)
        self._pid_of: dict[int, int] = {}  # pid -> the mount namespace watched through it
        self._synced: Snapshot | None = None  # the model last synced with
        self._epoll: select.epoll | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not enabled:
            self.error = "mount tables not polled (disabled)"
            return
        try:
            self._epoll = select.epoll()
        except OSError as e:
            self.error = f"mount tables cannot be polled ({e.strerror or e})"
            log.warning("%s", self.error)

    @property
    def watched(self) -> int:
        return len(self._open)

    def start(self) -> None:
        super().start()
        if self.error is None:
            self._thread = threading.Thread(target=self._run, name="nsfs-mountinfo", daemon=True)
            self._thread.start()

    def ask_stop(self) -> None:
        """Tell the thread to end (within WAKE); stop() waits for it."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.close()

    def follow(self, snap: Snapshot) -> None:
        """The model changed: watch its mount namespaces (in the updater's thread, which commits it;
        the tables' thread only waits on them)."""
        if self._epoll is not None and self._moved(snap):
            self._sync(snap)

    def let_go(self, pids: set[int]) -> None:
        """These processes changed (an event): a watched table opened through one that is no longer
        in that mount namespace is closed now, so it holds nothing the update is about to read."""
        with self._lock:
            watched = [(pid, self._pid_of[pid]) for pid in pids if pid in self._pid_of]  # (the few touched)
            for pid, inode in watched:
                if not _in(pid, inode):
                    self._close(inode, self._open[inode][0])

    def _run(self) -> None:
        assert self._epoll is not None
        name_thread("nsfs-mountinfo")
        while not self._stop.is_set():
            try:
                ready = self._epoll.poll(WAKE)
            except InterruptedError:
                continue
            asked = time.time()
            pids = set()
            for fd, _mask in ready:
                with self._lock:
                    found = self._by_fd.get(fd)
                if found is not None:
                    self.counts["changed"] += 1
                    pids.add(found[1])
            if pids:
                self.touch(pids)
            self.drained_at = asked

    def _moved(self, snap: Snapshot) -> bool:
        """Must the watched tables be chosen again for this model? Not when the mount namespaces
        that changed since the model last synced (what the refreshes in between say they changed)
        are all watched, still there, and still hold the process each is watched through: the
        choice by number of processes is then made again at the next whole one."""
        synced, self._synced = self._synced, snap
        changed = incremental.changes(synced, snap) if synced is not None else None
        if changed is None or synced is None:
            return True
        old, new = synced.namespaces, snap.namespaces
        with self._lock:
            for inode in changed:
                before, now = old.get(inode), new.get(inode)
                if (before is None or before.type != "mnt") and (now is None or now.type != "mnt"):
                    continue
                watched = self._open.get(inode)
                if before is None or now is None or watched is None or watched[1] not in now.processes:
                    return True
        return False

    def _sync(self, snap: Snapshot) -> None:
        """Watch a process's table in each of the (first `limit`) mount namespaces of the model."""
        spaces = sorted((ns for ns in snap.of_type("mnt") if ns.processes), key=lambda ns: (-len(ns.processes), ns.inode))
        want = {ns.inode: ns.processes[0] for ns in spaces[:self.limit]}
        members = {ns.inode: set(ns.processes) for ns in spaces[:self.limit]}
        self.unwatched = max(0, len(spaces) - self.limit)
        with self._lock:
            for inode, (fd, pid) in list(self._open.items()):
                if inode not in want or pid not in members[inode]:
                    self._close(inode, fd)
        for inode, pid in want.items():
            if inode not in self._open:
                self._watch(inode, pid)

    def _watch(self, inode: int, pid: int) -> None:
        assert self._epoll is not None
        try:
            fd = os.open(f"/proc/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # gone: the next model has another process in it, or not the namespace
        if not _in(pid, inode):  # (the pid was reused, or it moved on, between the model and the open)
            os.close(fd)
            return
        with self._lock:
            self._epoll.register(fd, select.EPOLLPRI)
            self._open[inode] = (fd, pid)
            self._by_fd[fd] = (inode, pid)
            self._pid_of[pid] = inode

    def _close(self, inode: int, fd: int) -> None:
        _fd, pid = self._open.pop(inode)
        del self._by_fd[fd]
        if self._pid_of.get(pid) == inode:
            del self._pid_of[pid]
        os.close(fd)  # (epoll forgets a closed fd)

    def close(self) -> None:
        with self._lock:
            for inode, (fd, _pid) in list(self._open.items()):
                self._close(inode, fd)
        if self._epoll is not None:
            self._epoll.close()

    def status(self) -> dict[str, object]:
        return {"running": self.running, "error": self.error, "watched": self.watched, "limit": self.limit,
                "unwatched": self.unwatched, "changes": self.counts["changed"]}


def _in(pid: int, inode: int) -> bool:
    """The process is (still) in that mount namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == inode
    except OSError:
        return False
