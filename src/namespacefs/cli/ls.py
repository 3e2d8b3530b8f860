"""`nsfs ls`: the lsns of namespacefs. Same columns and flags as util-linux lsns 2.42 where they
exist, plus ours (ID, NAME, HOLDERS, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from namespacefs.cli import UserError, whole
from namespacefs.cli.common import PrintVersion, add_source_options, find, ns_type, report_errors, take_snapshot, user_name
from namespacefs.cli.output import (
    Column,
    add_table_options,
    json_rows,
    pick_columns,
    print_columns_help,
    print_json,
    render,
    tree_rows,
)
from namespacefs.kinds import HolderKind

if TYPE_CHECKING:  # (imported where a snapshot is rendered: printing what a daemon rendered needs none)
    from namespacefs.details import Netnsids
    from namespacefs.model import Namespace, Process, Snapshot

DEFAULT_COLUMNS = ("NS", "TYPE", "NAME", "NPROCS", "PID", "USER", "COMMAND")  # NAME: see docs/names.md
#: lsns's columns for a positional namespace: the processes in it
PROCESS_COLUMNS = ("PID", "PPID", "USER", "COMMAND")
TREES = ("owner", "parent", "process")


class NamespaceRow:
    """A namespace with the snapshot around it, for column functions; `proc` is the process a
    row stands for where it lists the processes of a namespace (lsns NS); `netnsids` the NETNSIDs
    its command's rows share."""

    __slots__ = ("_proc", "netnsids", "ns", "process", "snap")

    def __init__(self, ns: Namespace, snap: Snapshot, proc: Process | None = None,
                 netnsids: Netnsids | None = None) -> None:
        self.ns, self.snap, self._proc = ns, snap, proc
        self.netnsids = netnsids if netnsids is not None else _netnsids(snap)
        #: the process lsns shows: the one given, else the lowest pid in it, else the first process holding it
        self.process = proc if proc is not None else _shown_process(ns, snap)

    def of_process(self, attr: str) -> object:
        proc = self.process
        return getattr(proc, attr) if proc else None

    @property
    def path(self) -> str | None:
        from namespacefs.handles import holder_path

        proc = self.process
        if proc is not None and proc.namespaces.get(self.ns.type) == self.ns.inode:
            return f"/proc/{proc.pid}/ns/{self.ns.type}"  # as lsns shows it
        for h in self.ns.holders:
            if h.kind == HolderKind.BINDMOUNT:
                return h.path  # the mountpoint
            if path := holder_path(self.ns.type, h):
                return path
        return None


def _netnsids(snap: Snapshot) -> Netnsids:
    """The NETNSIDs a command's rows share (details: imported where a command lists them)."""
    from namespacefs.details import Netnsids

    return Netnsids(snap)


def _shown_process(ns: Namespace, snap: Snapshot) -> Process | None:
    if ns.processes:
        return snap.processes.get(ns.processes[0])
    for h in ns.holders:
        if h.pid is not None and h.kind != HolderKind.BINDMOUNT and h.pid in snap.processes:
            return snap.processes[h.pid]
    return None


def _holders(row: NamespaceRow) -> str:
    return ",".join(row.ns.kinds)


def _nsfs(row: NamespaceRow) -> str:
    return "\n".join(sorted({h.path for h in row.ns.holders if h.kind == HolderKind.BINDMOUNT and h.path}))


def _netnsid(row: NamespaceRow) -> object:
    """lsns's NETNSID: the id our net namespace gave it, else `unassigned`; empty for other types."""
    if row.ns.type != "net":
        return None
    found = row.netnsids.get(row.ns)
    return "unassigned" if found is None else str(found)


def _command(row: NamespaceRow) -> str | None:
    """lsns's COMMAND: the command line, else the command name (kernel threads: `kthreadd`); for a
    namespace no process holds, what does: its bind mount (not the process that showed it)."""
    proc = row.process
    if proc is None:
        mounts = sorted({h.path for h in row.ns.holders if h.kind == HolderKind.BINDMOUNT and h.path})
        return f"(bind mount {', '.join(mounts)})" if mounts else None
    return " ".join(proc.cmdline) if proc.cmdline else proc.comm


def _uid(row: NamespaceRow) -> int | None:
    """lsns's UID: of the process, else (a user namespace) of its creator."""
    proc = row.process
    if proc is not None:
        return proc.uid
    return row.ns.owner_uid


def _relative(inode: int | None) -> int:
    return 0 if inode is None else inode  # lsns prints 0 for no parent or owner


COLUMNS: list[Column[NamespaceRow]] = [  # lsns.c 2.42's infos[] (width hints, flags, JSON types), then ours
    Column("NS", "namespace identifier (inode number)", lambda r: r.ns.inode, right=True, number=True, whint=10),
    Column("TYPE", "kind of namespace", lambda r: r.ns.type, whint=5),
    Column("PATH", "path to the namespace", lambda r: r.path, trunc=True),
    Column("NPROCS", "number of processes in the namespace", lambda r: len(r.ns.processes),
           right=True, number=True, whint=5),
    Column("PID", "lowest PID in the namespace (or of a process holding it)", lambda r: r.of_process("pid"),
           right=True, number=True, whint=5),
    Column("PPID", "PPID of the PID", lambda r: r.of_process("ppid"), right=True, number=True, whint=5),
    Column("COMMAND", "command line of the PID", _command, trunc=True),
    Column("UID", "UID of the PID", _uid, right=True, number=True),
    Column("USER", "username of the PID", lambda r: user_name(_uid(r)) or None),
    Column("NETNSID", "namespace ID as used by network subsystem", _netnsid, right=True),
    Column("NSFS", "nsfs mountpoint (usually used by ip netns)", _nsfs),
    Column("PNS", "parent namespace identifier (inode number)", lambda r: _relative(r.ns.parent),
           right=True, number=True, whint=10),
    Column("ONS", "owner namespace identifier (inode number)", lambda r: _relative(r.ns.owner),
           right=True, number=True, whint=10),
    Column("ID", "64-bit namespace id (never reused)", lambda r: r.ns.id, right=True, number=True),
    Column("NAME", "namespace name", lambda r: r.ns.name, trunc=True),
    Column("NSPATH", "name path through the owning user namespaces", lambda r: r.ns.path, trunc=True),
    Column("HOLDERS", "what keeps it alive (process, task, fd, bindmount, socket, ...)", _holders, trunc=True),
    Column("LEVEL", "depth below the initial pid/user namespace", lambda r: r.ns.level, right=True, number=True),
    Column("OWNER_UID", "user namespaces: uid of the creator", lambda r: r.ns.owner_uid, right=True, number=True),
]
BY_NAME = {c.name: c for c in COLUMNS}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("namespace", nargs="*",
                        help="list the processes in these namespaces, as lsns NS does (inode, TYPE:[INODE], path, "
                             "PID:TYPE, id, name)")
    parser.add_argument("-t", "--type", action="append", type=ns_type, help="only namespaces of this type (repeatable)")
    parser.add_argument("-p", "--task", metavar="PID", type=whole("PID", 1, 2**22), help="only the namespaces of this process")
    parser.add_argument("-P", "--persistent", action="store_true", help="only namespaces no process is in")
    parser.add_argument("-l", "--list", action="store_true", help="a flat list (no tree)")
    parser.add_argument("-T", "--tree", nargs="?", const="owner", metavar="RELATION",
                        help="show namespaces as a tree by owner (default), parent or process")
    parser.add_argument("-Q", "--filter", metavar="EXPR",
                        help="only the rows for which EXPR holds (libsmartcols filter, as lsns -Q: "
                             "'TYPE == \"net\" && NPROCS > 1', 'NAME =~ \"^web\"'); any column may be used")
    parser.add_argument("-V", "--version", action=PrintVersion)
    add_table_options(parser, COLUMNS, DEFAULT_COLUMNS)
    add_source_options(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """lsns's rules for its options: mutually exclusive pairs, -T's optional RELATION (a value that
    is none, `-T 4026531837`, is the namespace argument, as getopt reads it)."""
    if args.tree is not None:
        relation = args.tree.lstrip("=")
        if relation not in TREES:
            args.namespace.insert(0, args.tree)
            relation = "owner"
        args.tree = relation
    for a, b, both in (("json", "raw", "-J and -r"), ("persistent", "task", "-P and -p"),
                       ("list", "tree", "-l and -T")):
        if getattr(args, a) and getattr(args, b) not in (None, False):
            raise UserError(f"{both} are mutually exclusive")
    if args.namespace and args.task is not None:
        raise UserError("--task is mutually exclusive with <namespace>")


def run(args: argparse.Namespace) -> int:
    if args.list_columns:
        print_columns_help(COLUMNS)
        return 0
    check_arguments(args)
    columns, keep = prepare(args)
    from namespacefs.cli import remote

    asked = remote.printed_by_daemon(args)
    if asked == remote.PRINTED:  # a running daemon printed it (GET /api/ls: cli.rendering, over output())
        return 0
    snap = take_snapshot(args, daemon=asked != remote.NO_DAEMON)  # (no daemon: not asked twice)
    output(snap, args, columns, keep, sys.stdout)
    report_errors(snap)
    return 0


def prepare(args: argparse.Namespace) -> tuple[list[Column[NamespaceRow]], Callable[[NamespaceRow], bool] | None]:
    """The columns and the -Q predicate (checked before any snapshot is taken)."""
    default: tuple[str, ...] = PROCESS_COLUMNS if args.namespace else DEFAULT_COLUMNS
    if not args.namespace and args.type and "net" in args.type:  # lsns -t net: NETNSID and NSFS too
        default = (*DEFAULT_COLUMNS[:-1], "NETNSID", "NSFS", DEFAULT_COLUMNS[-1])
    return pick_columns(args, COLUMNS, default), _compile_filter(args.filter) if args.filter else None


def output(snap: Snapshot, args: argparse.Namespace, columns: list[Column[NamespaceRow]],
           keep: Callable[[NamespaceRow], bool] | None, out: TextIO) -> None:
    lsns_shape = bool(args.output or args.output_all)  # -J with -o: exactly lsns's JSON
    netnsids = _netnsids(snap)
    if args.namespace:
        rows = [NamespaceRow(ns, snap, p, netnsids) for ns in _positional(snap, args) for p in _members(ns, snap)]
    else:
        rows = [NamespaceRow(ns, snap, None, netnsids) for ns in select(snap, args)]
    netnsids.wanted = [r.ns for r in rows]
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    if args.json and not lsns_shape:
        print_json(_contract(snap, rows, args), out)
    else:
        tree_at = _tree_column(columns, args)
        roots, kids = _arrange(rows, snap, args) if tree_at is not None else (rows, {})
        if args.json:
            print_json({"namespaces": json_rows(roots, columns, lambda r: kids.get(id(r), []), args.nowrap)}, out)
        else:
            render(tree_rows(roots, lambda r: kids.get(id(r), [])), columns, args, out, tree_column=tree_at or 0)


def _compile_filter(text: str) -> Callable[[NamespaceRow], bool]:
    from namespacefs.cli.filter import FilterError, compile_filter

    def column(name: str) -> tuple[Callable[[NamespaceRow], object], bool] | None:
        col = BY_NAME.get(name.upper())
        return (col.value, col.number) if col else None

    try:
        return compile_filter(text, column)
    except FilterError as e:
        raise UserError(f"failed to parse \"{text}\": {e}") from None


def _contract(snap: Snapshot, rows: Sequence[NamespaceRow], args: argparse.Namespace) -> dict[str, object]:
    """The documented object (README, the JSON contract) of the rows' namespaces, in lsns's order
    (by inode), each with lsns's keys too (cli.lsns_keys: only -J needs them)."""
    from namespacefs.cli.lsns_keys import LsnsKeys

    rows = sorted(rows, key=lambda r: r.ns.inode)
    data = snap.to_dict(r.ns for r in rows)
    keys = LsnsKeys(bool(args.nowrap))
    for item, row in zip(data["namespaces"], rows, strict=True):
        keys.add(item, row)
    return data


def _positional(snap: Snapshot, args: argparse.Namespace) -> list[Namespace]:
    chosen = [ns for spec in args.namespace for inode in sorted(_inodes(snap, spec)) if (ns := snap.get(inode))]
    return list({ns.inode: ns for ns in chosen}.values())


def _inodes(snap: Snapshot, spec: str) -> set[int]:
    """The namespaces a selector names: one namespace, or (targets' grammar) a container's own
    ones (the container tree is built only for a selector no namespace answers to)."""
    try:
        return {find(snap, spec).inode}
    except UserError:
        from namespacefs import containers, targets

        tree = containers.find(snap)
        try:
            target = targets.resolve_target(snap, spec, tree)
        except targets.NotFound as e:
            raise UserError(str(e)) from None
        if target.container is None:
            raise
        return set(target.container.own_namespaces(tree.parent(target.container)).values())


def _members(ns: Namespace, snap: Snapshot) -> list[Process | None]:
    """The processes in a namespace, by pid (lsns NS); a namespace no process is in gives one row
    of its own (lsns prints none: it would hide a pinned namespace named on the command line)."""
    procs = [snap.processes[pid] for pid in sorted(ns.processes) if pid in snap.processes]
    return list(procs) if procs else [None]


def select(snap: Snapshot, args: argparse.Namespace) -> list[Namespace]:
    chosen: Sequence[Namespace] = sorted(snap, key=lambda ns: ns.inode)  # lsns's order
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


def _tree_column(columns: Sequence[Column[NamespaceRow]], args: argparse.Namespace) -> int | None:
    """Which column carries the tree: COMMAND in a process tree, NS in an owner or parent tree
    (lsns); None for no tree: without -T or with -l, or when that column is not shown (lsns then
    prints its rows flat, in their order)."""
    how = _relation(args)
    if how is None:
        return None
    names = [c.name for c in columns]
    want = "COMMAND" if how == "process" else "NS"
    return names.index(want) if want in names else None


def _relation(args: argparse.Namespace) -> str | None:
    """The tree lsns draws: -T's, else (without -l) the process tree of its default output."""
    if args.list:
        return None
    return args.tree or "process"


Forest = tuple[list[NamespaceRow], dict[int, list[NamespaceRow]]]  # the roots, and each row's children by id(row)


def _arrange(rows: list[NamespaceRow], snap: Snapshot, args: argparse.Namespace) -> Forest:
    """The roots and each row's children (keyed by id(row)) in lsns's tree: by owner or parent
    namespace (a relative is shown before the rows under it), or the process tree (a row under the
    last row before it that shows its parent process, as lsns links a line to its parent process's
    line)."""
    how = _relation(args)
    if how is None:
        return rows, {}
    if how in ("owner", "parent"):
        # the processes of a namespace (lsns NS) have no owner or parent among them: flat
        return (rows, {}) if any(r._proc is not None for r in rows) else _namespace_tree(rows, how)
    kids: dict[int, list[NamespaceRow]] = {}
    roots: list[NamespaceRow] = []
    shown: dict[int, NamespaceRow] = {}  # pid -> the last row shown for it
    for r in rows:
        up: NamespaceRow | None = None
        if (proc := r.process) is not None:
            up = shown.get(proc.ppid)
            if up is not None and r._proc is not None and up.process is not None \
                    and up.process.namespaces.get(r.ns.type) != r.ns.inode:
                up = None  # lsns NS: only a parent in the same namespace
            shown[proc.pid] = r
        if up is None:
            roots.append(r)
        else:
            kids.setdefault(id(up), []).append(r)
    return roots, kids


def _namespace_tree(rows: list[NamespaceRow], how: str) -> Forest:
    """lsns's show_namespace(): in inode order, each row after its relative (the owner; in a parent
    tree the parent, else the owner), under that relative when it is the owner of an owner tree
    or the parent of a parent tree, else a root."""
    by_inode = {r.ns.inode: r for r in rows}
    kids: dict[int, list[NamespaceRow]] = {}
    roots: list[NamespaceRow] = []
    done: set[int] = set()

    def show(r: NamespaceRow) -> None:
        ns = r.ns
        done.add(ns.inode)
        first = ns.owner if how == "owner" or ns.parent is None else ns.parent
        if first is not None and first in by_inode and first not in done:
            show(by_inode[first])
        link = ns.owner if how == "owner" else ns.parent
        up = by_inode.get(link) if link is not None and link != ns.inode else None
        (kids.setdefault(id(up), []) if up is not None else roots).append(r)

    for r in rows:
        if r.ns.inode not in done:
            show(r)
    return roots, kids
