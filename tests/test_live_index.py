"""A partial re-read costs what it changed: the index of who holds what (discover.holdings) is moved
on by each refresh from what the re-read found, never rebuilt or walked whole, and stays equal to
one built whole from the result. Counted, not timed: a model of the real host, padded with
thousands of namespaces held by a process that is not re-read, and the calls that look at a
namespace's holders counted while real processes come, unshare and go."""

from __future__ import annotations

import gc
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from immutables import Map

from namespacefs import core, kernel, tables
from namespacefs.discover import discover, holdings, incremental, processes
from namespacefs.model import Holder, Namespace, Snapshot, _members_moved, diff
from namespacefs.service.events import events_between
from namespacefs.service.naming import Naming
from namespacefs.service.scanning import core_name
from test_service import Holder as Held

PADDING = 3000


def _padded(snap: Snapshot) -> Snapshot:
    """The host's snapshot and PADDING net namespaces held by an fd of a process that exists in
    the model only (a pid no process has: nothing re-reads it but a sweep), owned by the initial
    user namespace."""
    root = snap.initial_user
    assert root is not None
    pid = max(snap.processes) + 1_000_000
    extra = [Namespace("net", 1_000_000_000 + i, None, root.dev, root.inode, None, (Holder("fd", pid=pid, fd=i),), ())
             for i in range(PADDING)]
    return snap.with_namespaces(extra)


class Counted:
    """How many namespaces had their holders looked at, and whether a snapshot's own (whole)
    indexes were built."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.looked = 0
        self.whole = 0
        real_holders, real_build = holdings.holders_of, Snapshot._indexes

        def holders_of(ns: Namespace) -> tuple[holdings.Parts, holdings.Parts]:
            self.looked += 1
            return real_holders(ns)

        def indexes(snap: Snapshot) -> Any:
            self.whole += snap._index is None
            return real_build(snap)

        monkeypatch.setattr(holdings, "holders_of", holders_of)
        monkeypatch.setattr(Snapshot, "_indexes", indexes)

    def reset(self) -> None:
        self.looked = self.whole = 0


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    yield Counted(monkeypatch)


def _index_of(snap: Snapshot) -> holdings.Holdings:
    index = incremental._last[0]
    assert index.snap is snap
    return index


def test_a_reread_of_a_few_processes_looks_at_their_namespaces_only_and_keeps_the_index_exact(
        counted: Counted) -> None:
    model = _padded(discover())
    model = incremental.refresh(model, {1})  # (the index is built whole here, once)
    assert _index_of(model).check()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for flags in (("-u",), ("-u", "-n"), ("-i",)):
            procs.append(subprocess.Popen(["unshare", *flags, "sleep", "60"], start_new_session=True))
        time.sleep(0.3)  # (each has exec'd sleep in its new namespaces)
        counted.reset()
        for p in procs:
            model = incremental.refresh(model, {p.pid})
        grown, looked, whole = len(model.namespaces), counted.looked, counted.whole
        for p in procs:
            p.kill()
            p.wait()
        counted.reset()
        model = incremental.refresh(model, {p.pid for p in procs})
        gone_looked, gone_whole = counted.looked, counted.whole
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert grown >= PADDING + 4 and all(p.pid not in model.processes for p in procs)
    # a re-read looks at what it read and the entries it changed: a handful, not the thousands
    assert looked <= 60 and gone_looked <= 60, (looked, gone_looked, len(model.namespaces))
    assert whole == gone_whole == 0, "a refresh built a snapshot's whole index"
    assert _index_of(model).check(), "the index moved on differs from one built whole"


def test_the_index_stays_exact_through_unshare_setns_and_exits_of_real_processes(
        holders: Any, counted: Counted) -> None:
    model = incremental.refresh(discover(), {1})
    made: list[Held] = []
    for args in (("--uts", "--ipc"), ("--user", "--map-root-user", "--uts"), ("--net",)):
        made.append(holders(*args))
        model = incremental.refresh(model, {made[-1].pid}, mounts=True)
        assert _index_of(model).check()
    for h in made:
        h.kill()
        model = incremental.refresh(model, {h.pid}, mounts=True, recheck=True)
        assert _index_of(model).check()
        assert h.pid not in model.processes


def test_a_snapshot_the_index_was_not_made_for_gets_one_built_whole() -> None:
    snap = discover()
    incremental.refresh(snap, {1})
    other = snap.replace(taken_at=0.0)  # the same namespaces, another snapshot: not the one indexed
    assert incremental.kernel_held(other) == 0
    again = incremental.refresh(other, {1})
    assert _index_of(again).check()


@pytest.fixture
def holders() -> Iterator[Any]:
    made: list[Held] = []

    def make(*args: str) -> Held:
        h = Held(*args)
        made.append(h)
        return h

    yield make
    for h in made:
        h.kill()


def _crowded(snap: Snapshot, extra: int) -> Snapshot:
    """The host's snapshot with `extra` more processes (pids no process has) in this process's pid,
    user and time namespaces: what a host of thousands of processes looks like to an update."""
    me, fake = os.getpid(), max(snap.processes) + 1_000_000
    table = dict(snap.namespaces)
    for nstype in ("pid", "user", "time"):
        ns = snap.namespace_of(me, nstype)
        assert ns is not None
        table[ns.inode] = ns._replace(holders=ns.holders + tuple(Holder("process", pid=fake + i) for i in range(extra)),
                                      processes=ns.processes + tuple(fake + i for i in range(extra)))
    return snap.replace(namespaces=table)


def _looks(monkeypatch: pytest.MonkeyPatch, extra: int) -> dict[str, int]:
    """How many times an update's code asked a holder for its kind or pid (what walking the holders
    of a namespace costs), for one namespace made and for its end: the re-read, the naming and the
    events, on a host crowded with `extra` processes."""
    naming = Naming(core_name, 0.25)
    model = incremental.refresh(naming.named(_crowded(discover(), extra), True, None, None), {1})
    seen = {"n": 0}

    def counted(index: int) -> property:
        def get(h: Holder) -> Any:
            seen["n"] += 1
            return tuple.__getitem__(h, index)
        return property(get)

    out: dict[str, int] = {}
    proc = subprocess.Popen(["unshare", "--uts", "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.3)  # (it has exec'd sleep in its new uts namespace)
        with monkeypatch.context() as m:
            for field in ("kind", "pid"):
                m.setattr(Holder, field, counted(Holder._fields.index(field)))
            for phase in ("made", "ended"):
                if phase == "ended":
                    proc.kill()
                    proc.wait()
                seen["n"] = 0
                raw = incremental.refresh(model, {proc.pid})
                new = naming.named(raw, False, model, model)
                events = events_between(model, new, time.time())
                out[phase], model = seen["n"], new
                if phase == "made":
                    assert any(e.kind == "created" and e.type == "uts" for e in events)
                else:  # (its uts namespace may outlive it a moment: another daemon on the host has it open)
                    assert proc.pid not in new.processes and any(e.kind == "left" for e in events)
    finally:
        proc.kill()
        proc.wait()
    return out


def test_an_update_costs_what_changed_not_the_processes_in_the_namespaces_it_touches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that makes a uts namespace and then ends is in the host's pid, user and time
    namespaces with every other process: the update for it looks at its own holders only, as many
    with 4,000 processes in them as with 1,000 (it rebuilt their holder lists: O(processes))."""
    few, many = _looks(monkeypatch, 1000), _looks(monkeypatch, 4000)
    for phase in ("made", "ended"):
        assert many[phase] < 300 and many[phase] <= few[phase] + 50, (few, many)


def test_who_joined_and_left_is_found_from_the_processes_a_refresh_read_as_a_whole_comparison_finds_it(
        holders: Any) -> None:
    """The events of an update look up only the processes its refreshes read again (incremental.moved)
    in the namespaces thousands are in; through real unshares and exits they are exactly what
    comparing every member finds."""
    model = incremental.refresh(_padded(discover()), {1})
    first, steps, hinted = model, 0, 0

    def step(pid: int, **how: bool) -> Snapshot:
        nonlocal steps, hinted
        new = incremental.refresh(model, {pid}, **how)
        moved = incremental.moved(model, new)
        assert moved is not None and pid in moved
        assert diff(model, new, moved=moved) == diff(model, new)
        members = ({(p, ns.key) for ns in model for p in ns.processes}
                   ^ {(p, ns.key) for ns in new for p in ns.processes})
        assert {p for p, _key in members} <= moved
        steps += 1
        hinted += any(len(moved) * 16 < 2 * len(ns.processes) for ns in new if ns.processes)
        return new

    made: list[Held] = []
    for args in (("--uts",), ("--user", "--map-root-user", "--uts"), ("--net", "--ipc")):
        made.append(holders(*args))
        model = step(made[-1].pid)
    for h in made:
        h.kill()
        model = step(h.pid, recheck=True)
    assert steps == hinted == 6, "the host's namespaces were not big enough for the lookup by process"
    assert incremental.moved(first, model) is None  # (more links than the chain keeps: not known)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(1, 400), max_size=120), st.sets(st.integers(1, 400), max_size=6),
       st.sets(st.integers(1, 400), max_size=6))
def test_members_moved_by_the_candidates_equals_the_whole_comparison(base: set[int], came: set[int],
                                                                     went: set[int]) -> None:
    was = tuple(sorted(base - came))
    now = tuple(sorted((base | came) - (went - came)))
    truth = (sorted(set(now) - set(was)), sorted(set(was) - set(now)))
    assert _members_moved(was, now, None) == truth
    assert _members_moved(was, now, sorted(came | went)) == truth
    # a hint that misses a process that moved: the counts tell, and the whole comparison decides
    missed = sorted((came | went) - {next(iter(came - set(was)), -1)})
    if len(truth[0]) + len(truth[1]) == 1:
        assert _members_moved(was, now, missed) == truth


def test_a_refresh_makes_a_new_version_of_the_tables_and_leaves_the_old_snapshot_as_it_was(holders: Any) -> None:
    """The tables of a live model are persistent maps: an update makes a new version (the old
    snapshot, which readers may still hold, keeps every entry it had) and the new one has exactly
    what a copy changed the same way would have."""
    first = discover()
    before = dict(first.namespaces), dict(first.processes)
    made = holders("--uts", "--ipc")
    model = incremental.refresh(first, {made.pid})
    assert isinstance(model.namespaces, Map) and isinstance(model.processes, Map)
    assert (dict(first.namespaces), dict(first.processes)) == before, "the old snapshot changed"
    assert made.pid in model.processes and made.pid not in first.processes
    made.kill()
    gone = incremental.refresh(model, {made.pid})
    assert made.pid in model.processes and made.pid not in gone.processes
    assert tables.same_keys(gone.namespaces, first.namespaces) == (set(dict(gone.namespaces)) == set(first.namespaces))
    assert tables.missing(model.namespaces, gone.namespaces) == set(dict(model.namespaces)) - set(dict(gone.namespaces))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 60), st.integers()), st.dictionaries(st.integers(0, 60), st.integers()),
       st.booleans(), st.booleans())
def test_same_keys_and_missing_say_of_maps_what_dict_key_views_say(a: dict[int, int], b: dict[int, int],
                                                                   a_map: bool, b_map: bool) -> None:
    left, right = (Map(a) if a_map else a), (Map(b) if b_map else b)
    assert tables.same_keys(left, right) == (a.keys() == b.keys())
    assert tables.missing(left, right) == set(a.keys() - b.keys())
    edit = tables.editable(left)
    edit[61] = 0
    assert 61 not in left and dict(edit.finish()) == {**a, 61: 0}


def test_id_maps_are_read_until_both_are_written_and_then_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user namespace's maps are written once (setgroups only before gid_map): a re-read reads
    them while one is missing, and takes them from the model once both are written."""
    proc = subprocess.Popen(["unshare", "--user", "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.3)  # (it has exec'd sleep in its user namespace, no map written yet)
        model = incremental.refresh(discover(), {proc.pid})
        user = model.namespaces[model.processes[proc.pid].namespaces["user"]]
        assert not user.uid_map and not user.gid_map
        for name, line in (("uid_map", "0 200000 1"), ("gid_map", "0 200000 1")):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write(line)
        model = incremental.refresh(model, {proc.pid})
        user = model.namespaces[user.inode]
        assert (user.uid_map, user.gid_map) == (((0, 200000, 1),), ((0, 200000, 1),)), user
        read: list[str] = []
        real = processes.read_at
        monkeypatch.setattr(processes, "read_at", lambda name, *a: (read.append(name), real(name, *a))[1])
        again = incremental.refresh(model, {proc.pid})
        assert not [n for n in read if n.endswith(("uid_map", "gid_map", "setgroups"))], read
        assert again.namespaces.get(user.inode, user)[9:12] == user[9:12]
        fresh = discover().namespaces[user.inode]
        assert (fresh.uid_map, fresh.gid_map, fresh.setgroups) == (user.uid_map, user.gid_map, user.setgroups)
    finally:
        proc.kill()
        proc.wait()


def test_a_refresh_opens_no_initial_namespace_again_and_is_given_no_other_inode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The initial namespaces never die (kernel.INIT_NS_INODES), so what a refresh read of them is
    given to every later walk: a process in the host's namespaces costs no opens of them. Any other
    inode may be reused once its namespace dies, and the walk is given none."""
    own = {link: os.stat(f"/proc/self/ns/{link}").st_ino for link in kernel.NS_TYPES}
    initial = {link: inode for link, inode in own.items() if inode < 0xF000_0000}  # (0xF0000000 up: allocated)
    assert initial, "the tests run in the host's namespaces"
    assert all(kernel.INIT_NS_INODES.get(inode) == link for link, inode in initial.items()), initial
    proc = subprocess.Popen(["unshare", "--uts", "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.3)
        model = incremental.refresh(discover(), {proc.pid})
        given: list[set[int]] = []
        real = processes._walk.walk

        def walk(*args: Any) -> Any:
            given.append(set(args[5]))  # (known: what the walk will not open)
            return real(*args)

        monkeypatch.setattr(processes._walk, "walk", walk)
        model = incremental.refresh(model, {proc.pid, 1})
        monkeypatch.undo()
        fresh = discover()
    finally:
        proc.kill()
        proc.wait()
    assert given and set(initial.values()) <= given[0], (initial, given)
    assert all(inode in kernel.INIT_NS_INODES for inode in given[0]), given[0]
    for inode in initial.values():
        a, b = model.namespaces[inode], fresh.namespaces[inode]
        assert (a.type, a.id, a.owner, a.parent, a.owner_uid, a.level) == (b.type, b.id, b.owner, b.parent, b.owner_uid, b.level)


def test_a_scan_a_naming_pass_a_refresh_and_a_container_tree_leave_no_reference_cycle() -> None:
    """What they make is freed when the last reference goes: a cycle (a nested function that calls
    itself, a ctypes type made per call) would leave each scan's objects to the garbage collector,
    whose passes over them the daemon pays at every update under churn."""
    proc = subprocess.Popen(["unshare", "--uts", "sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.3)
        core.container_tree(incremental.refresh(core_name(discover()), {proc.pid, 1}))  # (imports, caches)
        gc.collect()
        gc.disable()
        try:
            snap = incremental.refresh(core_name(discover()), {proc.pid, 1})
            core.container_tree(snap)
            del snap
            left = gc.collect()
        finally:
            gc.enable()
    finally:
        proc.kill()
        proc.wait()
    assert left == 0, f"{left} objects were in reference cycles"
