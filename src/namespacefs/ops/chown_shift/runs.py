"""Driving a --chown shift: start one, resume it, roll it back, report on it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol

from namespacefs.ops.chown_shift import journal as journals
from namespacefs.ops.chown_shift.journal import Journal, Status
from namespacefs.ops.chown_shift.planning import plan
from namespacefs.ops.chown_shift.workers import run
from namespacefs.ops.shift import IdMap, ShiftError, check_map


class Progress(Protocol):
    """Where a run reports how far it got (the CLI's progress bar)."""

    def start(self, label: str, total: int, done: int) -> Callable[[int], None]:
        """A run of `total` files begins, `done` of them done before; returns advance(n)."""

    def finish(self) -> None:
        """The run ended (done or not)."""


def chown_shift(root: str, uid_map: IdMap, gid_map: IdMap | None = None, journal_path: str | None = None,
                workers: int | None = None, progress: Progress | None = None) -> Status:
    """Shift a tree in place. Refuses to start over an unfinished or finished journal."""
    if not os.path.isdir(root):
        raise ShiftError(f"{root}: not a directory")
    uid_map = check_map(uid_map, "uid")
    gid_map = check_map(gid_map or uid_map, "gid")
    path = journal_path or journals.default_journal(root)
    _journal_outside(path, root)
    journal = journals.open_journal(path)
    try:
        state = journal.meta("state")
        if state in ("running", "rolling-back"):
            raise ShiftError(f"an interrupted shift of {journal.meta('root')} is recorded in {path}: "
                             f"finish it with --resume or undo it with --rollback")
        if state == "done":
            raise ShiftError(f"{journal.meta('root')} was shifted already (journal {path}); "
                             f"nsfs unshift --chown undoes it, or give another --journal to shift again")
        plan(journal, root, uid_map, gid_map, workers)
        return _forward(journal, workers, progress)
    finally:
        journal.close()


def _journal_outside(path: str, root: str) -> None:
    real_root = os.path.realpath(root).rstrip("/") + "/"
    if os.path.realpath(path).startswith(real_root):
        raise ShiftError(f"the journal {path} must be outside the tree it records ({root})")


def _check_root(journal: Journal, root: str) -> bytes:
    recorded = journal.meta("root")
    real = os.path.realpath(root)
    if recorded and recorded != real:
        raise ShiftError(f"the journal {journal.path} is for {recorded}, not {real}")
    st = os.lstat(real)
    if recorded and (str(st.st_dev), str(st.st_ino)) != (journal.meta("dev"), journal.meta("ino")):
        raise ShiftError(f"{real} is not the directory the journal {journal.path} was made for (it was replaced)")
    return os.fsencode(real)


def _apply(journal: Journal, root: bytes, forward: bool, workers: int | None, progress: Progress | None,
           label: str, total: int, done: int) -> None:
    advance = progress.start(label, total, done) if progress is not None else None
    try:
        run(journal, root, forward, workers or os.cpu_count() or 1, advance)
    finally:
        if progress is not None:
            progress.finish()


def _forward(journal: Journal, workers: int | None, progress: Progress | None) -> Status:
    root = _check_root(journal, journal.meta("root") or "")
    status = journal.status()
    _apply(journal, root, True, workers, progress, "shifting", status.total, status.done)
    journal.set_meta(state="done", finished=str(time.time()))
    return journal.status()


def resume(root: str, journal_path: str | None = None, workers: int | None = None,
           progress: Progress | None = None) -> Status:
    """Finish an interrupted shift (a run interrupted while planning is planned again: nothing was
    changed before its plan committed)."""
    path = journal_path or journals.default_journal(root)
    journal = journals.existing_journal(path)
    try:
        _check_root(journal, root)
        state = journal.meta("state")
        if state == "planning":
            plan(journal, root, *journal.maps(), workers)
        elif state == "rolling-back":
            raise ShiftError(f"a rollback of {root} was interrupted; finish it with --rollback")
        elif state != "running":
            raise ShiftError(f"nothing to resume in {path} (state: {state})")
        return _forward(journal, workers, progress)
    finally:
        journal.close()


def rollback(root: str, journal_path: str | None = None, workers: int | None = None,
             progress: Progress | None = None) -> Status:
    """Undo a shift, finished or interrupted, from its journal: every recorded file goes back to its
    old ids. This is also `nsfs unshift --chown`."""
    path = journal_path or journals.default_journal(root)
    journal = journals.existing_journal(path)
    try:
        rootb = _check_root(journal, root)
        state = journal.meta("state")
        if state == "rolled-back":
            raise ShiftError(f"{root} was rolled back already (journal {path})")
        if state == "planning":  # nothing was touched
            journal.set_meta(state="rolled-back")
            return journal.status()
        journal.set_meta(state="rolling-back")
        _apply(journal, rootb, False, workers, progress, "rolling back", journal.pending_count(False), 0)
        journal.set_meta(state="rolled-back", finished=str(time.time()))
        return journal.status()
    finally:
        journal.close()


def status(root: str, journal_path: str | None = None) -> Status:
    journal = journals.existing_journal(journal_path or journals.default_journal(root))
    try:
        return journal.status()
    finally:
        journal.close()


def conflicts(journal_path: str, limit: int = 20) -> list[tuple[str, str]]:
    journal = journals.existing_journal(journal_path)
    try:
        return journal.conflicts(limit)
    finally:
        journal.close()
