"""The composition root: the one place where a snapshot is put together, in this order:

1. it comes from a provider (the daemon's live model, which a front end passes in) or a scan
   (namespacefs.discover);
2. containers are recognised in it (namespacefs.containers), and the engines' names of their
   namespaces taken out as plain data;
3. names are applied (namespacefs.names), with those container names among the world's names.

Neither `names` nor `containers` imports the other: what one needs of the other passes through
here. Front ends (CLI, FUSE, the daemon) call snapshot() or name() and nothing below them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from namespacefs.discover import discover
from namespacefs.model import SOURCES, Snapshot

if TYPE_CHECKING:
    from namespacefs.containers import ContainerTree

#: Where a snapshot may come from without a scan (the daemon's, through service.client): None
#: when it has none (no daemon listening).
Provider = Callable[[], Snapshot | None]


def snapshot(sources: Iterable[str] = SOURCES, fresh: bool = False, db: str | None = None,
             strict: bool = False, provider: Provider | None = None) -> Snapshot:
    """A complete snapshot of the host, with every namespace named (Namespace.name and .path, from
    the names database `db`, else $NSFS_DB, else the default; see namespacefs.names). The
    provider's snapshot is used when it has one and the caller wants every source and no fresh
    scan; else (fresh=True, other sources, NSFS_NO_DAEMON=1 in the environment, no provider or no
    answer) the host is scanned. strict:
    a names database that cannot be read is an error (names.NamingError), for commands that
    write to it; otherwise it is logged (namespacefs.names) and default names are used."""
    sources = tuple(sources)
    ask = provider is not None and not fresh and set(sources) == set(SOURCES) and not os.environ.get("NSFS_NO_DAEMON")
    snap = provider() if ask and provider is not None else None
    if snap is None:
        snap = discover(sources)
    return name(snap, db, strict)


def engine_names(snap: Snapshot) -> dict[int, str]:
    """inode -> the engine's name of the container each namespace belongs to (those a recognised
    container does not share with its parent); {} when the engines' state cannot be read (a
    runtime's state we cannot parse must not cost the names of everything)."""
    from namespacefs import containers

    try:
        return containers.engine_names(snap)
    except Exception as e:  # any engine's failure: said on the log
        import logging

        logging.getLogger("namespacefs.names").debug("container names unavailable: %s", e)
        return {}


def name(snap: Snapshot, db: str | None = None, strict: bool = False, keep: bool = False) -> Snapshot:
    """The one naming pass: containers recognised, then names and name paths applied. Every part that
    names a snapshot (the CLI, the FUSE server, the daemon) calls this and nothing else. keep: the
    names database stays open for this thread's next pass (names.assigned; the daemon's)."""
    from namespacefs import names

    return names.apply(snap, db, strict=strict, engine=engine_names(snap), keep=keep)


def container_tree(snap: Snapshot, db: str | None = None, hostnames: bool = True) -> ContainerTree:
    """The snapshot's containers, with the container renames stored in the names database (none
    when it cannot be read: the engines' and default names are shown)."""
    from namespacefs import containers
    from namespacefs.names import containers as stored

    try:
        renames = stored.load(db)
    except stored.NamesUnavailable:
        renames = {}
    return containers.find(snap, names=renames, hostnames=hostnames)
