"""Lifecycle events: what changed between two snapshots, one small JSON-able record per change, and
the bus that hands them to every subscriber (SSE clients, `nsfs watch`, metrics)."""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from namespacefs.discover import incremental
from namespacefs.model import Namespace, Snapshot, diff

#: Every event kind, in the order they are reported for one change.
KINDS: Final[tuple[str, ...]] = ("created", "renamed", "joined", "left", "destroyed")
#: What happens to namespaces (what `nsfs watch` shows unless asked for more); the other kinds,
#: joined and left, are process membership: one per namespace per fork and exit on a busy host.
LIFECYCLE: Final[tuple[str, ...]] = ("created", "renamed", "destroyed")


class Event(NamedTuple):
    """One change (a tuple: an update makes one per namespace a process joins or leaves, and a frozen
    dataclass costs several times more to make)."""

    kind: str  # one of KINDS
    time: float  # when the change was seen (seconds since the epoch)
    type: str
    inode: int
    id: int | None  # the 64-bit namespace id: the serial number that is never reused
    name: str | None
    pid: int | None = None  # joined/left: the process; created: the creating process where known
    comm: str | None = None
    command: str | None = None
    old_name: str | None = None  # renamed
    seq: int = 0  # position in the daemon's stream (SSE id)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"event": self.kind, "seq": self.seq, "time": self.time, "type": self.type,
                             "inode": self.inode, "id": self.id, "name": self.name}
        if self.pid is not None:
            d.update(pid=self.pid, comm=self.comm, command=self.command)
        if self.kind == "renamed":
            d["old_name"] = self.old_name
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Event:
        return Event(d["event"], d["time"], d["type"], d["inode"], d["id"], d.get("name"), d.get("pid"),
                     d.get("comm"), d.get("command"), d.get("old_name"), d.get("seq", 0))

    def describe(self) -> str:
        """One line for `nsfs watch`."""
        from datetime import datetime

        stamp = datetime.fromtimestamp(self.time).isoformat(timespec="milliseconds")
        ident = f"id={self.id}" if self.id is not None else "id=-"
        parts = [stamp, f"{self.kind:9}", f"{self.type}:[{self.inode}]", ident]
        if self.name:
            parts.append(f"name={self.name}" if self.kind != "renamed" else f"name={self.old_name}->{self.name}")
        if self.pid is not None:
            parts.append(f"pid={self.pid} comm={self.comm}")
        return " ".join(parts)


def _event(kind: str, now: float, ns: Namespace, snap: Snapshot, pid: int | None = None, **extra: Any) -> Event:
    proc = snap.processes.get(pid) if pid is not None else None
    return Event(kind, now, ns.type, ns.inode, ns.id, ns.name, pid, proc.comm if proc else None,
                 proc.command if proc else None, **extra)


def creator(ns: Namespace, snap: Snapshot) -> int | None:
    """The process that most likely made the namespace: the oldest (lowest pid) of those found in
    it or holding it when it first appeared; None for namespaces nothing but a mount or fd of an
    unknown process holds."""
    pids = set(ns.processes) or {h.pid for h in ns.holders if h.pid is not None}
    return min(pids) if pids else None


def own_helpers(snap: Snapshot, me: int | None = None) -> set[int]:
    """The processes of ours in a snapshot: children of this process (`me`) that are forks of it,
    not programs it ran (the same command line): discovery's second reader, which the daemon forks
    on every rescan and which would otherwise join and leave all its namespaces each time."""
    me = os.getpid() if me is None else me
    mine = snap.processes.get(me)
    if mine is None:
        return set()
    return {p.pid for p in snap.processes.values() if p.ppid == me and p.cmdline == mine.cmdline}


def events_between(old: Snapshot, new: Snapshot, now: float) -> list[Event]:
    """The lifecycle events that turn `old` into `new` (keyed on the 64-bit id where there is one).
    Our own helper processes (own_helpers) are in no event."""
    d = diff(*_changed(old, new), moved=incremental.moved(old, new))
    me = os.getpid()

    def ours(pid: int) -> bool:  # (own_helpers, asked of the processes in an event only)
        return _helper(old, pid, me) or _helper(new, pid, me)

    out = [_event("created", now, ns, new, creator(ns, new)) for ns in d.appeared]
    out += [_event("renamed", now, b, new, old_name=a.name) for a, b in d.changed if a.name != b.name]
    out += [_event("joined", now, ns, new, pid) for pid, ns in d.joined if not ours(pid)]
    out += [_event("left", now, ns, old, pid) for pid, ns in d.left if not ours(pid)]
    out += [_event("destroyed", now, ns, old) for ns in d.vanished]
    return out


def _helper(snap: Snapshot, pid: int, me: int) -> bool:
    """own_helpers(snap, me) holds pid."""
    proc, mine = snap.processes.get(pid), snap.processes.get(me)
    return proc is not None and mine is not None and proc.ppid == me and proc.cmdline == mine.cmdline


def _changed(old: Snapshot, new: Snapshot) -> tuple[Snapshot, Snapshot]:
    """old and new with only the namespaces that are not the same object in both: an update keeps
    every namespace it did not touch, and one kept makes no event (the diff of those alone is the
    diff of the whole, at the cost of what changed: what the refresh behind `new` says it changed,
    where it says so)."""
    before, after = old.namespaces, new.namespaces
    known = incremental.changes(old, new)
    if known is not None:
        return (old.replace(namespaces={i: ns for i in known if (ns := before.get(i)) is not None and after.get(i) is not ns}),
                new.replace(namespaces={i: ns for i in known if (ns := after.get(i)) is not None and before.get(i) is not ns}))
    return (old.replace(namespaces={i: ns for i, ns in before.items() if after.get(i) is not ns}),
            new.replace(namespaces={i: ns for i, ns in after.items() if before.get(i) is not ns}))


class Bus:
    """Fan-out of events to subscribers. A subscriber is a callable taking a list of events; it runs
    in the publisher's thread and must not block (it hands the events over to its own queue).
    The last `keep` events are kept so a client can resume (SSE Last-Event-ID)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, Callable[[list[Event]], None]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.recent: deque[Event] = deque(maxlen=keep)
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, type) -> events published

    def subscribe(self, callback: Callable[[list[Event]], None]) -> int:
        with self._lock:
            token = next(self._ids)
            self._subscribers[token] = callback
            return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subscribers.pop(token, None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, events: Iterable[Event]) -> list[Event]:
        with self._lock:
            numbered = [_numbered(e, next(self._seq)) for e in events]
            if not numbered:
                return numbered
            self.recent.extend(numbered)
            self.counts.update((e.kind, e.type) for e in numbered)
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            callback(numbered)
        return numbered

    def since(self, seq: int) -> list[Event]:
        with self._lock:
            return [e for e in self.recent if e.seq > seq]


def _numbered(e: Event, seq: int) -> Event:
    return Event._make((*e[:-1], seq))
