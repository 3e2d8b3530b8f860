"""Containers as plain data: a Container is the set of processes sharing one combination of
namespaces, rooted at its init; containers nest by process ancestry. No I/O here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    """Who runs a container, as one engine module recognised it."""

    engine: str  # "runc", "docker", "systemd-nspawn", "bwrap", ...
    name: str  # the engine's name for it (container id, machine name, unit, hostname)
    engine_id: str | None = None  # the engine's own id (container id, pod uid, machine uuid)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the groups the engine puts it in, outermost first: (name, id) of a Podman pod, or of a
    #: Kubernetes namespace and pod. Each is a node of the tree holding its members.
    group: tuple[tuple[str, str | None], ...] = ()


#: Where a container's name came from. A name the container itself can change (its hostname)
#: never displaces one the user or an engine gave (see ContainerTree.lookup).
TRUSTED = frozenset({"rename", "engine"})


@dataclass(frozen=True)
class Container:
    path: str  # "/" for the host; "/web/inner" for a container nested in another
    name: str  # the last component of path ("" for the host)
    engine: str  # "host", "unknown", or the engine that runs it
    engine_id: str | None
    init: int  # host pid of its topmost process
    pids: tuple[int, ...]  # host pids of its own processes (not those of nested containers)
    namespaces: Mapping[str, int]  # type -> inode
    children: tuple[Container, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    key: str = ""  # what a rename is stored under (see namespacefs.names.containers)
    #: where its name came from: "host", "rename", "engine", "hostname" or "command" (COMM-PID)
    name_from: str = "engine"
    given: str = ""  # its name before a sibling's made it NAME.PID ("" when it was not changed)
    group: bool = False  # a pod (or Kubernetes namespace): a node with members, no processes of its own

    def walk(self) -> Iterator[Container]:
        """This container, then every container nested in it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def all_pids(self) -> tuple[int, ...]:
        """Its processes and those of every nested container."""
        return tuple(p for c in self.walk() for p in c.pids)

    def own_namespaces(self, parent: Container | None) -> dict[str, int]:
        """The namespaces it does not share with its parent container."""
        if parent is None:
            return dict(self.namespaces)
        return {t: i for t, i in self.namespaces.items() if parent.namespaces.get(t) != i}

    def to_dict(self, nested: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path, "name": self.name, "engine": self.engine, "engine_id": self.engine_id,
            "init": self.init, "pids": list(self.pids), "namespaces": dict(self.namespaces),
            "labels": dict(self.labels), "key": self.key, "name_from": self.name_from, "group": self.group,
        }
        if nested:
            data["children"] = [c.to_dict() for c in self.children]
        return data


@dataclass(frozen=True)
class ContainerTree:
    root: Container
    _by_path: dict[str, Container] = field(default_factory=dict, compare=False, repr=False)
    _parent: dict[str, Container] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for c in self.root.walk():
            self._by_path[c.path] = c
            for child in c.children:
                self._parent[child.path] = c

    def __iter__(self) -> Iterator[Container]:
        return self.root.walk()

    def __len__(self) -> int:
        return len(self._by_path)

    def get(self, path: str) -> Container | None:
        return self._by_path.get(path)

    def parent(self, container: Container) -> Container | None:
        return self._parent.get(container.path)

    def of_pid(self, pid: int) -> Container | None:
        """The container a process belongs to (its innermost)."""
        for c in self:
            if pid in c.pids:
                return c
        return None

    def lookup(self, spec: str) -> list[Container]:
        """Containers a user may mean by spec: a path (its leading '/' may be left out), a name, or an
        engine id (or its prefix of 12+). A name the user or an engine gave wins over one a container
        chose (its hostname): a container that names its host after another never takes that name.
        A name also matches the containers it was given to before siblings made them NAME.PID, so
        two containers that both call themselves `twin` are ambiguous, never one then the other."""
        spec = spec.strip()
        if spec in self._by_path:
            return [self._by_path[spec]]
        if "/" in spec:
            spec_path = "/" + spec.strip("/")
            return [self._by_path[spec_path]] if spec_path in self._by_path else []
        if not spec:
            return []
        named = [c for c in self if c.path != "/" and spec in (c.name, c.given)]
        trusted = [c for c in named if c.name_from in TRUSTED]
        if trusted:
            return trusted
        if named:
            return named
        return [c for c in self if c.engine_id and (c.engine_id == spec or (len(spec) >= 12 and c.engine_id.startswith(spec)))]

    def names(self) -> list[str]:
        """Every name and path a user may give (for suggestions)."""
        return [n for c in self if c.path != "/" for n in ((c.name,) if c.path == f"/{c.name}" else (c.name, c.path))]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root.to_dict(), "containers": [c.to_dict(nested=False) for c in self]}
