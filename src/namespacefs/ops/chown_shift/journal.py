"""The journal of a --chown shift: a SQLite file outside the tree, and every statement run on it.

Schema 2 (PRAGMA user_version = 2), one row per directory:

    meta       key -> value: root, dev, ino (of the tree's top), uid_map, gid_map (JSON), state
               (planning, running, done, rolling-back, rolled-back), started, finished
    dirs       one row per directory with entries the shift changes: its path below the root (b"."
               the root), how many entries, and their records packed in one blob by
               namespacefs._tree (name, inode, old and new uid and gid, mode, whether id-carrying
               xattrs are recorded), done (0 not yet or rolled back, 1 shifted)
    xattrs     the id-carrying xattrs of the recorded entries: directory, entry name, xattr name,
               old and new value
    conflicts  the entries found in neither their old nor their new state: directory, entry
               name, why; left alone from then on

The plan is inserted in one transaction, synchronous=FULL, before any file is touched; progress is
marked a chunk of directories at a time, one transaction per chunk (synchronous=NORMAL: a lost
mark is harmless, since every pending entry is checked against its old and new state before it is
changed). A journal of schema 1 (one `entries` row per file, namespacefs before this schema) is
refused with a one-line error: finish or roll it back with the version that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from namespacefs.ops.shift import IdMap, ShiftError

DEFAULT_JOURNAL_DIR: Final = "/var/lib/namespacefs/shift"
SCHEMA_VERSION: Final = 2

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs (
    id INTEGER PRIMARY KEY, path BLOB NOT NULL, count INTEGER NOT NULL, entries BLOB NOT NULL,
    done INTEGER NOT NULL DEFAULT 0  -- 0 not yet (or rolled back), 1 shifted
);
CREATE TABLE IF NOT EXISTS xattrs (dir INTEGER NOT NULL, name BLOB NOT NULL, xattr TEXT NOT NULL,
                                   old BLOB NOT NULL, new BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS xattrs_dir ON xattrs (dir);
CREATE TABLE IF NOT EXISTS conflicts (dir INTEGER NOT NULL, name BLOB NOT NULL, note TEXT NOT NULL,
                                      PRIMARY KEY (dir, name));
PRAGMA user_version = 2;
"""

#: (entry name, xattr name, old value, new value), as planning records them
XattrRow = tuple[bytes, str, bytes, bytes]


class Row(NamedTuple):
    """A recorded directory, as the workers apply it."""

    id: int
    path: bytes  # below the root; b"." is the root itself
    files: int  # entries recorded
    entries: bytes  # packed records (namespacefs._tree)


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


def entry_path(directory: bytes, name: bytes) -> bytes:
    """The path below the root of an entry of a recorded directory."""
    if name == b".":
        return directory
    return name if directory == b"." else directory + b"/" + name


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
            if self._check_schema() == 0:  # a new journal
                self.db.executescript(SCHEMA)
        except sqlite3.Error as e:  # (OperationalError too: a file that cannot be opened or locked)
            self.db.close()
            raise ShiftError(f"{path} is not a shift journal ({e})") from None
        except ShiftError:
            self.db.close()
            raise

    def _check_schema(self) -> int:
        """The journal's schema version (0: new), or ShiftError for one this version cannot read."""
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "entries" in tables:
            raise ShiftError(f"the journal {self.path} was written by an older namespacefs (schema 1, a row per file); "
                             f"finish or roll it back with that version")
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables - {"meta"}):
            raise ShiftError(f"the journal {self.path} has schema {version}; this namespacefs reads schema {SCHEMA_VERSION}")
        return version

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
        total, shifted = self.db.execute("SELECT coalesce(sum(count), 0), coalesce(sum(count * done), 0) FROM dirs").fetchone()
        conflicts, in_shifted = self.db.execute(
            "SELECT count(*), coalesce(sum(d.done), 0) FROM conflicts c JOIN dirs d ON d.id = c.dir").fetchone()
        uid_map, gid_map = self.maps()
        return Status(self.path, self.meta("root") or "", self.meta("state") or "empty", total, shifted - in_shifted,
                      conflicts, uid_map, gid_map)

    # --- the plan

    def begin_plan(self, **meta: str) -> None:
        """Forget any earlier plan and start recording a new one (state planning)."""
        self.db.execute("BEGIN")
        for table in ("dirs", "xattrs", "conflicts"):
            self.db.execute(f"DELETE FROM {table}")
        self.set_meta(state="planning", **meta)
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA synchronous=FULL")  # the plan must be on disk before any file changes
        self.db.execute("BEGIN")

    def add(self, path: bytes, count: int, entries: bytes, xattrs: list[XattrRow]) -> None:
        """One directory's records."""
        cur = self.db.execute("INSERT INTO dirs (path, count, entries) VALUES (?, ?, ?)", (path, count, entries))
        if xattrs:
            self.db.executemany("INSERT INTO xattrs VALUES (?, ?, ?, ?, ?)", [(cur.lastrowid, *x) for x in xattrs])

    def commit_plan(self) -> None:
        self.db.execute("COMMIT")
        self.set_meta(state="running")
        self.db.execute("PRAGMA synchronous=NORMAL")

    def abandon_plan(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # --- applying

    def pending(self, forward: bool) -> list[tuple[int, int]]:
        """(id, count) of the directories a run still has to go through, in id order (a rollback
        goes through all: each entry is checked)."""
        return self.db.execute(f"SELECT id, count FROM dirs {'WHERE done = 0' if forward else ''} ORDER BY id").fetchall()

    def pending_count(self, forward: bool) -> int:
        conflicts = self.db.execute("SELECT count(*) FROM conflicts").fetchone()[0]
        return sum(count for _, count in self.pending(forward)) - (0 if forward else conflicts)

    def rows(self, lo: int, hi: int, forward: bool) -> list[Row]:
        rows = self.db.execute(f"SELECT id, path, count, entries FROM dirs WHERE id BETWEEN ? AND ? "
                               f"{'AND done = 0' if forward else ''} ORDER BY id", (lo, hi)).fetchall()
        return [Row._make(row) for row in rows]

    def xattrs(self, lo: int, hi: int) -> dict[int, list[XattrRow]]:
        found: dict[int, list[XattrRow]] = defaultdict(list)
        for d, name, xattr, old, new in self.db.execute(
                "SELECT dir, name, xattr, old, new FROM xattrs WHERE dir BETWEEN ? AND ?", (lo, hi)):
            found[d].append((name, xattr, old, new))
        return found

    def skipped(self, lo: int, hi: int) -> dict[int, set[bytes]]:
        """The entries recorded as conflicts, by directory: left alone from then on."""
        found: dict[int, set[bytes]] = defaultdict(set)
        for d, name in self.db.execute("SELECT dir, name FROM conflicts WHERE dir BETWEEN ? AND ?", (lo, hi)):
            found[d].add(name)
        return found

    def mark(self, lo: int, hi: int, forward: bool, conflicts: list[tuple[int, bytes, str]]) -> None:
        """Every directory of ids lo..hi reached the run's end state, except the conflicts."""
        self.db.execute("BEGIN")
        self.db.execute("UPDATE dirs SET done = ? WHERE id BETWEEN ? AND ?", (int(forward), lo, hi))
        self.db.executemany("INSERT OR REPLACE INTO conflicts VALUES (?, ?, ?)", conflicts)
        self.db.execute("COMMIT")

    def conflicts(self, limit: int) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT d.path, c.name, c.note FROM conflicts c JOIN dirs d ON d.id = c.dir "
                               "ORDER BY c.dir, c.name LIMIT ?", (limit,)).fetchall()
        return [(printable(entry_path(p, n)), note) for p, n, note in rows]


def printable(path: bytes) -> str:
    """A path as one line of text: bytes that are not UTF-8 as \\xNN, a newline as \\n."""
    return path.decode("utf-8", "backslashreplace").replace("\n", "\\n")


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
