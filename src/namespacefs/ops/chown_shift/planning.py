"""Planning a --chown shift: walk the tree once and record every change before touching anything.

Each directory is read by namespacefs._tree.plan (its entries' statx and id-carrying xattrs, in C,
without the GIL) into one journal row. The walk stays on the tree's mount (a mount point, a file
bind-mounted or anything mounted below, is left out) and follows no symlink (they are lchown'ed).
Hard-linked files are recorded once. Directories are read by a pool of threads (the C part runs
in parallel) a level of the tree at a time; this thread inserts the rows, all in the one
transaction the plan commits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from namespacefs.ops.chown_shift import tree
from namespacefs.ops.chown_shift.ids import ID_XATTRS, recorded_xattr, shift_id
from namespacefs.ops.chown_shift.journal import Journal, entry_path
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

    def xattr(self, name: str, old: bytes) -> bytes | None:
        return recorded_xattr(name, old, self.uid_map, self.gid_map)


def _reader(rootfd: int, ids: _Ids) -> Callable[[bytes], tuple[bytes, tree.Planned | None]]:
    links: set[int] = set()  # hard-linked inodes recorded (read and changed by plan with the GIL held)

    def read(path: bytes) -> tuple[bytes, tree.Planned | None]:
        return path, tree.plan(rootfd, path, ids.uid, ids.gid, ID_XATTRS, ids.xattr, links)
    return read


def _walk(journal: Journal, rootfd: int, ids: _Ids, workers: int) -> int:
    """Every directory below rootfd into the journal, a level of the tree at a time (the threads
    read a level's directories while this thread records the ones read); the number of entries
    recorded."""
    read = _reader(rootfd, ids)
    count = 0
    level = [b"."]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        while level:
            below: list[bytes] = []
            for path, got in pool.map(read, level):
                if got is None:  # gone, or a mount point
                    continue
                if got.files:
                    journal.add(path, got.files, got.entries, got.xattrs)
                    count += got.files
                below += [entry_path(path, name) for name in got.subdirs]
            level = below
    finally:
        pool.shutdown(cancel_futures=True)
    return count


def plan(journal: Journal, root: str, uid_map: IdMap, gid_map: IdMap, workers: int | None = None) -> int:
    """Record every change the shift will make (the number of files). Nothing is touched until this
    commits."""
    rootb = os.fsencode(os.path.realpath(root))
    rootfd = tree.open_root(rootb)
    try:
        st_root = os.fstat(rootfd)
        journal.begin_plan(root=os.fsdecode(rootb), dev=str(st_root.st_dev), ino=str(st_root.st_ino),
                           uid_map=json.dumps(uid_map), gid_map=json.dumps(gid_map), started=str(time.time()))
        try:
            count = _walk(journal, rootfd, _Ids(uid_map, gid_map), workers or os.cpu_count() or 1)
            journal.commit_plan()
        except BaseException:
            journal.abandon_plan()
            raise
    finally:
        os.close(rootfd)
    return count
