"""The one entry point front ends use to get a snapshot: discovery, then everything layered on it
(names, containers) as those parts of the core provide them. Front ends never scan /proc
themselves."""

from __future__ import annotations

from collections.abc import Iterable

from namespacefs.discover import SOURCES, discover
from namespacefs.model import Snapshot


def snapshot(sources: Iterable[str] = SOURCES) -> Snapshot:
    """A fresh, complete snapshot of the host."""
    return discover(sources)
