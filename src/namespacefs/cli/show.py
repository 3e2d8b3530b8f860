"""`nsfs show TARGET`: everything known about one namespace, including the per-type details that a
listing does not read; or about one container (engine, its id and name, pod, processes and
namespaces). TARGET is anything targets' grammar accepts."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from namespacefs import core, details, targets
from namespacefs.cli import UserError
from namespacefs.cli.common import add_source_options, take_snapshot, user_name
from namespacefs.handles import Gone
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot

if TYPE_CHECKING:
    from namespacefs.containers import Container, ContainerTree


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("namespace", help="inode, TYPE:[INODE], path, PID:TYPE, id, name, ip netns name or container")
    parser.add_argument("-J", "--json", action="store_true", help="JSON output")
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    snap = take_snapshot(args)
    tree = None if _namespace_form(args.namespace) else _containers(snap, args)
    try:
        target = targets.resolve_target(snap, args.namespace, tree)
    except targets.NotFound as e:
        raise UserError(str(e)) from None
    if target.container is not None:
        assert tree is not None
        return _show_container(target.container, tree, snap, args.json)
    ns = target.namespace
    assert ns is not None
    info = describe(ns, snap)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "holders":
            print(f"{'holders':>12}:")
            procs = [h for h in ns.holders if h.kind == "process"]
            if procs:
                print(f"{'':>14}process x{len(procs)} (see processes)")
            for h in ns.holders:
                if h.kind != "process":
                    print(f"{'':>14}{h.describe()}")
        elif key == "processes_detail":
            continue
        elif isinstance(value, (dict, list)):
            print(f"{key:>12}: {json.dumps(value)}")
        elif value is not None:
            print(f"{key:>12}: {value}")
    return 0


def describe(ns: Namespace, snap: Snapshot) -> dict[str, Any]:
    """The namespace's JSON form plus its per-type details (each read only here)."""
    info = ns.to_dict()
    owner = snap.get(ns.owner) if ns.owner else None
    if owner is not None and owner.owner_uid is not None:
        info["owner_user"] = user_name(owner.owner_uid)
    try:
        info.update(_type_details(ns, snap))
    except (Gone, OSError) as e:
        info["details_error"] = str(e)
    return info


def _type_details(ns: Namespace, snap: Snapshot) -> dict[str, Any]:
    if ns.type == "uts":
        return details.uname(ns, snap)
    if ns.type == "net":
        return {"interfaces": details.interfaces(ns, snap), "netnsid": details.netnsid(ns, snap)}
    if ns.type == "ipc":
        return {"ipc_objects": details.ipc_objects(ns, snap)}
    if ns.type == "cgroup":
        return {"cgroup_root": details.cgroup_root(ns, snap)}
    if ns.type == "time":
        return {"offsets": details.time_offsets(ns)}
    if ns.type == "mnt":
        if not ns.processes and ns.mounts is not None:
            return {"mounts": ns.mounts}  # no process is in it: counted by listmount() in the scan
        return {"mounts": len(details.mountinfo(ns).splitlines())}
    if ns.type == "pid":
        init = next((p for p in ns.processes if snap.processes[p].nspid[-1] == 1), None)
        return {"init": init, "nspids": {p: snap.processes[p].nspid[-1] for p in ns.processes}}
    return {}


def _namespace_form(spec: str) -> bool:
    """A spec only a namespace can match (a number, TYPE:[INODE], id:ID, PID:TYPE): no containers needed."""
    spec = spec.strip()
    head, sep, _tail = spec.partition(":")
    return targets.number(spec) is not None or spec.startswith("id:") or (
        sep != "" and (targets.number(head) is not None or head in NS_TYPES))


def _containers(snap: Snapshot, args: argparse.Namespace) -> ContainerTree:
    return core.container_tree(snap, getattr(args, "db", None))


def _show_container(c: Container, tree: ContainerTree, snap: Snapshot, as_json: bool) -> int:
    from namespacefs.containers import describe_container

    info = describe_container(c, tree, snap)
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("path", "name", "engine", "engine_id", "init", "parent", "key", "name_from"):
        if info.get(key) not in (None, ""):
            print(f"{key:>12}: {info[key]}")
    if "pod" in info:
        print(f"{'pod':>12}: {info['pod']['name']} ({info['pod']['path']})")
    if info["children"]:
        print(f"{'members' if c.group else 'nested':>12}: {', '.join(info['children'])}")
    for k, v in sorted(c.labels.items()):
        print(f"{'label':>12}: {k}={v}")
    print(f"{'namespaces':>12}:")
    for t, ns in info["namespaces"].items():
        own = "" if ns["own"] else " (shared with its parent)"
        print(f"{'':>14}{t:<7}{ns['inode']} {ns['name'] or ''}{own}")
    print(f"{'processes':>12}:")
    for p in info["processes"]:
        print(f"{'':>14}{p['pid']:>7} {p['command']}")
    return 0
