"""Planning a --chown shift: walk the tree once and record every change before touching anything.

The walk stays on the tree's filesystem (like find -xdev) and does not follow symlinks (they are
lchown'ed). Hard-linked files are recorded once. The top levels are read here until there are
enough subtrees to share out; worker processes (forked from the single-threaded CLI: see
ops.inside's fork rule) walk one subtree each.
"""

from __future__ import annotations

import json
import os
import stat
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from namespacefs.ops.chown_shift.ids import carries_ids, shift_id, shift_xattr
from namespacefs.ops.chown_shift.journal import Journal, Planned
from namespacefs.ops.chown_shift.workers import quiet_worker
from namespacefs.ops.shift import IdMap


class _Ids:
    """The new uid and gid of each old one (a map is a few lines, a tree has few distinct ids)."""

    def __init__(self, uid_map: IdMap, gid_map: IdMap) -> None:
        self.uid_map, self.gid_map = uid_map, gid_map
        self.uids: dict[int, int] = {}
        self.gids: dict[int, int] = {}

    def uid(self, old: int) -> int:
        new = self.uids.get(old)
        if new is None:
            new = self.uids[old] = shift_id(self.uid_map, old)
        return new

    def gid(self, old: int) -> int:
        new = self.gids.get(old)
        if new is None:
            new = self.gids[old] = shift_id(self.gid_map, old)
        return new


def scan(top: bytes, cut: int, dev: int, uid_map: IdMap, gid_map: IdMap,
         recurse: bool) -> tuple[list[Planned], list[bytes]]:
    """What is below directory top (everything, or only its entries) that the shift changes, and
    the directories not entered. Stays on filesystem dev: a mount point of another one is skipped."""
    ids = _Ids(uid_map, gid_map)
    rows: list[Planned] = []
    later: list[bytes] = []
    stack = [top]
    isdir = stat.S_ISDIR
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_dev != dev:
                    continue
                path = entry.path
                row = planned(path[cut:], path, st, ids)
                if row is not None:
                    rows.append(row)
                if isdir(st.st_mode):
                    (stack if recurse else later).append(path)
    return rows, later


def planned(rel: bytes, full: bytes, st: os.stat_result, ids: _Ids) -> Planned | None:
    """The record of one file, or None when the shift leaves it as it is."""
    new_uid, new_gid = ids.uid(st.st_uid), ids.gid(st.st_gid)
    xattrs = _xattrs(full, st, ids)
    if new_uid == st.st_uid and new_gid == st.st_gid and not xattrs:
        return None
    return Planned(rel, st.st_uid, st.st_gid, new_uid, new_gid, st.st_mode, json.dumps(xattrs) if xattrs else None,
                   st.st_ino, 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink)


def _xattrs(path: bytes, st: os.stat_result, ids: _Ids) -> dict[str, list[str]] | None:
    if stat.S_ISLNK(st.st_mode):
        return None
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    found = {}
    for name in names:
        if not carries_ids(name):
            continue
        old = os.getxattr(path, name, follow_symlinks=False)
        new = shift_xattr(name, old, ids.uid_map, ids.gid_map)
        if new != old or name == "security.capability":  # a capability is always put back (chown drops it)
            found[name] = [old.hex(), new.hex()]
    return found or None


class _Recorder:
    """Adds rows to the journal, each hard-linked inode once."""

    def __init__(self, journal: Journal) -> None:
        self.journal, self.seen, self.count = journal, set[int](), 0

    def __call__(self, rows: list[Planned]) -> None:
        seen = self.seen
        keep = []
        for row in rows:
            if row.links > 1:
                if row.inode in seen:
                    continue
                seen.add(row.inode)
            keep.append(row)
        self.count += self.journal.add(keep)


def plan(journal: Journal, root: str, uid_map: IdMap, gid_map: IdMap, workers: int | None = None) -> int:
    """Record every change the shift will make (the number of files). Nothing is touched until this
    commits."""
    workers = workers or os.cpu_count() or 1
    rootb = os.fsencode(os.path.realpath(root))
    st_root = os.lstat(rootb)
    dev = st_root.st_dev
    cut = len(rootb) if rootb.endswith(b"/") else len(rootb) + 1
    journal.begin_plan(root=os.fsdecode(rootb), dev=str(dev), ino=str(st_root.st_ino), uid_map=json.dumps(uid_map),
                       gid_map=json.dumps(gid_map), started=str(time.time()))
    record = _Recorder(journal)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=quiet_worker)
    try:
        first = planned(b".", rootb, st_root, _Ids(uid_map, gid_map))
        record([first] if first else [])
        level = [rootb]
        for _depth in range(3):  # read the top levels here until there are enough subtrees to share out
            if len(level) >= 8 * workers:
                break
            below: list[bytes] = []
            for top in level:
                rows, later = scan(top, cut, dev, uid_map, gid_map, recurse=False)
                record(rows)
                below += later
            level = below
        futures = [pool.submit(scan, top, cut, dev, uid_map, gid_map, True) for top in level]
        for fut in as_completed(futures):
            record(fut.result()[0])
        journal.commit_plan()
    except BaseException:
        journal.abandon_plan()
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    return record.count
