"""by/: every selector of the one grammar (namespacefs.targets) as a path of the filesystem.

    by/SELECTOR         a namespace: a symlink to its <type>/<inode> directory
                        (`by/web` for `ip netns add web`, `by/net:[4026532301]`, `by/id:12345`,
                        `by/4026532301`, `by/1234:net`, a namespace's name)
    by/CONTAINER/TYPE   a container (its name or engine id): a directory with one symlink per
                        namespace type, to that namespace's <type>/<inode> directory

Resolution is targets.resolve_target's, with files=False (a reader's lookup never tells which
files exist on the host) and pids=False (all digits is an inode or id); an ambiguous or unknown
selector is ENOENT. A selector with a '/' (a container path, a name path) cannot be one path
component: give the container's name or id instead. by/ itself is not listed in the top
directory (whose listing stays the 2021 proposal's layout plus tree/), but can be entered and
listed: its listing shows the `ip netns` names and the
container names (what a user would type); any other selector works when looked up. A reader of a
per-reader view (--allow-other) finds only what its view shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from namespacefs import targets
from namespacefs.fs import layout
from namespacefs.model import Namespace, netns_names

if TYPE_CHECKING:
    from namespacefs.containers import ContainerTree

BY = "by"


class ByDir:
    """by/ as one reader sees one snapshot (made once per view: lookups are memoised)."""

    def __init__(self, view: layout.View, tree: ContainerTree | None) -> None:
        self.view, self.tree = view, tree
        self._keys: dict[str, tuple[Any, ...] | None] = {}

    def key_of(self, name: str) -> tuple[Any, ...] | None:
        """The node key of by/NAME, None where NAME selects nothing this reader may see."""
        if name not in self._keys:
            self._keys[name] = self._resolve(name)
        return self._keys[name]

    def _resolve(self, name: str) -> tuple[Any, ...] | None:
        from namespacefs.fs.nodes import Kind

        if not name or "/" in name or name in (".", ".."):
            return None
        try:
            target = targets.resolve_target(self.view.snapshot, name, self.tree, files=False)
        except (targets.NotFound, ValueError):
            return None
        if target.namespace is not None:
            return (Kind.BYLINK, target.namespace.key) if self.view.can_see(target.namespace) else None
        if target.container is not None and self.container_links(target.container.path):
            return (Kind.BYDIR, target.container.path)
        return None

    def listed(self) -> list[str]:
        """What a listing of by/ shows: the ip netns names and the container names."""
        names = {n for ns in self.view.of_type("net") for n in netns_names(ns)}
        if self.tree is not None:
            names |= {c.name for c in self.tree if c.path != "/" and c.name}
        return sorted(n for n in names if self.key_of(n) is not None)

    def container_links(self, path: str) -> dict[str, Namespace] | None:
        """type -> namespace of the container at path, those this reader may see (None: no such
        container, or none of its namespaces visible)."""
        c = self.tree.get(path) if self.tree is not None else None
        if c is None:
            return None
        links = {t: ns for t, inode in c.namespaces.items()
                 if (ns := self.view.snapshot.get(inode)) is not None and self.view.can_see(ns)}
        return links or None
