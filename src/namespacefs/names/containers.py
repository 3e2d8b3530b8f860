"""Container renames, kept in their own tables (containers_names, containers_names_history) of the
names database. A rename is stored under the container's key (containers.Container.key:
`ENGINE:ENGINE_ID` for a container an engine runs, so it survives a restart of the container, else
the 64-bit ids of its namespaces in this boot). The containers part never opens the database: the
core loads these names and hands them to containers.find as data; front ends store them here."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from namespacefs.names.store import NamingError, db_path, open_db
from namespacefs.syntax import container_name_problem

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
    """The names database cannot be opened (the file is unusable)."""


@contextmanager
def connect(path: str | None, create: bool = True) -> Iterator[sqlite3.Connection]:
    try:
        conn = open_db(path, check=create)  # (a write is verified first: quick_check)
    except (OSError, sqlite3.Error, NamingError) as e:
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
    if not os.path.exists(db_path(path)):
        return {}
    with connect(path, create=False) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'containers_names'").fetchone():
            return {}
        return {k: n for k, n in conn.execute("SELECT key, name FROM containers_names")}


def rename(path: str | None, key: str, name: str) -> None:
    """Store `name` for the container with this key (ValueError for a name no container may have:
    syntax.container_name_problem, so the name stored is the name shown)."""
    problem = container_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
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
