"""Applying a --chown shift (or undoing it): every recorded directory's entries are brought from
their old state to their new one (or back), a chunk of directories at a time.

Each entry is checked first (in namespacefs._tree.apply): one already in the end state is left
alone (a run interrupted after it changed the entry but before it marked the chunk), one in
neither state, or of another kind than planned, is a conflict, recorded and left alone from then
on. set-user/group-ID bits and file capabilities, which the kernel drops on chown, are put back.

The C part runs without the GIL on a pool of threads (--jobs); this thread reads each chunk from
the journal and marks it done, one transaction per chunk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Final

from namespacefs.ops.chown_shift import tree
from namespacefs.ops.chown_shift.ids import dropped_by_chown
from namespacefs.ops.chown_shift.journal import Journal, Row, XattrRow

CHUNK: Final = 2000  # entries per chunk (whole directories): one journal transaction each

Applied = tuple[int, int, list[tuple[int, bytes, str]]]  # (changed, already in the end state, conflicts [(dir, name, why)])


class Conflict(Exception):
    """A recorded file is not in the state the journal expects; str() says what was found. (The
    compiled apply reports each as a (name, why) pair, recorded in the journal's conflicts.)"""


def chunks(pending: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """(first id, last id) of runs of pending directories of about CHUNK entries."""
    lo, size = None, 0
    for ident, count in pending:
        lo = ident if lo is None else lo
        size += count
        if size >= CHUNK:
            yield lo, ident
            lo, size = None, 0
    if lo is not None:
        yield lo, pending[-1][0]


def _specs(rows: list[XattrRow]) -> tree.XattrSpecs:
    specs: tree.XattrSpecs = {}
    for name, xattr, old, new in rows:
        specs.setdefault(name, []).append((xattr, old, new, dropped_by_chown(xattr)))
    return specs


def apply_rows(rootfd: int, rows: list[Row], forward: bool, xattrs: dict[int, list[XattrRow]],
               skipped: dict[int, set[bytes]]) -> Applied:
    """Bring each recorded directory's entries to the run's end state (checked first)."""
    changed = already = 0
    conflicts: list[tuple[int, bytes, str]] = []
    for row in rows:
        specs = _specs(xattrs[row.id]) if row.id in xattrs else None
        n_changed, n_already, bad = tree.apply(rootfd, row.path, row.entries, forward, skipped.get(row.id), specs)
        changed += n_changed
        already += n_already
        conflicts += [(row.id, name, why) for name, why in bad]
    return changed, already, conflicts


def run(journal: Journal, root: bytes, forward: bool, workers: int,
        progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Apply (or undo) every pending directory, a chunk per task on a pool of threads; each finished
    chunk is marked in the journal. progress(n): n more files processed. Returns (files changed,
    conflicts)."""
    todo = chunks(journal.pending(forward))
    changed = conflicts = 0
    rootfd = tree.open_root(root)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending: dict[Future[Applied], tuple[int, int]] = {}
        while True:
            while len(pending) < workers * 2 and (span := next(todo, None)) is not None:
                lo, hi = span
                task = pool.submit(apply_rows, rootfd, journal.rows(lo, hi, forward), forward, journal.xattrs(lo, hi),
                                   journal.skipped(lo, hi))
                pending[task] = span
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                lo, hi = pending.pop(fut)
                n_changed, n_already, bad = fut.result()
                journal.mark(lo, hi, forward, bad)
                changed += n_changed
                conflicts += len(bad)
                if progress is not None:
                    progress(n_changed + n_already + len(bad))
    finally:
        pool.shutdown(cancel_futures=True)
        os.close(rootfd)
    return changed, conflicts
