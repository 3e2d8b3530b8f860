"""`nsfs containers`, `enter`, `kill`, `pin`, `unpin`, `checkpoint`, `restore`: argument parsing
and output only; the work is done by namespacefs.containers and namespacefs.ops."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, NoReturn

from namespacefs import containers, core
from namespacefs.cli import UserError, duration, whole
from namespacefs.cli.common import chosen_sources, find, report_errors
from namespacefs.cli.output import Column, add_table_options, pick_columns, print_columns_help, print_json, render, tree_rows
from namespacefs.containers import Container, ContainerTree
from namespacefs.containers import names as cnames
from namespacefs.handles import Gone, open_namespace
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Snapshot
from namespacefs.ops import checkpoint as ckpt
from namespacefs.ops import enter as ops_enter
from namespacefs.ops import kill as ops_kill
from namespacefs.ops import pin as ops_pin
from namespacefs.syntax import is_number

#: nsenter's letters for the namespace types
LETTERS = {"mnt": "m", "uts": "u", "ipc": "i", "net": "n", "pid": "p", "user": "U", "cgroup": "C", "time": "T"}
LONG = {"mnt": "mount", "uts": "uts", "ipc": "ipc", "net": "net", "pid": "pid", "user": "user",
        "cgroup": "cgroup", "time": "time"}


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
    Column("NAME", "the container's name (the tree shows its nesting)", lambda v: v.c.name or "/"),
    Column("PATH", "the container's path", lambda v: v.c.path),
    Column("ENGINE", "who runs it (host, runc, docker, systemd-nspawn, bwrap, ..., unknown)", lambda v: v.c.engine),
    Column("ID", "the engine's id for it", lambda v: (v.c.engine_id or "")[:12]),
    Column("INIT", "host pid of its init", lambda v: v.c.init, right=True),
    Column("PIDS", "number of its own processes", lambda v: len(v.c.pids), right=True),
    Column("NPROCS", "processes with those of nested containers", lambda v: len(v.c.all_pids), right=True),
    Column("NS", "the namespace types it does not share with its parent", View.own),
    Column("KEY", "what a rename is stored under", lambda v: v.c.key),
    Column("COMMAND", "its init's command line", View.command, wrap=True),
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
        parser.add_argument("-l", "--list", action="store_true", help="a flat list with paths instead of the tree")
        parser.add_argument("--rename", nargs=2, metavar=("TARGET", "NAME"), help="give a container a name that is kept")
        parser.add_argument("--forget", metavar="TARGET", help="drop a container's stored name")
        add_table_options(parser, COLUMNS, DEFAULT)
    elif command == "enter":
        _enter_options(parser)
        parser.add_argument("-t", "--target", dest="target_pid", type=whole("PID", 1, 2**22), metavar="PID",
                            help="the target process, as nsenter takes it (instead of TARGET)")
        parser.add_argument("target", nargs="?", help="a container (path, name or engine id), a pid, or a namespace")
        parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="[OPTIONS] -- CMD",
                            help="the command, after -- (default: the target's shell or /bin/sh)")
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


def _enter_options(parser: argparse.ArgumentParser) -> None:
    for t in NS_TYPES:
        parser.add_argument(f"-{LETTERS[t]}", f"--{LONG[t]}", dest=f"ns_{t}", action="store_true",
                            help=f"enter the {t} namespace")
    parser.add_argument("-a", "--all", action="store_true", help="enter every namespace (the default for a pid or container)")
    parser.add_argument("-S", "--setuid", type=whole("UID", 0, 2**32 - 2), metavar="UID", help="run as this uid")
    parser.add_argument("-G", "--setgid", type=whole("GID", 0, 2**32 - 2), metavar="GID", help="run as this gid")
    parser.add_argument("--wd", metavar="DIR", help="working directory (default: the target's)")
    parser.add_argument("--keep-root", action="store_true", help="keep our root directory in the mount namespace")


class _OptionsAfterTarget(argparse.ArgumentParser):
    """Parses the options that follow TARGET; reports a mistake once, as a UserError, instead of
    printing a second usage text and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"bad options before --: {message}")


def _split_enter(args: argparse.Namespace) -> list[str]:
    """Options may also follow TARGET (`nsfs enter web -u -- hostname`): those before `--` are
    parsed here; what follows `--` is the command."""
    words = list(args.cmd)
    if "--" not in words:
        return words
    cut = words.index("--")
    if cut:
        extra = _OptionsAfterTarget(prog="nsfs enter", add_help=False, exit_on_error=False)
        _enter_options(extra)
        try:
            more, unknown = extra.parse_known_args(words[:cut])
        except argparse.ArgumentError as e:
            raise UserError(f"bad options before --: {e}") from None
        if unknown:
            raise UserError(f"unknown options before --: {' '.join(unknown)}")
        for key, value in vars(more).items():
            if value not in (None, False):
                setattr(args, key, value)
    return words[cut + 1:]


def run(args: argparse.Namespace) -> int:
    handler = {"containers": _containers, "enter": _enter, "kill": _kill, "pin": _pin, "unpin": _unpin,
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
    snap = core.snapshot(chosen_sources(args.sources), db=args.db)
    return snap, containers.find(snap, names=_names(args), oci_roots=_roots(args))


def _container(tree: ContainerTree, snap: Snapshot, spec: str, allow_pid: bool = True) -> Container:
    if not spec.strip():  # "" would otherwise match the host, whose name is empty
        raise UserError("an empty container name; give a path, a name, an engine id or a pid")
    if allow_pid and is_number(spec) and int(spec) in snap.processes:
        c = tree.of_pid(int(spec))
        if c is not None:
            return c
    found = tree.lookup(spec)
    if len(found) > 1:
        raise UserError(f"'{spec}' is ambiguous: {', '.join(c.path for c in found)}; give the path")
    if not found:
        raise UserError(f"no container '{spec}' (see nsfs containers)")
    return found[0]


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


# --- enter -------------------------------------------------------------------------------------


def _enter(args: argparse.Namespace) -> int:
    if args.target_pid is not None:
        # nsenter's form: every option precedes -t PID's command, which argparse has split into
        # TARGET and the rest (a `--` before it is consumed)
        cmd = [args.target, *args.cmd] if args.target is not None else list(args.cmd)
        args.target = str(args.target_pid)
    elif args.target is None:
        raise UserError("no target; give a container, a pid or a namespace (or -t PID)")
    else:
        cmd = _split_enter(args)
    chosen = tuple(t for t in NS_TYPES if getattr(args, f"ns_{t}"))
    snap = core.snapshot(chosen_sources(args.sources), db=args.db)
    tree = containers.find(snap, names=_names(args), oci_roots=_roots(args))
    pid: int | None = None
    fds: dict[str, int] = {}
    spec = args.target
    if not spec.strip():
        raise UserError("an empty target; give a container, a pid or a namespace")
    if is_number(spec) and int(spec) in snap.processes:
        pid = int(spec)
    elif found := tree.lookup(spec):
        if len(found) > 1:
            raise UserError(f"'{spec}' is ambiguous: {', '.join(c.path for c in found)}; give the path")
        pid = found[0].init
    else:
        if args.sources == "process":  # a namespace may be held by no process: by a pin or an fd
            snap = core.snapshot(chosen_sources("process,fd,bindmount"), db=args.db)
        ns = find(snap, spec)
        chosen = chosen or (ns.type,)
        if ns.processes:
            pid = ns.processes[0]
        else:
            if chosen != (ns.type,):
                raise UserError(f"{spec} has no process; only its own {ns.type} namespace can be entered")
            try:
                fds[ns.type] = open_namespace(ns, snap)
            except Gone as e:
                raise UserError(str(e)) from None
    try:
        types = chosen if chosen and not args.all else NS_TYPES
        if pid is not None:
            types = ops_enter.needed_types(pid, [t for t in types if t not in fds])
        types = tuple(dict.fromkeys((*types, *fds)))
        if not types:
            raise UserError(f"{spec} is in all of our own namespaces: nothing to enter")
        plan = ops_enter.Plan(types, pid, fds, args.setuid, args.setgid, args.wd, not args.keep_root)
        argv = cmd or ops_enter.default_shell(pid, in_its_root="mnt" in types and not args.keep_root)
        sys.stdout.flush()
        return ops_enter.run(plan, argv)
    except ops_enter.EnterError as e:
        raise UserError(str(e)) from None
    finally:
        for fd in fds.values():
            os.close(fd)


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
        if report.late:
            print(f"  {len(report.late)} of them appeared while it was being frozen")
        if report.left:
            word = "still alive" if sig == signal.SIGKILL else "still running"
            print(f"  {word}: {' '.join(map(str, report.left))}", file=sys.stderr if sig == signal.SIGKILL else sys.stdout)
    return 1 if report.left and sig == signal.SIGKILL and not args.dry_run else 0


# --- pin / unpin -------------------------------------------------------------------------------


def _pin(args: argparse.Namespace) -> int:
    snap = core.snapshot(chosen_sources("process,fd,bindmount"))
    ns = find(snap, args.ns, args.nstype)
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
