"""The sweep of the live model: every known process re-read (with the bind mounts of its mount
namespace) once per `period` seconds, a slice per tick, for what changes without an event (an fd
passed or closed, a socket, a bind mount, a thread's setns), and every process /proc has that the
model has not (an event missed, or no proc connector)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection

from namespacefs.model import Snapshot


class Sweep:
    def __init__(self, period: float | None) -> None:
        self.period = period  # None: no sweep
        self.due = math.inf  # time.monotonic() of the next slice
        self._todo: list[int] = []
        self._size = 1

    def start(self, now: float) -> None:
        self.due = now + self.tick if self.period is not None else math.inf

    @property
    def tick(self) -> float:
        """Seconds between two slices."""
        return min(1.0, self.period) if self.period is not None else math.inf

    @property
    def left(self) -> int:
        """Processes the current round has still to re-read."""
        return len(self._todo)

    def slice(self, known: Collection[int]) -> set[int]:
        """The next slice: a round re-reads each of `known` once per period, in slices of an equal
        share per tick, with the new processes /proc lists on top."""
        tick = self.tick
        self.due = time.monotonic() + tick
        if not self._todo:
            self._todo = sorted(known, reverse=True)
            self._size = max(1, math.ceil(len(self._todo) * tick / (self.period or tick)))
        part = set(self._todo[-self._size:])
        del self._todo[-self._size:]
        return part | {int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in known}


def unread_mounts(old: Snapshot, new: Snapshot) -> set[int]:
    """A process in each mount namespace `new` has and `old` had not, whose mount table was not read
    (an update for process events reads no mount tables): re-read with its table, the new
    namespace's bind mounts and mount count are in the model at once, as a scan has them."""
    return {ns.processes[0] for inode, ns in new.namespaces.items()
            if ns.type == "mnt" and ns.mounts is None and ns.processes and inode not in old.namespaces}
