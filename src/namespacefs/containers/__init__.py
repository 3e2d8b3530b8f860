"""Containers from a snapshot.

A container is the set of processes that share one combination of the eight namespaces, rooted at
its init (the topmost process of the set). The host's own set is the root `/`. A container whose
init descends from a process of another container is nested in it, so every container has a path
like `/web/inner`. A process that made namespaces for its children only (`unshare --fork`: it
stays in the old pid namespace, its pid_for_children is the new one) belongs to its children's
container: one sandbox is one container. Engine modules recognise who runs each container and give
it the engine's name; pods (Podman, Kubernetes) are nodes holding their members (`/shop/web`,
`/default/shop-7d9/nginx`). Others get a default (their hostname where they have their own uts
namespace, else `COMM-PID`). Renames stored in the names database win (names.containers, loaded by core).

    tree = find(snapshot)
    for c in tree: print(c.path, c.engine, c.init)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from operator import itemgetter
from typing import Any

from namespacefs.containers import engines
from namespacefs.containers.candidate import Candidate
from namespacefs.containers.model import TRUSTED, Container, ContainerTree, Identity
from namespacefs.discover.processes import read_at
from namespacefs.handles import Gone
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Process, Snapshot
from namespacefs.syntax import safe_container_name

__all__ = ["ENGINES", "Container", "ContainerTree", "Identity", "describe_container", "engine_names", "find"]

ENGINES = engines.FALLBACKS

Combo = tuple[int, ...]
_ALL_TYPES = itemgetter(*NS_TYPES)
_PID, _TIME = NS_TYPES.index("pid"), NS_TYPES.index("time")
#: what the members of a pod share with it (where they all agree)
POD_SHARED = ("net", "ipc", "uts")


def _combo(p: Process) -> Combo | None:
    try:
        combo: Combo = _ALL_TYPES(p.namespaces)
    except KeyError:
        return None  # a zombie or a process that vanished mid-scan: it joins its parent's container
    return combo


def find(snapshot: Snapshot, names: Mapping[str, str] | None = None,
         oci_roots: Iterable[tuple[str, str]] | None = None, hostnames: bool = True) -> ContainerTree:
    """Group the snapshot's processes into the container tree. names: key -> name renames (from
    namespacefs.names.containers.load); oci_roots: extra OCI state roots as (directory, engine)."""
    layout = _Layout.of(snapshot)
    if layout is None:
        return ContainerTree(Container("/", "", "host", None, 0, (), {}, name_from="host"))
    world = engines.World(snapshot, oci_roots)
    return _build(layout, world, layout.identities(world), _Naming(snapshot, world, names or {}, hostnames))


class _Layout:
    """Which processes make up which container (by combination of namespaces), each one's init,
    the process that started it and the container it is nested in."""

    def __init__(self, snapshot: Snapshot, combos: dict[int, Combo], host: Combo) -> None:
        self.snapshot, self.combos, self.host = snapshot, combos, host
        self.members: dict[Combo, list[int]] = {}
        for pid in sorted(combos):
            self.members.setdefault(combos[pid], []).append(pid)
        self.inits, parent_of, self.starters = _ancestry(snapshot.processes, combos, self.members, host)
        self.kids: dict[Combo | None, list[Combo]] = {}
        for combo, parent in parent_of.items():
            self.kids.setdefault(parent, []).append(combo)

    @classmethod
    def of(cls, snapshot: Snapshot) -> _Layout | None:
        combos, host = _combos(snapshot.processes)
        return cls(snapshot, combos, host) if host is not None else None

    def identities(self, world: engines.World) -> dict[Combo, tuple[Candidate, Identity | None]]:
        """Each container but the host, as the engines see it (its candidate and who runs it)."""
        found = {}
        procs = self.snapshot.processes
        for combo, members in self.members.items():
            if combo != self.host:
                cand = Candidate(self.snapshot, procs[self.inits[combo]], tuple(members), self.starters.get(combo))
                found[combo] = (cand, world.identify(cand))
        return found


def _build(layout: _Layout, world: engines.World, found: Mapping[Combo, tuple[Candidate, Identity | None]],
           naming: _Naming) -> ContainerTree:
    return ContainerTree(_container(layout, found, naming, layout.host, "/", None, "", "host", ""))


def _container(layout: _Layout, found: Mapping[Combo, tuple[Candidate, Identity | None]], naming: _Naming,
               combo: Combo, path: str, ident: Identity | None, name: str, origin: str, given: str) -> Container:
    """One container and those nested in it (not a closure: one that calls itself is a cycle)."""
    entries = []
    for child in sorted(layout.kids.get(combo, []), key=lambda c: layout.inits[c]):
        cand, child_ident = found[child]
        entries.append(_Entry(child, layout.inits[child], child_ident, *naming.name(child, combo, cand, child_ident)))
    children = _place(entries, path, combo, partial(_container, layout, found, naming), naming)
    engine, engine_id, labels = ("host", None, {}) if combo == layout.host else (
        (ident.engine, ident.engine_id, dict(ident.labels)) if ident else ("unknown", None, {}))
    return Container(
        path=path, name="" if combo == layout.host else name, engine=engine, engine_id=engine_id,
        init=layout.inits[combo], pids=tuple(layout.members[combo]), namespaces=dict(zip(NS_TYPES, combo, strict=True)),
        children=children, labels=labels, key=naming.key(engine, engine_id, combo),
        name_from="host" if combo == layout.host else origin, given=given,
    )


def _combos(procs: Mapping[int, Process]) -> tuple[dict[int, Combo], Combo | None]:
    """pid -> its container's combination of namespaces, and the host's combination."""
    combos: dict[int, Combo] = {}
    for pid, p in procs.items():
        combo = _combo(p)
        if combo is not None:
            combos[pid] = combo
    host_pid = next((p for p in (1, 2) if p in combos), min(combos, default=0))
    host_combo = combos.get(host_pid)
    for pid, p in procs.items():
        if host_combo is not None and (pid in (1, 2) or p.ppid == 2):
            combos[pid] = host_combo  # init and kernel threads (kdevtmpfs has a mount ns of its own)
    for pid in procs:  # processes without namespace links take their nearest ancestor's
        if pid not in combos:
            found = _ancestor_combo(pid, procs, combos) or host_combo
            if found is not None:
                combos[pid] = found
    _fold_forkers(procs, combos, host_combo)
    return combos, host_combo


def _fold_forkers(procs: Mapping[int, Process], combos: dict[int, Combo], host: Combo | None) -> None:
    """A process whose pid (or time) namespace for its children is not its own, and whose children
    live in exactly those (`unshare --fork`, a runtime's parent half), belongs to its children's
    container rather than being a container of its own."""
    present = set(combos.values())
    for pid, p in procs.items():
        combo = combos.get(pid)
        if combo is None or combo == host:
            continue
        folded = for_children(combo, p.namespaces.get("pid_for_children"), p.namespaces.get("time_for_children"))
        if folded != combo and folded in present:
            combos[pid] = folded


def for_children(combo: Combo, pid_ns: int | None, time_ns: int | None) -> Combo:
    """The combination a process's children get: its own with the pid and time namespaces it made
    for them (pid_for_children, time_for_children; None: its own)."""
    inner = list(combo)
    inner[_PID] = pid_ns or combo[_PID]
    inner[_TIME] = time_ns or combo[_TIME]
    return tuple(inner)


def _ancestry(procs: Mapping[int, Process], combos: Mapping[int, Combo], members: Mapping[Combo, list[int]],
              host: Combo) -> tuple[dict[Combo, int], dict[Combo, Combo | None], dict[Combo, Process | None]]:
    """Each combination's init (its topmost process; the one that is pid 1 inside where there is
    one, else the lowest pid), the combination it is nested in, and the process that started it."""
    inits: dict[Combo, int] = {}
    parent_of: dict[Combo, Combo | None] = {}
    starters: dict[Combo, Process | None] = {}
    for combo, pids in members.items():
        tops = [p for p in pids if combos.get(procs[p].ppid) != combo]
        ones = [p for p in pids if procs[p].nspid and procs[p].nspid[-1] == 1 and len(procs[p].nspid) > 1]
        # pid 1 inside (not a forker's parent half), else the oldest of the topmost: a name made
        # from it (COMM-PID) must not move to another process when pids wrap
        if combo == host:
            inits[combo] = min(pids)
            parent_of[combo], starters[combo] = None, None
            continue
        init = ones[0] if len(ones) == 1 else _oldest(ones or tops or pids)
        inits[combo] = init
        anc = procs[init].ppid
        seen = {init}
        while anc in procs and combos.get(anc) == combo and anc not in seen:
            seen.add(anc)
            anc = procs[anc].ppid
        starters[combo] = procs.get(anc)
        parent_of[combo] = combos.get(anc, host)
    _break_cycles(parent_of, host)
    return inits, parent_of, starters


def _oldest(pids: list[int]) -> int:
    """The process started first (its start time, field 22 of /proc/PID/stat), else the lowest pid."""
    if len(pids) == 1:
        return pids[0]
    started = {}
    for pid in pids[:64]:
        try:
            started[pid] = int(read_at(f"/proc/{pid}/stat").rpartition(b")")[2].split()[19])
        except (OSError, ValueError, IndexError):
            continue
    return min(started, key=lambda p: (started[p], p)) if started else min(pids)


def _ancestor_combo(pid: int, procs: Mapping[int, Process], combos: Mapping[int, Combo]) -> Combo | None:
    seen: set[int] = set()
    while pid in procs and pid not in seen:
        seen.add(pid)
        pid = procs[pid].ppid
        if pid in combos:
            return combos[pid]
    return None


def _break_cycles(parent_of: dict[Combo, Combo | None], host: Combo | None) -> None:
    for combo in parent_of:
        seen = {combo}
        cur = parent_of[combo]
        while cur is not None and cur != host:
            if cur in seen:
                parent_of[combo] = host
                break
            seen.add(cur)
            cur = parent_of.get(cur)


class _Entry:
    """A child container about to be placed: its combination, init, identity and name."""

    __slots__ = ("combo", "given", "ident", "init", "name", "origin")

    def __init__(self, combo: Combo, init: int, ident: Identity | None, name: str, origin: str) -> None:
        self.combo, self.init, self.ident, self.name, self.origin = combo, init, ident, name, origin
        self.given = ""


class _Naming:
    """The names of containers: a rename, else the engine's, else the hostname, else COMM-PID."""

    def __init__(self, snapshot: Snapshot, world: engines.World, names: Mapping[str, str], hostnames: bool) -> None:
        self.snapshot, self.world, self.names, self.hostnames = snapshot, world, names, hostnames

    def key(self, engine: str, engine_id: str | None, combo: Combo) -> str:
        """Where a rename is stored: the engine's id where there is one (it survives a restart),
        else the namespaces' 64-bit ids in this boot (never reused)."""
        if engine == "host":
            return "host"
        if engine_id:
            return f"{engine}:{engine_id}"
        snap = self.snapshot
        ids = [str(ns.id if (ns := snap.get(i)) is not None and ns.id is not None else i) for i in combo]
        return f"ns:{snap.boot_id}:{','.join(ids)}"

    def name(self, combo: Combo, parent: Combo, cand: Candidate, ident: Identity | None) -> tuple[str, str]:
        """(name, where it came from)."""
        if self.names:
            key = self.key(ident.engine if ident else "unknown", ident.engine_id if ident else None, combo)
            if key in self.names:
                return safe_container_name(self.names[key]), "rename"
        if ident and ident.name:
            return safe_container_name(ident.name), "engine"
        if self.hostnames and (hostname := _hostname(self.snapshot, combo, parent)):
            return safe_container_name(hostname), "hostname"
        return safe_container_name(f"{cand.init.comm}-{cand.init.pid}"), "command"

    def group_name(self, engine: str, name: str, ident: str | None) -> tuple[str, str, str]:
        key = f"{engine}-group:{ident or name}"
        if key in self.names:
            return safe_container_name(self.names[key]), "rename", key
        return safe_container_name(name), "engine", key


#: a pod (or Kubernetes namespace) about to be placed: (engine, its id, its members)
_Pod = tuple[str, "str | None", list[_Entry]]
#: build(combo, path, identity, name, where the name came from, given name) -> the container
Builder = Callable[[Combo, str, "Identity | None", str, str, str], Container]


def _place(entries: list[_Entry], path: str, parent: Combo, build: Builder, naming: _Naming,
           depth: int = 0) -> tuple[Container, ...]:
    """The children of a container at path: plain ones built where they are, members of a group
    (a pod) inside a node for the group. Names are made unique among siblings first."""
    groups: dict[tuple[str, str | None], list[_Entry]] = {}
    plain: list[_Entry] = []
    for e in entries:
        if e.ident and len(e.ident.group) > depth:
            groups.setdefault(e.ident.group[depth], []).append(e)
        else:
            plain.append(e)
    slots: list[tuple[str, str, _Entry | _Pod]] = [(e.name, e.origin, e) for e in plain]
    for (gname, gid), group in groups.items():
        engine = group[0].ident.engine if group[0].ident else "unknown"
        name, origin, _key = naming.group_name(engine, gname, gid)
        slots.append((name, origin, (engine, gid, group)))
    unique = _unique(slots, [e.init if isinstance(e, _Entry) else min(m.init for m in e[2]) for _, _, e in slots])
    built = []
    for (_name, origin, item), (final, given) in zip(slots, unique, strict=True):
        child_path = f"{path.rstrip('/')}/{final}"
        if isinstance(item, _Entry):
            built.append(build(item.combo, child_path, item.ident, final, origin, given))
            continue
        engine, gid, group = item
        inner = _place(group, child_path, parent, build, naming, depth + 1)
        built.append(_group(child_path, final, origin, given, engine, gid, inner, naming, parent))
    return tuple(sorted(built, key=lambda c: c.init))


def _unique(slots: list[tuple[str, str, _Entry | _Pod]], inits: list[int]) -> list[tuple[str, str]]:
    """(final name, given name) for each sibling: a name given by the user or an engine is kept
    before one a container chose; among equals the lowest init keeps it, the others get .INIT."""
    order = sorted(range(len(slots)), key=lambda i: (slots[i][1] not in TRUSTED, inits[i]))
    taken: set[str] = set()
    out: list[tuple[str, str]] = [("", "")] * len(slots)
    for i in order:
        name = slots[i][0]
        final = name if name not in taken else f"{name}.{inits[i]}"
        taken.add(final)
        out[i] = (final, name if final != name else "")
    return out


def _group(path: str, name: str, origin: str, given: str, engine: str, gid: str | None,
           members: tuple[Container, ...], naming: _Naming, parent: Combo) -> Container:
    """A pod (or a Kubernetes namespace): a node with no processes of its own, holding its members;
    its namespaces are those its members share (net, ipc, uts where they agree; any other all of
    several share), the parent's for the rest, so those shared ones are named after the pod."""
    spaces = dict(zip(NS_TYPES, parent, strict=True))
    direct = [c for c in members if not c.group]
    if direct:
        for t in NS_TYPES:
            values = {c.namespaces[t] for c in direct}
            if len(values) == 1 and (t in POD_SHARED or len(direct) > 1):
                spaces[t] = values.pop()
    kind = "pod" if direct else "namespace"
    return Container(path=path, name=name, engine=engine, engine_id=gid, init=min((c.init for c in members), default=0),
                     pids=(), namespaces=spaces, children=members, labels={"group": kind},
                     key=naming.group_name(engine, name, gid)[2], name_from=origin, given=given, group=True)


def _hostname(snapshot: Snapshot, combo: Combo, parent: Combo) -> str | None:
    uts = NS_TYPES.index("uts")
    if combo[uts] == parent[uts] or (ns := snapshot.get(combo[uts])) is None:
        return None
    try:
        from namespacefs import details  # here: it imports socket (2 ms), needed only for hostnames

        return details.uname(ns, snapshot).get("nodename") or None
    except (OSError, Gone):
        return None


def engine_names(snapshot: Snapshot, tree: ContainerTree | None = None) -> dict[int, str]:
    """inode -> the engine's name of the container, for each namespace a recognised container
    does not share with its parent (for the names of the namespaces themselves). A pod comes
    before its members, so the namespaces they share are named after the pod. Without a tree,
    the tree (without hostnames) is built only when an engine recognised some container."""
    if tree is None:
        layout = _Layout.of(snapshot)
        if layout is None:
            return {}
        world = engines.World(snapshot)
        found = layout.identities(world)
        known = {combo for combo, (_cand, ident) in found.items() if ident is not None and (ident.name or ident.group)}
        if not known:
            return {}  # (no container any engine runs: every one would be `unknown`)
        _prune(layout, known)
        tree = _build(layout, world, found, _Naming(snapshot, world, {}, hostnames=False))
    names: dict[int, str] = {}
    for c in tree:
        if c.engine in ("host", "unknown") or c.name_from not in TRUSTED:
            continue
        for inode in c.own_namespaces(tree.parent(c)).values():
            names.setdefault(inode, c.name)
    return names


def _prune(layout: _Layout, known: set[Combo]) -> None:
    """Keep of the layout only the containers engines recognised and those they are nested in:
    the names engine_names gives depend on nothing else (a name an engine gave is kept before one
    a container chose, _unique; a container's own namespaces are those its parent does not share),
    and building the tree of every other container costs most of the time on a host of many."""
    parent = {kid: up for up, kids in layout.kids.items() for kid in kids}
    keep: set[Combo | None] = {layout.host}
    for combo in known:
        cur: Combo | None = combo
        while cur is not None and cur not in keep:
            keep.add(cur)
            cur = parent.get(cur)
    layout.kids = {up: [k for k in kids if k in keep] for up, kids in layout.kids.items() if up in keep}


def describe_container(c: Container, tree: ContainerTree, snap: Snapshot) -> dict[str, Any]:
    """A container's JSON form with its pod, processes and namespaces (each with its name)."""
    info = c.to_dict(nested=False)
    parent = tree.parent(c)
    info["parent"] = parent.path if parent else None
    if parent is not None and parent.group:
        info["pod"] = {"path": parent.path, "name": parent.name, "engine_id": parent.engine_id}
    info["children"] = [k.path for k in c.children]
    info["processes"] = [{"pid": p, "command": snap.processes[p].command} for p in c.all_pids if p in snap.processes]
    info["namespaces"] = {t: {"inode": i, "name": ns.name if (ns := snap.get(i)) else None,
                              "own": t in c.own_namespaces(parent)} for t, i in c.namespaces.items()}
    return info
