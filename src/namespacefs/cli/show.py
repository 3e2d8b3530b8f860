"""`nsfs show NS`: everything known about one namespace, including the per-type details that a
listing does not read."""

from __future__ import annotations

import argparse
import json
from typing import Any

from namespacefs import details
from namespacefs.cli.common import add_source_options, find, take_snapshot, user_name
from namespacefs.handles import Gone
from namespacefs.model import Namespace, Snapshot


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("namespace", help="inode, TYPE:[INODE], path, PID:TYPE, id or name")
    parser.add_argument("-J", "--json", action="store_true", help="JSON output")
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    snap = take_snapshot(args)
    ns = find(snap, args.namespace)
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
        return {"mounts": len(details.mountinfo(ns).splitlines())}
    if ns.type == "pid":
        init = next((p for p in ns.processes if snap.processes[p].nspid[-1] == 1), None)
        return {"init": init, "nspids": {p: snap.processes[p].nspid[-1] for p in ns.processes}}
    return {}
