"""The journal of a --chown shift: a SQLite file outside the tree, and every statement run on it.

    meta     key -> value: root, dev, ino (of the tree's top), uid_map, gid_map (JSON), state
             (planning, running, done, rolling-back, rolled-back), started, finished
    entries  one row per file that the shift changes: its path below the root, old and new uid
             and gid, mode, id-carrying xattrs (JSON {name: [old hex, new hex]}), done (0 not yet,
             1 shifted, 2 conflict) and a note (why a conflict)

The plan is inserted in one transaction, synchronous=FULL, before any file is touched; progress is
marked a chunk of ids at a time, one transaction per chunk (synchronous=NORMAL: a lost mark is
harmless, since every pending file is checked against its old and new state before it is changed).
Workers read their chunk through a connection of their own (read_only()).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from namespacefs.ops.shift import IdMap, ShiftError

DEFAULT_JOURNAL_DIR: Final = "/var/lib/namespacefs/shift"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, path BLOB NOT NULL,
    old_uid INTEGER, old_gid INTEGER, new_uid INTEGER, new_gid INTEGER, mode INTEGER,
    xattrs TEXT,            -- JSON {name: [old hex, new hex]} or NULL
    done INTEGER NOT NULL DEFAULT 0,  -- 0 not yet, 1 shifted, 2 conflict
    note TEXT
);
"""
PENDING, SHIFTED, CONFLICT = 0, 1, 2


class Planned(NamedTuple):
    """A file the plan records (inode and links: to shift a hard-linked file once)."""

    path: bytes  # below the root; b"." is the root itself
    old_uid: int
    old_gid: int
    new_uid: int
    new_gid: int
    mode: int
    xattrs: str | None
    inode: int
    links: int  # 0 for a directory


class Entry(NamedTuple):
    """A recorded file, as the workers apply it."""

    id: int
    path: bytes
    old_uid: int
    old_gid: int
    new_uid: int
    new_gid: int
    mode: int
    xattrs: str | None


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


def _pending(forward: bool) -> str:
    """The rows a run still has to bring to its end state."""
    return "done = 0" if forward else "done IN (0, 1)"


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

    # --- meta

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def maps(self) -> tuple[IdMap, IdMap]:
        return load_map(self.meta("uid_map")), load_map(self.meta("gid_map"))

    def status(self) -> Status:
        total, done, conflicts = self.db.execute(
            "SELECT count(*), coalesce(sum(done = 1), 0), coalesce(sum(done = 2), 0) FROM entries").fetchone()
        uid_map, gid_map = self.maps()
        return Status(self.path, self.meta("root") or "", self.meta("state") or "empty", total, done, conflicts,
                      uid_map, gid_map)

    # --- the plan

    def begin_plan(self, **meta: str) -> None:
        """Forget any earlier plan and start recording a new one (state planning)."""
        self.db.execute("DELETE FROM entries")
        self.set_meta(state="planning", **meta)
        self.db.execute("PRAGMA synchronous=FULL")  # the plan must be on disk before any file changes
        self.db.execute("BEGIN")

    def add(self, rows: Iterable[Planned]) -> int:
        batch = [row[:7] for row in rows]
        self.db.executemany("INSERT INTO entries (path, old_uid, old_gid, new_uid, new_gid, mode, xattrs) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
        return len(batch)

    def commit_plan(self) -> None:
        self.db.execute("COMMIT")
        self.set_meta(state="running")
        self.db.execute("PRAGMA synchronous=NORMAL")

    def abandon_plan(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # --- applying

    def id_range(self, forward: bool) -> tuple[int, int] | None:
        lo, hi = self.db.execute(f"SELECT min(id), max(id) FROM entries WHERE {_pending(forward)}").fetchone()
        return None if lo is None else (lo, hi)

    def pending_count(self, forward: bool) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM entries WHERE {_pending(forward)}").fetchone()[0])

    def entries(self, lo: int, hi: int, forward: bool) -> list[Entry]:
        return _entries(self.db, lo, hi, forward)

    def mark(self, lo: int, hi: int, forward: bool, conflicts: list[tuple[int, str]]) -> None:
        """Every pending row of ids lo..hi reached the run's end state, except the conflicts."""
        self.db.execute("BEGIN")
        self.db.execute(f"UPDATE entries SET done = ? WHERE id BETWEEN ? AND ? AND {_pending(forward)}",
                        (SHIFTED if forward else PENDING, lo, hi))
        self.db.executemany("UPDATE entries SET done = 2, note = ? WHERE id = ?", [(why, i) for i, why in conflicts])
        self.db.execute("COMMIT")

    def conflicts(self, limit: int) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT path, note FROM entries WHERE done = 2 ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(os.fsdecode(p), n or "") for p, n in rows]


class Reader:
    """A worker's own read-only connection to a journal (a connection never crosses a fork)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=30)

    def entries(self, lo: int, hi: int, forward: bool) -> list[Entry]:
        return _entries(self.db, lo, hi, forward)


def _entries(db: sqlite3.Connection, lo: int, hi: int, forward: bool) -> list[Entry]:
    rows = db.execute(f"SELECT id, path, old_uid, old_gid, new_uid, new_gid, mode, xattrs FROM entries "
                      f"WHERE id BETWEEN ? AND ? AND {_pending(forward)} ORDER BY id", (lo, hi)).fetchall()
    return [Entry._make(row) for row in rows]


def load_map(text: str | None) -> IdMap:
    return tuple((int(a), int(b), int(n)) for a, b, n in json.loads(text)) if text else ()


def default_journal(root: str) -> str:
    digest = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:16]
    return os.path.join(DEFAULT_JOURNAL_DIR, f"{digest}.journal")


def open_journal(path: str) -> Journal:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return Journal(path)


def existing_journal(path: str) -> Journal:
    if not os.path.exists(path):
        raise ShiftError(f"no journal at {path} (nothing to resume or roll back)")
    return Journal(path)
