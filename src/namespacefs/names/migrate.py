"""`nsfs names export` / `import`: carry renames over a checkpoint/restore, a reboot or a move to
another host, where ids and inodes all change.

An export records, for each explicitly renamed namespace, what can find it again: its member
processes (pid, command line), its container (engine name), its `ip netns` names, and its id (which
still matches on the same boot). Import matches each entry, in this order:
  1. --pid-map OLD:NEW: the namespace of that type of the new pid of one of its old processes;
  2. the container of the same name (the same type of namespace of it);
  3. an `ip netns` bind mount of the same name (net namespaces);
  4. the same 64-bit id, on the same boot (nothing was restored: the namespace is still there);
  5. the one namespace of that type whose processes include one with the same command line
     (only if exactly one namespace fits: never a guess);
and renames it; what matches nothing, or cannot take its name, is reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot, by_type
from namespacefs.names import RENAME, NamingError, assigned, rename
from namespacefs.syntax import is_number, printable
from namespacefs.targets import netns_names

FORMAT: Final = "namespacefs-names"
VERSION: Final = 1
MAX_PROCESSES: Final = 16  # member processes recorded per namespace


def export(snapshot: Snapshot, db: str | None = None, engine: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The explicit renames of the live namespaces, with the context to find them again (engine:
    inode -> its container's engine name, core.engine_names)."""
    engine = engine or {}
    got = assigned(snapshot, db, engine=engine)
    entries = []
    for ns in sorted(snapshot, key=lambda n: (n.level, *by_type(n))):
        name, origin = got.names[ns.inode]
        if origin != RENAME:
            continue
        procs = [snapshot.processes[p] for p in ns.processes[:MAX_PROCESSES] if p in snapshot.processes]
        entries.append({
            "name": name, "type": ns.type, "path": got.paths[ns.inode], "id": ns.id, "inode": ns.inode,
            "owner_path": got.paths.get(ns.owner) if ns.owner is not None else None,
            "processes": [{"pid": p.pid, "comm": p.comm, "cmdline": list(p.cmdline)} for p in procs],
            "container": engine.get(ns.inode),
            "netns": netns_names(ns),
        })
    return {"format": FORMAT, "version": VERSION, "boot_id": snapshot.boot_id, "exported_at": time.time(),
            "names": entries}


@dataclass
class ImportResult:
    applied: list[tuple[dict[str, Any], Namespace, str]] = field(default_factory=list)  # entry, ns, how matched
    unmatched: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # entry, why
    replaced: dict[int, str] = field(default_factory=dict)  # inode -> the rename an entry replaces (kept in the history)


def check(data: Any) -> list[dict[str, Any]]:
    """The entries of an export, or NamingError saying what is wrong with the file."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NamingError(f"not a namespacefs names export (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise NamingError(f"unsupported export version {data.get('version')!r} (this namespacefs reads {VERSION})")
    entries = data.get("names")
    if not isinstance(entries, list):
        raise NamingError("the export has no \"names\" list")
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("type") in NS_TYPES):
            raise NamingError(f"entry {i} of the export needs a \"name\" and a valid \"type\"")
        problem = _bad_field(e)
        if problem:
            raise NamingError(f"entry {i} ('{e['name']}') of the export: {problem}")
    return entries


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # (JSON true is not an id)


def _bad_field(entry: Mapping[str, Any]) -> str | None:
    """What is wrong with the optional fields of an entry (a hand-edited file must get a message,
    not a crash in the matching), or None."""
    if entry.get("id") is not None and not _is_int(entry["id"]):
        return "\"id\" must be a number"
    if entry.get("container") is not None and not isinstance(entry["container"], str):
        return "\"container\" must be a string"
    netns = entry.get("netns")
    if netns is not None and not (isinstance(netns, list) and all(isinstance(n, str) for n in netns)):
        return "\"netns\" must be a list of strings"
    processes = entry.get("processes")
    if processes is None:
        return None
    if not isinstance(processes, list):
        return "\"processes\" must be a list"
    for p in processes:
        if not isinstance(p, dict):
            return "each of \"processes\" must be an object"
        if p.get("pid") is not None and not _is_int(p["pid"]):
            return "a process's \"pid\" must be a number"
        cmdline = p.get("cmdline")
        if cmdline is not None and not (isinstance(cmdline, list) and all(isinstance(a, str) for a in cmdline)):
            return "a process's \"cmdline\" must be a list of strings"
    return None


def match(entry: Mapping[str, Any], snapshot: Snapshot, pid_map: Mapping[int, int], engine: Mapping[int, str],
          same_boot: bool) -> tuple[Namespace | None, str]:
    """(namespace, how) or (None, why not): by pid map, container, ip netns name, id, command line."""
    nstype = entry["type"]
    processes = entry.get("processes") or []  # (shapes checked by check())
    for p in processes:
        new = pid_map.get(p.get("pid"))
        if new is not None and (ns := snapshot.namespace_of(new, nstype)) is not None:
            return ns, f"pid {p.get('pid')} -> {new}"
    if entry.get("container"):
        found = [snapshot.namespaces[i] for i, n in engine.items()
                 if n == entry["container"] and i in snapshot.namespaces and snapshot.namespaces[i].type == nstype]
        if len(found) == 1:
            return found[0], f"container {entry['container']}"
    for netns in entry.get("netns") or []:
        found = [ns for ns in snapshot.of_type("net") if netns in netns_names(ns)]
        if nstype == "net" and len(found) == 1:
            return found[0], f"ip netns {netns}"
    if same_boot and _is_int(entry.get("id")) and (ns := snapshot.by_id(entry["id"])) and ns.type == nstype:
        return ns, f"id {entry['id']}"
    return _by_command_line(processes, snapshot, nstype)


def _by_command_line(processes: list[Mapping[str, Any]], snapshot: Snapshot, nstype: str) -> tuple[Namespace | None, str]:
    """The one namespace of this type whose processes include one with a recorded command line."""
    cmdlines = {tuple(p["cmdline"]) for p in processes if p.get("cmdline")}
    if cmdlines:
        found_ns: dict[int, Namespace] = {}
        for proc in snapshot.processes.values():
            if proc.cmdline in cmdlines and (ns := snapshot.namespace_of(proc.pid, nstype)) is not None:
                found_ns[ns.inode] = ns
        if len(found_ns) == 1:
            return next(iter(found_ns.values())), "command line"
        if len(found_ns) > 1:
            return None, f"its command line matches {len(found_ns)} {nstype} namespaces; give a --pid-map"
    return None, "no process, container, ip netns name or id of it was found"


def import_names(data: Any, snapshot: Snapshot, db: str | None = None, pid_map: Mapping[int, int] | None = None,
                 dry_run: bool = False, engine: Mapping[int, str] | None = None) -> ImportResult:
    """Apply an export to the namespaces of this snapshot (outer user namespaces first, so their
    names are in place for the paths of the rest; engine: as for export)."""
    entries = check(data)
    engine = engine or {}
    current = assigned(snapshot, db, engine=engine).names
    same_boot = data.get("boot_id") == snapshot.boot_id
    result = ImportResult()
    used: set[int] = set()
    for entry in entries:
        ns, how = match(entry, snapshot, pid_map or {}, engine, same_boot)
        if ns is None:
            result.unmatched.append((entry, how))
            continue
        if ns.inode in used:
            result.unmatched.append((entry, f"matched the {ns.type} namespace {ns.inode}, already named by another entry"))
            continue
        try:
            if not dry_run:
                rename(snapshot, ns, entry["name"], db, engine)
        except NamingError as e:
            result.unmatched.append((entry, str(e)))
            continue
        used.add(ns.inode)
        result.applied.append((entry, ns, how))
        name, origin = current.get(ns.inode, ("", ""))
        if origin == RENAME and name != entry["name"]:
            result.replaced[ns.inode] = name
    return result


def parse_pid_map(text: str) -> dict[int, int]:
    """'OLD:NEW,OLD:NEW' (or one pair a line, as in a file) -> {old: new}."""
    out: dict[int, int] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part or part.startswith("#"):
            continue
        old, sep, new = part.replace(" ", ":").partition(":")
        if not (sep and is_number(old.strip()) and is_number(new.strip())):
            raise NamingError(f"bad pid map entry {printable(part)} (expected OLD:NEW, for example 1234:5678)")
        out[int(old)] = int(new)
    return out
