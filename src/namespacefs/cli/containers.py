"""`nsfs containers`, `enter` (namespacefs.cli.enter), `kill`, `pin`, `unpin`, `checkpoint`, `restore`: argument parsing
and output only; the work is done by namespacefs.containers and namespacefs.ops."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from namespacefs import containers, core, targets
from namespacefs.cli import UserError, duration
from namespacefs.cli.common import chosen_sources, report_errors, verbose_scan
from namespacefs.cli.output import Column, add_table_options, pick_columns, print_columns_help, print_json, render, tree_rows
from namespacefs.containers import Container, ContainerTree
from namespacefs.handles import Gone, open_namespace
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Snapshot
from namespacefs.names import containers as cnames
from namespacefs.ops import checkpoint as ckpt
from namespacefs.ops import kill as ops_kill
from namespacefs.ops import pin as ops_pin


class View:
    """What the columns need: the container, its parent and the snapshot."""

    def __init__(self, c: Container, tree: ContainerTree, snap: Snapshot) -> None:
        self.c, self.tree, self.snap = c, tree, snap

    def own(self) -> str:
        return ",".join(t for t in NS_TYPES if t in self.c.own_namespaces(self.tree.parent(self.c)))

    def command(self) -> str:
        p = self.snap.processes.get(self.c.init)
        return p.command if p else ""


COLUMNS: list[Column[View]] = [
    Column("NAME", "the container's name (the tree shows its nesting)", lambda v: v.c.name or "/", trunc=True),
    Column("PATH", "the container's path", lambda v: v.c.path, trunc=True),
    Column("ENGINE", "who runs it (host, runc, docker, systemd-nspawn, bwrap, ..., unknown)", lambda v: v.c.engine, trunc=True),
    Column("ID", "the engine's id for it", lambda v: (v.c.engine_id or "")[:12], trunc=True),
    Column("INIT", "host pid of its init", lambda v: v.c.init, right=True),
    Column("PIDS", "number of its own processes", lambda v: len(v.c.pids), right=True),
    Column("NPROCS", "processes with those of nested containers", lambda v: len(v.c.all_pids), right=True),
    Column("NS", "the namespace types it does not share with its parent", View.own, trunc=True),
    Column("KEY", "what a rename is stored under", lambda v: v.c.key, trunc=True),
    Column("COMMAND", "its init's command line", View.command, trunc=True),
]
DEFAULT = ("NAME", "ENGINE", "ID", "INIT", "PIDS", "NS", "COMMAND")
DEFAULT_LIST = ("PATH", "ENGINE", "ID", "INIT", "PIDS", "NS", "COMMAND")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command in ("containers", "enter", "kill", "checkpoint", "restore"):
        parser.add_argument("--sources", metavar="LIST", default="process",
                            help="discovery sources (default: process, which is all containers need)")
        parser.add_argument("--oci-root", metavar="DIR", action="append", default=[],
                            help="another OCI runtime state directory to read (runc --root DIR); repeatable")
        parser.add_argument("--db", metavar="PATH", help="the names database (default: the naming core's)")
    if command == "containers":
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="name each entry that could not be read (pid, path and reason), on stderr")
        parser.add_argument("-l", "--list", action="store_true", help="a flat list with paths instead of the tree")
        parser.add_argument("--rename", nargs=2, metavar=("TARGET", "NAME"), help="give a container a name that is kept")
        parser.add_argument("--forget", metavar="TARGET", help="drop a container's stored name")
        add_table_options(parser, COLUMNS, DEFAULT)
    elif command == "enter":
        from namespacefs.cli import enter_options

        enter_options.add_arguments(parser)
    elif command == "kill":
        parser.add_argument("target", help="a container (path, name or engine id) or a pid in it")
        parser.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
        parser.add_argument("--dry-run", action="store_true", help="list what would be killed, kill nothing")
        parser.add_argument("--timeout", type=duration, default=5.0, help="seconds to wait for every process to go")
        parser.add_argument("-J", "--json", action="store_true", help="JSON report")
    elif command == "pin":
        parser.add_argument("ns", metavar="NS", help="the namespace (inode, TYPE:[INODE], PID:TYPE, path, id or name)")
        parser.add_argument("path", metavar="PATH", help="the file to bind-mount it on (created if missing)")
        parser.add_argument("-t", "--type", dest="nstype", choices=NS_TYPES, help="the namespace's type")
    elif command == "unpin":
        parser.add_argument("path", metavar="PATH", help="a pinned namespace file")
        parser.add_argument("--keep", action="store_true", help="keep the (empty) file after unmounting")
    elif command == "checkpoint":
        parser.add_argument("target", help="a container (path, name or engine id) or a pid in it")
        parser.add_argument("dir", metavar="DIR", help="where to write the checkpoint")
        parser.add_argument("--stop", action="store_true", help="let CRIU stop the container after dumping it")
        parser.add_argument("-J", "--json", action="store_true", help="JSON report")
    elif command == "restore":
        parser.add_argument("dir", metavar="DIR", help="a directory written by nsfs checkpoint")


def run(args: argparse.Namespace) -> int:
    from namespacefs.cli.enter import enter

    handler = {"containers": _containers, "enter": enter, "kill": _kill, "pin": _pin, "unpin": _unpin,
               "checkpoint": _checkpoint, "restore": _restore}[args.command]
    return handler(args)


# --- helpers -----------------------------------------------------------------------------------


def _roots(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    if not args.oci_root:
        return None
    from namespacefs.containers import oci
    return list(oci.DEFAULT_ROOTS) + [(os.path.abspath(r), "runc") for r in args.oci_root]


def _names(args: argparse.Namespace) -> dict[str, str]:
    try:
        return cnames.load(args.db)
    except cnames.NamesUnavailable as e:
        if args.db:
            raise UserError(str(e)) from None
        print(f"nsfs {args.command}: stored container names are not used: {e}", file=sys.stderr)
        return {}  # the engines' and the default names still work


def _tree(args: argparse.Namespace) -> tuple[Snapshot, ContainerTree]:
    verbose_scan(args)
    snap = core.snapshot(chosen_sources(args.sources), db=args.db, fresh=bool(getattr(args, "verbose", False)))
    return snap, containers.find(snap, names=_names(args), oci_roots=_roots(args))


def _container(tree: ContainerTree, snap: Snapshot, spec: str, allow_pid: bool = True) -> Container:
    """The container spec names (targets' grammar): a path, a name, an engine id or, all ASCII
    digits, a pid in it (never a name)."""
    if not spec.strip():  # "" would otherwise match the host, whose name is empty
        raise UserError("an empty container name; give a path, a name, an engine id or a pid")
    try:
        target = targets.resolve_target(snap, spec, tree, pids=allow_pid, namespaces=False)
    except targets.NotFound as e:
        raise UserError(f"{e} (see nsfs containers)") from None
    c = target.container if target.container is not None else tree.of_pid(target.pid or 0)
    if c is None:
        raise UserError(f"process {target.pid} is in no container")
    return c


# --- containers --------------------------------------------------------------------------------


def _containers(args: argparse.Namespace) -> int:
    if args.list_columns:
        print_columns_help(COLUMNS)
        return 0
    snap, tree = _tree(args)
    if args.rename or args.forget is not None:
        spec = args.rename[0] if args.rename else args.forget
        target = _container(tree, snap, spec)
        if target.path == "/":
            raise UserError("the host ('/') has no name to change")
        try:
            if args.rename:
                cnames.rename(args.db, target.key, args.rename[1])
                print(f"{target.path} is now called {args.rename[1]} (kept under {target.key})")
            elif cnames.forget(args.db, target.key):
                print(f"{target.path}: stored name dropped")
            else:
                print(f"{target.path} had no stored name")
        except (cnames.NamesUnavailable, ValueError) as e:
            raise UserError(str(e)) from None
        return 0
    if args.json:
        print_json({"boot_id": snap.boot_id, "taken_at": snap.taken_at, **tree.to_dict()})
        return 0
    cols = pick_columns(args, COLUMNS, DEFAULT_LIST if args.list else DEFAULT)
    if args.list:
        rows = [("", View(c, tree, snap)) for c in tree]
    else:
        rows = [(p, View(c, tree, snap)) for p, c in tree_rows([tree.root], lambda c: list(c.children))]
    render(rows, cols, args)
    report_errors(snap)
    return 0


# --- kill --------------------------------------------------------------------------------------


def _signal(text: str) -> int:
    """A signal as kill(1) takes it: KILL, SIGKILL, 9, RTMIN+3, RTMAX-1."""
    try:
        return ops_kill.parse_signal(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _kill(args: argparse.Namespace) -> int:
    sig = _signal(args.signal)
    snap, tree = _tree(args)
    target = _container(tree, snap, args.target)
    try:
        report = ops_kill.kill(tree, target, sig, dry_run=args.dry_run, timeout=args.timeout)
    except ops_kill.KillError as e:
        raise UserError(str(e)) from None
    if args.json:
        print_json(report.to_dict())
    elif args.dry_run:
        print(f"would send {ops_kill.signal_name(sig)} to {len(report.pids)} processes in {len(report.containers)} containers:")
        for c in target.walk():
            print(f"  {c.path} ({c.engine})")
            for pid in c.pids:
                p = snap.processes.get(pid)
                print(f"    {pid} {p.command if p else ''}")
    else:
        how = ", ".join(report.frozen_with) or "nothing to freeze"
        print(f"sent {ops_kill.signal_name(sig)} to {len(report.pids)} processes in "
              f"{', '.join(report.containers)} (frozen with {how})")
        print(f"  target: {targets.Target(args.target, container=target).describe()}, "
              f"pids {' '.join(map(str, report.pids))}")
        if report.late:
            print(f"  {len(report.late)} of them appeared while it was being frozen")
        if report.left:
            word = "still alive" if sig == signal.SIGKILL else "still running"
            print(f"  {word}: {' '.join(map(str, report.left))}", file=sys.stderr if sig == signal.SIGKILL else sys.stdout)
    return 1 if report.left and sig == signal.SIGKILL and not args.dry_run else 0


# --- pin / unpin -------------------------------------------------------------------------------


def _pin(args: argparse.Namespace) -> int:
    snap = core.snapshot(chosen_sources("process,fd,bindmount"))
    try:
        target = targets.resolve_target(snap, args.ns, containers.find(snap), nstype=args.nstype)
    except targets.NotFound as e:
        raise UserError(str(e)) from None
    ns = target.namespace
    if target.container is not None:
        if not args.nstype:
            raise UserError(f"{target.describe()} is a container: say which of its namespaces with -t TYPE")
        ns = snap.get(target.container.namespaces[args.nstype])
    if ns is None:
        raise UserError(f"{args.ns}: no such namespace")
    try:
        fd = open_namespace(ns, snap)
    except Gone as e:
        raise UserError(str(e)) from None
    try:
        made = ops_pin.pin(fd, args.path)
    except ops_pin.PinError as e:
        raise UserError(str(e)) from None
    finally:
        os.close(fd)
    print(f"pinned {made.type}:[{made.inode}] at {made.path}")
    return 0


def _unpin(args: argparse.Namespace) -> int:
    try:
        nstype, inode = ops_pin.unpin(args.path, remove=not args.keep)
    except ops_pin.PinError as e:
        raise UserError(str(e)) from None
    print(f"unpinned {nstype}:[{inode}] from {os.path.abspath(args.path)}")
    return 0


# --- checkpoint / restore ----------------------------------------------------------------------


def _checkpoint(args: argparse.Namespace) -> int:
    snap, tree = _tree(args)
    target = _container(tree, snap, args.target)
    if target.path == "/":
        raise UserError("refusing to checkpoint the host ('/'); name a container")
    try:
        report = ckpt.checkpoint(snap, tree, target, args.dir, leave_running=not args.stop)
    except OSError as e:
        raise UserError(f"{args.dir}: {e.strerror}") from None
    data: dict[str, Any] = {"directory": report.directory, "containers": report.containers,
                            "namespaces": report.namespaces, "files": report.files, "dumped": report.dumped,
                            "criu": report.criu.to_dict()}
    failed = report.criu.check_ok and not report.dumped  # CRIU could run, and wrote no image
    if args.json:
        print_json(data)
        if failed:
            raise UserError(f"no process images were written: {report.criu.message}")
        return 0
    print(f"wrote the topology and names of {', '.join(report.containers)} ({report.namespaces} namespaces) "
          f"to {report.directory}")
    if report.dumped:
        print(f"CRIU dumped the processes into {os.path.join(report.directory, 'images')}")
    else:
        print(f"CRIU: {report.criu.message}; no process images were written")
    if failed:
        raise UserError(f"no process images were written: {report.criu.message}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        _topo, saved = ckpt.load(args.dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    criu = ckpt.criu_state()
    restored = ckpt.criu_restore(args.dir, criu)
    _snap, tree = _tree(args)
    matched = ckpt.match_names(saved, tree, restored)
    try:
        for key, name in matched.renamed:
            cnames.rename(args.db, key, name)
    except (cnames.NamesUnavailable, ValueError) as e:
        raise UserError(f"cannot re-apply the names: {e}") from None
    if restored is not None:
        print(f"CRIU restored the processes (init pid {restored})")
    else:
        print(f"CRIU: {criu.message}; no processes were restored")
    for key, name in matched.renamed:
        print(f"name {name} re-applied to {key}")
    for path in matched.unchanged:
        print(f"{path} still has its saved name")
    for path in matched.unmatched:
        print(f"{path}: no running container to give its name back to", file=sys.stderr)
    return 0 if matched.renamed or matched.unchanged or not matched.unmatched else 1
