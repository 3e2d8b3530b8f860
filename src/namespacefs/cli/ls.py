"""`nsfs ls`: the lsns of namespacefs. Same columns and flags as util-linux lsns 2.42 where they
exist, plus ours (ID, NAME, HOLDERS, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from namespacefs.cli import UserError, whole
from namespacefs.cli.common import add_source_options, find, ns_type, report_errors, take_snapshot, user_name
from namespacefs.cli.output import (
    Column,
    add_table_options,
    pick_columns,
    print_columns_help,
    print_json,
    render,
    tree_rows,
)
from namespacefs.handles import holder_path
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Process, Snapshot

DEFAULT_COLUMNS = ("NS", "TYPE", "NAME", "NPROCS", "PID", "USER", "COMMAND")  # NAME: see docs/names.md


class Row:
    """A namespace with the snapshot around it, for column functions."""

    __slots__ = ("ns", "snap")

    def __init__(self, ns: Namespace, snap: Snapshot) -> None:
        self.ns, self.snap = ns, snap

    @property
    def process(self) -> Process | None:
        """The process lsns shows: the lowest pid in it, else the first process holding it."""
        if self.ns.processes:
            return self.snap.processes.get(self.ns.processes[0])
        for h in self.ns.holders:
            if h.pid is not None and h.pid in self.snap.processes:
                return self.snap.processes[h.pid]
        return None

    def of_process(self, attr: str) -> object:
        proc = self.process
        return getattr(proc, attr) if proc else None

    @property
    def path(self) -> str | None:
        for h in self.ns.holders:
            if h.kind == "bindmount":
                return h.path  # the mountpoint, as lsns shows it
            if path := holder_path(self.ns.type, h):
                return path
        return None


def _holders(row: Row) -> str:
    return ",".join(row.ns.kinds)


def _nsfs(row: Row) -> str:
    return "\n".join(sorted({h.path for h in row.ns.holders if h.kind == "bindmount" and h.path}))


def _netnsid(row: Row) -> object:
    if row.ns.type != "net":
        return None
    from namespacefs import details

    return details.netnsid(row.ns, row.snap)


COLUMNS: list[Column[Row]] = [
    Column("NS", "namespace identifier (inode number)", lambda r: r.ns.inode, right=True),
    Column("TYPE", "kind of namespace", lambda r: r.ns.type),
    Column("PATH", "path to the namespace", lambda r: r.path),
    Column("NPROCS", "number of processes in the namespace", lambda r: len(r.ns.processes), right=True),
    Column("PID", "lowest PID in the namespace (or of a process holding it)", lambda r: r.of_process("pid"), right=True),
    Column("PPID", "PPID of the PID", lambda r: r.of_process("ppid"), right=True),
    Column("COMMAND", "command line of the PID", lambda r: r.of_process("command"), wrap=True),
    Column("UID", "UID of the PID", lambda r: r.of_process("uid"), right=True),
    Column("USER", "username of the PID", lambda r: user_name(r.of_process("uid"))),  # type: ignore[arg-type]
    Column("NETNSID", "namespace ID as used by network subsystem", _netnsid, right=True),
    Column("NSFS", "nsfs mountpoint (usually used by ip netns)", _nsfs),
    Column("PNS", "parent namespace identifier (inode number)", lambda r: r.ns.parent, right=True),
    Column("ONS", "owner namespace identifier (inode number)", lambda r: r.ns.owner, right=True),
    Column("ID", "64-bit namespace id (never reused)", lambda r: r.ns.id, right=True),
    Column("NAME", "namespace name", lambda r: r.ns.name),
    Column("NSPATH", "name path through the owning user namespaces", lambda r: r.ns.path),
    Column("HOLDERS", "what keeps it alive (process, task, fd, bindmount, socket, ...)", _holders),
    Column("LEVEL", "depth below the initial pid/user namespace", lambda r: r.ns.level, right=True),
    Column("OWNER_UID", "user namespaces: uid of the creator", lambda r: r.ns.owner_uid, right=True),
]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("namespace", nargs="*", help="only these namespaces (inode, TYPE:[INODE], path, PID:TYPE, id, name)")
    parser.add_argument("-t", "--type", action="append", type=ns_type, help="only namespaces of this type (repeatable)")
    parser.add_argument("-p", "--task", metavar="PID", type=whole("PID", 1, 2**22), help="only the namespaces of this process")
    parser.add_argument("-P", "--persistent", action="store_true", help="only namespaces no process is in")
    parser.add_argument("-l", "--list", action="store_true", help="a flat list (no tree)")
    parser.add_argument("-T", "--tree", nargs="?", const="owner", choices=("owner", "parent", "process"),
                        help="show namespaces as a tree by owner (default), parent or process")
    add_table_options(parser, COLUMNS, DEFAULT_COLUMNS)
    add_source_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.list_columns:
        print_columns_help(COLUMNS)
        return 0
    columns = pick_columns(args, COLUMNS, DEFAULT_COLUMNS)
    snap = take_snapshot(args)
    selected = select(snap, args)
    if args.json:
        data = snap.to_dict()
        keep = {ns.inode for ns in selected}
        data["namespaces"] = [d for d in data["namespaces"] if d["inode"] in keep]
        print_json(data)
    else:
        rows = [Row(ns, snap) for ns in selected]
        render(_arrange(rows, snap, args), columns, args)
    report_errors(snap)
    return 0


def select(snap: Snapshot, args: argparse.Namespace) -> list[Namespace]:
    chosen: Sequence[Namespace] = sorted(snap, key=lambda ns: (NS_TYPES.index(ns.type), ns.inode))
    if args.namespace:
        wanted = {find(snap, spec).inode for spec in args.namespace}
        chosen = [ns for ns in chosen if ns.inode in wanted]
    if args.type:
        chosen = [ns for ns in chosen if ns.type in args.type]
    if args.task is not None:
        proc = snap.processes.get(args.task)
        if proc is None:
            raise UserError(f"no process {args.task} (or it is not visible)")
        inodes = set(proc.namespaces.values())
        chosen = [ns for ns in chosen if ns.inode in inodes]
    if args.persistent:
        chosen = [ns for ns in chosen if ns.persistent]
    return list(chosen)


def _arrange(rows: list[Row], snap: Snapshot, args: argparse.Namespace) -> list[tuple[str, Row]]:
    if not args.tree or args.list:
        return [("", r) for r in rows]
    by_inode = {r.ns.inode: r for r in rows}
    up = {r.ns.inode: _tree_parent(r, snap, args.tree) for r in rows}
    kids: dict[int | None, list[Row]] = {}
    for r in rows:
        parent = up[r.ns.inode]
        kids.setdefault(parent if parent in by_inode else None, []).append(r)
    return tree_rows(kids.get(None, []), lambda r: kids.get(r.ns.inode, []))


def _tree_parent(row: Row, snap: Snapshot, how: str) -> int | None:
    ns = row.ns
    if how == "owner":
        return ns.owner
    if how == "parent":
        return ns.parent
    # process: the namespace (of the same type) of the parent of its first process
    proc = row.process
    if proc is None:
        return ns.owner if ns.type == "user" else None
    parent = snap.processes.get(proc.ppid)
    up = parent.namespaces.get(ns.type) if parent else None
    return up if up != ns.inode else None
