"""What tells the live model that something changed: the kernel's proc connector (fork, exec, exit,
new threads), the syscall tracepoints (unshare, setns; clone and clone3 where there is no proc
connector; namespacefs.tracing) and the mount tables (service.mounttables). The first two have no
thread of their own: the updater reads them (`Listener`, one epoll) and hands their pids to
`touch`; the mount tables keep one (see there why). An overrun (events the kernel dropped) asks
for a full rescan. Where a mechanism is missing, `error` says why, and the model relies on the
sweep and the full rescans for that part alone."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from namespacefs import _events, kernel, tracing

log = logging.getLogger("namespacefs.service")

Touch = Callable[[Iterable[int]], None]
Rescan = Callable[[str], None]
#: Seconds the updater waits at most with nothing due (how long it may take to see a stop that
#: rang no bell).
WAKE = 1.0
#: Datagrams (one event each) the proc connector is read for at most in one drain (a fork storm
#: must not keep the updater reading: what is left is read at the next).
BATCH = 4096


def name_thread(name: str) -> None:
    """Give the calling thread's OS thread this name (/proc/PID/task/TID/comm, what `top -H` and
    `ps -L` show): what each of the daemon's threads costs can be seen from outside."""
    with contextlib.suppress(OSError), open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(name[:15])


class Watcher:
    """A source of pids to re-read: fds to wait on (`fds`) and what is queued on them, handed to
    `touch` (`drain`), read by the updater's thread (`Listener`)."""

    name = "watcher"

    def __init__(self, touch: Touch, rescan: Rescan) -> None:
        self.touch, self.rescan = touch, rescan
        self.error: str | None = None  # why it does not run, if it does not
        self.counts: Counter[str] = Counter()  # what it saw, by kind
        self.overruns = 0
        self.started = False
        self._drained = time.time()  # every event before this was handed to touch()
        self._waiting: object | None = None  # a new token each time the updater waits, all drained

    @property
    def drained_at(self) -> float:
        """The time up to which every event was handed to touch(): when a drain last found nothing
        more to read; or, while the updater waits on it with nothing read since (the same wait
        before and after the check) and nothing is pending, now."""
        token = self._waiting
        if token is None:
            return self._drained
        asked = time.time()
        return asked if not self.pending() and self._waiting is token else self._drained

    @drained_at.setter
    def drained_at(self, when: float) -> None:
        self._drained = when

    def pending(self) -> bool:
        """Something is queued that no drain has read (True where that cannot be asked)."""
        return True

    def fds(self) -> list[int]:
        """What to wait on for events (readable: something to drain)."""
        return []

    def drain(self) -> None:
        """Hand everything queued to touch() (then set drained_at: touch() reads the time before)."""

    @property
    def running(self) -> bool:
        return self.started and self.error is None

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.close()

    def _overrun(self, what: str) -> None:
        self.overruns += 1
        if self.overruns in (1, 10, 100) or self.overruns % 1000 == 0:  # not a line per overrun
            log.warning("%s overrun (%d so far): events were lost; rescanning", what, self.overruns)
        self.rescan("overrun")

    def close(self) -> None:
        pass


class Listener:
    """Every watcher, read by the updater's own thread: one epoll over their fds, and a bell (an
    eventfd) that other threads ring to wake it. While events already touched wait for their
    update (`debounce`), the watchers' fds are not waited on (the kernel queues what comes), and
    everything queued is drained just before the update takes the touched processes: one wake-up
    per update instead of a thread's wake-up, and a hand-over of the GIL, per event."""

    def __init__(self, watchers: Iterable[Watcher]) -> None:
        self.watchers = [w for w in watchers if w.error is None]
        self.wakes = 0  # waits that ended with a watcher readable
        self._bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._all, self._bell_only = select.epoll(), select.epoll()
        for poller in (self._all, self._bell_only):
            poller.register(self._bell, select.EPOLLIN)
        self._fds: dict[int, Watcher] = {}
        for w in self.watchers:
            for fd in w.fds():
                self._all.register(fd, select.EPOLLIN)
                self._fds[fd] = w

    def ring(self) -> None:
        """Wake the thread that waits (from another thread)."""
        with contextlib.suppress(OSError, ValueError):
            os.eventfd_write(self._bell, 1)

    def wait(self, timeout: float, events: bool) -> bool:
        """Until the bell rings, `timeout` seconds pass, or (with `events`) a watcher has something
        to read (True); meanwhile, with `events`, each watcher is drained up to the moment it is
        asked."""
        timeout = min(max(timeout, 0.0), WAKE) if math.isfinite(timeout) else WAKE
        readable = False
        if not events:
            self._bell_only.poll(timeout)
        else:
            for w in self.watchers:
                w._waiting = object()
            try:
                ready = self._all.poll(timeout)
            finally:
                for w in self.watchers:
                    w._waiting = None
            readable = any(fd != self._bell for fd, _mask in ready)
            self.wakes += readable
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._bell)
        return readable

    def drain(self) -> None:
        """Every watcher that runs hands what is queued to its touch(); one that fails stops being
        waited on (its error says why; a bug in one must not stop the updater that reads them)."""
        for w in self.watchers:
            if w.running:
                try:
                    w.drain()
                except Exception as e:
                    w.error = f"{w.name} failed ({e!r})"
                    log.exception("%s; relying on the sweep and full rescans", w.error)
                if w.error is not None:
                    for fd in [fd for fd, owner in self._fds.items() if owner is w]:
                        with contextlib.suppress(OSError):
                            self._all.unregister(fd)
                        del self._fds[fd]

    def close(self) -> None:
        for poller in (self._all, self._bell_only):
            poller.close()
        with contextlib.suppress(OSError):
            os.close(self._bell)


class ProcConnector(Watcher):
    """fork, exec and exit of every process, and each new thread (its process is re-read: a thread
    made with CLONE_NEW* flags has namespaces of its own; the kernel sends the event once the new
    task has them). A thread's exit is left to the sweep."""

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

    def fds(self) -> list[int]:
        return [self.sock.fileno()] if self.sock is not None else []

    def drain(self) -> None:
        """What is queued, read and parsed in C (namespacefs._events: a fork storm costs its
        syscalls, not Python objects per event)."""
        assert self.sock is not None
        asked = time.time()
        pids, counts, overruns, err, drained = _events.proc_events(self.sock.fileno(), BATCH)
        for name, n in zip(("fork", "exec", "exit", "thread"), counts, strict=True):
            if n:
                self.counts[name] += n
        if pids:
            self.touch(pids)
        if overruns:  # the kernel dropped events: we no longer know what changed
            self._overrun("netlink")
        if err:
            self.error = f"proc connector failed ({os.strerror(err)})"
            log.error("%s; relying on the sweep and full rescans", self.error)
        elif drained:  # nothing more queued: every event before `asked` was handled
            self.drained_at = asked

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
    """Successful unshare() and setns() of every process, and clone() and clone3() where asked
    (`clones`: there is no proc connector, which names every new process and thread itself): the
    caller is re-read, or for a clone that made a process, that process (`_changed`)."""

    name = "tracepoints"

    def __init__(self, touch: Touch, rescan: Rescan, enabled: bool = True, clones: bool = True) -> None:
        super().__init__(touch, rescan)
        self.tracer: tracing.Tracer | None = None
        self._me, self._lost = os.getpid(), 0
        if not enabled:
            self.error = "syscall tracepoints not used (disabled)"
            return
        self.tracer, self.error = tracing.open_tracer(clones)
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

    def fds(self) -> list[int]:
        return [ring.fd for ring in self.tracer.rings] if self.tracer is not None else []

    def drain(self) -> None:
        assert self.tracer is not None
        tracer = self.tracer
        try:
            calls = tracer.calls()
        except OSError as e:
            self.error = f"syscall tracepoints failed ({e})"
            log.error("%s; relying on the sweep and full rescans", self.error)
            return
        if tracer.lost > self._lost:
            self._lost = tracer.lost
            self._overrun("tracepoint")
        self.counts.update(c.syscall for c in calls)
        pids = {_changed(c) for c in calls if c.pid != self._me}  # our own threads and scan children are forks of ours
        if pids:
            self.touch(pids)
        self.drained_at = tracer.read_at

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
