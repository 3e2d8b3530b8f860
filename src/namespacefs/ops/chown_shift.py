"""Id shifting by rewriting ownership, for filesystems that cannot be idmapped.

Every file of a tree whose uid or gid the map covers gets the mapped ids, and so do the uids and
gids in its POSIX ACLs (system.posix_acl_access/default) and the root id of a v3 file capability.
set-user/group-ID bits and file capabilities, which the kernel drops on chown, are put back.

A journal (SQLite, outside the tree) makes the run safe to interrupt:

1. plan   the tree is walked and, for every file that will change, its path with its old and new
          uid, gid, mode and id-carrying xattrs is committed, before anything is touched;
2. apply  worker processes rewrite the files in chunks; each finished chunk is marked done;
3. resume or roll back after a crash: every not-done file is compared with its recorded old and
          new state, so a file changed just before the crash is recognised and never shifted twice.
          A file in neither state (changed by someone else since) is recorded as a conflict and
          left alone.

The walk stays on the tree's filesystem (like find -xdev) and does not follow symlinks (they are
lchown'ed). Hard-linked files are shifted once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import struct
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Final, TextIO

from namespacefs.ops.shift import IdMap, ShiftError, apply_map, check_map

DEFAULT_JOURNAL_DIR: Final = "/var/lib/namespacefs/shift"
ACL_XATTRS: Final = ("system.posix_acl_access", "system.posix_acl_default")
CAP_XATTR: Final = "security.capability"
ACL_USER, ACL_GROUP = 0x02, 0x08  # include/uapi/linux/posix_acl.h tags that carry an id
VFS_CAP_REVISION_3: Final = 0x03000000
CHUNK: Final = 2000


# --- pure id rewriting -------------------------------------------------------------------------


def shift_id(idmap: IdMap, ident: int) -> int:
    new = apply_map(idmap, ident)
    return ident if new is None else new


def shift_acl(value: bytes, uid_map: IdMap, gid_map: IdMap) -> bytes:
    """A posix_acl xattr (u32 version, then {u16 tag, u16 perm, u32 id} entries) with its ids mapped."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = bytearray(value[:4])
    for off in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, off)
        if tag == ACL_USER:
            ident = shift_id(uid_map, ident)
        elif tag == ACL_GROUP:
            ident = shift_id(gid_map, ident)
        out += struct.pack("<HHI", tag, perm, ident)
    return bytes(out)


def shift_cap(value: bytes, uid_map: IdMap) -> bytes:
    """security.capability: a v3 capability carries the root uid of the namespace it is for."""
    if len(value) == 24 and struct.unpack_from("<I", value)[0] & 0xFF000000 == VFS_CAP_REVISION_3:
        rootid = struct.unpack_from("<I", value, 20)[0]
        return value[:20] + struct.pack("<I", shift_id(uid_map, rootid))
    return value


# --- the journal -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, path BLOB NOT NULL,
    old_uid INTEGER, old_gid INTEGER, new_uid INTEGER, new_gid INTEGER, mode INTEGER,
    xattrs TEXT,            -- JSON {name: [old hex, new hex]} or NULL
    done INTEGER NOT NULL DEFAULT 0,  -- 0 not yet, 1 shifted, 2 conflict
    note TEXT
);
"""


def default_journal(root: str) -> str:
    digest = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:16]
    return os.path.join(DEFAULT_JOURNAL_DIR, f"{digest}.journal")


@dataclass
class Status:
    journal: str
    root: str
    state: str  # planning, running, done, rolling-back, rolled-back
    total: int
    done: int
    conflicts: int
    uid_map: IdMap
    gid_map: IdMap

    def to_dict(self) -> dict[str, Any]:
        return {"journal": self.journal, "root": self.root, "state": self.state, "total": self.total, "done": self.done,
                "conflicts": self.conflicts, "uid_map": [list(m) for m in self.uid_map],
                "gid_map": [list(m) for m in self.gid_map]}


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.isdir(path):
            raise ShiftError(f"the journal {path} is a directory; give a file (or leave --journal out)")
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        except sqlite3.Error as e:
            raise ShiftError(f"cannot open the journal {path} ({e})") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA cache_size=-131072")  # 128 MiB: a 500k-file plan is built without spilling
            self.db.executescript(SCHEMA)
        except sqlite3.Error as e:  # (OperationalError too: a file that cannot be opened or locked)
            self.db.close()
            raise ShiftError(f"{path} is not a shift journal ({e})") from None

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def status(self) -> Status:
        total, done, conflicts = self.db.execute(
            "SELECT count(*), coalesce(sum(done = 1), 0), coalesce(sum(done = 2), 0) FROM entries").fetchone()
        return Status(self.path, self.meta("root") or "", self.meta("state") or "empty", total, done, conflicts,
                      _load_map(self.meta("uid_map")), _load_map(self.meta("gid_map")))


def _load_map(text: str | None) -> IdMap:
    return tuple(tuple(x) for x in json.loads(text)) if text else ()  # type: ignore[misc]


def open_journal(path: str) -> Journal:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return Journal(path)


def existing_journal(path: str) -> Journal:
    if not os.path.exists(path):
        raise ShiftError(f"no journal at {path} (nothing to resume or roll back)")
    return Journal(path)


# --- planning ----------------------------------------------------------------------------------


PlanRow = tuple[bytes, int, int, int, int, int, "str | None", int, int]  # ..., mode, xattrs, inode, links


def _scan(top: bytes, cut: int, dev: int, uid_map: IdMap, gid_map: IdMap,
          recurse: bool) -> tuple[list[PlanRow], list[bytes]]:
    """Plan rows for what is below directory top (everything, or only its entries) and the
    directories not entered. Stays on filesystem dev: a mount point of another one is skipped."""
    rows: list[PlanRow] = []
    later: list[bytes] = []
    stack = [top]
    uids: dict[int, int] = {}
    gids: dict[int, int] = {}
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
                row = _plan_row(path[cut:], path, st, uid_map, gid_map, uids, gids)
                if row is not None:
                    rows.append(row)
                if isdir(st.st_mode):
                    (stack if recurse else later).append(path)
    return rows, later


def _plan_row(rel: bytes, full: bytes, st: os.stat_result, uid_map: IdMap, gid_map: IdMap,
              uids: dict[int, int], gids: dict[int, int]) -> PlanRow | None:
    new_uid = uids.get(st.st_uid)
    if new_uid is None:
        new_uid = uids[st.st_uid] = shift_id(uid_map, st.st_uid)
    new_gid = gids.get(st.st_gid)
    if new_gid is None:
        new_gid = gids[st.st_gid] = shift_id(gid_map, st.st_gid)
    xattrs = _xattrs(full, st, uid_map, gid_map)
    if new_uid == st.st_uid and new_gid == st.st_gid and not xattrs:
        return None
    return (rel, st.st_uid, st.st_gid, new_uid, new_gid, st.st_mode, json.dumps(xattrs) if xattrs else None,
            st.st_ino, 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink)


def _xattrs(path: bytes, st: os.stat_result, uid_map: IdMap, gid_map: IdMap) -> dict[str, list[str]] | None:
    if stat.S_ISLNK(st.st_mode):
        return None
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    found = {}
    for name in names:
        if name not in ACL_XATTRS and name != CAP_XATTR:
            continue
        old = os.getxattr(path, name, follow_symlinks=False)
        new = shift_cap(old, uid_map) if name == CAP_XATTR else shift_acl(old, uid_map, gid_map)
        if new != old or name == CAP_XATTR:  # a capability is always put back (chown drops it)
            found[name] = [old.hex(), new.hex()]
    return found or None


def plan(journal: Journal, root: str, uid_map: IdMap, gid_map: IdMap, workers: int | None = None) -> int:
    """Record every change the shift will make. Nothing is touched until this commits. The tree is
    walked by worker processes, one subtree each, below the first levels that this process reads."""
    workers = workers or os.cpu_count() or 1
    rootb = os.fsencode(os.path.realpath(root))
    st_root = os.lstat(rootb)
    dev = st_root.st_dev
    cut = len(rootb) if rootb.endswith(b"/") else len(rootb) + 1
    journal.db.execute("DELETE FROM entries")
    journal.set_meta(root=os.fsdecode(rootb), dev=str(dev), ino=str(st_root.st_ino),
                     uid_map=json.dumps(uid_map), gid_map=json.dumps(gid_map), state="planning",
                     started=str(time.time()))
    seen: set[int] = set()
    count = 0

    def record(rows: list[PlanRow]) -> None:
        nonlocal count
        batch = []
        for row in rows:
            if row[8] > 1:  # a hard-linked file: shift it once
                if row[7] in seen:
                    continue
                seen.add(row[7])
            batch.append(row[:7])
        count += _insert(journal, batch)

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_worker_init)
    try:
        journal.db.execute("PRAGMA synchronous=FULL")  # the plan must be on disk before any file changes
        journal.db.execute("BEGIN")
        first = _plan_row(b".", rootb, st_root, uid_map, gid_map, {}, {})
        record([first] if first else [])
        level = [rootb]
        for _depth in range(3):  # read the top levels here until there are enough subtrees to share out
            if len(level) >= 8 * workers:
                break
            below: list[bytes] = []
            for top in level:
                rows, later = _scan(top, cut, dev, uid_map, gid_map, recurse=False)
                record(rows)
                below += later
            level = below
        futures = [pool.submit(_scan, top, cut, dev, uid_map, gid_map, True) for top in level]
        for fut in as_completed(futures):
            record(fut.result()[0])
        journal.db.execute("COMMIT")
    finally:
        pool.shutdown(cancel_futures=True)
    journal.set_meta(state="running")
    journal.db.execute("PRAGMA synchronous=NORMAL")  # a lost 'done' mark is harmless: resume checks each file
    return count


def _insert(journal: Journal, batch: list[tuple[Any, ...]]) -> int:
    journal.db.executemany(
        "INSERT INTO entries (path, old_uid, old_gid, new_uid, new_gid, mode, xattrs) VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
    return len(batch)


# --- applying (in worker processes) ------------------------------------------------------------

Row = tuple[int, bytes, int, int, int, int, int, str | None]


def apply_rows(root: bytes, rows: list[Row], forward: bool) -> tuple[int, int, list[tuple[int, str]]]:
    """Bring each file from its old to its new state (or back, forward=False), checking the state
    first. Returns (changed, already there, conflicts [(id, why)])."""
    changed = already = 0
    conflicts: list[tuple[int, str]] = []
    prefix = root if root.endswith(b"/") else root + b"/"
    lstat, chown, ifmt, setid_bits = os.lstat, os.chown, stat.S_IFMT, stat.S_ISUID | stat.S_ISGID
    for ident, rel, old_uid, old_gid, new_uid, new_gid, mode, xattr_json in rows:
        if forward:
            want_uid, want_gid, was_uid, was_gid = new_uid, new_gid, old_uid, old_gid
        else:
            want_uid, want_gid, was_uid, was_gid = old_uid, old_gid, new_uid, new_gid
        path = root if rel == b"." else prefix + rel
        try:
            st = lstat(path)
            if ifmt(st.st_mode) != ifmt(mode):
                conflicts.append((ident, "replaced by another kind of file"))
                continue
            did = False
            uid, gid = st.st_uid, st.st_gid
            if uid != want_uid or gid != want_gid:
                if uid != was_uid or gid != was_gid:
                    conflicts.append((ident, f"owned by {uid}:{gid}, expected {was_uid}:{was_gid}"))
                    continue
                chown(path, want_uid, want_gid, follow_symlinks=False)
                did = True
            if mode & setid_bits and not stat.S_ISLNK(mode) and stat.S_IMODE(lstat(path).st_mode) != stat.S_IMODE(mode):
                os.chmod(path, stat.S_IMODE(mode))  # chown dropped set-id bits: put them back
                did = True
            if xattr_json:
                did |= _apply_xattrs(path, json.loads(xattr_json), forward)
        except FileNotFoundError:
            conflicts.append((ident, "vanished"))
            continue
        except OSError as e:
            conflicts.append((ident, e.strerror or str(e)))
            continue
        if did:
            changed += 1
        else:
            already += 1
    return changed, already, conflicts


def _apply_xattrs(path: bytes, xattrs: dict[str, list[str]], forward: bool) -> bool:
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
            raise OSError(0, f"{name} changed by someone else")
    return did


# --- driving a run -----------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, label: str, out: TextIO | None = None, enabled: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.total, self.label, self.start, self.last = total, label, time.monotonic(), 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.1):
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        rate = done / max(now - self.start, 1e-6)
        bar = "#" * int(frac * 30)
        self.out.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {done}/{self.total} files {rate:,.0f}/s")
        self.out.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.out.write("\n")
            self.out.flush()


def _chunks(journal: Journal, where: str) -> Iterator[list[Row]]:
    last = 0
    while True:
        rows = journal.db.execute(
            f"SELECT id, path, old_uid, old_gid, new_uid, new_gid, mode, xattrs FROM entries WHERE id > ? AND {where} "
            f"ORDER BY id LIMIT ?", (last, CHUNK)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def _run(journal: Journal, root: bytes, forward: bool, workers: int, progress: Progress, base: int = 0) -> tuple[int, int]:
    """Apply (or undo) every pending row in chunks on a pool of worker processes; each finished
    chunk is committed to the journal. Returns (files changed, conflicts)."""
    where = "done = 0" if forward else "done IN (0, 1)"
    mark = 1 if forward else 0
    processed = changed = conflicts = 0
    progress.update(base, force=True)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_worker_init)
    try:
        pending: dict[Future[tuple[int, int, list[tuple[int, str]]]], list[Row]] = {}
        chunks = _chunks(journal, where)
        exhausted = False
        while True:
            while not exhausted and len(pending) < workers * 2:
                rows = next(chunks, None)
                if rows is None:
                    exhausted = True
                    break
                pending[pool.submit(apply_rows, root, rows, forward)] = rows
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                rows = pending.pop(fut)
                n_changed, _already, bad = fut.result()
                # the chunk is every pending row between its first and last id
                journal.db.execute("BEGIN")
                journal.db.execute(f"UPDATE entries SET done = ? WHERE id BETWEEN ? AND ? AND {where}",
                                   (mark, rows[0][0], rows[-1][0]))
                journal.db.executemany("UPDATE entries SET done = 2, note = ? WHERE id = ?", [(why, i) for i, why in bad])
                journal.db.execute("COMMIT")
                changed += n_changed
                conflicts += len(bad)
                processed += len(rows)
                progress.update(base + processed)
    finally:
        pool.shutdown(cancel_futures=True)
    return changed, conflicts


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _check_root(journal: Journal, root: str) -> bytes:
    recorded = journal.meta("root")
    real = os.path.realpath(root)
    if recorded and recorded != real:
        raise ShiftError(f"the journal {journal.path} is for {recorded}, not {real}")
    st = os.lstat(real)
    if recorded and (str(st.st_dev), str(st.st_ino)) != (journal.meta("dev"), journal.meta("ino")):
        raise ShiftError(f"{real} is not the directory the journal {journal.path} was made for (it was replaced)")
    return os.fsencode(real)


def chown_shift(root: str, uid_map: IdMap, gid_map: IdMap | None = None, journal_path: str | None = None,
                workers: int | None = None, progress: bool | None = None) -> Status:
    """Shift a tree in place. Refuses to start over an unfinished or finished journal."""
    if not os.path.isdir(root):
        raise ShiftError(f"{root}: not a directory")
    uid_map = check_map(uid_map, "uid")
    gid_map = check_map(gid_map or uid_map, "gid")
    path = journal_path or default_journal(root)
    _journal_outside(path, root)
    journal = open_journal(path)
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


def _forward(journal: Journal, workers: int | None, progress: bool | None) -> Status:
    root = _check_root(journal, journal.meta("root") or "")
    status = journal.status()
    bar = Progress(status.total, "shifting", enabled=progress)
    _run(journal, root, True, workers or os.cpu_count() or 1, bar, base=status.done)
    bar.finish(journal.status().done)
    journal.set_meta(state="done", finished=str(time.time()))
    return journal.status()


def resume(root: str, journal_path: str | None = None, workers: int | None = None, progress: bool | None = None) -> Status:
    """Finish an interrupted shift (a run interrupted while planning is planned again: nothing was
    changed before its plan committed)."""
    path = journal_path or default_journal(root)
    journal = existing_journal(path)
    try:
        _check_root(journal, root)
        state = journal.meta("state")
        if state == "planning":
            plan(journal, root, _load_map(journal.meta("uid_map")), _load_map(journal.meta("gid_map")), workers)
        elif state == "rolling-back":
            raise ShiftError(f"a rollback of {root} was interrupted; finish it with --rollback")
        elif state != "running":
            raise ShiftError(f"nothing to resume in {path} (state: {state})")
        return _forward(journal, workers, progress)
    finally:
        journal.close()


def rollback(root: str, journal_path: str | None = None, workers: int | None = None, progress: bool | None = None) -> Status:
    """Undo a shift, finished or interrupted, from its journal: every recorded file goes back to its
    old ids. This is also `nsfs unshift --chown`."""
    path = journal_path or default_journal(root)
    journal = existing_journal(path)
    try:
        rootb = _check_root(journal, root)
        state = journal.meta("state")
        if state == "rolled-back":
            raise ShiftError(f"{root} was rolled back already (journal {path})")
        if state == "planning":  # nothing was touched
            journal.set_meta(state="rolled-back")
            return journal.status()
        journal.set_meta(state="rolling-back")
        total = journal.db.execute("SELECT count(*) FROM entries WHERE done IN (0, 1)").fetchone()[0]
        bar = Progress(total, "rolling back", enabled=progress)
        _run(journal, rootb, False, workers or os.cpu_count() or 1, bar)
        bar.finish(total)
        journal.set_meta(state="rolled-back", finished=str(time.time()))
        return journal.status()
    finally:
        journal.close()


def status(root: str, journal_path: str | None = None) -> Status:
    journal = existing_journal(journal_path or default_journal(root))
    try:
        return journal.status()
    finally:
        journal.close()


def conflicts(journal_path: str, limit: int = 20) -> list[tuple[str, str]]:
    journal = existing_journal(journal_path)
    try:
        rows = journal.db.execute("SELECT path, note FROM entries WHERE done = 2 ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(os.fsdecode(p), n or "") for p, n in rows]
    finally:
        journal.close()
