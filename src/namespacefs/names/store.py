"""The SQLite store of renames and their history.

One file (default /var/lib/namespacefs/names.db, else $NSFS_DB, else --db) in WAL mode, so readers
never wait for a writer and writers queue behind a short busy timeout. A locked database is
reported with the processes that hold it; a database that is not one (corrupt, truncated, some
other file) is never replaced: the error says how to recover and the file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from namespacefs import ownership

DEFAULT_DB: Final = "/var/lib/namespacefs/names.db"
#: How long a writer waits for another writer before giving up (seconds).
BUSY_TIMEOUT: Final = 3.0
#: How long a lookup waits (`nsfs ls` naming its namespaces): a database locked for longer, for
#: example by `PRAGMA locking_mode=EXCLUSIVE` in another process, costs the names, not the listing.
READ_TIMEOUT: Final = 0.2
SCHEMA_VERSION: Final = 1

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS names (
    boot_id    TEXT    NOT NULL,
    key        TEXT    NOT NULL,   -- 'id:N' (the 64-bit namespace id) or 'ino:TYPE:DEV:INODE'
    type       TEXT    NOT NULL,
    ns_id      INTEGER,
    inode      INTEGER NOT NULL,
    dev        INTEGER NOT NULL,
    scope      TEXT    NOT NULL,   -- key of the owning user namespace ('' for the initial one)
    name       TEXT    NOT NULL,
    first_seen REAL    NOT NULL,
    last_seen  REAL    NOT NULL,
    PRIMARY KEY (boot_id, key),
    UNIQUE (boot_id, scope, name)
);
CREATE TABLE IF NOT EXISTS history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    ns_id      INTEGER,
    inode      INTEGER NOT NULL,
    dev        INTEGER NOT NULL,
    boot_id    TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    first_seen REAL    NOT NULL,
    last_seen  REAL    NOT NULL,
    ended      REAL    NOT NULL,   -- when namespacefs noticed it was gone
    reason     TEXT    NOT NULL    -- 'gone' (the namespace died) or 'reboot'
);
CREATE INDEX IF NOT EXISTS history_name ON history (name);
"""


class NamespaceNameError(Exception):
    """A naming problem, with a message fit for the user (bad name, collision, locked or broken database).
    `errno` is what a filesystem front end answers a rename with (EINVAL when nothing fits better)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


#: The short name every part codes against.
NamingError = NamespaceNameError


@dataclass(frozen=True, slots=True)
class StoredName:
    """One stored rename: a row of the `names` table."""

    boot_id: str
    key: str
    type: str
    ns_id: int | None
    inode: int
    dev: int
    scope: str
    name: str
    first_seen: float
    last_seen: float


NAME_COLUMNS: Final = "boot_id, key, type, ns_id, inode, dev, scope, name, first_seen, last_seen"


def db_path(path: str | None = None) -> str:
    """The database path: the argument, else $NSFS_DB, else the default."""
    return os.path.abspath(path or os.environ.get("NSFS_DB") or DEFAULT_DB)


def _checked_path(path: str | None) -> str:
    """db_path, but an empty argument (`--db ''`) is an error, never a silent fall-back to the
    shared default database."""
    if path is not None and not path.strip():
        raise NamingError("the names database path is empty (give --db a file name)")
    full = db_path(path)
    try:
        full.encode("utf-8")  # (SQLite takes UTF-8 file names: bytes that are not text cannot name it)
    except UnicodeEncodeError:
        raise NamingError(f"the names database path {full!a} is not valid UTF-8 text") from None
    return full


def _trusted(path: str) -> bool:
    """Whether the database exists; NamingError unless it (with its -wal and -shm) and its directory
    are trusted (namespacefs.ownership: a regular file, owned by root or us, writable by no one else)."""
    try:
        exists = ownership.check_file(path, "the names database")
        for suffix in ("-wal", "-shm"):
            ownership.check_file(path + suffix, "the names database's journal")
    except ownership.Untrusted as e:
        raise NamingError(f"{e}; refusing to use it", errno.EACCES) from None
    return exists


class Connection(sqlite3.Connection):
    """A connection that remembers whether its file passed PRAGMA quick_check: only those are ever written to."""

    verified = False


def verify(conn: sqlite3.Connection, path: str | None = None) -> None:
    """NamingError unless the database passes SQLite's quick_check (once per connection): a damaged
    file is never written to, whoever writes (renames, container names, maintenance)."""
    if getattr(conn, "verified", False):
        return
    path = path or conn_path(conn)
    with translate_errors(path):
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
    if problems != ["ok"]:
        raise _corrupt(path, problems[0] if problems else "quick_check gave no answer")
    if isinstance(conn, Connection):
        conn.verified = True


def open_db(path: str | None = None, timeout: float = BUSY_TIMEOUT, check: bool = True) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) the names database, in WAL mode with a busy
    timeout. Raises NamingError for a locked, unreadable, untrusted or corrupt database (check=False:
    a lookup, which skips the quick_check; transaction() still runs it before any write). Other
    parts may add their own tables through this connection (prefix them with the part's name)."""
    path = _checked_path(path)
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    except OSError as e:
        raise NamingError(f"cannot create the directory of the names database {path}: {e.strerror}") from None
    if not _trusted(path):
        try:
            os.close(ownership.create_file(path, 0o644))
        except FileExistsError:
            _trusted(path)  # someone made it meanwhile: it must pass the same check
        except OSError as e:
            raise NamingError(f"cannot create the names database {path}: {e.strerror}") from None
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False,
                               factory=Connection)
    except sqlite3.Error as e:
        raise NamingError(f"cannot open the names database {path}: {e}") from None
    try:
        with translate_errors(path):
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            wal = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise NamingError(f"{path} was written by a newer namespacefs (schema {version}); upgrade namespacefs")
            if check or not wal or version < SCHEMA_VERSION:
                verify(conn, path)  # before anything is written, the switch to WAL included
            if not wal:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < SCHEMA_VERSION:  # (idempotent: two first users may both get here)
                conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        conn.close()
        raise
    return conn


def open_for_reading(path: str | None = None, timeout: float = READ_TIMEOUT) -> sqlite3.Connection | None:
    """The database for a lookup, or None when it does not exist yet (no renames: nothing to read,
    and nothing is created just by listing)."""
    full = _checked_path(path)
    if not os.path.exists(full) or not _trusted(full):  # (a file this user cannot even see: no names to read)
        return None
    if os.access(full, os.W_OK) and os.access(os.path.dirname(full), os.W_OK):
        return open_db(full, timeout, check=False)
    # someone else's database (root's, read by a user): read-only, no schema change, no WAL switch.
    # A WAL database can be read so only while its -shm exists; with no -wal (every writer closed and
    # checkpointed) the main file is the whole truth and is read as immutable.
    try:
        return _read_only(full, "mode=ro", timeout)
    except sqlite3.OperationalError:
        if os.path.exists(full + "-wal"):
            raise NamingError(f"the names database {full} cannot be read by this user while it is being written;"
                            " try again, or use --db") from None
    except sqlite3.DatabaseError as e:
        raise _corrupt(full, str(e)) from None
    try:
        return _read_only(full, "mode=ro&immutable=1", timeout)
    except sqlite3.Error as e:
        raise NamingError(f"cannot read the names database {full}: {e}") from None


#: This thread's kept lookup connection: ((path, st_dev, st_ino), connection, data_version, rows).
_kept = threading.local()


def kept_rows(path: str | None = None) -> tuple[sqlite3.Connection | None, list[StoredName], bool]:
    """What open_for_reading and rows(conn, None) give, and whether the connection is kept: one this
    user may write is kept open for this thread's next call (the daemon names every update: an open
    costs ~0.5 ms), and its rows are read again only after a commit (PRAGMA data_version changes
    with any other connection's; after a write through this one, forget_kept()). The file is
    checked for trust at every call, and a path that names another file (or none) now is opened anew."""
    full = _checked_path(path)
    try:
        st = os.stat(full)
        key = (full, st.st_dev, st.st_ino)
    except OSError:
        key = None
    # (as open_for_reading decides: one it opens read-only, maybe immutable, is read once, not kept)
    keep = key is not None and os.access(full, os.W_OK) and os.access(os.path.dirname(full), os.W_OK)
    held = getattr(_kept, "held", None)
    if held is not None and (held[0] != key or not keep or not _trusted(full)):
        forget_kept()  # (_trusted raises for a file that may no longer be trusted: closed first, then raised)
        held = None
    conn = held[1] if held is not None else open_for_reading(full)
    if conn is None:
        return None, [], False
    try:
        with translate_errors(full):
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        if held is None or version != held[2]:
            held = (key, conn, version, rows(conn, None))
        if keep:
            _kept.held = held
        return conn, held[3], keep
    except BaseException:
        if keep:
            forget_kept()
        conn.close()
        raise


def forget_kept() -> None:
    """Close this thread's kept lookup connection (kept_rows opens the database anew)."""
    held, _kept.held = getattr(_kept, "held", None), None
    if held is not None:
        with contextlib.suppress(sqlite3.Error):
            held[1].close()


def _read_only(path: str, flags: str, timeout: float) -> sqlite3.Connection | None:
    conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.close()
            return None  # not set up yet (or by another version): nothing to read
        conn.execute("SELECT 1 FROM names LIMIT 1").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: str | None = None) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so two renames serialise
    instead of both reading and one failing at commit."""
    with translate_errors(path or conn_path(conn)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            verify(conn, path)
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextlib.contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """sqlite3 errors -> NamingError with what to do about them."""
    try:
        yield
    except sqlite3.OperationalError as e:
        text = str(e)
        if "locked" in text or "busy" in text:
            who = holders(path)
            by = f"; held by {who}" if who else ""
            raise NamingError(f"the names database {path} is locked{by}; try again when it is released",
                            errno.EBUSY) from None
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            raise NamingError(f"the names database {path} cannot be written ({text}); run as its owner or use --db",
                            errno.EROFS) from None
        if "malformed" in text or "not a database" in text:
            raise _corrupt(path, text) from None
        raise NamingError(f"the names database {path}: {text}") from None
    except sqlite3.DatabaseError as e:
        raise _corrupt(path, str(e)) from None


def _corrupt(path: str, reason: str) -> NamingError:
    return NamingError(
        f"the names database {path} is damaged ({reason}); it was left untouched. To recover: "
        f"sqlite3 {path} .recover | sqlite3 {path}.recovered, check it, then mv {path}.recovered {path} "
        f"(or move {path} aside and re-apply an `nsfs names export` file with `nsfs names import`)")


def conn_path(conn: sqlite3.Connection) -> str:
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return str(file)
    return "?"


def holders(path: str) -> str:
    """Which processes have the database (or its -wal/-shm) open, fuser-like: 'pid 12 (python3), ...'."""
    inodes: set[tuple[int, int]] = set()
    for suffix in ("", "-wal", "-shm"):
        try:
            st = os.stat(path + suffix)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inodes:
                found[pid] = _comm(pid)
                break
    return ", ".join(f"pid {pid} ({comm})" for pid, comm in sorted(found.items()))


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def rows(conn: sqlite3.Connection, boot_id: str | None) -> list[StoredName]:
    """Every rename stored for this boot (None: for every boot; the one read a snapshot costs)."""
    with translate_errors(conn_path(conn)):
        if boot_id is None:
            return [StoredName(*r) for r in conn.execute(f"SELECT {NAME_COLUMNS} FROM names")]
        return [StoredName(*r) for r in conn.execute(f"SELECT {NAME_COLUMNS} FROM names WHERE boot_id = ?", (boot_id,))]


def retire(conn: sqlite3.Connection, dead: list[StoredName], now: float, reason: str) -> None:
    """Move renames of namespaces that are gone into the history (inside a transaction)."""
    for r in dead:
        conn.execute(
            "INSERT INTO history (name, type, ns_id, inode, dev, boot_id, scope, first_seen, last_seen, ended, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.name, r.type, r.ns_id, r.inode, r.dev, r.boot_id, r.scope, r.first_seen, r.last_seen, now, reason))
        conn.execute("DELETE FROM names WHERE boot_id = ? AND key = ?", (r.boot_id, r.key))
