"""The one entry point front ends use to get a snapshot: discovery, then everything layered on it
(names, containers) as those parts of the core provide them. Front ends never scan /proc
themselves."""

from __future__ import annotations

import os
from collections.abc import Iterable

from namespacefs.discover import SOURCES, discover
from namespacefs.model import Snapshot


def snapshot(sources: Iterable[str] = SOURCES, fresh: bool = False, db: str | None = None,
             strict: bool = False) -> Snapshot:
    """A complete snapshot of the host, with every namespace named (Namespace.name and .path, from
    the names database `db`, else $NSFS_DB, else the default; see namespacefs.names). When a daemon
    (`nsfs serve`) is running and the caller wants every source, its live snapshot is used (no scan);
    fresh=True, other sources, or NSFS_NO_DAEMON=1 in the environment always scan. A names database
    that cannot be read is logged (namespacefs.names) and default names are used. strict: a names
    database that cannot be read is an error (names.NameError), for commands that write to it."""
    sources = tuple(sources)
    snap: Snapshot | None = None
    if not fresh and set(sources) == set(SOURCES) and not os.environ.get("NSFS_NO_DAEMON"):
        from namespacefs.service.client import fetch_snapshot

        snap = fetch_snapshot(timeout=2.0)
    if snap is None:
        snap = discover(sources)
    return name(snap, db, strict)


def name(snap: Snapshot, db: str | None = None, strict: bool = False) -> Snapshot:
    """The one naming pass: containers recognised, then names and name paths applied. Every part that
    names a snapshot (the CLI, the FUSE server, the daemon) calls this and nothing else."""
    from namespacefs import names

    return names.apply(snap, db, strict=strict)

