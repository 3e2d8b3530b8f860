"""Names for namespaces: stable defaults, names from the world, persistent renames, paths.

The API the other parts code against:
  open_db(path=None) -> sqlite3.Connection   the names database (WAL, busy timeout; other parts
                                              may keep their own tables in it)
  apply(snapshot, db=None) -> Snapshot       the snapshot with Namespace.name and .path filled
  rename(snapshot, ns, new_name, db=None)    store an explicit name (NamingError if invalid or taken)
  validate(name, nstype)                     NamingError unless it is an acceptable name
  path_of(ns, name, owner_path)              the one rule for name paths
  NamingError                                every naming failure, with a message for the user

See docs/names.md.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from namespacefs import kernel
from namespacefs.model import SOURCES, Namespace, Snapshot
from namespacefs.names.defaults import (
    DEFAULT,
    ENGINE,
    NETNS,
    RENAME,
    assign,
    default_name,
    ns_key,
    parent_path,
    path_of,
    paths,
    scope_key,
    validate,
)
from namespacefs.names.store import (
    DEFAULT_DB,
    NamespaceNameError,
    NamingError,
    StoredName,
    conn_path,
    db_path,
    forget_kept,
    kept_rows,
    open_db,
    open_for_reading,
    retire,
    rows,
    transaction,
    translate_errors,
)

__all__ = [
    "DEFAULT", "DEFAULT_DB", "ENGINE", "NETNS", "RENAME", "Assigned", "NamespaceNameError", "NamingError", "apply",
    "assigned", "db_path", "default_name", "history", "ns_key", "open_db", "parent_path", "path_of", "prune", "rename",
    "reset", "validate",
]


def __getattr__(name: str) -> type[NamingError]:
    """`names.NameError`, the name docs/names.md documented before NamingError (it shadowed the builtin)."""
    if name == "NameError":
        return NamingError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _log(level: str, message: str, *args: object) -> None:
    """Report through the `namespacefs.names` logger at this level ("debug", "warning"); logging
    is imported only when there is something to say (2 ms that `nsfs ls` otherwise spends)."""
    import logging

    getattr(logging.getLogger("namespacefs.names"), level)(message, *args)

#: last_seen of a live rename is refreshed at most this often (one UPDATE, not one per snapshot).
REFRESH_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Assigned:
    """The names of one snapshot, with where each came from."""

    names: Mapping[int, tuple[str, str]]  # inode -> (name, origin: rename|engine|netns|default)
    paths: Mapping[int, str]


def assigned(snapshot: Snapshot, db: str | None = None, strict: bool = True,
             engine: Mapping[int, str] | None = None, keep: bool = False) -> Assigned:
    """Compute every name (one read of the database). engine: inode -> the container engine's name
    of its container (what core.engine_names found; the world names beside ip netns). With
    strict=False a database that cannot be read is reported through the log and only default and
    world names are used. keep: the database stays open for this thread's next call, and is read
    again only after a commit (store.kept_rows: the daemon names every update). A snapshot without
    sources (a partial view: the daemon's pass over new namespaces) does not maintain the database."""
    stored: list[StoredName] = []
    earlier: list[StoredName] = []  # renames from earlier boots, to be moved to the history
    conn, kept = None, False
    try:
        conn, found, kept = kept_rows(db) if keep else _read_once(db)
        for r in found:
            (stored if r.boot_id == snapshot.boot_id else earlier).append(r)
    except NamingError as e:
        if strict:
            raise
        _log("warning", "nsfs: %s; showing default names", e)
    try:
        names = assign(snapshot, stored, engine)
        result = Assigned(names, paths(snapshot, names))
        if conn is not None and snapshot.sources and _maintain(conn, snapshot, stored, earlier, names) and kept:
            forget_kept()  # (its own commits do not change the data_version it reads)
        return result
    finally:
        if conn is not None and not kept:
            conn.close()


def _read_once(db: str | None) -> tuple[sqlite3.Connection | None, list[StoredName], bool]:
    conn = open_for_reading(db)
    try:
        return conn, rows(conn, None) if conn is not None else [], False
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def apply(snapshot: Snapshot, db: str | None = None, strict: bool = True,
          engine: Mapping[int, str] | None = None, keep: bool = False) -> Snapshot:
    """The snapshot with Namespace.name and Namespace.path filled in (engine, keep: see assigned)."""
    got = assigned(snapshot, db, strict, engine, keep)
    names, paths_ = got.names, got.paths
    named = {inode: ns if ns.name == names[inode][0] and ns.path == paths_[inode] else ns.named(names[inode][0], paths_[inode])
             for inode, ns in snapshot.namespaces.items()}  # (a namespace already so named is kept as it is)
    return snapshot.replace(namespaces=named)


def _alive_elsewhere(row: StoredName) -> bool | None:
    """Is a namespace that is not in the snapshot still alive? (kernel.ns_alive, by its id)"""
    return kernel.ns_alive(row.ns_id, row.type, row.inode)


def _complete(snapshot: Snapshot) -> bool:
    return set(SOURCES) <= set(snapshot.sources) and os.geteuid() == 0 and not snapshot.errors.get("denied")


def _dead(snapshot: Snapshot, stored: list[StoredName]) -> list[StoredName]:
    """Stored renames whose namespace is gone (checked, never guessed)."""
    live = {ns_key(ns): ns for ns in snapshot}
    dead = []
    for r in stored:
        ns = live.get(r.key)
        if ns is not None:
            if r.ns_id is None and (ns.type != r.type or scope_key(ns, snapshot) != r.scope):
                dead.append(r)  # an inode reused by another namespace
            continue
        alive = _alive_elsewhere(r)
        if alive is False or (alive is None and r.ns_id is None and _complete(snapshot)):
            dead.append(r)
    return dead


def _maintain(conn: sqlite3.Connection, snapshot: Snapshot, stored: list[StoredName], earlier: list[StoredName],
              names: Mapping[int, tuple[str, str]]) -> bool:
    """Best effort, and rare: move renames of dead namespaces (and of earlier boots) to the history;
    refresh last_seen of live ones at most once a minute. Skipped silently if the database is busy
    or read-only (the next snapshot will do it). True if it wrote."""
    now = snapshot.taken_at or time.time()
    try:
        dead = _dead(snapshot, stored)
        live_keys = {ns_key(ns) for ns in snapshot if names.get(ns.inode, ("", ""))[1] == RENAME}
        stale = [r.key for r in stored if r.key in live_keys and r.last_seen < now - REFRESH_EVERY]
        if not (dead or earlier or stale):
            return False
        conn.execute("PRAGMA busy_timeout = 200")
        with transaction(conn):
            if dead:
                retire(conn, dead, now, "gone")
            if earlier:
                retire(conn, earlier, now, "reboot")
            conn.executemany("UPDATE names SET last_seen = ? WHERE boot_id = ? AND key = ?",
                             [(now, snapshot.boot_id, k) for k in stale])
        return True
    except (NamingError, sqlite3.Error) as e:
        _log("debug", "names maintenance skipped: %s", e)
        return False


def _check_alive(ns: Namespace) -> None:
    if kernel.ns_alive(ns.id, ns.type, ns.inode) is False:
        raise NamingError(f"the {ns.type} namespace {ns.inode} is gone", errno.ENOENT)


def rename(snapshot: Snapshot, ns: Namespace, new_name: str, db: str | None = None,
           engine: Mapping[int, str] | None = None) -> None:
    """Give `ns` the explicit name `new_name`, unique among the namespaces owned by the same user
    namespace (a name another namespace of the scope shows in this snapshot, or would get from
    `engine` (see assigned), a rename or ip netns, is taken). Atomic; safe against concurrent
    renames. Raises NamingError."""
    validate(new_name, ns.type)
    if snapshot.get(ns.inode) is None:
        raise NamingError(f"the {ns.type} namespace {ns.inode} is not in this snapshot")
    _check_alive(ns)
    key, scope, now = ns_key(ns), scope_key(ns, snapshot), time.time()
    conn = open_db(db)
    try:
        with transaction(conn):
            stored = rows(conn, snapshot.boot_id)
            for r in stored:
                if r.scope == scope and r.name == new_name and r.key != key:
                    other = next((o for o in snapshot if ns_key(o) == r.key), None)
                    if other is not None or _alive_elsewhere(r) is not False:
                        where = f" ({other.path})" if other is not None and other.path else ""
                        raise NamingError(f"'{new_name}' is already the name of the {r.type} namespace {r.inode}{where}"
                                        " in the same user namespace", errno.EEXIST)
                    retire(conn, [r], now, "gone")  # a dead namespace's name never blocks a new one
            _check_free(snapshot, ns, new_name, scope, assign(snapshot, [r for r in stored if r.key != key], engine))
            old = next((r for r in stored if r.key == key), None)
            first = old.first_seen if old is not None and old.name == new_name else now
            if old is not None and old.name != new_name:
                _keep_replaced(conn, old, now)
            conn.execute(
                "INSERT OR REPLACE INTO names (boot_id, key, type, ns_id, inode, dev, scope, name, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (snapshot.boot_id, key, ns.type, ns.id, ns.inode, ns.dev, scope, new_name, first, now))
    except sqlite3.IntegrityError:
        raise NamingError(f"'{new_name}' was just given to another namespace in the same user namespace",
                        errno.EEXIST) from None
    finally:
        conn.close()


def _check_free(snapshot: Snapshot, ns: Namespace, new_name: str, scope: str,
                names: Mapping[int, tuple[str, str]]) -> None:
    """NamingError if another namespace of the scope has new_name: as the snapshot shows it, or
    as the names would be without ns's own rename."""
    for other in snapshot:
        if other.inode == ns.inode or new_name not in (names[other.inode][0], other.name):
            continue
        if scope_key(other, snapshot) == scope:
            how = names[other.inode][1] if names[other.inode][0] == new_name else "shown"
            raise NamingError(f"'{new_name}' is already the name of the {other.type} namespace {other.inode}"
                              f" ({how} name) in the same user namespace", errno.EEXIST)


#: History rows of replaced names kept per user namespace (scope): anyone privileged in their own user
#: namespace may rename its namespaces (`mv` in the filesystem), and must not grow root's history
#: without bound. The oldest go first; the history of namespaces that are gone is never trimmed.
MAX_REPLACED_PER_SCOPE = 100


def _keep_replaced(conn: sqlite3.Connection, old: StoredName, now: float) -> None:
    """A history row for a name that a rename replaces (inside the rename's transaction)."""
    retire(conn, [old], now, "renamed")
    conn.execute(
        "DELETE FROM history WHERE reason = 'renamed' AND scope = ? AND seq NOT IN"
        " (SELECT seq FROM history WHERE reason = 'renamed' AND scope = ? ORDER BY seq DESC LIMIT ?)",
        (old.scope, old.scope, MAX_REPLACED_PER_SCOPE))


def reset(snapshot: Snapshot, ns: Namespace, db: str | None = None) -> bool:
    """Drop the explicit name of `ns` (it gets its world or default name back). False if it had none."""
    conn = open_db(db)
    try:
        with transaction(conn):
            cur = conn.execute("DELETE FROM names WHERE boot_id = ? AND key = ?", (snapshot.boot_id, ns_key(ns)))
            return cur.rowcount > 0
    finally:
        conn.close()


def history(db: str | None = None) -> list[dict[str, Any]]:
    """The names of namespaces that are gone, oldest first."""
    conn = open_for_reading(db)
    if conn is None:
        return []
    try:
        conn.row_factory = sqlite3.Row
        with translate_errors(conn_path(conn)):
            return [dict(r) for r in conn.execute(
                "SELECT name, type, ns_id AS id, inode, dev, boot_id, scope, first_seen, last_seen, ended, reason"
                " FROM history ORDER BY seq")]
    finally:
        conn.close()


def prune(db: str | None = None, older_than: float | None = None) -> int:
    """Delete history entries (all, or those that ended more than `older_than` seconds ago)."""
    conn = open_for_reading(db)
    if conn is None:
        return 0
    try:
        with transaction(conn):
            if older_than is None:
                return conn.execute("DELETE FROM history").rowcount
            return conn.execute("DELETE FROM history WHERE ended < ?", (time.time() - older_than,)).rowcount
    finally:
        conn.close()

