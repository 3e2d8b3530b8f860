"""Container renames, kept in their own table (containers_names) of the names database (opened with
namespacefs.names.open_db). A rename is stored under the container's key: `ENGINE:ENGINE_ID` for
a container an engine runs (it survives a restart of the container), else the 64-bit ids of its
namespaces in this boot."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from namespacefs.syntax import name_problem, printable

#: what containers.find turns into '_' in any name
_UNSAFE = re.compile(r"[/\s\x00-\x1f]")

SCHEMA = """CREATE TABLE IF NOT EXISTS containers_names (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    set_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS containers_names_history (   -- every name a rename or forget replaced
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    set_at REAL NOT NULL,
    ended REAL NOT NULL
)"""


class NamesUnavailable(RuntimeError):
    """The names database cannot be opened (its module is missing or the file is unusable)."""


def _names() -> ModuleType:
    try:
        from namespacefs import names  # the naming core owns the database file
    except ImportError as e:
        raise NamesUnavailable(f"the names database is not available in this build ({e})") from None
    return names


@contextmanager
def connect(path: str | None, create: bool = True) -> Iterator[sqlite3.Connection]:
    names = _names()
    try:
        conn = names.open_db(path, check=create)  # (a write is verified first: quick_check)
    except (OSError, sqlite3.Error, names.NameError) as e:
        raise NamesUnavailable(f"cannot open the names database {path or ''}: {e}") from None
    try:
        if create:
            conn.executescript(SCHEMA)
        yield conn
        conn.commit()
    except sqlite3.Error as e:
        raise NamesUnavailable(f"the names database {path or ''} failed: {e}") from None
    finally:
        conn.close()


def load(path: str | None) -> dict[str, str]:
    """key -> name for every rename. Reading creates nothing: no database or no table, no renames."""
    if not os.path.exists(_names().db_path(path)):
        return {}
    with connect(path, create=False) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'containers_names'").fetchone():
            return {}
        return {k: n for k, n in conn.execute("SELECT key, name FROM containers_names")}


def rename(path: str | None, key: str, name: str) -> None:
    # the one name rule of namespacefs (syntax.name_problem), then the same rule containers.find
    # applies to every name, so the name stored is the name shown
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{printable(name)} cannot be a container name: {problem}")
    if not name or name in (".", "..") or name != name.strip("._") or _UNSAFE.search(name) or len(name) > 80:
        raise ValueError(f"'{name}' cannot be a container name (no '/', whitespace or control characters, "
                         f"not empty, no leading or trailing '.' or '_', at most 80 characters)")
    with connect(path) as conn:
        _keep_old(conn, key, name)
        conn.execute("INSERT OR REPLACE INTO containers_names (key, name, set_at) VALUES (?, ?, ?)",
                     (key, name, time.time()))


def _keep_old(conn: sqlite3.Connection, key: str, new: str | None) -> None:
    """A history row for the stored name a rename (or forget) replaces."""
    conn.execute("INSERT INTO containers_names_history (key, name, set_at, ended)"
                 " SELECT key, name, set_at, ? FROM containers_names WHERE key = ? AND name IS NOT ?",
                 (time.time(), key, new))


def forget(path: str | None, key: str) -> bool:
    with connect(path) as conn:
        _keep_old(conn, key, None)
        return conn.execute("DELETE FROM containers_names WHERE key = ?", (key,)).rowcount > 0
