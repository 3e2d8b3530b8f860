"""What the live model (service.live.Live) answers with: the current snapshot, its JSON, the time
it is current up to, what is derived from it, and its status. The updater's side is in
service.live."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from namespacefs.model import Snapshot
from namespacefs.service.naming import Naming, db_stamp, names_path
from namespacefs.service.served import Served
from namespacefs.service.watchers import Watched


class Reading(Watched):
    """The reading half of Live (which sets every attribute below)."""

    snapshot: Snapshot | None
    served: Served
    naming: Naming
    names_db: str | None
    durations: list[float]
    _whole: Snapshot | None
    _waiting_since: float | None
    _lock: threading.Lock
    _cond: threading.Condition

    _generation: int

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

    def current(self) -> Snapshot:
        snap = self.snapshot
        if snap is None:
            raise RuntimeError("no snapshot yet")
        return snap

    def snapshot_json(self, live_time: bool = False) -> bytes:
        """Snapshot.to_dict() as JSON, made once per snapshot (service.served); with live_time, its
        taken_at is as_of() (what GET /api/snapshot serves)."""
        as_of = self.as_of() if live_time else None  # first: the model read next is at least that new
        return self.served.snapshot_json(self.current(), as_of)

    def as_of(self) -> float:
        """The time up to which the model has applied every event: when each watcher last found
        nothing more to read, or, if processes touched are still waiting to be re-read, when the
        first of them was touched. Without watchers, when the model last changed. Changes no event
        reports reach it within the sweep (`sweep` seconds)."""
        watchers = self._watchers()
        if not watchers:
            return self.current().taken_at
        with self._cond:
            waiting = self._waiting_since
        drained = min(w.drained_at for w in watchers)
        return drained if waiting is None else min(drained, waiting)

    def derived(self, what: str, compute: Callable[[Snapshot], Any]) -> Any:
        """compute(snapshot), made once per snapshot (containers, overlaps, ...)."""
        return self.served.derived(self.current(), what, compute)

    def take_durations(self) -> list[float]:
        """The scan durations since the last call (for the metrics histogram)."""
        with self._lock:
            taken, self.durations = self.durations, []
        return taken

    def whole_named(self) -> Snapshot:
        """The model, named by a whole naming pass over its namespaces (as a scan of our own is
        named): between two whole passes after namespaces came or went, the model's names are
        provisional; then it is named here, once per model (what `nsfs ls` prints through the
        daemon, service.listing). Names stale after a change of processes alone are served as
        they are (service.naming: they follow within STALE_AFTER)."""
        snap = self.current()
        if snap is self._whole or self.naming.name_func is None:
            return snap
        named: Snapshot = self.derived("whole-named", self.naming.name_func)
        return named

    def names_path(self) -> str:
        """The names database the model is named with."""
        return names_path(self.names_db)


    def _db_stamp(self) -> tuple[float, int] | None:
        return db_stamp(self.names_path())
