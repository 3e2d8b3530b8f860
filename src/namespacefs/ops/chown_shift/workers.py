"""Applying a --chown shift (or undoing it): worker processes bring each recorded file from its old
state to its new one (or back), a chunk of journal ids at a time.

Each file is checked first: a file already in the end state is left alone (a run interrupted after
it changed the file but before it marked the chunk), a file in neither state, or of another kind
than planned, is a Conflict, recorded and left alone. set-user/group-ID bits and file capabilities,
which the kernel drops on chown, are put back.

Workers are forked from the single-threaded CLI (ops.inside's fork rule); each reads its chunks
through its own read-only journal connection and works relative to an fd of the tree's root.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Final

from namespacefs.ops.chown_shift.ids import CAP_XATTR
from namespacefs.ops.chown_shift.journal import Entry, Journal, Reader

CHUNK: Final = 2000  # ids per chunk: one journal transaction each
_SETID: Final = stat.S_ISUID | stat.S_ISGID

Applied = tuple[int, int, list[tuple[int, str]]]  # (changed, already in the end state, conflicts [(id, why)])


class Conflict(Exception):
    """A recorded file is not in the state the journal expects; str() says what was found."""


def quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def apply_rows(root: bytes | int, rows: list[Entry], forward: bool) -> Applied:
    """Bring each file from its old to its new state (or back, forward=False), checking the state
    first. root: the tree's path, or an fd of it (paths are then resolved below it)."""
    rootfd = root if isinstance(root, int) else os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    changed = already = 0
    conflicts: list[tuple[int, str]] = []
    try:
        for row in rows:
            try:
                did = _apply(rootfd, row, forward)
            except Conflict as e:
                conflicts.append((row.id, str(e)))
                continue
            except FileNotFoundError:
                conflicts.append((row.id, "vanished"))
                continue
            except OSError as e:
                conflicts.append((row.id, e.strerror or str(e)))
                continue
            changed += did
            already += not did
    finally:
        if rootfd is not root:
            os.close(rootfd)
    return changed, already, conflicts


def _apply(rootfd: int, row: Entry, forward: bool) -> bool:
    """One file; whether it was changed. Raises Conflict, or OSError from the kernel."""
    if forward:
        want_uid, want_gid, was_uid, was_gid = row.new_uid, row.new_gid, row.old_uid, row.old_gid
    else:
        want_uid, want_gid, was_uid, was_gid = row.old_uid, row.old_gid, row.new_uid, row.new_gid
    path = row.path
    st = os.lstat(path, dir_fd=rootfd)
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(row.mode):
        raise Conflict("replaced by another kind of file")
    did = False
    if st.st_uid != want_uid or st.st_gid != want_gid:
        if st.st_uid != was_uid or st.st_gid != was_gid:
            raise Conflict(f"owned by {st.st_uid}:{st.st_gid}, expected {was_uid}:{was_gid}")
        os.chown(path, want_uid, want_gid, dir_fd=rootfd, follow_symlinks=False)
        did = True
    if (row.mode & _SETID and not stat.S_ISLNK(row.mode)
            and stat.S_IMODE(os.lstat(path, dir_fd=rootfd).st_mode) != stat.S_IMODE(row.mode)):
        os.chmod(path, stat.S_IMODE(row.mode), dir_fd=rootfd)  # chown dropped set-id bits: put them back
        did = True
    if row.xattrs:
        did |= _apply_xattrs(rootfd, path, json.loads(row.xattrs), forward)
    return did


def _apply_xattrs(rootfd: int, rel: bytes, xattrs: dict[str, list[str]], forward: bool) -> bool:
    # (the xattr calls take no dir_fd: through /proc/self/fd, the path stays below the root's fd)
    path = f"/proc/self/fd/{rootfd}/".encode() + rel if rel != b"." else f"/proc/self/fd/{rootfd}".encode()
    did = False
    for name, (old_hex, new_hex) in xattrs.items():
        old, new = bytes.fromhex(old_hex), bytes.fromhex(new_hex)
        want, was = (new, old) if forward else (old, new)
        try:
            cur: bytes | None = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            cur = None  # chown drops security.capability
        if cur == want:
            continue
        if cur == was or (cur is None and name == CAP_XATTR):
            os.setxattr(path, name, want, follow_symlinks=False)
            did = True
        else:
            raise Conflict(f"{name} changed by someone else")
    return did


# --- in the workers --------------------------------------------------------------------------

_reader: Reader | None = None
_rootfd = -1


def _worker_init(journal_path: str, root: bytes) -> None:
    global _reader, _rootfd
    quiet_worker()
    _reader = Reader(journal_path)
    _rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _apply_chunk(lo: int, hi: int, forward: bool) -> Applied:
    assert _reader is not None
    return apply_rows(_rootfd, _reader.entries(lo, hi, forward), forward)


# --- driving a run (in the CLI's process) -------------------------------------------------------


def run(journal: Journal, root: bytes, forward: bool, workers: int,
        progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Apply (or undo) every pending row, a chunk of ids per task on a pool of worker processes;
    each finished chunk is marked in the journal. progress(n): n more files processed. Returns
    (files changed, conflicts)."""
    span = journal.id_range(forward)
    if span is None:
        return 0, 0
    chunks = iter(range(span[0], span[1] + 1, CHUNK))
    changed = conflicts = 0
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_worker_init,
                               initargs=(journal.path, root))
    try:
        pending: dict[Future[Applied], int] = {}
        while True:
            while len(pending) < workers * 2 and (lo := next(chunks, None)) is not None:
                pending[pool.submit(_apply_chunk, lo, min(lo + CHUNK - 1, span[1]), forward)] = lo
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                lo = pending.pop(fut)
                n_changed, n_already, bad = fut.result()
                journal.mark(lo, min(lo + CHUNK - 1, span[1]), forward, bad)
                changed += n_changed
                conflicts += len(bad)
                if progress is not None:
                    progress(n_changed + n_already + len(bad))
    finally:
        pool.shutdown(cancel_futures=True)
    return changed, conflicts
