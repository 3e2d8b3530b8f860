"""The live model: the current snapshot, kept up to date by three threads.

- the listener reads process events (fork, exec, exit) from the kernel's proc connector and notes
  the pids; an overrun of the netlink socket (events lost) asks for a full scan;
- the updater re-reads just those processes (discover.incremental.refresh), debounced:
  `debounce` after the first event of a burst, and once more `settle` after it (a process that
  forks and then unshares shows up the second time); it is the only thread that changes the model;
- the full scanner runs core.snapshot() (in a child interpreter, so it holds no GIL here) every
  `interval` seconds (the safety net: unshare() and setns() make no process event, and bind
  mounts and sockets change silently), and never more
  than half the time. Processes touched while it ran are re-read on top of its result before it
  replaces the model, so a slow full scan cannot bring back what already went.

Each new snapshot is compared with the previous one; the differences go out as lifecycle events on
the bus.
"""

from __future__ import annotations

import errno
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from namespacefs import kernel
from namespacefs.discover import incremental
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Process, Snapshot
from namespacefs.service.events import Bus, events_between

log = logging.getLogger("namespacefs.service")

Scanner = Callable[[], Snapshot]


def fresh_snapshot() -> Snapshot:
    """A full scan through the core (names and containers included), never through a daemon."""
    from namespacefs import core

    return core.snapshot(fresh=True)


_SCAN_CHILD = ("import pickle, sys\n"
               "from namespacefs.service.live import fresh_snapshot\n"
               "sys.stdout.buffer.write(pickle.dumps(fresh_snapshot(), protocol=5))\n")


class ScanFailed(OSError):
    """The scanning child process failed (its last line of stderr says why)."""


def scan_in_child() -> Snapshot:
    """fresh_snapshot() in a child interpreter: a full scan of a big host takes seconds of CPU,
    and in a thread of the daemon it would hold the GIL that requests and partial updates need."""
    done = subprocess.run([sys.executable, "-c", _SCAN_CHILD], capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise ScanFailed(f"scanning process failed ({lines[-1] if lines else f'status {done.returncode}'})")
    snap = pickle.loads(done.stdout)
    if not isinstance(snap, Snapshot):
        raise ScanFailed("scanning process answered with something else than a snapshot")
    return snap


def named_refresh(old: Snapshot, pids: set[int]) -> Snapshot:
    """incremental.refresh, with names carried over; a namespace new since the last full scan gets
    its default name (the full scan, which reads the names database and the container engines,
    may later give it another one: a `renamed` event)."""
    new = incremental.refresh(old, pids)
    if not any(ns.name for ns in old):
        return new  # no naming in this build
    from namespacefs.names.defaults import default_name

    named = []
    for ns in new:
        if ns.name is None:
            name = default_name(ns, new.boot_id)
            owner = new.get(ns.owner) if ns.owner is not None else None
            named.append(ns.named(name, f"{owner.path}/{name}" if owner and owner.path else name))
    return new.with_namespaces(named) if named else new


class Live:
    def __init__(self, scan: Scanner = scan_in_child, interval: float = 2.0, debounce: float = 0.01,
                 settle: float = 0.25, netlink: bool = True, rcvbuf: int = 8 << 20,
                 refresh: Callable[[Snapshot, set[int]], Snapshot] | None = named_refresh) -> None:
        if interval <= 0 or debounce < 0 or settle < 0:
            raise ValueError("interval must be > 0, debounce and settle >= 0")
        self.scan_func, self.refresh_func = scan, refresh
        self.interval, self.debounce, self.settle = interval, debounce, settle
        self.want_netlink, self.rcvbuf = netlink, rcvbuf
        self.bus = Bus()
        self.snapshot: Snapshot | None = None
        self.started_at = time.time()
        self.scans: Counter[str] = Counter()  # kind -> updates done (initial, full, overrun, process, settle)
        self.scan_errors = 0
        self.proc_events: Counter[str] = Counter()  # fork/exec/exit -> events read
        self.overruns = 0
        self.netlink_error: str | None = None  # why there is no proc connector, if there is none
        self.durations: list[float] = []  # full-scan durations not yet taken by the metrics
        self.last_full_duration = 0.0
        self.full_taken_at = 0.0  # when the full scan behind the model started
        self._json: bytes | None = None
        self._derived: dict[str, tuple[Snapshot, Any]] = {}
        self._pieces: dict[int, tuple[object, str]] = {}  # id(namespace or process) -> (it, its JSON)
        self._lock = threading.Lock()  # the snapshot and its JSON
        self._cond = threading.Condition()  # everything below
        self._pending: set[int] = set()  # pids with events not yet re-read
        self._due: float | None = None
        self._settling: list[tuple[float, set[int]]] = []  # (when, pids) to read once more
        self._full_result: tuple[Snapshot, str] | None = None
        self._full_wanted: str | None = None  # why a full scan is wanted now (overrun)
        self._touched_since_full: set[int] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self._generation = 0

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the proc connector, take the first snapshot (no events for it) and start the threads."""
        if self.want_netlink:
            try:
                self._sock = kernel.proc_connector_open(self.rcvbuf)
                self._sock.settimeout(0.5)
            except OSError as e:
                self.netlink_error = f"proc connector unavailable ({e.strerror or e}); rescanning every {self.interval:g}s"
                log.warning("%s", self.netlink_error)
        else:
            self.netlink_error = "proc connector not used (disabled)"
        clock = time.monotonic()
        for attempt in range(3):  # a scan can trip over a process dying mid-read; try again
            try:
                first = self.scan_func()
                break
            except OSError as e:
                if attempt == 2:
                    raise
                log.warning("first scan failed: %s; retrying", e)
        self.last_full_duration = time.monotonic() - clock
        self._commit(first, "initial", first)
        if self._sock is not None:
            self._threads.append(threading.Thread(target=self._listen, name="nsfs-netlink", daemon=True))
        self._threads.append(threading.Thread(target=self._update, name="nsfs-updater", daemon=True))
        self._threads.append(threading.Thread(target=self._full_scans, name="nsfs-fullscan", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    @property
    def netlink(self) -> bool:
        return self._sock is not None

    # --- asking for updates ----------------------------------------------------------------------

    def touch(self, pids: Iterable[int]) -> None:
        """These processes changed (fork, exec, exit): read them again soon, and once more later."""
        now = time.monotonic()
        with self._cond:
            self._pending.update(pids)
            if self._due is None:
                self._due = now + self.debounce
            self._cond.notify_all()

    def rescan(self, reason: str = "request") -> None:
        """A full scan as soon as possible."""
        with self._cond:
            self._full_wanted = reason
            self._cond.notify_all()

    def wait_scan(self, generation: int, timeout: float) -> bool:
        """Block until an update newer than `generation` was committed."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._generation <= generation:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def generation(self) -> int:
        return self._generation

    # --- the threads -----------------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._sock is not None
        names = {kernel.PROC_EVENT_FORK: "fork", kernel.PROC_EVENT_EXEC: "exec", kernel.PROC_EVENT_EXIT: "exit"}
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped events: we no longer know what changed
                    self.overruns += 1
                    if self.overruns in (1, 10, 100) or self.overruns % 1000 == 0:  # not a line per overrun
                        log.warning("netlink overrun (%d so far): events were lost; rescanning", self.overruns)
                    self.rescan("overrun")
                    continue
                if self._stop.is_set():
                    return
                log.error("proc connector failed: %s; falling back to periodic rescans", e)
                self.netlink_error = f"proc connector failed ({e}); rescanning every {self.interval:g}s"
                return
            pids = []
            for what, pid, tgid in kernel.parse_proc_events(data):
                name = names.get(what)
                if name is None or pid != tgid:  # threads come and go too often; the full scan sees them
                    continue
                self.proc_events[name] += 1
                pids.append(pid)
            if pids:
                self.touch(pids)

    def _full_scans(self) -> None:
        last_end = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set():
                    wait = last_end + max(self.interval, self.last_full_duration) - time.monotonic()
                    if self._full_wanted or wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stop.is_set():
                    return
                reason, self._full_wanted = self._full_wanted or "full", None
                self._touched_since_full = set()
            clock = time.monotonic()
            try:
                snap = self.scan_func()
            except OSError as e:  # a race discovery did not absorb (a process died mid-read): next time
                self.scan_errors += 1
                log.warning("full scan failed: %s; keeping the model, trying again", e)
                snap = None
            except Exception:  # a bug; it must not kill the daemon: keep the model
                self.scan_errors += 1
                log.exception("full scan failed")
                snap = None
            last_end = time.monotonic()
            self.last_full_duration = last_end - clock
            if snap is not None:
                with self._cond:
                    self._full_result = (snap, reason)
                    self._cond.notify_all()

    def _update(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set():
                    now = time.monotonic()
                    dues = [d for d in (self._due, self._settling[0][0] if self._settling else None) if d is not None]
                    if self._full_result is not None or (dues and min(dues) <= now):
                        break
                    self._cond.wait(min(dues) - now if dues else None)
                if self._stop.is_set():
                    return
                now = time.monotonic()
                full, self._full_result = self._full_result, None
                pids: set[int] = set()
                kind = ""
                if self._due is not None and self._due <= now:
                    pids, self._pending, self._due = self._pending, set(), None
                    kind = "process"
                    if self.settle:
                        self._settling.append((now + self.settle, set(pids)))
                while self._settling and self._settling[0][0] <= now:
                    pids |= self._settling.pop(0)[1]
                    kind = kind or "settle"
                if full is not None:
                    pids |= self._touched_since_full
                self._touched_since_full |= pids
            try:
                scanned = full[0] if full is not None else None
                if full is not None:
                    base, kind = full[0], full[1]
                else:
                    base = self.current()
                new = self.refresh_func(base, pids) if pids and self.refresh_func is not None else base
                if self.refresh_func is None and pids and full is None:
                    new = scanned = self.scan_func()  # no partial rescan: a full one
            except OSError as e:
                self.scan_errors += 1
                log.warning("update failed: %s; the next full scan will catch up", e)
                continue
            except Exception:
                self.scan_errors += 1
                log.exception("update failed")
                continue
            self._commit(new, kind, scanned)

    def _commit(self, new: Snapshot, kind: str, scanned: Snapshot | None = None) -> None:
        """Make `new` the model and publish what changed. `scanned` is the full scan behind it, if
        any: its start and duration are the full scan's own, not those of the re-read of touched
        processes that `new` may carry on top of it."""
        old = self.snapshot
        events = events_between(old, new, time.time()) if old is not None else []
        with self._lock:
            self.snapshot, self._json = new, None
            if scanned is not None:
                self.full_taken_at = scanned.taken_at
                self.durations.append(scanned.duration)
                del self.durations[:-1000]
        self.bus.publish(events)
        self.scans[kind] += 1
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    # --- reading ---------------------------------------------------------------------------------

    def current(self) -> Snapshot:
        snap = self.snapshot
        if snap is None:
            raise RuntimeError("no snapshot yet")
        return snap

    def snapshot_json(self) -> bytes:
        """Snapshot.to_dict() as JSON, made once per snapshot from per-object pieces: namespaces and
        processes are immutable and a partial update keeps the unchanged ones, so only what changed
        is serialized again."""
        with self._lock:
            if self._json is None:
                self._json = self._assemble(self.current())
            return self._json

    def _assemble(self, snap: Snapshot) -> bytes:
        cache: dict[int, tuple[object, str]] = {}

        def piece(obj: Namespace | Process) -> str:
            hit = self._pieces.get(id(obj))
            text = hit[1] if hit is not None and hit[0] is obj else json.dumps(obj.to_dict(), separators=(",", ":"))
            cache[id(obj)] = (obj, text)
            return text

        head = snap.replace(namespaces={}, processes={}).to_dict()
        head["namespaces"] = head["processes"] = None
        order = {t: i for i, t in enumerate(NS_TYPES)}
        namespaces = ",".join(piece(ns) for ns in sorted(snap.namespaces.values(), key=lambda n: (order[n.type], n.inode)))
        processes = ",".join(piece(p) for _pid, p in sorted(snap.processes.items()))
        text = json.dumps(head, separators=(",", ":"))
        text = text.replace('"namespaces":null', f'"namespaces":[{namespaces}]', 1)
        text = text.replace('"processes":null', f'"processes":[{processes}]', 1)
        self._pieces = cache
        return text.encode()

    def derived(self, what: str, compute: Callable[[Snapshot], Any]) -> Any:
        """compute(snapshot), made once per snapshot (containers, overlaps, ...)."""
        snap = self.current()
        cached = self._derived.get(what)
        if cached is not None and cached[0] is snap:
            return cached[1]
        value = compute(snap)
        self._derived[what] = (snap, value)
        return value

    def take_durations(self) -> list[float]:
        """The scan durations since the last call (for the metrics histogram)."""
        with self._lock:
            taken, self.durations = self.durations, []
        return taken

    def status(self) -> dict[str, object]:
        snap = self.current()
        return {
            "boot_id": snap.boot_id, "kernel": snap.kernel, "taken_at": snap.taken_at, "duration": snap.duration,
            "namespaces": len(snap.namespaces), "processes": len(snap.processes), "started_at": self.started_at,
            "full_taken_at": self.full_taken_at, "full_duration": self.last_full_duration,
            "scans": dict(self.scans), "scan_errors": self.scan_errors, "netlink": self.netlink,
            "netlink_error": self.netlink_error, "overruns": self.overruns, "proc_events": dict(self.proc_events),
            "subscribers": self.bus.subscribers, "interval": self.interval,
        }
