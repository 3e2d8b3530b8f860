"""The sweep of the live model: every known process re-read (with the bind mounts of its mount
namespace), a slice at a time, for what changes without an event (an fd passed or closed, a
socket, a bind mount, a thread's setns), and every process /proc has that the model has not (an
event missed, or no proc connector).

A round is wanted every `period` seconds. With a `budget` (a fraction of one core: the default of
`nsfs serve`), what the slices cost is measured (CPU seconds of the update each was in: more than
the slice's own when events were re-read with it, so churn slows the sweep down) and the sweep
slows down to stay within it: slices grow until one costs about SLICE_COST (a re-read has a small
fixed cost of its own, so slices are not made smaller than needed, and none holds events up for
long; under churn a slice waits for a pause in the events, service.live), and the next slice
waits cost / budget. A round then takes
`round_bound` seconds, which /api/status reports: the bound on how late a silent change is seen.
Without a budget (`--sweep SECONDS` given) the period is kept whatever it costs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection

from namespacefs import tables
from namespacefs.discover import incremental
from namespacefs.model import Snapshot

#: CPU seconds one slice may cost, with a budget: a few updates for events, so a slice holds the
#: events that come while it runs up by half their 20 ms at most. A slice's job has a fixed cost
#: of its own (1-3 ms at 5,000 namespaces; more right after a whole naming pass): with much smaller
#: slices that would be most of their cost, and a round would take many times longer.
SLICE_COST = 0.01
#: `nsfs serve` without --sweep: a round at most this often, within this share of one core.
DEFAULT_PERIOD, DEFAULT_BUDGET = 30.0, 0.005


def settings(given: float | None) -> tuple[float, float | None]:
    """(period, budget) for `--sweep SECONDS` (kept, whatever it costs) or its absence (the default
    period, slowed down to the default budget)."""
    return (DEFAULT_PERIOD, DEFAULT_BUDGET) if given is None else (given, None)


class Sweep:
    def __init__(self, period: float | None, budget: float | None = None) -> None:
        if budget is not None and not 0 < budget <= 1:
            raise ValueError("the sweep's budget is a fraction of a core in (0, 1]")
        self.period, self.budget = period, budget  # period None: no sweep
        self.due = math.inf  # time.monotonic() of the next slice
        self.wait = self.shortest  # seconds from one slice to the next
        self.cost = 0.0  # CPU seconds the last slice took
        self.slices = 0  # slices done
        self.rounds: list[float] = []  # how long the last rounds took
        self._todo: list[int] = []
        self._size = 0  # processes per slice (0: as the period asks)
        self._known = 0
        self._taken = 0  # processes in the slice being read
        self._round_start = time.monotonic()

    def start(self, now: float) -> None:
        self.due = now + self.shortest if self.period is not None else math.inf

    @property
    def shortest(self) -> float:
        """The shortest wait between two slices (a second, or the period if shorter)."""
        return min(1.0, self.period) if self.period is not None else math.inf

    @property
    def left(self) -> int:
        """Processes the current round has still to re-read."""
        return len(self._todo)

    @property
    def round_bound(self) -> float | None:
        """Seconds a round takes at the current pace: every process is re-read within that."""
        if self.period is None:
            return None
        size = self._size or self._period_size(self._known)
        return max(self.period, math.ceil(self._known / max(size, 1)) * self.wait) if self._known else self.period

    def _period_size(self, known: int) -> int:
        return max(1, math.ceil(known * self.shortest / (self.period or self.shortest)))

    def slice(self, known: Collection[int]) -> set[int]:
        """The next slice of known processes, with the new processes /proc lists on top."""
        self.due = math.inf  # until done() says how long this one took
        if not self._todo:
            if self.slices:
                self.rounds = [*self.rounds[-9:], time.monotonic() - self._round_start]
            self._round_start = time.monotonic()
            self._todo = sorted(known, reverse=True)
            self._known = len(self._todo)
        size = min(self._size or self._period_size(self._known), len(self._todo))
        part = set(self._todo[-size:])
        del self._todo[-size:]
        self._taken = len(part)
        return part | {int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in known}

    def done(self, cost: float) -> None:
        """The slice was read; it took `cost` CPU seconds. When is the next one."""
        self.slices += 1
        self.cost = cost
        if self.budget is not None and self._taken:
            # the size that costs about SLICE_COST, and the wait that keeps its cost within the
            # budget (but no sooner than the period asks). A slice's job has a fixed cost too, so
            # the scaled size is too small while it dominates: a slice that cost less than
            # SLICE_COST grows by one at least (else one of one process that cost half of it
            # stays one forever)
            scaled = int(self._taken * SLICE_COST / max(cost, 1e-4))
            if cost < SLICE_COST:
                scaled = max(scaled, self._taken + 1)
            self._size = max(1, min(scaled, 2 * self._taken, self._known or 1))
            self.wait = max(self.shortest, cost / self.budget,
                            (self.period or 0) * self._taken / max(self._known, 1))
        self.due = time.monotonic() + self.wait

    def status(self) -> dict[str, object]:
        return {"running": self.period is not None, "period": self.period, "budget": self.budget,
                "left_in_round": self.left, "slice": self._size or (self._period_size(self._known) if self._known else 0),
                "wait": self.wait, "slice_cpu": self.cost, "round_bound": self.round_bound,
                "last_rounds": [round(r, 3) for r in self.rounds]}


def unread_mounts(old: Snapshot, new: Snapshot) -> set[int]:
    """A process in each mount namespace `new` has and `old` had not, whose mount table was not read
    (an update for process events reads no mount tables): re-read with its table, the new
    namespace's bind mounts and mount count are in the model at once, as a scan has them."""
    changed = incremental.changes(old, new)
    came = ({i for i in changed if i not in old.namespaces} if changed is not None
            else tables.missing(new.namespaces, old.namespaces))
    fresh = (new.namespaces[inode] for inode in came if inode in new.namespaces)
    return {ns.processes[0] for ns in fresh if ns.type == "mnt" and ns.mounts is None and ns.processes}
