"""Containers from a snapshot.

A container is the set of processes that share one combination of the eight namespaces, rooted at
its init (the topmost process of the set). The host's own set is the root `/`. A container whose
init descends from a process of another container is nested in it, so every container has a path
like `/web/inner`. Engine modules recognise who runs each container and give it the engine's name;
others get a stable default (their hostname where they have their own uts namespace, else
`COMM-PID`). Renames stored in the names database (see containers.names) win over both.

    tree = find(snapshot)
    for c in tree: print(c.path, c.engine, c.init)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter

from namespacefs.containers import browser, bwrap, cgroups, nspawn, oci, systemd
from namespacefs.containers.candidate import Candidate
from namespacefs.containers.model import Container, ContainerTree, Identity
from namespacefs.handles import Gone
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Process, Snapshot

__all__ = ["Container", "ContainerTree", "Identity", "engine_names", "find"]

Combo = tuple[int, ...]
_UNSAFE = re.compile(r"[/\s\x00-\x1f]+")


_ALL_TYPES = itemgetter(*NS_TYPES)


def _combo(p: Process) -> Combo | None:
    try:
        return _ALL_TYPES(p.namespaces)
    except KeyError:
        return None  # a zombie or a process that vanished mid-scan: it joins its parent's container


def find(snapshot: Snapshot, names: Mapping[str, str] | None = None,
         oci_roots: Iterable[tuple[str, str]] | None = None, hostnames: bool = True) -> ContainerTree:
    """Group the snapshot's processes into the container tree. names: key -> name renames (from
    containers.names.load); oci_roots: extra OCI state roots as (directory, engine)."""
    procs = snapshot.processes
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
            combos[pid] = _ancestor_combo(pid, procs, combos) or host_combo  # type: ignore[assignment]
    combos = {pid: c for pid, c in combos.items() if c is not None}
    members: dict[Combo, list[int]] = {}
    for pid in sorted(combos):
        members.setdefault(combos[pid], []).append(pid)

    inits: dict[Combo, int] = {}
    parent_of: dict[Combo, Combo | None] = {}
    starters: dict[Combo, Process | None] = {}
    for combo, pids in members.items():
        tops = [p for p in pids if combos.get(procs[p].ppid) != combo]
        init = min(tops or pids, key=lambda p: (procs[p].nspid[-1] != 1 if procs[p].nspid else True, p))
        inits[combo] = init
        if combo == host_combo:
            parent_of[combo], starters[combo] = None, None
            continue
        anc = procs[init].ppid
        seen = {init}
        while anc in procs and combos.get(anc) == combo and anc not in seen:
            seen.add(anc)
            anc = procs[anc].ppid
        starters[combo] = procs.get(anc)
        parent_of[combo] = combos.get(anc, host_combo)
    _break_cycles(parent_of, host_combo)

    states = oci.scan(oci_roots)
    kids: dict[Combo | None, list[Combo]] = {}
    for combo, parent in parent_of.items():
        kids.setdefault(parent, []).append(combo)

    def build(combo: Combo, parent_path: str, parent_combo: Combo | None, name: str, ident: Identity | None) -> Container:
        path = "/" if parent_combo is None and combo == host_combo else f"{parent_path.rstrip('/')}/{name}"
        children = _name_children(kids.get(combo, []), inits, members, starters, snapshot, states, combo, names, hostnames)
        built = tuple(build(c, path, combo, n, i) for c, n, i in children)
        if combo == host_combo:
            engine, engine_id, labels = "host", None, {}
        elif ident is None:
            engine, engine_id, labels = "unknown", None, {}
        else:
            engine, engine_id, labels = ident.engine, ident.engine_id, dict(ident.labels)
        return Container(
            path=path, name="" if combo == host_combo else name, engine=engine, engine_id=engine_id,
            init=inits[combo], pids=tuple(members[combo]), namespaces=dict(zip(NS_TYPES, combo, strict=True)),
            children=built, labels=labels, key=_key(snapshot, engine, engine_id, combo),
        )

    if host_combo is None:
        empty = Container("/", "", "host", None, 0, (), {})
        return ContainerTree(empty)
    return ContainerTree(build(host_combo, "/", None, "", None))


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


def _key(snapshot: Snapshot, engine: str, engine_id: str | None, combo: Combo) -> str:
    """Where a rename is stored: the engine's id where there is one (it survives a restart), else
    the namespaces' 64-bit ids in this boot (never reused)."""
    if engine == "host":
        return "host"
    if engine_id:
        return f"{engine}:{engine_id}"
    ids = [str(ns.id if (ns := snapshot.get(i)) is not None and ns.id is not None else i) for i in combo]
    return f"ns:{snapshot.boot_id}:{','.join(ids)}"


ENGINES: tuple[Callable[[Candidate], Identity | None], ...] = (
    nspawn.identify, bwrap.identify, cgroups.identify, browser.identify, systemd.identify,
)


def _identify(c: Candidate, states: dict[int, oci.State]) -> Identity | None:
    found = oci.identify(c, states)
    if found is not None:
        return found
    for engine in ENGINES:
        found = engine(c)
        if found is not None:
            return found
    return None


def _name_children(combos: list[Combo], inits: Mapping[Combo, int], members: Mapping[Combo, list[int]],
                   starters: Mapping[Combo, Process | None], snapshot: Snapshot, states: dict[int, oci.State],
                   parent: Combo, names: Mapping[str, str] | None,
                   hostnames: bool) -> list[tuple[Combo, str, Identity | None]]:
    named: list[tuple[Combo, str, Identity | None]] = []
    for combo in sorted(combos, key=lambda c: inits[c]):
        init = snapshot.processes[inits[combo]]
        cand = Candidate(snapshot, init, tuple(members[combo]), starters.get(combo))
        ident = _identify(cand, states)
        name = ident.name if ident else None
        if not name and hostnames:
            name = _hostname(snapshot, combo, parent)
        name = name or f"{init.comm}-{init.pid}"
        if names:
            key = _key(snapshot, ident.engine if ident else "unknown", ident.engine_id if ident else None, combo)
            name = names.get(key, name)
        named.append((combo, _safe(name), ident))
    taken: set[str] = set()
    result = []
    for combo, name, ident in named:  # siblings with one name: the younger ones get .PID
        final = name if name not in taken else f"{name}.{inits[combo]}"
        taken.add(final)
        result.append((combo, final, ident))
    return result


def _safe(name: str) -> str:
    cleaned = _UNSAFE.sub("_", name).strip("._") or "_"
    return cleaned[:80]


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
    does not share with its parent (for the names of the namespaces themselves)."""
    tree = tree or find(snapshot, hostnames=False)
    found: dict[int, str] = {}
    for c in tree:
        if c.engine in ("host", "unknown"):
            continue
        for inode in c.own_namespaces(tree.parent(c)).values():
            found.setdefault(inode, c.name)
    return found
