"""The live model: the current snapshot, kept up to date from events, at little cost at rest.

- Watchers (service.watchers) name the processes that changed: the proc connector (fork, exec,
  exit, new threads) and the syscall tracepoints (unshare, setns). The updater reads them itself
  (watchers.Listener) and re-reads just those processes (discover.incremental.refresh) `debounce`
  after the first event of a burst, and under churn `debounce` after each update (what came
  meanwhile, with no wake-up for it). Without tracepoints a process is read once more `settle`
  later (a fork followed by unshare() shows up then).
- The sweep re-reads every process, with its mount namespace's bind mounts, in slices, once per
  `sweep` seconds: what changes silently (an fd passed or closed, a socket, a bind mount, a thread's
  setns) is in the model within that bound.
- A full scan (discovery in a child interpreter, so it holds no GIL here) every `interval`
  seconds, and at once after an overrun (events the kernel dropped). Processes touched while it
  ran are re-read on top of its result before it replaces the model.
- Every update that changed the model is named by core.name (service.naming); names are also
  re-read when the names database changes and every `rename_every` seconds. Updates are spaced so
  that the updater spends at most `duty` of its time on them under churn.

Each new model is compared with the previous one; the differences go out as lifecycle events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from namespacefs.discover import incremental
from namespacefs.model import Snapshot
from namespacefs.service.events import Bus, events_between
from namespacefs.service.mounttables import MountTables
from namespacefs.service.naming import Namer, Naming
from namespacefs.service.reading import Reading
from namespacefs.service.scanning import core_name, scan_in_child
from namespacefs.service.served import Served
from namespacefs.service.sweep import Sweep, unread_mounts
from namespacefs.service.watchers import Listener, ProcConnector, Tracepoints, name_thread

log = logging.getLogger("namespacefs.service")

Scanner = Callable[[], Snapshot]
Refresher = Callable[..., Snapshot]  # (snapshot, pids, mounts=bool) -> snapshot
T = TypeVar("T")


def _refresh(snap: Snapshot, pids: set[int], mounts: bool = False, recheck: bool = False) -> Snapshot:
    return incremental.refresh(snap, pids, mounts=mounts, recheck=mounts or recheck)

RECHECK = 0.3  # s: namespaces kept while the kernel had them are asked again (a user namespace dies late)
QUIET = 0.05  # s without events before a sweep slice or a whole naming pass runs (it would hold them up)
HELD = 0.5  # s such a job waits at most for a pause in the events
#: s a whole naming pass waits at most (~30-60 ms at 5,000 namespaces in the daemon: it would hold up
#: the events of churn that leaves no pause; new namespaces have their names from the pass over them)
NAMES_HELD = 30.0


class Job(NamedTuple):
    kind: str  # full, overrun, process, settle, sweep, names
    pids: frozenset[int]
    full: Snapshot | None  # the full scan to start from
    mounts: bool  # re-read the bind mounts of the touched processes' mount namespaces
    swept: bool  # a slice of the sweep is in it
    rename: bool  # run the naming pass even if nothing it depends on changed in the model
    recheck: bool  # ask the kernel again about namespaces no known holder holds


class Live(Reading):
    def __init__(self, scan: Scanner = scan_in_child, interval: float = 300.0, debounce: float = 0.01,
                 settle: float = 0.25, netlink: bool = True, rcvbuf: int = 8 << 20,
                 refresh: Refresher | None = _refresh, sweep: float | None = None, trace: bool | None = None,
                 name: Namer | None = core_name, duty: float = 0.25, rename_every: float = 60.0,
                 names_db: str | None = None, sweep_budget: float | None = None) -> None:
        if interval <= 0 or debounce < 0 or settle < 0 or (sweep is not None and sweep <= 0) or not 0 < duty <= 1:
            raise ValueError("interval and sweep must be > 0, debounce and settle >= 0, duty in (0, 1]")
        self.scan_func, self.refresh_func = scan, refresh
        incremental.KERNEL_GRACE[0] = (sweep or interval) + 2.0  # a whole sweep round, and a little
        self.naming = Naming(name, duty)
        self.interval, self.debounce, self.settle, self.sweep, self.duty = interval, debounce, settle, sweep, duty
        self.rename_every, self.names_db = rename_every, names_db
        self.want_netlink, self.want_trace, self.rcvbuf = netlink, netlink if trace is None else trace, rcvbuf
        self.bus = Bus()
        self.served = Served()
        self.snapshot: Snapshot | None = None
        self.started_at = time.time()
        self.scans: Counter[str] = Counter()  # kind -> updates done (initial, full, overrun, process, ...)
        self.scan_errors = 0
        self.durations: list[float] = []  # full-scan durations not yet taken by the metrics
        self.last_full_duration = 0.0
        self.full_taken_at = 0.0  # when the full scan behind the model started
        self.last_update = (0.0, 0.0)  # (seconds the last update took, of which naming)
        self.mount_watch: MountTables | None = None
        self.listener: Listener | None = None
        self._remount: set[int] = set()  # pids whose mount namespace's table changed (mount_watch)
        self._lock = threading.Lock()  # the snapshot
        self._cond = threading.Condition()  # everything below
        self._pending: set[int] = set()  # pids with events not yet re-read
        self._due: float | None = None
        self._waiting_since: float | None = None  # time.time() of the first touch not applied yet
        self._settling: list[tuple[float, set[int]]] = []  # (when, pids) to read once more
        self._full_result: tuple[Snapshot, str] | None = None
        self._full_wanted: str | None = None  # why a full scan is wanted now (overrun)
        self._touched_since_full: set[int] = set()
        self.sweeper = Sweep(sweep, sweep_budget)
        self._names_at = 0.0
        self._names_stamp: tuple[float, int] | None = None
        self._not_before = 0.0  # the next update but one for events waits until then (duty)
        self._events_not_before = 0.0  # the next update for events waits until then (duty)
        self._last_events = 0.0  # time.monotonic() of the last update for events
        self._recheck_at: float | None = None  # when to ask the kernel again about kernel-held namespaces
        self._stop = threading.Event()
        self._full_bell = threading.Event()  # rings the full-scan thread: a scan is wanted now, or stop
        self._threads: list[threading.Thread] = []
        self._generation = 0
        self._updater_id: int | None = None  # the updater's thread (threading.get_ident())
        self._whole: Snapshot | None = None  # the model, named by a whole pass (not provisionally)

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the watchers, take the first snapshot (no events for it) and start the threads."""
        self.netlink_watch = ProcConnector(self.touch, self.rescan, self.want_netlink, self.rcvbuf)
        self.trace_watch = Tracepoints(self.touch, self.rescan, self.want_trace, clones=self.netlink_watch.error is not None)
        self.mount_watch = MountTables(self.remount, self.rescan, self.want_netlink)
        self.listener = Listener([self.netlink_watch, self.trace_watch])
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
        self._names_stamp = self._db_stamp()
        self._commit(self.naming.named(first, True, None, None), "initial", first)
        now = time.monotonic()
        self.sweeper.start(now)
        self._names_at = now + self.naming.periodic(self.rename_every)
        for w in (self.netlink_watch, self.trace_watch, self.mount_watch):
            w.start()
        self.mount_watch.follow(self.current())
        self._threads = [threading.Thread(target=self._update, name="nsfs-updater", daemon=True),
                         threading.Thread(target=self._full_scans, name="nsfs-fullscan", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._full_bell.set()
        self._wake()
        if self.mount_watch is not None:
            self.mount_watch.ask_stop()  # (now: its thread takes up to WAKE to see it)
        for t in self._threads:
            t.join(timeout=5)
        for w in (self.netlink_watch, self.trace_watch, self.mount_watch):
            if w is not None:
                w.stop()
        if self.listener is not None:
            self.listener.close()

    def _wake(self) -> None:
        """Wake the updater (and whoever waits for the model): something for it, from another thread."""
        with self._cond:
            self._cond.notify_all()
        if self.listener is not None and threading.get_ident() != self._updater_id:
            self.listener.ring()

    def touch(self, pids: Iterable[int]) -> None:
        """These processes changed (fork, exec, exit, unshare, setns): read them again soon."""
        pids = set(pids)
        if self.mount_watch is not None:
            self.mount_watch.let_go(pids)
        with self._cond:
            self._pending.update(pids)
        if self._queued():  # (else the updater waits for that already: no need to wake it)
            self._wake()

    def _queued(self) -> bool:
        """Events wait (touched, or still queued on a watcher): their update is due `debounce` from
        now, unless one is due already (True: due now)."""
        with self._cond:
            if self._due is not None:
                return False
            self._due = time.monotonic() + self.debounce
            if self._waiting_since is None:  # what waits now happened after the last drain
                self._waiting_since = min((w.drained_at for w in self._watchers()), default=time.time())
            return True

    def remount(self, pids: Iterable[int]) -> None:
        """The mount tables of these processes' mount namespaces changed: re-read them soon."""
        pids = set(pids)
        with self._cond:
            self._remount |= pids
        self.touch(pids)

    def rescan(self, reason: str = "request") -> None:
        """A full scan as soon as possible."""
        with self._cond:
            self._full_wanted = reason
        self._full_bell.set()

    def _full_scans(self) -> None:
        name_thread("nsfs-fullscan")
        last_end = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                wait = last_end + max(self.interval, self.last_full_duration) - time.monotonic()
                due = bool(self._full_wanted) or wait <= 0
                if due:
                    reason, self._full_wanted = self._full_wanted or "full", None
                    self._touched_since_full = set()
            if not due:  # (a bell of its own: every update notifies _cond, and would wake it for nothing)
                self._full_bell.wait(wait)
                self._full_bell.clear()
                continue
            clock = time.monotonic()
            snap = self._guarded(self.scan_func, "full scan")
            last_end = time.monotonic()
            self.last_full_duration = last_end - clock
            if snap is not None:
                with self._cond:
                    self._full_result = (snap, reason)
                self._wake()

    def _guarded(self, work: Callable[[], T], what: str) -> T | None:
        """work(), or None after a failure (logged and counted; the model stays as it was)."""
        try:
            return work()
        except OSError as e:  # a race discovery did not absorb (a process died mid-read): next time
            self.scan_errors += 1
            log.warning("%s failed: %s; keeping the model", what, e)
        except Exception:  # a bug; it must not kill the daemon
            self.scan_errors += 1
            log.exception("%s failed", what)
        return None

    def _update(self) -> None:
        name_thread("nsfs-updater")
        self._updater_id = threading.get_ident()
        while not self._stop.is_set():
            job = self._next_job()
            if job is None:
                return
            clock, cpu = time.monotonic(), time.thread_time()
            result = self._guarded(lambda job=job: self._apply(job), "update")  # type: ignore[misc]
            spent, cost = time.monotonic() - clock, time.thread_time() - cpu
            if job.swept:  # (what the slice cost sets the sweep's pace)
                self.sweeper.done(cost)
            self.last_update = (spent, self.naming.spent)
            # (its CPU, not its wall time: on a loaded machine the wall time is others' work too)
            pace = time.monotonic() + cost * (1 / self.duty - 1)
            if job.kind == "process":
                self._events_not_before = pace
            else:
                self._not_before = pace
            if result is not None:
                self._commit(*result)
                with self._cond:
                    if job.kind == "process" and self._due is None:
                        self._waiting_since = None
            if job.kind == "process":
                self._queued()  # (under churn the next events come before `debounce`: taken then, no wake-up each)

    def _apply(self, job: Job) -> tuple[Snapshot, str, Snapshot | None]:
        """(the new model, the kind of update, the full scan behind it if any)."""
        full = job.full
        base = full if full is not None else self.current()
        if (job.pids or job.recheck) and self.refresh_func is not None:
            raw = self.refresh_func(base, set(job.pids), mounts=job.mounts, recheck=job.recheck)
            if not job.mounts and (first := unread_mounts(base, raw)):  # a new mount namespace: its table now
                raw = self.refresh_func(raw, first, mounts=True)
        elif job.pids and full is None:
            raw = full = self.scan_func()  # no partial rescan: a full one
        else:
            raw = base
        if job.rename:
            self._names_stamp = self._db_stamp()
        return self.naming.named(raw, full is not None or job.rename, base, self.snapshot), job.kind, full

    def _next_job(self) -> Job | None:
        """Wait until something is due; take it. Events are read here: while none waits, the wait
        ends at the first event queued on a watcher, which makes their update due (`_queued`);
        the watchers are read only when it is taken, and everything queued goes into it."""
        listener = self.listener
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                due = now if self._full_result is not None else min(self._events_due(), self._other_due(now))
                waiting = self._due is not None
            if due <= now:
                if listener is not None:
                    listener.drain()
                with self._cond:
                    job = self._take_job(time.monotonic())
                if job is not None:
                    return job
            elif listener is None:
                with self._cond:
                    self._cond.wait(due - now)
            elif listener.wait(due - now, events=not waiting) and not waiting:
                self._queued()
        return None

    def _take_job(self, now: float) -> Job | None:
        """Events first: processes touched are re-read in a job of their own (no sweep slice, no
        whole naming pass in front of them); the rest when no event is due (churn does not starve
        it: after each update for events, the duty's pace leaves a gap)."""
        if self._full_result is None and self._events_due() <= now:
            return self._event_job(now)
        full, self._full_result = self._full_result, None
        pids: set[int] = set()
        kind, mounts, swept = "", False, False
        while self._settling and self._settling[0][0] <= now:
            pids |= self._settling.pop(0)[1]
            kind = kind or "settle"
        if full is None and self._later(self.sweeper.due, now) <= now:  # (a job of its own: what it costs paces the sweep)
            pids |= self.sweeper.slice(self.current().processes.keys())
            kind, mounts, swept = kind or "sweep", True, True
        recheck = self._recheck_at is not None and self._recheck_at <= now
        if recheck:
            self._recheck_at, kind = None, kind or "recheck"
        names_due = (self._later(min(self._names_at, self.naming.due), now, NAMES_HELD) <= now
                     or self._db_stamp() != self._names_stamp)
        rename = full is not None or (names_due and not swept)  # (a whole pass in a slice's job: its cost the slice's)
        if rename:
            self._names_at = now + self.naming.periodic(self.rename_every)
        if full is not None:
            pids |= self._touched_since_full | self._pending
            self._pending, self._due = set(), None
            kind = full[1]
        self._touched_since_full |= pids
        return Job(kind or "names", frozenset(pids), full[0] if full is not None else None, mounts, swept, rename, recheck)

    def _event_job(self, now: float) -> Job | None:
        if not self._pending:  # (what was queued was nothing to re-read: a thread's exit, say)
            self._due = self._waiting_since = None
            return None
        pids, self._pending, self._due = self._pending, set(), None
        mounts, self._remount = bool(self._remount & pids), self._remount - pids
        if self.settle and not self.tracing:
            self._settling.append((now + self.settle, set(pids)))
        self._touched_since_full |= pids
        self._last_events = now
        return Job("process", frozenset(pids), None, mounts, False, False, False)

    def _events_due(self) -> float:
        """When the touched processes are to be re-read (debounce, and the duty's pace)."""
        return max(self._due, self._events_not_before) if self._due is not None else math.inf

    def _other_due(self, now: float) -> float:
        """When the next job that is not for events is due (sweep, names, settle, recheck, a full
        scan's result)."""
        if self._full_result is not None:
            return now
        dues = (self._settling[0][0] if self._settling else math.inf, self._later(self.sweeper.due, now),
                self._later(min(self._names_at, self.naming.due), now, NAMES_HELD),
                self._recheck_at if self._recheck_at is not None else math.inf)
        return max(min(dues), self._not_before)

    def _later(self, due: float, now: float, held: float = HELD) -> float:
        """`due`, put off until QUIET seconds after the last update for events (a sweep slice or a
        whole naming pass would hold the next events up), but by `held` seconds at most (churn
        without end must not stop them)."""
        return due if now - due >= held else max(due, self._last_events + QUIET)

    def _commit(self, new: Snapshot, kind: str, scanned: Snapshot | None = None) -> None:
        """Make `new` the model and publish what changed. `scanned` is the full scan behind it, if
        any: its start and duration are the full scan's own, not those of the re-read of touched
        processes that `new` may carry on top of it."""
        old = self.snapshot
        if scanned is not None:
            with self._lock:
                self.full_taken_at = scanned.taken_at
                self.durations.append(scanned.duration)
                del self.durations[:-1000]
        self.scans[kind] += 1
        if new is not old:
            if kind != "recheck" and self._recheck_at is None and incremental.kernel_held(new):
                self._recheck_at = time.monotonic() + RECHECK  # a user namespace dies a little after its last process
            events = events_between(old, new, time.time()) if old is not None else []
            with self._lock:
                if not self.naming.provisional:  # (decided just now, in this thread)
                    self._whole = new
                self.snapshot = new
            self.bus.publish(events)
            if self.mount_watch is not None:
                self.mount_watch.follow(new)
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def status(self) -> dict[str, object]:
        from namespacefs.service.status import status

        return status(self)
