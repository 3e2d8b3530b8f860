"""At rest the live model costs a sweep slice now and then, and nothing more: a slice that found
nothing changed makes no naming pass and no event. Counted, not timed: the model runs in this
process over a world of our own (a scan of the host narrowed to processes we started, and re-reads
of those alone), so what other work on the machine does cannot change it; the sweep is real, and
so are its re-reads of our processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from namespacefs.discover import discover, incremental
from namespacefs.model import Snapshot
from namespacefs.service.events import Event
from namespacefs.service.live import Live
from namespacefs.service.scanning import core_name
from test_service import Holder


def _ours(snap: Snapshot, pids: set[int]) -> Snapshot:
    """The snapshot narrowed to our processes, their namespaces and those namespaces' owners."""
    keep = {inode for pid in pids if pid in snap.processes for inode in snap.processes[pid].namespaces.values()}
    todo = list(keep)
    while todo:
        ns = snap.namespaces.get(todo.pop())
        for up in (ns.owner, ns.parent) if ns is not None else ():
            if up is not None and up not in keep:
                keep.add(up)
                todo.append(up)
    namespaces = {}
    for inode in keep:
        if (ns := snap.namespaces.get(inode)) is not None:
            holders = tuple(h for h in ns.holders if h.pid in pids)
            namespaces[inode] = ns._replace(holders=holders, processes=tuple(p for p in ns.processes if p in pids))
    return snap.replace(namespaces=namespaces, processes={p: snap.processes[p] for p in pids if p in snap.processes})


class World:
    def __init__(self, holders: list[Holder]) -> None:
        self.pids = {h.pid for h in holders}
        self.named = 0
        self.events: list[Event] = []

    def scan(self) -> Snapshot:
        return _ours(discover(), self.pids)

    def refresh(self, snap: Snapshot, pids: Iterable[int], **kw: Any) -> Snapshot:
        return incremental.refresh(snap, set(pids) & self.pids, mounts=kw.get("mounts", False), recheck=False)

    def name(self, snap: Snapshot) -> Snapshot:
        self.named += 1
        return core_name(snap)


def test_sweep_slices_that_find_nothing_changed_make_no_naming_pass_and_no_event(tmp_path: Any,
                                                                                monkeypatch: Any) -> None:
    holders = [Holder("--uts", "--ipc"), Holder("--user", "--map-root-user", "--uts")]
    world = World(holders)
    monkeypatch.setenv("NSFS_DB", str(tmp_path / "names.db"))
    live = Live(scan=world.scan, refresh=world.refresh, name=world.name, netlink=False, trace=False,
                sweep=2.0, interval=3600, rename_every=3600, names_db=str(tmp_path / "names.db"))
    live.bus.subscribe(world.events.extend)
    try:
        live.start()
        assert world.named == 1  # the first model
        slices = live.sweeper.slices
        generation = live.generation
        deadline = time.monotonic() + 120
        while live.sweeper.slices < slices + 8:  # eight ticks of the sweep, each re-reading our processes
            assert time.monotonic() < deadline, "the sweep did not tick"
            time.sleep(0.1)
        assert (world.named, world.events) == (1, [])
        assert live.generation > generation  # (each slice is an update that left the model as it was)
        assert live.current() is live.whole_named()
        # the same counts see a change: one of ours ends, a slice re-reads it
        holders[0].kill()
        deadline = time.monotonic() + 60
        while not any(e.kind == "destroyed" for e in world.events):
            assert time.monotonic() < deadline, "the sweep did not see the end of a process"
            time.sleep(0.1)
        assert world.named >= 1
    finally:
        live.stop()
        for h in holders:
            h.kill()


def test_updates_for_events_never_wait_for_a_whole_naming_pass(tmp_path: Any, monkeypatch: Any) -> None:
    """Events first: a whole naming pass (slow here: 0.4 s each) runs in a job of its own, never in
    an update for events, and new namespaces are named at once by the pass over just them."""
    from namespacefs.service import naming

    first = Holder("--uts")
    world = World([first])
    monkeypatch.setenv("NSFS_DB", str(tmp_path / "names.db"))
    monkeypatch.setattr(naming, "WHOLE_EVERY", 0.0)  # a whole pass due after every change
    kinds: list[str] = []  # the job each whole pass ran in
    live = Live(scan=world.scan, refresh=world.refresh, name=world.name, netlink=False, trace=False,
                interval=3600, rename_every=3600, names_db=str(tmp_path / "names.db"))
    real_apply, real_whole = live._apply, live.naming._whole
    job: list[str] = [""]

    def apply(j: Any) -> Any:
        job[0] = j.kind
        return real_apply(j)

    def whole(raw: Snapshot, current: Snapshot | None) -> Snapshot:
        kinds.append(job[0])
        if job[0] != "initial":
            time.sleep(0.4)
        return real_whole(raw, current)

    monkeypatch.setattr(live, "_apply", apply)
    monkeypatch.setattr(live.naming, "_whole", whole)
    job[0] = "initial"
    made: list[Holder] = []
    try:
        live.start()
        late = []
        for _ in range(4):
            h = Holder("--uts", "--ipc")
            made.append(h)
            world.pids.add(h.pid)
            touched, generation = time.monotonic(), live.generation
            live.touch([h.pid])
            uts = h.ns("uts")[0]
            while (ns := live.current().get(uts)) is None:
                assert live.wait_scan(generation, 30), "no update"
                generation = live.generation
            late.append(time.monotonic() - touched)
            assert ns.name is not None and ns.name.startswith("uts-")  # named at once, provisionally
        deadline = time.monotonic() + 30
        while len(kinds) < 2:  # the whole pass that was made due
            assert time.monotonic() < deadline, "no whole naming pass followed"
            time.sleep(0.1)
        assert "process" not in kinds and len(kinds) >= 2, kinds  # whole passes ran, none for events
        assert min(late) < 0.4, late  # (an update for events waited for no 0.4 s pass)
    finally:
        live.stop()
        for h in (first, *made):
            h.kill()


def _listening(watchers: list[Any]) -> tuple[Any, Any, threading.Event]:
    """A Listener over `watchers`, waited on and drained by a thread of its own as the updater
    does while nothing is pending; (listener, thread, stop)."""
    from namespacefs.service.watchers import Listener

    listener, stop = Listener(watchers), threading.Event()
    for w in watchers:
        w.start()

    def loop() -> None:
        while not stop.is_set():
            listener.wait(10.0, events=True)
            listener.drain()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return listener, thread, stop


def test_a_watcher_at_rest_is_drained_up_to_now_though_it_is_waited_on_for_a_second() -> None:
    """The updater waits up to WAKE (a second) on the watchers when nothing happens; asked
    meanwhile with nothing queued, a watcher is drained up to the moment it is asked (the model's
    as-of time does not lag at rest)."""
    from namespacefs.service import watchers

    assert watchers.WAKE >= 1.0
    touched: list[int] = []
    w = watchers.ProcConnector(touched.extend, lambda reason: None)
    if w.error:
        pytest.skip(w.error)
    listener, thread, stop = _listening([w])
    try:
        time.sleep(0.3)
        lags = []
        for _ in range(15):
            time.sleep(0.13)
            lags.append(time.time() - w.drained_at)
        assert max(lags) < 0.1, lags
    finally:
        stop.set()
        listener.ring()
        thread.join(5)
        listener.close()
        w.stop()


@contextlib.contextmanager
def _settled_live(debounce: float) -> Iterator[Any]:
    """A live model of this host with the proc connector, unnamed, its first updates done."""
    live = Live(scan=discover, refresh=incremental.refresh, name=None, debounce=debounce, interval=3600)
    if not live.want_netlink:
        pytest.skip("no proc connector")
    live.start()
    try:
        if not live.netlink:
            pytest.skip(live.netlink_error or "no proc connector")
        time.sleep(1.0)  # (the first updates of a new model, and what the host does, settle)
        yield live
    finally:
        live.stop()


def test_events_that_wait_for_their_update_are_read_with_it_not_one_wake_up_each() -> None:
    """Forks and exits during the debounce of a live model are not each a wake-up of its updater:
    the first wakes it, the rest are read when the update takes them, all in that one update."""
    with _settled_live(debounce=0.5) as live:
        wakes, updates = live.listener.wakes, live.scans["process"]
        procs = [subprocess.Popen(["true"]) for _ in range(20)]
        for p in procs:
            p.wait()
        pids = {p.pid for p in procs}
        assert live.wait_scan(live.generation, 5)
        seen = live.listener.wakes - wakes
        assert all(pid in live._touched_since_full for pid in pids), "an event was not read"
        assert seen <= 3 and live.scans["process"] - updates <= 3, (seen, live.scans)


def test_under_churn_each_update_takes_what_came_since_the_last_without_a_wake_up_for_it() -> None:
    """While events keep coming, the update after one for events is due `debounce` after it and
    takes what came meanwhile: the updater is not woken at the first event of each batch (the
    wake-up cost as much as a small update, and fell into step with periodic churn)."""
    with _settled_live(debounce=0.2) as live:
        wakes, updates = live.listener.wakes, live.scans["process"]
        pids = set()
        for _ in range(40):  # (2 s: ten debounces, four processes each)
            proc = subprocess.Popen(["true"])
            proc.wait()
            pids.add(proc.pid)
            time.sleep(0.05)
        time.sleep(0.6)  # (the last of them taken: three debounces)
        seen, made = live.listener.wakes - wakes, live.scans["process"] - updates
        assert pids <= live._touched_since_full, "an event was not read"
        assert seen <= 3 and made <= 14, (seen, made)


def test_a_watcher_that_fails_while_drained_is_set_aside_and_the_others_are_still_read() -> None:
    """The updater reads every watcher itself: one that raises (a bug, a record it cannot parse)
    gets an error and is no longer waited on; the updater and the other watchers go on."""
    from namespacefs.service.watchers import Listener, Watcher

    class Broken(Watcher):
        name = "broken"

        def __init__(self) -> None:
            super().__init__(lambda pids: None, lambda reason: None)
            self.fd = os.eventfd(1, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # (readable at once)

        def fds(self) -> list[int]:
            return [self.fd]

        def drain(self) -> None:
            raise ValueError("a record it cannot parse")

    class Counting(Watcher):
        name = "counting"
        drains = 0

        def drain(self) -> None:
            self.drains += 1

    broken, counting = Broken(), Counting(lambda pids: None, lambda reason: None)
    listener = Listener([broken, counting])
    try:
        for w in (broken, counting):
            w.start()
        listener.wait(0.5, events=True)
        listener.drain()
        assert broken.error is not None and "cannot parse" in broken.error and not broken.running
        started = time.monotonic()
        listener.wait(0.3, events=True)  # (its fd, still readable, is no longer waited on)
        assert time.monotonic() - started >= 0.25
        listener.drain()
        assert counting.drains == 2 and counting.running
    finally:
        listener.close()
        os.close(broken.fd)


def test_a_sweep_slice_is_a_job_of_its_own_so_what_it_costs_is_its_own() -> None:
    """The sweep is paced by what its slices cost (CPU of their job): a whole naming pass due at the
    same moment goes into the next job, not into the slice's (a 50 ms pass once made the sweep
    wait 9 s per process)."""
    live = Live(scan=discover, refresh=incremental.refresh, name=core_name, netlink=False, sweep=30.0, interval=3600)
    first = discover()
    live._commit(first, "initial", first)
    now = time.monotonic()
    live.sweeper.due = live.naming.due = now - 1.0
    with live._cond:
        slice_job = live._take_job(now)
        names_job = live._take_job(now)
    assert slice_job is not None and slice_job.swept and not slice_job.rename, slice_job
    assert names_job is not None and names_job.rename and not names_job.swept, names_job


def test_the_sweep_grows_its_slices_back_after_one_that_cost_much_more() -> None:
    """A slice's job has a fixed cost besides its processes' (~2-3 ms at 5,000 namespaces): sized in
    proportion to what the last one cost, a slice made small by one costly job (it had events or a
    collection in it) would stay one process long; it grows back to about SLICE_COST."""
    from namespacefs.service.sweep import SLICE_COST, Sweep

    sweep = Sweep(30.0, 0.005)
    known = list(range(1, 1001))
    sweep.start(time.monotonic())
    sizes = []
    for i in range(40):
        taken = sweep.slice(known)
        n = len([pid for pid in taken if pid in set(known)])
        sweep.done(0.2 if i == 0 else 0.0027 + 0.0003 * n)  # (fixed cost, then per process)
        sizes.append(n)
    assert sizes[1] == 1, sizes  # (the costly first slice made the next one a single process)
    assert abs(0.0027 + 0.0003 * sizes[-1] - SLICE_COST) < 0.001, sizes
