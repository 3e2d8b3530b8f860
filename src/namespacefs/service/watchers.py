"""What tells the live model that something changed: the kernel's proc connector (fork, exec, exit)
and the syscall tracepoints (unshare, setns, clone; namespacefs.tracing). Each runs in a thread of
its own and hands pids to `touch`; an overrun (events the kernel dropped) asks for a full rescan.
Where a mechanism is missing, `error` says why, and the model relies on the sweep and the full
rescans for that part alone."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from namespacefs import kernel, tracing

log = logging.getLogger("namespacefs.service")

Touch = Callable[[Iterable[int]], None]
Rescan = Callable[[str], None]
#: Seconds a watcher sleeps at most (how long its thread takes to stop). While it sleeps with
#: nothing left to read, its drained_at is the time it is asked (`Watcher.drained_at`), so the
#: model's as-of time does not lag on a host where nothing happens.
WAKE = 1.0
#: Datagrams (one event each) the proc connector's thread reads before it hands their pids over, at
#: most (all there are when fewer are queued).
BATCH = 64
_PROC_EVENTS = {kernel.PROC_EVENT_FORK: "fork", kernel.PROC_EVENT_EXEC: "exec", kernel.PROC_EVENT_EXIT: "exit"}


def name_thread(name: str) -> None:
    """Give the calling thread's OS thread this name (/proc/PID/task/TID/comm, what `top -H` and
    `ps -L` show): what each of the daemon's threads costs can be seen from outside."""
    with contextlib.suppress(OSError), open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(name[:15])


class Watcher:
    """A source of pids to re-read, in a thread."""

    name = "watcher"

    def __init__(self, touch: Touch, rescan: Rescan) -> None:
        self.touch, self.rescan = touch, rescan
        self.error: str | None = None  # why it does not run, if it does not
        self.counts: Counter[str] = Counter()  # what it saw, by kind
        self.overruns = 0
        self._drained = time.time()  # every event before this was handed to touch()
        self._waiting: object | None = None  # a new token each time the thread waits, having drained all
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def drained_at(self) -> float:
        """The time up to which every event was handed to touch(): when the thread last found
        nothing more to read; or, while it waits with nothing read since (the same wait before and
        after the check) and nothing is pending, now."""
        token = self._waiting
        if token is None:
            return self._drained
        asked = time.time()
        return asked if not self.pending() and self._waiting is token else self._drained

    @drained_at.setter
    def drained_at(self, when: float) -> None:
        self._drained = when

    def pending(self) -> bool:
        """Something is queued that the thread has not read (True where that cannot be asked)."""
        return True

    def _wait(self, wait: Callable[[], object]) -> None:
        """wait() for events, having handed over everything up to drained_at."""
        self._waiting = object()
        try:
            wait()
        finally:
            self._waiting = None

    def ask_stop(self) -> None:
        """Tell the thread to end (within WAKE); stop() waits for it."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self.error is None

    def start(self) -> None:
        if self.error is None:
            self._thread = threading.Thread(target=self._named_run, name=f"nsfs-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.close()

    def _overrun(self, what: str) -> None:
        self.overruns += 1
        if self.overruns in (1, 10, 100) or self.overruns % 1000 == 0:  # not a line per overrun
            log.warning("%s overrun (%d so far): events were lost; rescanning", what, self.overruns)
        self.rescan("overrun")

    def _named_run(self) -> None:
        name_thread(f"nsfs-{self.name}")
        self._run()

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ProcConnector(Watcher):
    """fork, exec and exit of every process (threads are left to the sweep)."""

    name = "netlink"

    def __init__(self, touch: Touch, rescan: Rescan, enabled: bool = True, rcvbuf: int = 8 << 20) -> None:
        super().__init__(touch, rescan)
        self.sock: socket.socket | None = None
        if not enabled:
            self.error = "proc connector not used (disabled)"
            return
        try:
            self.sock = kernel.proc_connector_open(rcvbuf)
        except OSError as e:
            self.error = f"proc connector unavailable ({e.strerror or e})"
            log.warning("%s", self.error)

    def _run(self) -> None:
        assert self.sock is not None
        sock = self.sock
        pids: list[int] = []  # (handed over once per drain, or per BATCH datagrams: one wake-up of the updater)
        read = 0
        while not self._stop.is_set():
            if pids and read >= BATCH:
                self.touch(pids)
                pids, read = [], 0
            try:
                asked = time.time()
                data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:  # nothing queued: every event before `asked` was handled
                if pids:
                    self.touch(pids)
                    pids, read = [], 0
                self.drained_at = asked
                self._wait(lambda: select.select([sock], [], [], WAKE))
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped events: we no longer know what changed
                    self._overrun("netlink")
                    continue
                if not self._stop.is_set():
                    self.error = f"proc connector failed ({e})"
                    log.error("%s; relying on the sweep and full rescans", self.error)
                return
            read += 1
            for what, pid, tgid in kernel.parse_proc_events(data):
                name = _PROC_EVENTS.get(what)
                if name is None or pid != tgid:
                    continue
                self.counts[name] += 1
                pids.append(pid)

    def pending(self) -> bool:
        sock = self.sock
        if sock is None:
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # (closed as the daemon stops)
            return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class Tracepoints(Watcher):
    """Successful unshare(), setns(), clone() and clone3() of every process (the caller is re-read,
    or for a clone that made a process, that process: `_changed`)."""

    name = "tracepoints"

    def __init__(self, touch: Touch, rescan: Rescan, enabled: bool = True) -> None:
        super().__init__(touch, rescan)
        self.tracer: tracing.Tracer | None = None
        if not enabled:
            self.error = "syscall tracepoints not used (disabled)"
            return
        self.tracer, self.error = tracing.open_tracer()
        if self.error:
            log.warning("%s", self.error)

    def pending(self) -> bool:
        try:
            return self.tracer is None or self.tracer.pending()
        except (OSError, ValueError):  # (closed as the daemon stops)
            return True

    @property
    def mounted_tracefs(self) -> str | None:
        return self.tracer.mounted if self.tracer is not None else None

    def _run(self) -> None:
        assert self.tracer is not None
        tracer, me, lost = self.tracer, os.getpid(), 0
        while not self._stop.is_set():
            try:
                self._wait(lambda: tracer.wait(WAKE))
                calls = tracer.calls()
            except OSError as e:
                self.error = f"syscall tracepoints failed ({e})"
                log.error("%s; relying on the sweep and full rescans", self.error)
                return
            if self.tracer.lost > lost:
                lost = self.tracer.lost
                self._overrun("tracepoint")
            self.counts.update(c.syscall for c in calls)
            pids = {_changed(c) for c in calls if c.pid != me}  # our own threads and scan children are forks of ours
            if pids:
                self.touch(pids)
            self.drained_at = self.tracer.read_at

    def close(self) -> None:
        if self.tracer is not None:
            self.tracer.close()


def _changed(call: tracing.Call) -> int:
    """The process to re-read for a call: its caller (unshare, setns: its namespaces changed; a
    clone that made a thread: a thread may have namespaces of its own, which the caller's re-read
    finds among its tasks), but for a clone that made a process, that process (the caller did not
    change; the proc connector names the child too, and without it this is how it is seen). A
    clone's return value is the child's id in the caller's pid namespace: where that is not ours,
    the caller."""
    if not call.syscall.startswith("clone") or call.ret <= 0:
        return call.pid
    try:
        if os.readlink(f"/proc/{call.pid}/ns/pid") != _OUR_PID_NS or os.path.exists(f"/proc/{call.pid}/task/{call.ret}"):
            return call.pid
    except OSError:  # the caller is gone: what it made is read through its own events
        return call.pid
    return call.ret


_OUR_PID_NS = os.readlink("/proc/self/ns/pid")


class Watched:
    """What a live model knows of its watchers (for its status and metrics): the proc connector,
    the tracepoints and the mount tables (service.mounttables), each None until started."""

    netlink_watch: ProcConnector | None = None
    trace_watch: Tracepoints | None = None
    mount_watch: Watcher | None = None

    @property
    def netlink(self) -> bool:
        return self.netlink_watch is not None and self.netlink_watch.running

    @property
    def netlink_error(self) -> str | None:  # (why there is no proc connector)
        return self.netlink_watch.error if self.netlink_watch is not None else None

    @property
    def tracing(self) -> bool:
        return self.trace_watch is not None and self.trace_watch.running

    @property
    def overruns(self) -> int:
        return sum(w.overruns for w in (self.netlink_watch, self.trace_watch) if w is not None)

    @property
    def proc_events(self) -> Counter[str]:  # (fork, exec, exit)
        return self.netlink_watch.counts if self.netlink_watch is not None else Counter()

    def _watchers(self) -> list[Watcher]:
        """The event watchers that run: every change they report up to their drained_at is applied
        (the as-of time of the model). The mount-table poll is not among them: mount changes are
        rare, and its drained_at, like theirs, lags up to WAKE when nothing happens."""
        return [w for w in (self.netlink_watch, self.trace_watch) if w is not None and w.running]
